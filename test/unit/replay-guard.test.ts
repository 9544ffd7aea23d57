import { describe, expect, it } from 'vitest';
import { ReplayCheck, ReplayGuard, SharedReplayGuard } from '../../src/http/auth/replay-guard.js';

const TTL = 30 * 60 * 1000;

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
    const guard = new ReplayGuard(TTL, 1_000_000, manualClock().now);
    let accepted = 0;
    for (let i = 0; i < 300_000; i++) if (guard.checkAndRemember('LTAIaccess', `nonce-${i}`)) accepted++;
    let replaysAccepted = 0;
    for (let i = 0; i < 300_000; i += 97) if (guard.checkAndRemember('LTAIaccess', `nonce-${i}`)) replaysAccepted++;
    expect(accepted).toBe(300_000);
    expect(replaysAccepted).toBe(0);
    expect(guard.size).toBe(300_000);
  });

  it('when a nonce is seen for the first time, then it is accepted and remembered', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(true);
    expect(guard.size).toBe(1);
  });

  it('when the same nonce comes twice for the same access key, then the second is refused', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(true);
    clock.advance(1000);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(false);
  });

  it('when the same nonce comes for two access keys, then both are accepted', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(true);
    expect(guard.checkAndRemember('ak2', 'n1')).toBe(true);
  });

  it('when access key and nonce would concatenate to the same text, then they are still told apart', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    expect(guard.checkAndRemember('ab', 'c')).toBe(true);
    expect(guard.checkAndRemember('a', 'bc')).toBe(true);
  });

  it('when the TTL has not fully passed, then the nonce is still refused', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    guard.checkAndRemember('ak1', 'n1');
    clock.advance(TTL - 1);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(false);
  });

  it('when the TTL has passed, then the nonce is forgotten and accepted again', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    guard.checkAndRemember('ak1', 'n1');
    clock.advance(TTL);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(true);
    expect(guard.size).toBe(1);
  });

  it('when time passes, then only the expired entries are pruned', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    guard.checkAndRemember('ak1', 'old');
    clock.advance(TTL / 2);
    guard.checkAndRemember('ak1', 'young');
    clock.advance(TTL / 2);
    expect(guard.checkAndRemember('ak1', 'other')).toBe(true);
    expect(guard.size).toBe(2);
    expect(guard.checkAndRemember('ak1', 'young')).toBe(false);
    expect(guard.checkAndRemember('ak1', 'old')).toBe(true);
  });

  it('when maxEntries is reached, then new nonces are refused rather than old ones forgotten', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 3, clock.now);
    expect(['n1', 'n2', 'n3'].map((n) => guard.checkAndRemember('ak1', n))).toEqual([true, true, true]);
    expect(guard.checkAndRemember('ak1', 'n4')).toBe(false);
    expect(guard.checkAndRemember('ak2', 'n4')).toBe(false);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(false);
    expect(guard.size).toBe(3);
  });

  it('when the guard was full and the oldest entries expire, then new nonces are accepted again', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 2, clock.now);
    guard.checkAndRemember('ak1', 'n1');
    guard.checkAndRemember('ak1', 'n2');
    expect(guard.checkAndRemember('ak1', 'n3')).toBe(false);
    clock.advance(TTL);
    expect(guard.checkAndRemember('ak1', 'n3')).toBe(true);
  });

  it('when a refused (full) nonce is retried later, then it was not remembered by the refusal', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 1, clock.now);
    guard.checkAndRemember('ak1', 'n1');
    expect(guard.checkAndRemember('ak1', 'n2')).toBe(false);
    clock.advance(TTL);
    expect(guard.checkAndRemember('ak1', 'n2')).toBe(true);
  });

  it('when the request says how long its timestamp stays in the window, then its nonce is kept that long, not the whole TTL', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    const window = TTL / 2;
    guard.checkAndRemember('ak1', 'n1', window + 1);
    clock.advance(window);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(false); // the window's edge: still refused
    clock.advance(1000); // expiries are whole seconds, rounded up: forgotten a little late, never early
    expect(guard.checkAndRemember('ak1', 'n1', window + 1)).toBe(true);
  });

  it('when a request asks to be kept longer than the TTL, then the TTL wins', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    guard.checkAndRemember('ak1', 'n1', 10 * TTL);
    clock.advance(TTL);
    expect(guard.checkAndRemember('ak1', 'n1')).toBe(true);
  });

  it('when an entry behind a live one has expired, then it is dropped later, never early', () => {
    const clock = manualClock();
    const guard = new ReplayGuard(TTL, 100, clock.now);
    guard.checkAndRemember('ak1', 'late', 1000);
    guard.checkAndRemember('ak1', 'early', 10);
    clock.advance(500);
    expect(guard.checkAndRemember('ak1', 'late')).toBe(false);
    expect(guard.size).toBe(2); // "early" expired but waits behind "late"
    clock.advance(500);
    expect(guard.checkAndRemember('ak1', 'x')).toBe(true);
    expect(guard.size).toBe(1);
  });
});

describe('ReplayCheck', () => {
  const caller = { accessKeyId: 'ak1', nonce: 'n1', nonceKeepMs: 1000 };
  /** A SET NX store as Redis answers it; `down` makes every call fail. */
  const store = (down = false) => {
    const keys = new Set<string>();
    let calls = 0;
    return {
      calls: () => calls,
      set: async (key: string): Promise<string | null> => {
        calls++;
        if (down) throw new Error('connection refused');
        if (keys.has(key)) return null;
        keys.add(key);
        return 'OK';
      },
    };
  };

  it('when this replica has seen the nonce, then it throws SignatureNonceUsed at once, without asking the shared guard', async () => {
    const shared = store();
    const check = new ReplayCheck(new ReplayGuard(TTL), new SharedReplayGuard(shared, TTL));
    await check.check(caller);
    expect(() => check.check(caller)).toThrow(expect.objectContaining({ code: 'SignatureNonceUsed' }));
    expect(shared.calls()).toBe(1);
  });

  it('when another replica has seen the nonce, then the check rejects with SignatureNonceUsed (on another replica)', async () => {
    const shared = store();
    await new ReplayCheck(new ReplayGuard(TTL), new SharedReplayGuard(shared, TTL)).check(caller);
    const elsewhere = new ReplayCheck(new ReplayGuard(TTL), new SharedReplayGuard(shared, TTL));
    await expect(elsewhere.check(caller)).rejects.toMatchObject({ code: 'SignatureNonceUsed', message: expect.stringContaining('another replica') });
  });

  it('when the shared guard cannot tell (Redis away), then a nonce new to this replica passes', async () => {
    await expect(new ReplayCheck(new ReplayGuard(TTL), new SharedReplayGuard(store(true), TTL)).check(caller)).resolves.toBeUndefined();
  });
});
