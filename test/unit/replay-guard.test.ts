import { describe, expect, it } from 'vitest';
import { nonceId, ReplayCheck, ReplayGuard, type SharedVerdict } from '../../src/http/auth/replay-guard.js';

const TTL = 30 * 60 * 1000;

/** The old question, on the new guard: accepted (and now remembered)? The access key doubles as the account. */
const accepts = (guard: ReplayGuard, accessKeyId: string, nonce: string, keepMs?: number): boolean =>
  guard.claim(accessKeyId, nonceId(accessKeyId, nonce), keepMs) === 'fresh';

/** A clock the test moves by hand. */
function manualClock(start = 1_700_000_000_000) {
  let t = start;
  return {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
  };
}

describe('ReplayGuard', () => {
  it('when 300,000 distinct nonces arrive (hashed keys), then every one is accepted and every replay among them refused', () => {
    const guard = new ReplayGuard(TTL, { maxEntries: 1_000_000, now: manualClock().now });
    let accepted = 0;
    for (let i = 0; i < 300_000; i++) if (accepts(guard, 'LTAIaccess', `nonce-${i}`)) accepted++;
    let replaysAccepted = 0;
    for (let i = 0; i < 300_000; i += 97) if (accepts(guard, 'LTAIaccess', `nonce-${i}`)) replaysAccepted++;
    expect(accepted).toBe(300_000);
    expect(replaysAccepted).toBe(0);
    expect(guard.size).toBe(300_000);
  });

  it('when a nonce is seen for the first time, then it is accepted and remembered', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    expect(accepts(guard, 'ak1', 'n1')).toBe(true);
    expect(guard.size).toBe(1);
  });

  it('when the same nonce comes twice for the same access key, then the second is refused', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    expect(accepts(guard, 'ak1', 'n1')).toBe(true);
    clock.advance(1000);
    expect(accepts(guard, 'ak1', 'n1')).toBe(false);
  });

  it('when the same nonce comes for two access keys, then both are accepted', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    expect(accepts(guard, 'ak1', 'n1')).toBe(true);
    expect(accepts(guard, 'ak2', 'n1')).toBe(true);
  });

  it('when access key and nonce would concatenate to the same text, then they are still told apart', () => {
    expect(nonceId('ab', 'c')).not.toBe(nonceId('a', 'bc'));
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: manualClock().now });
    expect(guard.claim('acct', nonceId('ab', 'c'))).toBe('fresh');
    expect(guard.claim('acct', nonceId('a', 'bc'))).toBe('fresh');
  });

  it('when the TTL has not fully passed, then the nonce is still refused', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    accepts(guard, 'ak1', 'n1');
    clock.advance(TTL - 1);
    expect(accepts(guard, 'ak1', 'n1')).toBe(false);
  });

  it('when the TTL has passed, then the nonce is forgotten and accepted again', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    accepts(guard, 'ak1', 'n1');
    clock.advance(TTL);
    expect(accepts(guard, 'ak1', 'n1')).toBe(true);
    expect(guard.size).toBe(1);
  });

  it('when time passes, then only the expired entries are pruned', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    accepts(guard, 'ak1', 'old');
    clock.advance(TTL / 2);
    accepts(guard, 'ak1', 'young');
    clock.advance(TTL / 2);
    expect(accepts(guard, 'ak1', 'other')).toBe(true);
    expect(guard.size).toBe(2);
    expect(accepts(guard, 'ak1', 'young')).toBe(false);
    expect(accepts(guard, 'ak1', 'old')).toBe(true);
  });

  it('when maxEntries is reached, then new nonces are refused rather than old ones forgotten', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 3, now: clock.now });
    expect(['n1', 'n2', 'n3'].map((n) => accepts(guard, 'ak1', n))).toEqual([true, true, true]);
    expect(accepts(guard, 'ak1', 'n4')).toBe(false);
    expect(accepts(guard, 'ak2', 'n4')).toBe(false);
    expect(accepts(guard, 'ak1', 'n1')).toBe(false);
    expect(guard.size).toBe(3);
  });

  it('when the guard was full and the oldest entries expire, then new nonces are accepted again', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 2, now: clock.now });
    accepts(guard, 'ak1', 'n1');
    accepts(guard, 'ak1', 'n2');
    expect(accepts(guard, 'ak1', 'n3')).toBe(false);
    clock.advance(TTL);
    expect(accepts(guard, 'ak1', 'n3')).toBe(true);
  });

  it('when a refused (full) nonce is retried later, then it was not remembered by the refusal', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 1, now: clock.now });
    accepts(guard, 'ak1', 'n1');
    expect(accepts(guard, 'ak1', 'n2')).toBe(false);
    clock.advance(TTL);
    expect(accepts(guard, 'ak1', 'n2')).toBe(true);
  });

  it('when the request says how long its timestamp stays in the window, then its nonce is kept that long, not the whole TTL', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    const window = TTL / 2;
    accepts(guard, 'ak1', 'n1', window + 1);
    clock.advance(window);
    expect(accepts(guard, 'ak1', 'n1')).toBe(false); // the window's edge: still refused
    clock.advance(1000); // expiries are whole seconds, rounded up: forgotten a little late, never early
    expect(accepts(guard, 'ak1', 'n1', window + 1)).toBe(true);
  });

  it('when a request asks to be kept longer than the TTL, then the TTL wins', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    accepts(guard, 'ak1', 'n1', 10 * TTL);
    clock.advance(TTL);
    expect(accepts(guard, 'ak1', 'n1')).toBe(true);
  });

  it('when an entry behind a live one has expired, then it is dropped later, never early', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { maxEntries: 100, now: clock.now });
    accepts(guard, 'ak1', 'late', 1000);
    accepts(guard, 'ak1', 'early', 10);
    clock.advance(500);
    expect(accepts(guard, 'ak1', 'late')).toBe(false);
    expect(guard.size).toBe(2); // "early" expired but waits behind "late"
    clock.advance(500);
    expect(accepts(guard, 'ak1', 'x')).toBe(true);
    expect(guard.size).toBe(1);
  });
});


describe('ReplayGuard capacity per account', () => {
  it('when one account has filled its share, then its new nonces are refused (full) and another account is still accepted', () => {
    const guard = new ReplayGuard(TTL, { maxEntries: 10, maxEntriesPerAccount: 4, now: manualClock().now });
    expect([1, 2, 3, 4, 5].map((i) => guard.claim('flooder', i))).toEqual(['fresh', 'fresh', 'fresh', 'fresh', 'full']);
    expect(guard.claim('flooder', 1)).toBe('used');
    expect([11, 12, 13, 14].map((i) => guard.claim('quiet', i))).toEqual(['fresh', 'fresh', 'fresh', 'fresh']);
    expect(guard.size).toBe(8);
  });

  it('when a claimed nonce is released (its request was throttled), then it no longer counts and may be claimed again', () => {
    const guard = new ReplayGuard(TTL, { maxEntries: 10, maxEntriesPerAccount: 1, now: manualClock().now });
    expect(guard.claim('a', 1)).toBe('fresh');
    expect(guard.claim('a', 2)).toBe('full');
    guard.release('a', 1);
    expect(guard.size).toBe(0);
    expect(guard.claim('a', 2)).toBe('fresh');
    expect(guard.claim('a', 1)).toBe('full');
  });

  it('when ids are restored (from a journal), then they are refused until they expire and listed with their expiry', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { now: clock.now });
    guard.restore({ account: 'a', id: 7, expiresAtMs: clock.now() + 5000 });
    guard.restore({ account: 'a', id: 8, expiresAtMs: clock.now() - 1 }); // expired already: not taken
    expect(guard.size).toBe(1);
    expect([...guard.entries()]).toEqual([{ account: 'a', id: 7, expiresAtMs: clock.now() + 5000 }]);
    expect(guard.claim('a', 7)).toBe('used');
    clock.advance(5000);
    expect(guard.claim('a', 7)).toBe('fresh');
  });

  it('when an idle account\'s nonces expire, then the sweep drops them though nobody asks about that account', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, { now: clock.now });
    guard.claim('idle', 1, 1000);
    clock.advance(2000);
    guard.claim('busy', 2);
    expect(guard.size).toBe(1);
  });
});

describe('ReplayCheck', () => {
  const caller = (nonce = 'n1') => ({ accessKeyId: 'ak1', account: 'acct', nonce, nonceKeepMs: 60_000 });
  /** A shared store as Redis answers it; `answer` overrides the verdict, `down` makes every call fail. */
  const store = (options: { down?: boolean; answer?: SharedVerdict } = {}) => {
    const ids = new Set<number>();
    const released: number[] = [];
    let calls = 0;
    return {
      calls: () => calls,
      released,
      async claim({ id }: { id: number }): Promise<SharedVerdict> {
        calls++;
        if (options.down) throw new Error('Command timed out');
        if (options.answer) return options.answer;
        if (ids.has(id)) return 'used';
        ids.add(id);
        return 'fresh';
      },
      release(_account: string, id: number) {
        released.push(id);
        ids.delete(id);
      },
    };
  };
  const guard = () => new ReplayGuard(TTL);

  it('when this replica has seen the nonce, then it throws SignatureNonceUsed at once, without asking the shared store', async () => {
    const shared = store();
    const check = new ReplayCheck(guard(), { shared });
    await check.check(caller(), false).settled;
    expect(() => check.check(caller(), false)).toThrow(expect.objectContaining({ code: 'SignatureNonceUsed' }));
    expect(shared.calls()).toBe(1);
  });

  it('when another replica has seen the nonce, then the claim rejects with SignatureNonceUsed (the cloud\'s message)', async () => {
    const shared = store();
    await new ReplayCheck(guard(), { shared }).check(caller(), false).settled;
    const elsewhere = new ReplayCheck(guard(), { shared });
    await expect(elsewhere.check(caller(), false).settled).rejects.toMatchObject({ code: 'SignatureNonceUsed', message: 'Specified signature nonce was used already.' });
  });

  it('when the shared store does not answer (default: refuse), then signing and state-changing requests alike get 503', async () => {
    const check = new ReplayCheck(guard(), { shared: store({ down: true }) });
    await expect(check.check(caller('a'), false).settled).rejects.toMatchObject({ code: 'ServiceUnavailableTemporary', status: 503 });
    await expect(check.check(caller('b'), true).settled).rejects.toMatchObject({ code: 'ServiceUnavailableTemporary' });
  });

  it('when the shared store does not answer and the operator chose local, then signing passes on this replica\'s word and a state change is still refused', async () => {
    const check = new ReplayCheck(guard(), { shared: store({ down: true }), whenSharedStoreDown: 'local' });
    await expect(check.check(caller('a'), false).settled).resolves.toBeUndefined();
    await expect(check.check(caller('b'), true).settled).rejects.toMatchObject({ code: 'ServiceUnavailableTemporary' });
    expect(() => check.check(caller('a'), false)).toThrow(expect.objectContaining({ code: 'SignatureNonceUsed' }));
  });

  it('when the shared store lost its data lately (unsure), then the request is refused like a store that does not answer', async () => {
    const check = new ReplayCheck(guard(), { shared: store({ answer: 'unsure' }), whenSharedStoreDown: 'local' });
    await expect(check.check(caller('a'), true).settled).rejects.toMatchObject({ code: 'ServiceUnavailableTemporary' });
    await expect(check.check(caller('b'), false).settled).resolves.toBeUndefined();
  });

  it('when a claim is released (the request was throttled), then both the local and the shared store forget it', async () => {
    const shared = store();
    const check = new ReplayCheck(guard(), { shared });
    const claim = check.check(caller(), false);
    await claim.settled;
    claim.release();
    await new Promise((r) => setImmediate(r));
    expect(shared.released).toEqual([nonceId('ak1', 'n1')]);
    await expect(check.check(caller(), false).settled).resolves.toBeUndefined();
  });

  it('when the journal cannot be written, then the request is refused with 503, never let through unrecorded', async () => {
    const check = new ReplayCheck(guard(), { journal: { append: () => Promise.reject(new Error('ENOSPC')) } });
    await expect(check.check(caller(), false).settled).rejects.toMatchObject({ code: 'ServiceUnavailableTemporary' });
  });
});
