import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pkcs11js from 'pkcs11js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AsyncPkcs11, AsyncPkcs11Error } from '../../src/hsm/async-pkcs11.js';
import { ckrOf } from '../../src/hsm/ckr.js';
import { buildNetsim, createSoftHsmToken, NETSIM_MODULE, NetsimControl, netsimEnv, type SoftHsmToken } from '../helpers/netsim.js';

// The async PKCS#11 addon in front of the emulated network HSM (softhsm/netsim) with 5 ms per call: what it is for.
// Timing assertions are one-sided or wide (the 2-core machine is shared): a call that sleeps on the main thread
// costs the event loop at least its delay whatever the load, so "the loop never waited 5 ms" is proven by the best
// of a few trials, and the same trial with pkcs11js's C_SignInit on the main thread is shown to fail it.

const DELAY_MS = 5;
const P256 = Buffer.from('06082a8648ce3d030107', 'hex');
const LABEL = 'netsim-async-p256';
const MESSAGE = Buffer.from('hsm-gateway: signed through the emulated network HSM, off the event loop');
const DIGEST = createHash('sha256').update(MESSAGE).digest();
const ECDSA: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_ECDSA };
const CKS_RO_PUBLIC_SESSION = 0;

let token: SoftHsmToken;
let work: string;
let netsim: NetsimControl;
let p11: pkcs11js.PKCS11;
let hsm: AsyncPkcs11;
let slot: pkcs11js.Handle;
let key: pkcs11js.Handle;
let publicKey: pkcs11js.Handle;
let spki: KeyObject;
let sessions: pkcs11js.Handle[] = [];

const verifies = (signature: Buffer): boolean => verify('sha256', MESSAGE, { key: spki, dsaEncoding: 'ieee-p1363' }, signature);

async function rejection(promise: Promise<unknown>): Promise<AsyncPkcs11Error> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'the call should have failed').toBeInstanceOf(AsyncPkcs11Error);
  return err as AsyncPkcs11Error;
}

/** Eight sessions through the addon, the first one logged in (the login is per token). */
async function openSessions(): Promise<void> {
  sessions = await Promise.all(Array.from({ length: 8 }, () => hsm.openSession(slot)));
  try {
    p11.C_Login(sessions[0]!, pkcs11js.CKU_USER, token.pin);
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
  }
  // One operation at a time per session (PKCS#11): the two searches on two sessions.
  const find = (session: pkcs11js.Handle, cls: number) =>
    hsm.findObjects(session, [{ type: pkcs11js.CKA_CLASS, value: cls }, { type: pkcs11js.CKA_LABEL, value: LABEL }], 2);
  const [privateKeys, publicKeys] = await Promise.all([find(sessions[0]!, pkcs11js.CKO_PRIVATE_KEY), find(sessions[1]!, pkcs11js.CKO_PUBLIC_KEY)]);
  expect(privateKeys).toHaveLength(1);
  expect(publicKeys).toHaveLength(1);
  key = privateKeys[0]!;
  publicKey = publicKeys[0]!;
}

/**
 * Runs `signAll` while a 1 ms interval timer ticks; returns how long the signs took and the timer's worst lateness
 * (the gap between ticks beyond its 1 ms, and the first tick's delay from when it was set).
 */
async function withTimer(signAll: () => Promise<Buffer[]>): Promise<{ ms: number; lagMs: number; signatures: Buffer[] }> {
  let lagMs = 0;
  const started = performance.now();
  let last = started;
  const timer = setInterval(() => {
    const now = performance.now();
    lagMs = Math.max(lagMs, now - last - 1);
    last = now;
  }, 1);
  const signatures = await signAll();
  const ms = performance.now() - started;
  // One more tick after the last answer: a loop blocked at the end shows too.
  await new Promise((r) => setTimeout(r, 3));
  clearInterval(timer);
  return { ms, lagMs, signatures };
}

beforeAll(async () => {
  buildNetsim();
  token = createSoftHsmToken({ label: 'netsim-async' });
  work = mkdtempSync(join(tmpdir(), 'async-pkcs11-netsim-'));
  Object.assign(process.env, netsimEnv({ softhsmConf: token.conf, controlDir: join(work, 'control'), delayUs: DELAY_MS * 1000 }));
  netsim = new NetsimControl(join(work, 'control'));
  p11 = new pkcs11js.PKCS11();
  p11.load(NETSIM_MODULE);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === token.label)!;
  hsm = AsyncPkcs11.bind(NETSIM_MODULE);

  const rw = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p11.C_Login(rw, pkcs11js.CKU_USER, token.pin);
  const pair = p11.C_GenerateKeyPair(
    rw,
    { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
    [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_VERIFY, value: true },
      { type: pkcs11js.CKA_EC_PARAMS, value: P256 },
      { type: pkcs11js.CKA_LABEL, value: LABEL },
    ],
    [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_LABEL, value: LABEL },
    ],
  );
  const [point] = await hsm.getAttributeValue(rw, pair.publicKey, [pkcs11js.CKA_EC_POINT]);
  spki = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: point!.subarray(3, 35).toString('base64url'), y: point!.subarray(35, 67).toString('base64url') }, format: 'jwk' });
  await openSessions(); // before the key-generation session closes: the login stays
  p11.C_CloseSession(rw);
});

afterEach(async () => {
  await netsim.reset();
});

afterAll(() => {
  if (p11) {
    try {
      p11.C_Finalize();
    } catch {
      // finalized already
    }
  }
  if (work) rmSync(work, { recursive: true, force: true });
  if (token) rmSync(token.dir, { recursive: true, force: true });
});

describe('on a network HSM (5 ms per call)', () => {
  it('when 8 sessions sign at once, then the 16 round trips overlap: well under 8 × 10 ms, calls in flight together', async () => {
    await netsim.clearStats();
    const t = performance.now();
    const signatures = await Promise.all(sessions.map((s) => hsm.sign(s, ECDSA, key, DIGEST, 64)));
    const ms = performance.now() - t;
    expect(signatures.every(verifies)).toBe(true);
    // In sequence: 8 × (C_SignInit + C_Sign) × 5 ms = 80 ms at least. The libuv pool of this test process has 4
    // threads (Node's default): 2 waves of 10 ms ≈ 20 ms.
    expect(ms).toBeLessThan(60);
    const [status] = await netsim.status();
    expect(status!.calls.C_SignInit).toBe(8);
    expect(status!.calls.C_Sign).toBe(8);
    expect(status!.maxInflight).toBeGreaterThanOrEqual(2);
  });

  it('when 8 signs run, then a 1 ms interval timer set during them is never 5 ms late (pkcs11js C_SignInit on the main thread: it is)', async () => {
    const trial = () => withTimer(() => Promise.all(sessions.map((s) => hsm.sign(s, ECDSA, key, DIGEST, 64))));
    // Best of three: the machine is shared, and one trial may be descheduled by someone else's work.
    const trials = [];
    for (let i = 0; i < 3; i++) {
      const r = await trial();
      expect(r.signatures.every(verifies)).toBe(true);
      trials.push(r);
      if (r.lagMs < DELAY_MS) break;
    }
    expect(Math.min(...trials.map((r) => r.lagMs))).toBeLessThan(DELAY_MS);

    // The contrast: today's way, C_SignInit on the main thread, blocks it for every call's round trip.
    const today = await withTimer(() =>
      Promise.all(
        sessions.map((s) => {
          p11.C_SignInit(s, ECDSA, key);
          return p11.C_SignAsync(s, DIGEST, Buffer.alloc(64));
        }),
      ),
    );
    expect(today.signatures.every(verifies)).toBe(true);
    expect(today.lagMs).toBeGreaterThanOrEqual(8 * DELAY_MS - 1);
  });

  it('when verify, findObjects, openSession / closeSession and probe run, then each is one job and the loop stays free', async () => {
    const signature = await hsm.sign(sessions[0]!, ECDSA, key, DIGEST, 64);
    const trial = () =>
      withTimer(async () => {
        const [ok, found, probe, opened] = await Promise.all([
          hsm.verify(sessions[1]!, ECDSA, publicKey, DIGEST, signature),
          hsm.findObjects(sessions[2]!, [{ type: pkcs11js.CKA_LABEL, value: LABEL }]),
          hsm.probe(slot),
          hsm.openSession(slot),
        ]);
        await hsm.closeSession(opened as pkcs11js.Handle);
        expect(ok).toBe(true);
        expect(found).toHaveLength(2);
        expect(probe.label).toBe(token.label);
        return [];
      });
    const trials = [];
    for (let i = 0; i < 3; i++) {
      const r = await trial();
      trials.push(r);
      if (r.lagMs < DELAY_MS) break;
    }
    expect(Math.min(...trials.map((r) => r.lagMs))).toBeLessThan(DELAY_MS);
  });

  it('when the backend behind the library is lost (lose-backend), then probe still resolves, with the C_GenerateRandom failure in randomRv, while sign rejects', async () => {
    await netsim.loseBackend();
    const seen = await hsm.probe(slot);
    expect(seen.randomRv).toBe(pkcs11js.CKR_GENERAL_ERROR);
    expect(seen.label).toBe(token.label);
    expect((await rejection(hsm.sign(sessions[3]!, ECDSA, key, DIGEST, 64))).code).toBe(pkcs11js.CKR_GENERAL_ERROR);
    await netsim.reset();
    expect((await hsm.probe(slot)).randomRv).toBe(0);
  });

  it('when a C_Sign fails (an injected CKR_DEVICE_ERROR), then it rejects with that code and the session signs again at once', async () => {
    await netsim.errorNext('CKR_DEVICE_ERROR', 'C_Sign');
    const err = await rejection(hsm.sign(sessions[3]!, ECDSA, key, DIGEST, 64));
    expect(err.code).toBe(pkcs11js.CKR_DEVICE_ERROR);
    expect(err.method).toBe('C_Sign');
    expect(verifies(await hsm.sign(sessions[3]!, ECDSA, key, DIGEST, 64))).toBe(true);
  });

  it('when the HSM invalidates its sessions, then the calls reject with CKR_SESSION_HANDLE_INVALID; new sessions, a new login and a new search serve again', async () => {
    expect(await netsim.invalidateSessions()).toBeGreaterThanOrEqual(8);
    const failures = await Promise.all([
      rejection(hsm.sign(sessions[0]!, ECDSA, key, DIGEST, 64)),
      rejection(hsm.findObjects(sessions[1]!, [{ type: pkcs11js.CKA_LABEL, value: LABEL }])),
      rejection(hsm.getAttributeValue(sessions[2]!, key, [pkcs11js.CKA_LABEL])),
      rejection(hsm.closeSession(sessions[3]!)),
    ]);
    for (const err of failures) {
      expect(err.code).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
      expect(ckrOf(err)).toBe(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    }
    expect(failures.map((e) => e.method)).toEqual(['C_SignInit', 'C_FindObjectsInit', 'C_GetAttributeValue', 'C_CloseSession']);
    // The real sessions were closed, so the module logged the user out: the probe sees it (the gateway's "login lost").
    expect((await hsm.probe(slot)).state).toBe(CKS_RO_PUBLIC_SESSION);
    for (const s of sessions.slice(4)) await rejection(hsm.closeSession(s)); // forgotten by the emulator

    await openSessions(); // new sessions, login, the key found again (SoftHSMv2 forgot private objects' handles)
    expect(verifies(await hsm.sign(sessions[0]!, ECDSA, key, DIGEST, 64))).toBe(true);
  });
});
