import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AccountLimiter, slotPlan } from '../../src/throttle/account-limiter.js';

/** The most requests admitted in any sliding window of `windowMs`, from sorted admission times. */
function maxInSlidingWindow(times: number[], windowMs: number): number {
  let best = 0;
  let start = 0;
  for (let end = 0; end < times.length; end++) {
    while (times[end]! - times[start]! >= windowMs) start++;
    best = Math.max(best, end - start + 1);
  }
  return best;
}

/** Drives a memory limiter with a fake clock through the given arrival times; returns the admitted times. */
async function admitted(limit: number, arrivals: number[]): Promise<number[]> {
  let now = 0;
  const limiter = new AccountLimiter({ defaultLimit: limit, accountLimits: {}, replicas: 1, now: () => now });
  const times: number[] = [];
  for (const t of arrivals) {
    now = t;
    if ((await limiter.consume('acct')).allowed) times.push(t);
  }
  return times;
}

describe('slotPlan', () => {
  it('when the limit is 1,000/s, then the second has 20 slots of 50 requests (any sliding second ≤ 1,050)', () => {
    expect(slotPlan(1000)).toEqual({ slots: 20, perSlot: 50, slotMs: 50 });
  });

  it('when the limit does not divide by 20, then the slots are the largest divisor up to 20', () => {
    expect(slotPlan(990)).toEqual({ slots: 18, perSlot: 55, slotMs: 1000 / 18 });
    expect(slotPlan(7)).toEqual({ slots: 7, perSlot: 1, slotMs: 1000 / 7 });
  });
});

describe('AccountLimiter (memory)', () => {
  it('when requests arrive at any times, then no sliding second admits more than the limit + 5 %', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 0, max: 5000 }), { minLength: 1, maxLength: 4000 }), async (raw) => {
        const arrivals = [...raw].sort((a, b) => a - b);
        const times = await admitted(200, arrivals);
        expect(maxInSlidingWindow(times, 1000)).toBeLessThanOrEqual(210);
      }),
      { numRuns: 40, seed: 20261125 },
    );
  });

  it('when a burst of 2,000 arrives at once, then the first second admits at most the limit + 5 % (not 2×)', async () => {
    const burst = Array.from({ length: 2000 }, (_, i) => i * 0.5); // 2,000 requests in the first second
    const times = await admitted(1000, burst);
    expect(times.length).toBeLessThanOrEqual(1050);
  });

  it('when 2,000/s arrive evenly for 3 s, then about 1,000/s are admitted (±5 %)', async () => {
    const arrivals = Array.from({ length: 6000 }, (_, i) => i * 0.5);
    const times = await admitted(1000, arrivals);
    expect(times.length).toBeGreaterThanOrEqual(2850);
    expect(times.length).toBeLessThanOrEqual(3150);
  });

  it('when an account has its own limit, then it is used, and other accounts keep the default', async () => {
    let now = 0;
    const limiter = new AccountLimiter({ defaultLimit: 20, accountLimits: { big: 100 }, replicas: 1, now: () => now });
    let big = 0;
    let small = 0;
    for (let i = 0; i < 1000; i++) {
      now = i;
      if ((await limiter.consume('big')).allowed) big++;
      if ((await limiter.consume('small')).allowed) small++;
    }
    expect(big).toBe(100);
    expect(small).toBe(20);
  });

  it('when a request is refused, then retryAfterMs says when the next slot opens', async () => {
    let now = 1_000_010;
    const limiter = new AccountLimiter({ defaultLimit: 20, accountLimits: {}, replicas: 1, now: () => now });
    expect((await limiter.consume('a')).allowed).toBe(true);
    const refused = await limiter.consume('a');
    expect(refused).toEqual({ allowed: false, retryAfterMs: 40 });
    now += 40;
    expect((await limiter.consume('a')).allowed).toBe(true);
  });

  it('when there is no Redis, then the backend is memory', () => {
    expect(new AccountLimiter({ defaultLimit: 1, accountLimits: {}, replicas: 1 }).backend()).toBe('memory');
  });
});
