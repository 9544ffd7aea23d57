import pkcs11js from 'pkcs11js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ckrCode, ckrName, classifyCkr } from '../../src/hsm/ckr.js';
import { HsmKeyNotPermittedError, HsmObjectNotFoundError, HsmOperationError, HsmUnavailableError } from '../../src/hsm/errors.js';
import { catalogued } from '../../src/operations/errors.js';
import { reactionTo } from '../../src/hsm/failure-model.js';
import { Token, type TokenOptions } from '../../src/hsm/token.js';
import { ckrError, FAKE_LABEL, FAKE_PIN, FakePkcs11 } from '../helpers/fake-pkcs11.js';

// The PKCS#11 failure model, rule by rule, over a scripted module: each test fails if its rule is deleted.
const KEY = { label: 'k1', id: '01' };
const MECH = { mechanism: pkcs11js.CKM_ECDSA };
const DATA = Buffer.from('digest');
const SIGNED = Buffer.concat([Buffer.from('sig:'), DATA]);
const quiet = { info: () => {}, warn: () => {}, error: () => {} };

let token: Token | undefined;
afterEach(async () => {
  vi.useRealTimers();
  // Forgotten first: a token whose close never ends (a mutant without deadlines) holds up one hook, not every later one.
  const closing = token;
  token = undefined;
  await closing?.close();
});

function open(fake: FakePkcs11, options: Partial<TokenOptions> = {}): Token {
  token = new Token(
    { name: 'default', modulePath: '/fake.so', tokenLabel: FAKE_LABEL, pin: FAKE_PIN, sessions: 1, acquireTimeoutMs: 1000, healthIntervalMs: 0, ...options },
    quiet,
    fake.asModule(),
    () => fake.asAsync(),
  );
  token.open();
  expect(token.preload([KEY]).missing).toEqual([]);
  return token;
}

/** Waits (real time, a few ms at a time) until the condition holds. */
async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((r) => setTimeout(r, 2));
  expect(condition()).toBe(true);
}

/** The calls made from now on. */
function callsDuring(fake: FakePkcs11): () => string[] {
  const from = fake.calls.length;
  return () => fake.calls.slice(from);
}

describe('the rules as a table (failure-model.ts)', () => {
  it.each([
    ['CKR_DATA_LEN_RANGE', pkcs11js.CKR_DATA_LEN_RANGE, 'keep', false, 'fine', false],
    ['CKR_MECHANISM_INVALID', pkcs11js.CKR_MECHANISM_INVALID, 'keep', false, 'fine', false],
    ['CKR_KEY_FUNCTION_NOT_PERMITTED', pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED, 'keep', false, 'fine', false],
    ['CKR_SESSION_HANDLE_INVALID', pkcs11js.CKR_SESSION_HANDLE_INVALID, 'replace', false, 'probe', true],
    ['CKR_SESSION_CLOSED', pkcs11js.CKR_SESSION_CLOSED, 'replace', false, 'probe', true],
    ['CKR_OPERATION_ACTIVE', pkcs11js.CKR_OPERATION_ACTIVE, 'replace', false, 'probe', true],
    ['CKR_USER_NOT_LOGGED_IN', pkcs11js.CKR_USER_NOT_LOGGED_IN, 'keep', false, 'probe', true],
    ['CKR_OBJECT_HANDLE_INVALID', pkcs11js.CKR_OBJECT_HANDLE_INVALID, 'replace', true, 'probe', true],
    ['CKR_KEY_HANDLE_INVALID', pkcs11js.CKR_KEY_HANDLE_INVALID, 'replace', true, 'probe', true],
    ['CKR_DEVICE_ERROR', pkcs11js.CKR_DEVICE_ERROR, 'replace', false, 'probe', true],
    ['CKR_GENERAL_ERROR', pkcs11js.CKR_GENERAL_ERROR, 'replace', false, 'probe', true],
    ['CKR_DEVICE_REMOVED', pkcs11js.CKR_DEVICE_REMOVED, 'replace', false, 'probe', true],
    ['CKR_PIN_INCORRECT', pkcs11js.CKR_PIN_INCORRECT, 'replace', false, 'down-for-good', false],
    ['CKR_PIN_LOCKED', pkcs11js.CKR_PIN_LOCKED, 'replace', false, 'down-for-good', false],
  ] as const)('when an operation fails with %s (%i), then the session is %s, handles dropped: %s, token: %s, retried: %s', (_name, ckr, session, dropHandles, verdict, retry) => {
    const r = reactionTo(ckrError(ckr));
    expect(ckrName(ckr)).toBe(_name);
    expect({ session: r.session, dropHandles: r.dropHandles, token: r.token, retry: r.error.retryable }).toEqual({ session, dropHandles, token: verdict, retry });
    expect(r.error.ckr).toBe(ckr);
  });

  it('when the key is not on the token, then the session is kept and nothing is retried', () => {
    const err = new HsmObjectNotFoundError('no private key labelled "x"');
    expect(reactionTo(err)).toMatchObject({ session: 'keep', dropHandles: false, token: 'fine', error: err });
  });

  it('when a call fails with something that is not a PKCS#11 error, then the session is replaced and nothing is retried', () => {
    const r = reactionTo(new TypeError('bad'));
    expect(r).toMatchObject({ session: 'replace', token: 'fine' });
    expect(r.error).toBeInstanceOf(HsmOperationError);
    expect(r.error.retryable).toBe(false);
  });
});

describe('data errors: keep the session, do not retry', () => {
  it('when C_Sign answers CKR_DATA_LEN_RANGE, then the caller gets the refusal, the same session signs next, nothing is retried', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.failNext('C_Sign', pkcs11js.CKR_DATA_LEN_RANGE);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmOperationError);
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(1);
    expect(calls()).not.toContain('C_CloseSession');
    expect(calls()).not.toContain('C_OpenSession');
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(t.status().ok).toBe(true);
  });

  it('when a verify fails on the signature, then it answers false and keeps the session', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    const calls = callsDuring(fake);
    await expect(t.verify(KEY, MECH, DATA, Buffer.from('forged'))).resolves.toBe(false);
    await expect(t.verify(KEY, MECH, DATA, SIGNED)).resolves.toBe(true);
    expect(calls()).not.toContain('C_CloseSession');
  });
});

describe('a key the token does not permit to sign (CKA_SIGN false: disabled by another replica or the CLI)', () => {
  it('when C_SignInit answers CKR_KEY_FUNCTION_NOT_PERMITTED, then the caller gets Rejected.Disabled (409), the session is kept, nothing is retried or probed, and the token stays up', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.failNext('C_SignInit', pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED);
    const calls = callsDuring(fake);
    const err = await t.sign(KEY, MECH, DATA, 64).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HsmKeyNotPermittedError);
    expect((err as HsmKeyNotPermittedError).retryable).toBe(false);
    expect(catalogued(err)).toMatchObject({ code: 'Rejected.Disabled', status: 409 });
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(1);
    for (const fn of ['C_CloseSession', 'C_OpenSession', 'C_GetTokenInfo', 'C_Login']) expect(calls()).not.toContain(fn);
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when setSigning(false) turns CKA_SIGN off, then every sign is refused as disabled with the token up, and setSigning(true) lets the key sign again', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 2 });
    await expect(t.setSigning([KEY], false)).resolves.toEqual({ changed: 1, unchanged: 0, missing: 0 });
    const refused = await Promise.all([1, 2, 3, 4].map(() => t.sign(KEY, MECH, DATA, 64).catch((e: unknown) => catalogued(e)?.code)));
    expect(refused).toEqual(['Rejected.Disabled', 'Rejected.Disabled', 'Rejected.Disabled', 'Rejected.Disabled']);
    expect(t.status().ok).toBe(true);
    await expect(t.signingAllowed([KEY])).resolves.toEqual([false]);
    await expect(t.setSigning([KEY], false)).resolves.toEqual({ changed: 0, unchanged: 1, missing: 0 });
    await expect(t.setSigning([KEY], true)).resolves.toEqual({ changed: 1, unchanged: 0, missing: 0 });
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when the module refuses to change CKA_SIGN (CKR_ATTRIBUTE_READ_ONLY), then setSigning rejects with that CKR, the token stays up, and the key still signs', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.setAttributeRefuses = pkcs11js.CKR_ATTRIBUTE_READ_ONLY;
    await expect(t.setSigning([KEY], false)).rejects.toThrow(/CKR_ATTRIBUTE_READ_ONLY/);
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });
});

describe('session errors: replace the session, the shared probe, retry once', () => {
  it('when C_SignInit answers CKR_SESSION_HANDLE_INVALID once, then the session is replaced, the probe passes, the sign succeeds on the fresh session and the token stays up', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.failNext('C_SignInit', pkcs11js.CKR_SESSION_HANDLE_INVALID);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(2);
    // The probe: its own session, opened, asked and closed.
    expect(calls().filter((c) => c === 'C_GetSessionInfo')).toHaveLength(1);
    // The broken session and the probe's closed; the replacement and the probe's opened.
    expect(calls().filter((c) => c === 'C_CloseSession')).toHaveLength(2);
    expect(calls().filter((c) => c === 'C_OpenSession')).toHaveLength(2);
    expect(calls()).not.toContain('C_Login');
    expect(t.status().ok).toBe(true);
  });

  it('when every session fails at once, then one probe answers them all', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 4 });
    fake.failNext('C_SignInit', pkcs11js.CKR_SESSION_HANDLE_INVALID, 4);
    const calls = callsDuring(fake);
    await expect(Promise.all(Array.from({ length: 4 }, () => t.sign(KEY, MECH, DATA, 64)))).resolves.toEqual([SIGNED, SIGNED, SIGNED, SIGNED]);
    expect(calls().filter((c) => c === 'C_GetTokenInfo')).toHaveLength(1);
  });

  it('when the fresh session fails too, then the caller gets 503-class after exactly two tries and the token stays up', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.failNext('C_SignInit', pkcs11js.CKR_SESSION_HANDLE_INVALID, 3);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(2);
    expect(t.status().ok).toBe(true);
  });

  it('when every session is gone and the replacement of the first is slow to open, then the retry runs on a session opened for it, not on another idle one (dead too)', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 3 });
    await t.sign(KEY, MECH, DATA, 64);
    fake.dropSessions();
    const openReplacement = fake.hangNext('openSession');
    const calls = callsDuring(fake);
    try {
      await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    } finally {
      openReplacement();
    }
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(2);
    expect(t.status().ok).toBe(true);
  });

  it('when the emulated module invalidates every session, then the next sign succeeds without a 5xx', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 2 });
    fake.failNext('C_SignInit', pkcs11js.CKR_SESSION_HANDLE_INVALID, 1);
    await expect(Promise.all([t.sign(KEY, MECH, DATA, 64), t.sign(KEY, MECH, DATA, 64)])).resolves.toEqual([SIGNED, SIGNED]);
  });
});

describe('stale handles: drop the handle cache, find the key again, retry once', () => {
  it('when the token renumbers its objects, then the key is found again and the sign succeeds', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.renumberObjects();
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(calls()).toContain('C_FindObjectsInit');
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(2);
    expect(t.status().ok).toBe(true);
  });
});

describe('handle lookups', () => {
  it('when a handle was found again after going stale, then the next sign uses it without a search', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.renumberObjects();
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(calls()).not.toContain('C_FindObjectsInit');
  });

  it('when a key is missing and then appears on the token, then it is found (a miss is not remembered)', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    const k2 = { label: 'k2', id: '02' };
    await expect(t.sign(k2, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmObjectNotFoundError);
    fake.addKeyPair('k2', Buffer.from('02', 'hex'));
    await expect(t.sign(k2, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when a search finds nothing and the token then fails its check, then the caller gets 503-class, not "no such key" (a store that went away hides every key)', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 60_000 });
    fake.failNext('C_GetTokenInfo', pkcs11js.CKR_DEVICE_ERROR);
    await expect(t.sign({ label: 'k2', id: '02' }, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(t.status().ok).toBe(false);
  });
});

describe('re-initializing to see objects other processes wrote (tpm2-pkcs11 reads its store at C_Initialize)', () => {
  it('when the module is re-initialized, then a sign in flight finishes first, signs that arrive meanwhile wait and succeed, the key another process made is found, and the calls run as async jobs', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 2 });
    const k2 = { label: 'k2', id: '02' };
    fake.addKeyPairFromAnotherProcess('k2', Buffer.from('02', 'hex'));
    await expect(t.sign(k2, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmObjectNotFoundError);
    const release = fake.hangNext('C_Sign');
    const inFlight = t.sign(KEY, MECH, DATA, 64);
    await until(() => fake.hanging === 1);
    const calls = callsDuring(fake);
    const reopening = t.reinitialize('a registry record names a key the token does not show');
    const held = [t.sign(k2, MECH, DATA, 64), t.sign(KEY, MECH, DATA, 64)];
    await new Promise((r) => setTimeout(r, 20));
    // Drained first: nothing is finalized under the sign in flight, and the new signs wait rather than fail.
    expect(calls()).not.toContain('reinitialize');
    expect(t.stats().inUse).toBe(1);
    release();
    await expect(inFlight).resolves.toEqual(SIGNED);
    await reopening;
    await expect(Promise.all(held)).resolves.toEqual([SIGNED, SIGNED]);
    expect(t.status().ok).toBe(true);
    expect(t.initializations).toBe(2);
    // Finalize and initialize inside the one job (the fake's reinitialize), no main-thread load or slot listing.
    const made = calls();
    expect(made.indexOf('reinitialize')).toBeGreaterThanOrEqual(0);
    expect(made.slice(made.indexOf('reinitialize'), made.indexOf('reinitialize') + 3)).toEqual(['reinitialize', 'C_Finalize', 'C_Initialize']);
    expect(made).not.toContain('load');
    expect(made).not.toContain('C_GetSlotList');
  });

  it('when the re-initialization fails, then the token is down and its recovery takes over', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 100 });
    // Three attempts, 20 ms apart (a module busy for a moment is not down): all fail.
    fake.failNext('C_Initialize', pkcs11js.CKR_DEVICE_ERROR, 3);
    const reinitialized = t.reinitialize('test');
    const failed = expect(reinitialized).rejects.toThrow();
    await vi.advanceTimersByTimeAsync(50);
    await failed;
    expect(t.status().ok).toBe(false);
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    await vi.advanceTimersByTimeAsync(100);
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });
});

describe('re-initializing to see objects other processes wrote: a module busy for a moment', () => {
  it('when C_Initialize fails once (SoftHSMv2 while another process writes), then the next attempt 20 ms later serves and the token never goes down', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 100 });
    fake.failNext('C_Initialize', pkcs11js.CKR_TOKEN_NOT_PRESENT);
    const reinitialized = t.reinitialize('test');
    await vi.advanceTimersByTimeAsync(25);
    await expect(reinitialized).resolves.toBeUndefined();
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });
});

describe('device-class errors: a probe on a fresh session decides', () => {
  it('when one sign answers CKR_GENERAL_ERROR and the token passes its probe, then the token stays up and the sign is retried once', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.failNext('C_Sign', pkcs11js.CKR_GENERAL_ERROR);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(calls()).toContain('C_GetSessionInfo');
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(2);
    expect(t.status().ok).toBe(true);
    expect(calls()).not.toContain('C_Finalize');
  });

  it('when the device is gone, then the token is marked down and later requests get 503 without a PKCS#11 call', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 60_000, sessions: 2 });
    fake.deviceError = pkcs11js.CKR_DEVICE_ERROR;
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(t.status()).toEqual({ ok: false, detail: 'down: CKR_DEVICE_ERROR' });
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(calls()).toEqual([]);
  });

  it('when the token is down, then it re-initializes off the event loop with doubling backoff until the device answers, and serves, finding its keys again on first use', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 100, recoveryMaxDelayMs: 400 });
    fake.deviceError = pkcs11js.CKR_DEVICE_ERROR;
    expect((await t.probe()).ok).toBe(false);
    const inits = (): number => fake.count('C_Initialize');
    const before = inits();
    await vi.advanceTimersByTimeAsync(99);
    expect(inits()).toBe(before);
    await vi.advanceTimersByTimeAsync(1); // 100 ms: first try
    expect(inits()).toBe(before + 1);
    await vi.advanceTimersByTimeAsync(199);
    expect(inits()).toBe(before + 1);
    await vi.advanceTimersByTimeAsync(1); // +200 ms: second try
    expect(inits()).toBe(before + 2);
    await vi.advanceTimersByTimeAsync(400); // +400 ms: third try (the cap)
    expect(inits()).toBe(before + 3);
    await vi.advanceTimersByTimeAsync(400); // +400 ms again: capped, not 800
    expect(inits()).toBe(before + 4);
    fake.deviceError = undefined;
    fake.renumberObjects();
    const recovery = callsDuring(fake);
    await vi.advanceTimersByTimeAsync(400);
    expect(t.status().ok).toBe(true);
    // Every try was the one-job re-initialization (finalize + initialize + slot), never pkcs11js's on the main thread.
    expect(fake.count('reinitialize')).toBe(fake.count('C_Initialize') - 1);
    expect(recovery()).not.toContain('load');
    expect(recovery()).not.toContain('C_GetSlotList');
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    // The handles went with the re-initialization: the first sign found the key again (one search), the next none.
    expect(calls().filter((c) => c === 'C_FindObjectsInit')).toHaveLength(1);
    const next = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(next()).not.toContain('C_FindObjectsInit');
  });

  it('when the backend behind the library is lost (signing and random fail on every fresh session, the probe\'s session and login still work), then the probe finds that the token cannot compute: down, 503 without a call, and re-initialized with backoff until the backend is back', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 2, recoveryMinDelayMs: 100, recoveryMaxDelayMs: 400 });
    fake.loseBackend();
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(t.status()).toEqual({ ok: false, detail: 'down: CKR_GENERAL_ERROR' });
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(calls()).toEqual([]);
    // Away: every try fails at C_Initialize, and the backoff grows.
    await vi.advanceTimersByTimeAsync(100 + 200 + 400);
    expect(fake.count('reinitialize')).toBe(3);
    expect(t.status().ok).toBe(false);
    fake.restoreBackend();
    await vi.advanceTimersByTimeAsync(400);
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(fake.count('reinitialize')).toBe(4);
  });

  it('when the backend is back before the token is marked down, then only the re-initialization cures it: a sign meets the lost backend, the probe confirms, the recovery re-initializes, and signing works', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 100 });
    fake.loseBackend();
    fake.restoreBackend();
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(t.status().ok).toBe(false);
    await vi.advanceTimersByTimeAsync(100);
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when a recovery initializes and logs in but the token still cannot compute, then it does not serve yet: the next try, after the backoff, does', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 100 });
    fake.deviceError = pkcs11js.CKR_DEVICE_ERROR;
    expect((await t.probe()).ok).toBe(false);
    fake.deviceError = undefined;
    fake.failNext('C_GenerateRandom', pkcs11js.CKR_DEVICE_ERROR);
    await vi.advanceTimersByTimeAsync(100);
    expect(fake.count('reinitialize')).toBe(1);
    expect(t.status()).toEqual({ ok: false, detail: 'down: recovering: CKR_DEVICE_ERROR' });
    await vi.advanceTimersByTimeAsync(200);
    expect(fake.count('reinitialize')).toBe(2);
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when the probe\'s C_GenerateRandom is not supported (no generator, or not without a login), then that says nothing: the token stays up', async () => {
    for (const ckr of [pkcs11js.CKR_FUNCTION_NOT_SUPPORTED, pkcs11js.CKR_RANDOM_NO_RNG, pkcs11js.CKR_USER_NOT_LOGGED_IN]) {
      const fake = new FakePkcs11();
      const t = open(fake);
      fake.failNext('C_GenerateRandom', ckr);
      expect(await t.probe()).toEqual({ ok: true, detail: 'ok' });
      await t.close();
    }
  });

  it('when an admin call fails with CKR_GENERAL_ERROR and the probe passes, then the error is the caller\'s and signing goes on', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    await expect(t.admin(() => Promise.reject(ckrError(pkcs11js.CKR_GENERAL_ERROR)))).rejects.toMatchObject({ code: pkcs11js.CKR_GENERAL_ERROR });
    expect(t.status().ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when an admin call fails and the probe fails too, then the caller gets 503-class and the token is down', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 60_000 });
    await expect(
      t.admin(() => {
        fake.deviceError = pkcs11js.CKR_DEVICE_ERROR;
        throw ckrError(pkcs11js.CKR_DEVICE_ERROR);
      }),
    ).rejects.toBeInstanceOf(HsmUnavailableError);
    expect(t.status().ok).toBe(false);
  });

});

describe('a lost login: log in again once, on a fresh session, shared by every caller', () => {
  it('when the token forgets the login while sessions stay open, then the probe logs in again once on a fresh anchor, without a re-initialization, and the token stays up', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.dropLogin();
    const calls = callsDuring(fake);
    expect(await t.probe()).toEqual({ ok: true, detail: 'ok' });
    expect(calls().filter((c) => c === 'C_Login')).toHaveLength(1);
    expect(calls()).not.toContain('C_Initialize');
    expect(fake.isLoggedIn).toBe(true);
    expect(t.initializations).toBe(1);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when a sign meets CKR_USER_NOT_LOGGED_IN, then the gateway logs in again once and the sign succeeds on its retry', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.dropLogin();
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(calls().filter((c) => c === 'C_Login')).toHaveLength(1);
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(2);
    expect(t.status().ok).toBe(true);
  });

  it('when C_SignInit answers CKR_USER_NOT_LOGGED_IN but the login is alive, then the probe finds it so, nobody logs in, and the sign is retried on the same session', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.failNext('C_SignInit', pkcs11js.CKR_USER_NOT_LOGGED_IN);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(calls()).not.toContain('C_Login');
    // Only the probe's own session was opened and closed: the signing session was kept.
    expect(calls().filter((c) => c === 'C_OpenSession')).toHaveLength(1);
    expect(calls().filter((c) => c === 'C_CloseSession')).toHaveLength(1);
  });

  it('when the HSM restarts (every session, the login and the handles gone), then the next requests all succeed: one probe, one login, fresh sessions, keys found again', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 4 });
    fake.restart();
    const calls = callsDuring(fake);
    await expect(Promise.all(Array.from({ length: 10 }, () => t.sign(KEY, MECH, DATA, 64)))).resolves.toEqual(Array.from({ length: 10 }, () => SIGNED));
    expect(calls().filter((c) => c === 'C_Login')).toHaveLength(1);
    expect(calls()).not.toContain('C_Initialize');
    expect(t.status().ok).toBe(true);
    // The new anchor serves the start-up-style work (registry refreshes find keys on it).
    fake.addKeyPair('k2', Buffer.from('02', 'hex'));
    expect(t.preload([{ label: 'k2', id: '02' }]).missing).toEqual([]);
  });

  it('when the HSM restarts and one request notices, then the idle sessions are renewed with the login: the next requests meet no dead session', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 4 });
    fake.restart();
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    await new Promise((r) => setTimeout(r, 10));
    const after = callsDuring(fake);
    await expect(Promise.all(Array.from({ length: 4 }, () => t.sign(KEY, MECH, DATA, 64)))).resolves.toHaveLength(4);
    expect(after().filter((c) => c === 'C_SignInit')).toHaveLength(4);
    expect(after()).not.toContain('C_GetTokenInfo');
  });

  it('when the login is restored, then the cached handles are dropped and the key is searched again on the new login', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.dropLogin();
    expect((await t.probe()).ok).toBe(true);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(calls().filter((c) => c === 'C_FindObjectsInit')).toHaveLength(1);
    expect(calls().filter((c) => c === 'C_SignInit')).toHaveLength(1);
  });

  it('when many requests meet the lost login at once, then exactly one login runs, and requests that arrive meanwhile wait for it instead of calling the token', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { sessions: 2 });
    fake.dropLogin();
    const release = fake.hangNext('C_Login');
    const logins = fake.count('C_Login');
    const first = Array.from({ length: 6 }, () => t.sign(KEY, MECH, DATA, 64));
    await until(() => fake.hanging === 1);
    const during = callsDuring(fake);
    const late = t.sign(KEY, MECH, DATA, 64);
    await new Promise((r) => setTimeout(r, 20));
    expect(during().filter((c) => c === 'C_SignInit' || c === 'C_FindObjectsInit' || c === 'C_Login')).toEqual([]);
    expect(fake.count('C_Login')).toBe(logins);
    release();
    await expect(Promise.all([...first, late])).resolves.toEqual(Array.from({ length: 7 }, () => SIGNED));
    expect(fake.count('C_Login')).toBe(logins + 1);
  });

  it('when the login hangs past operationTimeoutMs, then a request waiting for it is answered 503 at its deadline and releases its session', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { operationTimeoutMs: 50, acquireTimeoutMs: 5000 });
    fake.dropLogin();
    const release = fake.hangNext('C_Login');
    const probing = t.probe();
    await until(() => fake.hanging === 1);
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toThrow(/did not answer within 50 ms/);
    expect(t.stats().inUse).toBe(0);
    release();
    expect((await probing).ok).toBe(true);
    await expect(t.sign(KEY, MECH, DATA, 64)).resolves.toEqual(SIGNED);
  });

  it('when a key that is not cached yet is searched on a session without the login, then the miss is checked by the probe, the login restored, and the search retried', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.addKeyPair('k2', Buffer.from('02', 'hex'));
    fake.dropLogin();
    await expect(t.sign({ label: 'k2', id: '02' }, MECH, DATA, 64)).resolves.toEqual(SIGNED);
    expect(fake.isLoggedIn).toBe(true);
  });

  it('when the login is lost again soon after the gateway logged in again, then it logs in no more by itself: the token is down and recovery, with its backoff, takes over', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 100, recoveryMaxDelayMs: 1000 });
    fake.dropLogin();
    expect((await t.probe()).ok).toBe(true);
    const logins = fake.count('C_Login');
    await vi.advanceTimersByTimeAsync(500);
    fake.dropLogin();
    expect((await t.probe()).ok).toBe(false);
    expect(fake.count('C_Login')).toBe(logins);
    expect(t.status().detail).toMatch(/lost again/);
    await vi.advanceTimersByTimeAsync(100);
    // The recovery: a re-initialization and its own login.
    expect(fake.count('C_Login')).toBe(logins + 1);
    expect(t.initializations).toBe(2);
    expect(t.status().ok).toBe(true);
  });

  it('when the login is lost again after the interval, then the gateway logs in again by itself', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMaxDelayMs: 1000 });
    fake.dropLogin();
    expect((await t.probe()).ok).toBe(true);
    await vi.advanceTimersByTimeAsync(1000);
    fake.dropLogin();
    const logins = fake.count('C_Login');
    expect((await t.probe()).ok).toBe(true);
    expect(fake.count('C_Login')).toBe(logins + 1);
    expect(t.initializations).toBe(1);
  });
});

describe('PIN errors: down for good, never a second login', () => {
  it('when the login is lost and logging in again is refused, then the token is down for good: no third login, however long we wait', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 10, recoveryMaxDelayMs: 20 });
    fake.pin = 'changed';
    fake.dropLogin();
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    // The start-up login and the one refused: nothing more.
    expect(fake.count('C_Login')).toBe(2);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(fake.count('C_Login')).toBe(2);
    expect(fake.count('C_Initialize')).toBe(1);
    expect(t.status()).toEqual({ ok: false, detail: 'down: CKR_PIN_INCORRECT (not retried)' });
  });

  it('when recovery\'s login is refused, then the token stays down and logs in no more, however long we wait', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 10, recoveryMaxDelayMs: 20 });
    fake.deviceError = pkcs11js.CKR_DEVICE_ERROR;
    expect((await t.probe()).ok).toBe(false);
    fake.deviceError = undefined;
    fake.pin = 'changed';
    const logins = fake.count('C_Login');
    await vi.advanceTimersByTimeAsync(10_000);
    expect(fake.count('C_Login')).toBe(logins + 1);
    expect(t.status().detail).toMatch(/not retried/);
  });

  it('when an operation answers CKR_PIN_EXPIRED, then the token is down for good without a login or a re-initialization', async () => {
    vi.useFakeTimers();
    const fake = new FakePkcs11();
    const t = open(fake, { recoveryMinDelayMs: 10 });
    fake.failNext('C_Sign', pkcs11js.CKR_PIN_EXPIRED);
    const calls = callsDuring(fake);
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toBeInstanceOf(HsmUnavailableError);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(calls()).not.toContain('C_Login');
    expect(calls()).not.toContain('C_Initialize');
    expect(t.status()).toEqual({ ok: false, detail: 'down: CKR_PIN_EXPIRED (not retried)' });
  });
});

describe('deadlines: 503 at the deadline, the session never lent twice', () => {
  it('when a sign hangs past operationTimeoutMs, then the caller gets 503 at the deadline and the session stays lent until the call returns', async () => {
    const fake = new FakePkcs11();
    const t = open(fake, { operationTimeoutMs: 50, acquireTimeoutMs: 5000 });
    const release = fake.hangNext('C_Sign');
    const started = Date.now();
    await expect(t.sign(KEY, MECH, DATA, 64)).rejects.toThrow(/did not answer within 50 ms/);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(t.stats().inUse).toBe(1);
    const second = t.sign(KEY, MECH, DATA, 64);
    await new Promise((r) => setTimeout(r, 20));
    expect(fake.count('C_SignInit')).toBe(1); // the second waits: the one session is still busy
    release();
    await expect(second).resolves.toEqual(SIGNED);
    expect(t.stats().inUse).toBe(0);
  });
});

describe('every CKR of PKCS#11 3.0 has its name', () => {
  it.each([
    [0x140, 'CKR_CURVE_NOT_SUPPORTED'],
    [0x201, 'CKR_TOKEN_RESOURCE_EXCEEDED'],
    [0x1b9, 'CKR_PUBLIC_KEY_INVALID'],
    [0x6, 'CKR_FUNCTION_FAILED'],
    [0x80000001, 'CKR_VENDOR_DEFINED+0x1'],
    [0x4711, 'CKR_0x00004711'],
  ])('when the code is 0x%s, then its name is %s', (code, name) => {
    expect(ckrName(code)).toBe(name);
  });

  it.each([
    ['CKR_CURVE_NOT_SUPPORTED', 'data'],
    ['CKR_TEMPLATE_INCONSISTENT', 'data'],
    ['CKR_ATTRIBUTE_VALUE_INVALID', 'data'],
    ['CKR_FUNCTION_FAILED', 'device'],
    ['CKR_GENERAL_ERROR', 'device'],
    ['CKR_TOKEN_RESOURCE_EXCEEDED', 'device'],
    ['CKR_USER_NOT_LOGGED_IN', 'session'],
  ] as const)('when a call answers %s, then it is a %s-class failure', (name, cls) => {
    expect(classifyCkr(ckrCode(name)!)).toBe(cls);
  });
});
