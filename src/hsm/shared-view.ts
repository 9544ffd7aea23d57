import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import pkcs11js from 'pkcs11js';
import { findObjects } from './objects.js';

/**
 * Does this module show a process the token objects another process wrote after it was initialized? tpm2-pkcs11
 * reads its store once, at C_Initialize; nShield does the same under its default CKNFAST_ASSUME_SINGLE_PROCESS=1.
 * Anything kept on such a token for several processes (the registry, keys made by the CLI) silently diverges.
 * Measured, not assumed: a child process writes a private token CKO_DATA object with a random label, this process
 * (initialized before the write) searches for it, and whoever still sees it deletes it.
 */

/**
 * Modules whose token store other processes' writes disturb for a moment or for good, measured on SoftHSMv2 2.6.1's
 * file store: its searches can miss an object another process wrote at the same moment until the module is initialized
 * again (two gateway processes each creating a key at once: one missed the other's key in 21 of 30 rounds, still 5 s
 * later; a process lists the token directory again only when the generation file moved since its own last write, and
 * an object file read while its writer rewrites it stays invalid in the reader), and a call can fail meanwhile
 * (C_GetTokenInfo answered CKR_GENERAL_ERROR while another process wrote). The registry re-initializes after another
 * writer's change (RegistrySource.revealHidden) and the health check is confirmed once before the token counts as down.
 */
const DISTURBED_BY_OTHER_WRITERS: readonly RegExp[] = [/^SoftHSM/];

/** Whether other processes' writes disturb this module (C_GetInfo manufacturerID): see DISTURBED_BY_OTHER_WRITERS. */
export function disturbedByOtherWriters(library: string): boolean {
  return DISTURBED_BY_OTHER_WRITERS.some((pattern) => pattern.test(library));
}

/** `undefined`: the probe could not tell (the module refuses data objects, the child failed); `reason` says why. */
interface SharedView {
  shared: boolean | undefined;
  reason?: string;
}

/** How the child reaches the same token. The PIN goes over its stdin, never its arguments or environment. */
interface SharedViewTarget {
  modulePath: string;
  initArgs?: string;
  tokenLabel: string;
  pin: string;
}

/** What `work` gives the probe: a logged-in read/write session of this process's (already initialized) module. */
type OnSession = <T>(work: (p11: pkcs11js.PKCS11, session: pkcs11js.Handle) => T | Promise<T>) => Promise<T>;

/**
 * The child: plain JavaScript (it runs from src/ under the tests and from dist/ alike), loading pkcs11js from where
 * this module found it. Lines out: `written`, then `done`; or `error <text>`.
 */
const CHILD = `
const pkcs11js = require(process.env.HSM_GATEWAY_PKCS11JS);
const lines = require('node:readline').createInterface({ input: process.stdin });
const it = lines[Symbol.asyncIterator]();
(async () => {
  const job = JSON.parse((await it.next()).value);
  const p11 = new pkcs11js.PKCS11();
  let session;
  try {
    p11.load(job.modulePath);
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK, ...(job.initArgs === undefined ? {} : { libraryParameters: job.initArgs + '\\u0000' }) });
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.replace(/[\\s\\u0000]+$/, '') === job.tokenLabel);
    if (slot === undefined) throw new Error('token not found');
    session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try { p11.C_Login(session, pkcs11js.CKU_USER, job.pin); } catch (e) { if (!/ALREADY_LOGGED_IN/.test(String(e.message))) throw e; }
    p11.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_LABEL, value: job.label },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from('hsm-gateway shared-view probe') },
    ]);
    console.log('written');
    await it.next();
    const template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA }, { type: pkcs11js.CKA_TOKEN, value: true }, { type: pkcs11js.CKA_LABEL, value: job.label }];
    p11.C_FindObjectsInit(session, template);
    const left = p11.C_FindObjects(session, 16);
    p11.C_FindObjectsFinal(session);
    for (const h of left) p11.C_DestroyObject(session, h);
    console.log('done');
  } catch (e) {
    console.log('error ' + String(e && e.message || e).split('\\n')[0]);
  } finally {
    try { if (session) p11.C_CloseSession(session); p11.C_Finalize(); } catch {}
    lines.close();
  }
})();
`;

const PROBE_PREFIX = 'hsm-gateway/shared-view-probe/';

export async function seesOtherProcessesObjects(target: SharedViewTarget, onSession: OnSession, timeoutMs = 30_000): Promise<SharedView> {
  const first = await probeOnce(target, onSession, timeoutMs);
  // Not seen once may be SoftHSMv2 missing an object written just as this process wrote (DISTURBED_BY_OTHER_WRITERS; a
  // start-up refused this way in a fresh-clone run): a second object, written after, makes it list the store again.
  // A module that reads its store only at C_Initialize (tpm2-pkcs11) misses both.
  return first.shared === false ? probeOnce(target, onSession, timeoutMs) : first;
}

async function probeOnce(target: SharedViewTarget, onSession: OnSession, timeoutMs: number): Promise<SharedView> {
  const label = `${PROBE_PREFIX}${randomBytes(8).toString('hex')}`;
  const child = spawn(process.execPath, ['-e', CHILD], {
    env: { ...process.env, HSM_GATEWAY_PKCS11JS: createRequire(import.meta.url).resolve('pkcs11js') },
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.once('error', () => undefined);
  const out = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const next = async (): Promise<string> => {
    const line = await out.next();
    return line.done ? 'error the probe process ended early' : line.value;
  };
  try {
    child.stdin.write(`${JSON.stringify({ ...target, label })}\n`);
    const written = await next();
    if (written !== 'written') return { shared: undefined, reason: `a second process could not write a data object to the token: ${written.replace(/^error /, '')}` };
    const seen = await onSession((p11, session) => {
      const found = findObjects(p11, session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_LABEL, value: label },
      ]);
      for (const handle of found) p11.C_DestroyObject(session, handle);
      return found.length > 0;
    });
    child.stdin.write('check\n');
    const done = await next();
    if (done !== 'done') return { shared: seen ? true : undefined, reason: `the probe process could not clean up: ${done.replace(/^error /, '')}` };
    return { shared: seen };
  } finally {
    clearTimeout(timer);
    child.stdin.end();
    if (child.exitCode === null) setTimeout(() => child.kill('SIGKILL'), 5000).unref();
    await exited;
  }
}
