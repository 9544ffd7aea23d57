import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { machine, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pkcs11js from 'pkcs11js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  buildNetsim,
  createSoftHsmToken,
  NETSIM_CTL,
  NETSIM_MODULE,
  NETSIM_STRESS_TSAN,
  NETSIM_TSAN_MODULE,
  NetsimControl,
  netsimEnv,
  type SoftHsmToken,
} from '../helpers/netsim.js';

// The emulated network HSM (softhsm/netsim) in front of a SoftHSMv2 token, driven through pkcs11js as the gateway
// drives its tokens, with faults injected over its control channel. Timing assertions are one-sided (a delayed call
// takes at least its delay) or have a wide margin: the 2-core machine is shared.

// PKCS#11 v2.40 session states that pkcs11js does not export.
const CKS_RW_PUBLIC_SESSION = 2;
const CKS_RW_USER_FUNCTIONS = 3;
const P256 = Buffer.from('06082a8648ce3d030107', 'hex');
const KEY_LABEL = 'netsim-p256';
const MESSAGE = Buffer.from('hsm-gateway: signed through the emulated network HSM');
const DIGEST = createHash('sha256').update(MESSAGE).digest();

let p11: pkcs11js.PKCS11;
let token: SoftHsmToken;
let work: string;
let netsim: NetsimControl;
let slot: pkcs11js.Handle;
let publicKeyPem: string;
const open: pkcs11js.Handle[] = [];

/** The CKR code a call fails with, 0 when it succeeds. */
function rvOf(call: () => unknown): number {
  try {
    call();
    return 0;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code !== 'number') throw err;
    return code;
  }
}

async function rvOfAsync(call: () => Promise<unknown>): Promise<number> {
  try {
    await call();
    return 0;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code !== 'number') throw err;
    return code;
  }
}

/** A new R/W session, logged in (the login may already be there: it is per token). */
function newSession(): pkcs11js.Handle {
  const s = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  open.push(s);
  const rv = rvOf(() => p11.C_Login(s, pkcs11js.CKU_USER, token.pin));
  if (rv !== 0 && rv !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw new Error(`C_Login: 0x${rv.toString(16)}`);
  return s;
}

/** The private key's handle, looked up again each time: SoftHSMv2 forgets private objects' handles at logout. */
function privateKey(session: pkcs11js.Handle): pkcs11js.Handle {
  p11.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_LABEL, value: KEY_LABEL },
  ]);
  const [key] = p11.C_FindObjects(session, 1);
  p11.C_FindObjectsFinal(session);
  if (!key) throw new Error('the private key is not visible');
  return key;
}

function sign(session: pkcs11js.Handle): Buffer {
  p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(session));
  return p11.C_Sign(session, DIGEST, Buffer.alloc(64));
}

/** ECDSA r ‖ s over SHA-256(MESSAGE), checked by Node's crypto (OpenSSL), independent of the token. */
function verifies(signature: Buffer): boolean {
  return verify('sha256', MESSAGE, { key: publicKeyPem, dsaEncoding: 'ieee-p1363' }, signature);
}

function closeQuietly(session: pkcs11js.Handle): void {
  rvOf(() => p11.C_CloseSession(session));
}

beforeAll(() => {
  buildNetsim();
  token = createSoftHsmToken({ label: 'netsim-test' });
  work = mkdtempSync(join(tmpdir(), 'netsim-test-'));
  const config = join(work, 'netsim.conf');
  writeFileSync(config, '# delays in microseconds\ndefault 0\nC_GenerateRandom 3000\n');
  Object.assign(
    process.env,
    netsimEnv({ softhsmConf: token.conf, controlDir: join(work, 'control'), config, delays: { C_GetSessionInfo: 2000 } }),
  );
  netsim = new NetsimControl(join(work, 'control'));

  p11 = new pkcs11js.PKCS11();
  p11.load(NETSIM_MODULE);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === token.label)!;
  expect(slot).toBeDefined();

  // A token key pair: token objects outlive the sessions that invalidate-sessions closes.
  const session = newSession();
  const { publicKey } = p11.C_GenerateKeyPair(
    session,
    { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
    [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_VERIFY, value: true },
      { type: pkcs11js.CKA_EC_PARAMS, value: P256 },
      { type: pkcs11js.CKA_LABEL, value: KEY_LABEL },
    ],
    [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_LABEL, value: KEY_LABEL },
    ],
  );
  // CKA_EC_POINT: DER OCTET STRING 04 41 ‖ 04 ‖ x ‖ y.
  const point = p11.C_GetAttributeValue(session, publicKey, [{ type: pkcs11js.CKA_EC_POINT }])[0]!.value as Buffer;
  expect(point.subarray(0, 3).toString('hex')).toBe('044104');
  const b64url = (b: Buffer): string => b.toString('base64url');
  publicKeyPem = createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: b64url(point.subarray(3, 35)), y: b64url(point.subarray(35, 67)) },
    format: 'jwk',
  })
    .export({ type: 'spki', format: 'pem' })
    .toString();
});

afterEach(async () => {
  await netsim.reset();
  for (const s of open.splice(0)) closeQuietly(s);
});

afterAll(() => {
  if (p11) {
    p11.C_Finalize();
    p11.close();
  }
  if (work) rmSync(work, { recursive: true, force: true });
  if (token) rmSync(token.dir, { recursive: true, force: true });
});

describe('forwarding', () => {
  it('when a client uses the emulator, then it sees the real token and gets signatures that verify', async () => {
    const info = p11.C_GetInfo();
    expect(info.manufacturerID.trim()).toBe('SoftHSM');
    const tokenInfo = p11.C_GetTokenInfo(slot);
    expect(tokenInfo.label.trim()).toBe('netsim-test');
    expect(p11.C_GetMechanismList(slot)).toContain(pkcs11js.CKM_ECDSA);

    const session = newSession();
    expect(p11.C_GetSessionInfo(session).state).toBe(CKS_RW_USER_FUNCTIONS);
    expect(verifies(sign(session))).toBe(true);
    expect(p11.C_GenerateRandom(session, Buffer.alloc(16)).length).toBe(16);

    const [status] = await netsim.status();
    expect(status!.pid).toBe(process.pid);
    expect(status!.module).toBe('/usr/lib/softhsm/libsofthsm2.so');
    expect(status!.calls.C_Sign).toBeGreaterThanOrEqual(1);
    expect(status!.calls.C_Initialize).toBe(1);
  });

  it('when another program (OpenSC pkcs11-tool) loads the emulator, then it lists the same token', () => {
    const env = { ...process.env, NETSIM_CONTROL: '' };
    const out = execFileSync('pkcs11-tool', ['--module', NETSIM_MODULE, '-L'], { env, encoding: 'utf8' });
    expect(out).toMatch(/token label\s+:\s+netsim-test/);
  });
});

describe('delays', () => {
  it('when delays are configured (file and environment), then each call takes at least its delay, asleep', async () => {
    const session = newSession();
    let t = performance.now();
    p11.C_GenerateRandom(session, Buffer.alloc(8)); // NETSIM_CONFIG: C_GenerateRandom 3000
    expect(performance.now() - t).toBeGreaterThanOrEqual(3);
    t = performance.now();
    p11.C_GetSessionInfo(session); // NETSIM_DELAY_C_GetSessionInfo=2000
    expect(performance.now() - t).toBeGreaterThanOrEqual(2);

    await netsim.setDelay('C_Sign', 5000);
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(session));
    t = performance.now();
    const signature = p11.C_Sign(session, DIGEST, Buffer.alloc(64));
    expect(performance.now() - t).toBeGreaterThanOrEqual(5);
    expect(verifies(signature)).toBe(true);

    // A real sleep, not a busy wait: 300 ms of delay cost the process almost no CPU time.
    await netsim.setDelay('C_GetSlotList', 300_000);
    const cpu = process.cpuUsage();
    t = performance.now();
    p11.C_GetSlotList(true);
    const elapsed = performance.now() - t;
    const used = process.cpuUsage(cpu);
    expect(elapsed).toBeGreaterThanOrEqual(300);
    expect((used.user + used.system) / 1000).toBeLessThan(100);

    const [status] = await netsim.status();
    expect(status!.delays).toEqual({ C_GetSessionInfo: 2000, C_GenerateRandom: 3000, C_Sign: 5000, C_GetSlotList: 300_000 });
    await netsim.reset();
    const [after] = await netsim.status();
    expect(after!.delays).toEqual({ C_GetSessionInfo: 2000, C_GenerateRandom: 3000 });
    expect(after!.defaultDelayUs).toBe(0);
  });

  it('when 8 sessions sign at once with C_SignAsync, then the delayed calls overlap instead of queueing', async () => {
    const delayMs = 50;
    const sessions = Array.from({ length: 8 }, () => newSession());
    for (const s of sessions) p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(s));
    await netsim.setDelay('C_Sign', delayMs * 1000);
    await netsim.clearStats();

    const t = performance.now();
    const signatures = await Promise.all(sessions.map((s) => p11.C_SignAsync(s, DIGEST, Buffer.alloc(64))));
    const elapsed = performance.now() - t;

    for (const signature of signatures) expect(verifies(signature)).toBe(true);
    expect(elapsed).toBeGreaterThanOrEqual(delayMs);
    // One after another would be 8 × 50 = 400 ms; libuv's 4 pool threads make it about 100 ms.
    expect(elapsed).toBeLessThan(8 * delayMs * 0.6);
    const [status] = await netsim.status();
    expect(status!.maxInflight).toBeGreaterThanOrEqual(2);
    expect(status!.calls.C_Sign).toBe(8);
  });
});

describe('faults', () => {
  it('when sessions are invalidated, then every old handle answers CKR_SESSION_HANDLE_INVALID and a new session works after a new login', async () => {
    const a = newSession();
    const b = newSession();
    expect(verifies(sign(a))).toBe(true);
    const key = privateKey(b);

    expect(await netsim.invalidateSessions()).toBeGreaterThanOrEqual(2);
    expect(rvOf(() => p11.C_GetSessionInfo(a))).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    expect(rvOf(() => p11.C_SignInit(b, { mechanism: pkcs11js.CKM_ECDSA }, key))).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    expect(rvOf(() => p11.C_Sign(a, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);

    // The real sessions are closed, so the token logged the user out, as a device session's expiry does.
    const c = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    open.push(c);
    expect(p11.C_GetSessionInfo(c).state).toBe(CKS_RW_PUBLIC_SESSION);
    p11.C_Login(c, pkcs11js.CKU_USER, token.pin);
    expect(verifies(sign(c))).toBe(true);

    // Closing an old handle is CKR_SESSION_HANDLE_INVALID too, and forgets it.
    expect(rvOf(() => p11.C_CloseSession(a))).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    expect(rvOf(() => p11.C_CloseSession(b))).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    const [status] = await netsim.status();
    expect(status!.sessionsDead).toBe(0);
    expect(status!.sessionsLive).toBe(1);
  });

  it('when sessions are invalidated with keep-login, then old handles are dead but the login survives', async () => {
    const a = newSession();
    expect(await netsim.invalidateSessions({ keepLogin: true })).toBeGreaterThanOrEqual(1);
    expect(rvOf(() => p11.C_GetSessionInfo(a))).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    const c = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    open.push(c);
    expect(p11.C_GetSessionInfo(c).state).toBe(CKS_RW_USER_FUNCTIONS);
    expect(verifies(sign(c))).toBe(true);
    expect((await netsim.status())[0]!.sessionsDead).toBe(1);
    expect(rvOf(() => p11.C_CloseSession(a))).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    expect((await netsim.status())[0]!.sessionsDead).toBe(0);
  });

  it('when a device-error window opens, then every call answers CKR_DEVICE_ERROR until it closes, and the session then works', async () => {
    const session = newSession();
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(session));
    const t = performance.now();
    await netsim.deviceError(300);

    expect(rvOf(() => p11.C_Sign(session, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_DEVICE_ERROR);
    expect(rvOf(() => p11.C_GetSessionInfo(session))).toBe(pkcs11js.CKR_DEVICE_ERROR);
    expect(rvOf(() => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION))).toBe(pkcs11js.CKR_DEVICE_ERROR);
    expect(rvOf(() => p11.C_GetTokenInfo(slot))).toBe(pkcs11js.CKR_DEVICE_ERROR);

    let rv: number;
    while ((rv = rvOf(() => p11.C_GetSessionInfo(session))) === pkcs11js.CKR_DEVICE_ERROR) {
      expect(performance.now() - t).toBeLessThan(10_000);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(rv).toBe(0);
    expect(performance.now() - t).toBeGreaterThanOrEqual(300);
    // The faulted C_Sign ended the signing operation in the real token too: a new one starts cleanly.
    expect(verifies(sign(session))).toBe(true);
  });

  it('when the backend is lost, then what needs it fails while sessions, login and searches work, a re-initialization fails until it is back, and only a re-initialization ends the errors', async () => {
    const reinitialize = (): number => {
      p11.C_Finalize();
      return rvOf(() => p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK }));
    };
    const findSlot = (): pkcs11js.Handle => p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === token.label)!;
    const session = newSession();
    const key = privateKey(session);
    await netsim.loseBackend();
    // What tpm2-pkcs11 answers once tpm2-abrmd is gone (module-matrix.test.ts measures it).
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key);
    expect(rvOf(() => p11.C_Sign(session, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_GENERAL_ERROR);
    expect(rvOf(() => p11.C_GenerateRandom(session, Buffer.alloc(8)))).toBe(pkcs11js.CKR_GENERAL_ERROR);
    expect(rvOf(() => p11.C_GetTokenInfo(slot))).toBe(0);
    const fresh = newSession();
    expect(p11.C_GetSessionInfo(fresh).state).toBe(CKS_RW_USER_FUNCTIONS);
    p11.C_SignInit(fresh, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(fresh));
    expect(rvOf(() => p11.C_Sign(fresh, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_GENERAL_ERROR);
    expect((await netsim.status())[0]!.backend).toBe('away');

    // Away: a re-initialization fails. Back: the errors go on until the module is initialized again.
    expect(reinitialize()).toBe(pkcs11js.CKR_GENERAL_ERROR);
    await netsim.restoreBackend();
    expect((await netsim.status())[0]!.backend).toBe('stuck');
    expect(rvOf(() => p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK }))).toBe(0);
    expect((await netsim.status())[0]!.backend).toBe('ok');
    slot = findSlot();
    expect(verifies(sign(newSession()))).toBe(true);

    // Lost and back without a re-initialization in between: still failing until one.
    await netsim.loseBackend('CKR_DEVICE_ERROR');
    await netsim.restoreBackend();
    const stuck = newSession();
    p11.C_SignInit(stuck, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(stuck));
    expect(rvOf(() => p11.C_Sign(stuck, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_DEVICE_ERROR);
    open.splice(0);
    expect(reinitialize()).toBe(0);
    slot = findSlot();
    expect(verifies(sign(newSession()))).toBe(true);
  });

  it('when general-error-next names C_Sign, then exactly one C_Sign answers CKR_GENERAL_ERROR and the next signs', async () => {
    const session = newSession();
    const key = privateKey(session);
    const before = (await netsim.status())[0]!.injected;
    await netsim.generalErrorNext('C_Sign');

    p11.C_GetSessionInfo(session);
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key);
    expect(rvOf(() => p11.C_Sign(session, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_GENERAL_ERROR);
    for (let i = 0; i < 3; i++) {
      p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key);
      expect(verifies(p11.C_Sign(session, DIGEST, Buffer.alloc(64)))).toBe(true);
    }
    expect((await netsim.status())[0]!.injected).toBe(before + 1);
  });

  it('when the faulted C_Sign was given too small a buffer, then the real operation is still ended', async () => {
    // Without a fault, CKR_BUFFER_TOO_SMALL leaves the operation open (the convention for variable-length output); with one, the caller must
    // assume it over, so the emulator runs it to the end in the real token.
    const session = newSession();
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(session));
    await netsim.generalErrorNext('C_Sign');
    expect(rvOf(() => p11.C_Sign(session, DIGEST, Buffer.alloc(8)))).toBe(pkcs11js.CKR_GENERAL_ERROR);
    expect(verifies(sign(session))).toBe(true);
  });

  it('when general-error-next names no function, then the very next call fails; with C_Sign*, the next C_SignInit', async () => {
    const session = newSession();
    const key = privateKey(session);
    await netsim.generalErrorNext();
    expect(rvOf(() => p11.C_GetSessionInfo(session))).toBe(pkcs11js.CKR_GENERAL_ERROR);
    expect(rvOf(() => p11.C_GetSessionInfo(session))).toBe(0);

    await netsim.generalErrorNext('C_Sign*');
    await netsim.errorNext('CKR_DEVICE_REMOVED', 'C_Sign');
    expect(rvOf(() => p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key))).toBe(pkcs11js.CKR_GENERAL_ERROR);
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key);
    expect(rvOf(() => p11.C_Sign(session, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_DEVICE_REMOVED);
    expect(verifies(sign(session))).toBe(true);

    await expect(netsim.generalErrorNext('C_Sgn')).rejects.toThrow(/names no PKCS#11 function/);
    expect((await netsim.status())[0]!.pending).toEqual([]);
  });

  it('when a hang window opens, then calls entering it block until it ends, on any thread', async () => {
    const sessions = [newSession(), newSession()];
    const key = privateKey(sessions[0]!);
    for (const s of sessions) p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, key);
    const t = performance.now();
    await netsim.hang(300);

    const asyncSigns = sessions.map(async (s) => {
      const signature = await p11.C_SignAsync(s, DIGEST, Buffer.alloc(64));
      return { signature, at: performance.now() - t };
    });
    p11.C_GetSessionInfo(sessions[0]!); // on the main thread, like the gateway's synchronous C_SignInit
    expect(performance.now() - t).toBeGreaterThanOrEqual(300);
    for (const { signature, at } of await Promise.all(asyncSigns)) {
      expect(at).toBeGreaterThanOrEqual(300);
      expect(verifies(signature)).toBe(true);
    }
    // After the window: no wait.
    const t2 = performance.now();
    p11.C_GetSlotList(true);
    expect(performance.now() - t2).toBeLessThan(250);
  });

  it('when reset comes during a long hang, then the blocked calls go on at once', async () => {
    const session = newSession();
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(session));
    const t = performance.now();
    await netsim.hang(20_000);
    const pending = p11.C_SignAsync(session, DIGEST, Buffer.alloc(64));
    await new Promise((r) => setTimeout(r, 100));
    expect((await netsim.status())[0]!.inflight).toBe(1);
    await netsim.reset();
    expect(verifies(await pending)).toBe(true);
    expect(performance.now() - t).toBeLessThan(10_000);
  });

  it('when a faulted async call is awaited, then its promise rejects with the injected code', async () => {
    const session = newSession();
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey(session));
    await netsim.errorNext(pkcs11js.CKR_DEVICE_ERROR, 'C_Sign');
    expect(await rvOfAsync(() => p11.C_SignAsync(session, DIGEST, Buffer.alloc(64)))).toBe(pkcs11js.CKR_DEVICE_ERROR);
  });
});

describe('netsim-ctl', () => {
  const ctl = (...args: string[]) => spawnSync(NETSIM_CTL, args, { encoding: 'utf8' });

  it('when the command-line client sends commands, then the process applies them and says ok (exit 0), or error (exit 2)', () => {
    const status = ctl(join(work, 'control'), 'status');
    expect(status.status).toBe(0);
    expect(status.stdout).toContain(`pid ${process.pid}\n`);
    expect(status.stdout.trimEnd().split('\n').pop()).toBe('ok');
    expect(netsim.sendSync('set-delay C_Logout 1234')).toBe('ok\n');
    expect(ctl(join(work, 'control'), 'status').stdout).toContain('delay-us C_Logout 1234\n');

    const bad = ctl(join(work, 'control'), 'hang', 'soon');
    expect(bad.status).toBe(2);
    expect(bad.stdout).toMatch(/^error: hang: 'soon' is not a duration in ms/);
    const nobody = ctl(mkdtempSync(join(work, 'empty-')), 'status');
    expect(nobody.status).toBe(1);
    expect(nobody.stderr).toMatch(/no netsim process listens/);
  });
});

describe('thread safety', () => {
  it('when 8 threads sign while faults fire every 5 ms, then ThreadSanitizer reports nothing and no operation is left open', () => {
    buildNetsim({ sanitize: true });
    const stressToken = createSoftHsmToken({ label: 'netsim-stress' });
    try {
      const args = [NETSIM_STRESS_TSAN, NETSIM_TSAN_MODULE, stressToken.pin, '8', '2000'];
      const options = {
        env: {
          ...process.env,
          ...netsimEnv({ softhsmConf: stressToken.conf, controlDir: join(stressToken.dir, 'control') }),
          NETSIM_CONFIG: '',
          NETSIM_DELAY_C_GetSessionInfo: '',
          TSAN_OPTIONS: 'halt_on_error=1 exitcode=66',
        },
        encoding: 'utf8' as const,
        timeout: 60_000,
      };
      let run = spawnSync(args[0]!, args.slice(1), options);
      // GCC 12's ThreadSanitizer cannot map its shadow memory under the high ASLR entropy of newer kernels.
      if (/unexpected memory mapping/.test(run.stderr)) run = spawnSync('setarch', [machine(), '-R', ...args], options);
      const output = `${run.stdout}${run.stderr}`;
      expect(output).not.toMatch(/ThreadSanitizer/);
      expect(run.status, output).toBe(0);
      expect(output).toMatch(/unexpected answers 0/);
    } finally {
      rmSync(stressToken.dir, { recursive: true, force: true });
    }
  });
});
