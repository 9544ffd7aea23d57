// Experiment behind the "Measured limit" of the token store's compare-and-swap (README.md, "How replicas agree";
// src/keys/registry-cas.ts): two processes on one SoftHSMv2 token each create a token object at about the same moment,
// then each searches for the other's. Counts the rounds in which a process did not find the other's object, and in
// how many it still did not 200 ms later (nothing else written meanwhile).
//
// Usage: node bench/experiments/softhsm-concurrent-create.mjs   (EXP_ROUNDS, 40; MODULE: SoftHSMv2's library)
// Measured on Debian 12, SoftHSMv2 2.6.1 (file store), six runs: 3–6 misses of 40 per process, none found 200 ms
// later; in the three runs whose missed rounds were listed, never the same round for both processes.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROUNDS = Number(process.env.EXP_ROUNDS ?? 40);
const MODULE = process.env.MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

if (process.argv[2] === 'party') {
  const pkcs11js = createRequire(import.meta.url)('pkcs11js');
  const [, , , me, dir] = process.argv;
  const other = me === 'a' ? 'b' : 'a';
  const p11 = new pkcs11js.PKCS11();
  p11.load(MODULE);
  p11.C_Initialize();
  const session = p11.C_OpenSession(p11.C_GetSlotList(true)[0], pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p11.C_Login(session, pkcs11js.CKU_USER, '1234');
  const found = (label) => {
    p11.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_LABEL, value: label }]);
    const handles = p11.C_FindObjects(session, 10);
    p11.C_FindObjectsFinal(session);
    return handles.length > 0;
  };
  let missed = 0;
  let stillMissed = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const handle = p11.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_LABEL, value: `${me}${i}` },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from('x') },
    ]);
    writeFileSync(join(dir, `written-${me}-${i}`), '');
    while (!existsSync(join(dir, `written-${other}-${i}`))) await sleep(1);
    if (!found(`${other}${i}`)) {
      missed++;
      await sleep(200);
      if (!found(`${other}${i}`)) stillMissed++;
    }
    writeFileSync(join(dir, `looked-${me}-${i}`), '');
    while (!existsSync(join(dir, `looked-${other}-${i}`))) await sleep(1);
    p11.C_DestroyObject(session, handle);
  }
  console.log(JSON.stringify({ party: me, rounds: ROUNDS, missed, stillMissedAfter200ms: stillMissed }));
} else {
  const home = mkdtempSync(join(tmpdir(), 'softhsm-concurrent-create-'));
  mkdirSync(join(home, 'tokens'));
  const conf = join(home, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${join(home, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  spawnSync('softhsm2-util', ['--init-token', '--free', '--label', 'concurrent-create', '--pin', '1234', '--so-pin', '5678'], { env, stdio: 'ignore' });
  const dir = join(home, 'signals');
  mkdirSync(dir);
  const party = (me) =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, [import.meta.filename, 'party', me, dir], { env, stdio: ['ignore', 'inherit', 'inherit'] });
      child.on('exit', resolve);
    });
  await Promise.all([party('a'), party('b')]);
  rmSync(home, { recursive: true, force: true });
}
