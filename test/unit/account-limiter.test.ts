import fc from 'fast-check';
import type { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { AccountLimiter, SLOT_MS, WINDOW_SLOTS, type ThrottleDecision } from '../../src/throttle/account-limiter.js';

// Every test runs on a fake clock: the properties below are checked exactly, not measured.
// FC_SEED=<n> replays the properties with other arrival sequences (the fixed seed keeps CI deterministic).
const SEED = Number(process.env.FC_SEED ?? 20261125);

interface Outcome extends ThrottleDecision {
  at: number;
}

/** Drives a memory limiter with a fake clock through the given (sorted) arrival times. */
async function drive(limit: number, arrivals: number[]): Promise<Outcome[]> {
  let now = 0;
  const limiter = new AccountLimiter({ defaultLimit: limit, accountLimits: {}, replicas: 1, now: () => now });
  const out: Outcome[] = [];
  for (const at of arrivals) {
    now = at;
    out.push({ at, ...(await limiter.consume('acct')) });
  }
  return out;
}

const admittedTimes = (outcomes: Outcome[]): number[] => outcomes.filter((o) => o.allowed).map((o) => o.at);

/** The most admissions in any rolling second [t, t + 1000), whatever t (sorted times). */
function maxInRollingSecond(times: number[]): number {
  let best = 0;
  let start = 0;
  for (let end = 0; end < times.length; end++) {
    while (times[end]! - times[start]! >= 1000) start++;
    best = Math.max(best, end - start + 1);
  }
  return best;
}

/** How many of the sorted `times` (the first `end` of them) are below `x` (or at most `x` with `orEqual`). */
function countBelow(times: number[], x: number, orEqual = false, end = times.length): number {
  let lo = 0;
  let hi = end;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (times[mid]! < x || (orEqual && times[mid] === x)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The fewest admissions in any rolling second [t, t + 1000) with from ≤ t ≤ to − 1000 (sorted times). The count
 * only drops when t passes an admission, so the minimum is at t = from or just after an admission a: (a, a + 1000].
 */
function minInRollingSecond(times: number[], from: number, to: number): number {
  let worst = countBelow(times, from + 1000) - countBelow(times, from);
  for (const a of times) {
    if (a >= from && a + 1000 <= to) worst = Math.min(worst, countBelow(times, a + 1000, true) - countBelow(times, a, true));
  }
  return worst;
}

/** Arrivals: bursts (several requests at one instant, 0.1 ms resolution) over 0–5 s, sorted. */
const arrivalsArb = (maxBurst: number) =>
  fc
    .array(fc.record({ at: fc.integer({ min: 0, max: 50_000 }), n: fc.integer({ min: 1, max: maxBurst }) }), { minLength: 1, maxLength: 80 })
    .map((bursts) => bursts.flatMap(({ at, n }) => Array<number>(n).fill(at / 10)).sort((a, b) => a - b));

describe('AccountLimiter (memory, fake clock): the sliding window', () => {
  it('when requests arrive at any times, then no rolling second admits more than the limit, no request is refused while fewer than the limit were admitted in the last 1,010 ms, and retryAfterMs is exactly when room opens', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 300 }).chain((limit) => fc.tuple(fc.constant(limit), arrivalsArb(Math.max(1, Math.ceil(limit / 2))))),
        async ([limit, arrivals]) => {
          const outcomes = await drive(limit, arrivals);
          const admitted = admittedTimes(outcomes);
          // The promise allows +5 %; the window keeps the limit itself.
          expect(maxInRollingSecond(admitted)).toBeLessThanOrEqual(limit);
          // Admissions so far (all at or before the refused request) still in the window of a request at time t:
          // counted in slots t's slot − 100 … (the fake clock never goes back, so a request counts in its own slot).
          const inWindowAt = (t: number, before: number): number =>
            before - countBelow(admitted, (Math.floor(t / SLOT_MS) - WINDOW_SLOTS + 1) * SLOT_MS, false, before);
          let before = 0;
          for (const o of outcomes) {
            if (o.allowed) {
              before++;
              continue;
            }
            // Refused only with the limit admitted in the last 1,010 ms (the window: this slot and the 100 before).
            expect(before - countBelow(admitted, o.at - 1010, true)).toBeGreaterThanOrEqual(limit);
            // Room for one more exactly after retryAfterMs (had nothing else arrived), not a millisecond earlier.
            expect(inWindowAt(o.at + o.retryAfterMs, before)).toBeLessThan(limit);
            if (o.retryAfterMs > 1) expect(inWindowAt(o.at + o.retryAfterMs - 1, before)).toBeGreaterThanOrEqual(limit);
          }
        },
      ),
      { numRuns: 60, seed: SEED },
    );
  });

  it('when an account was quiet for 1,010 ms, then a burst up to the limit is admitted at once, and of a larger burst within a second exactly the limit', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 2000 }),
        arrivalsArb(40),
        fc.integer({ min: 1010, max: 3000 }),
        fc.integer({ min: 0, max: 2100 }),
        fc.integer({ min: 0, max: 999 }),
        async (limit, history, quietMs, burstPerMille, spreadMs) => {
          let now = 0;
          const limiter = new AccountLimiter({ defaultLimit: limit, accountLimits: {}, replicas: 1, now: () => now });
          let last = -Infinity;
          for (const at of history) {
            now = at;
            if ((await limiter.consume('acct')).allowed) last = at;
          }
          const start = Math.max(now, last + quietMs);
          const burst = Math.max(1, Math.round((limit * burstPerMille) / 1000));
          let admitted = 0;
          for (let i = 0; i < burst; i++) {
            now = start + (spreadMs * i) / burst; // the whole burst within [start, start + spreadMs)
            if ((await limiter.consume('acct')).allowed) admitted++;
          }
          expect(admitted).toBe(Math.min(burst, limit));
        },
      ),
      { numRuns: 60, seed: SEED },
    );
  });

  it('when an account sends 1–2× its limit evenly, then every rolling second admits at least 95 % of the limit (and at most the limit)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 100, max: 3000 }),
        fc.integer({ min: 1000, max: 2000 }),
        fc.integer({ min: 0, max: 9999 }),
        async (limit, ratePerMille, offsetTenths) => {
          const rate = (limit * ratePerMille) / 1000;
          const start = offsetTenths / 10;
          const arrivals = Array.from({ length: Math.floor(rate * 4) }, (_, i) => start + (i * 1000) / rate); // 4 s
          const admitted = admittedTimes(await drive(limit, arrivals));
          const end = arrivals.at(-1)!;
          expect(minInRollingSecond(admitted, start, end)).toBeGreaterThanOrEqual(0.95 * limit);
          expect(maxInRollingSecond(admitted)).toBeLessThanOrEqual(limit);
        },
      ),
      { numRuns: 25, seed: SEED },
    );
  });

  it('when an account sends 10× its limit for 5 s, then at least 95 % of the limit passes per second over the run, and never more than the limit in a second', async () => {
    const arrivals = Array.from({ length: 50_000 }, (_, i) => i * 0.1);
    const admitted = admittedTimes(await drive(1000, arrivals));
    expect(admitted.length).toBeGreaterThanOrEqual(5 * 950);
    expect(maxInRollingSecond(admitted)).toBeLessThanOrEqual(1000);
    for (let second = 0; second < 5; second++) {
      const inSecond = admitted.filter((t) => t >= second * 1000 && t < (second + 1) * 1000).length;
      expect(inSecond).toBeGreaterThanOrEqual(900); // one 10 ms slot's worth below the limit at most
    }
  });

  it('when 200 requests arrive at once from an account that sent 500/s until a second ago, then all 200 pass (the issue: 6–40 × 429 before)', async () => {
    const before = Array.from({ length: 1000 }, (_, i) => i * 2); // 500/s for 2 s
    const burst = Array<number>(200).fill(2000 + 1000);
    const outcomes = await drive(1000, [...before, ...burst]);
    expect(outcomes.slice(1000).every((o) => o.allowed)).toBe(true);
  });

  it('when 2,000 requests arrive at once, then exactly 1,000 pass and the others learn when the window has room again', async () => {
    const outcomes = await drive(1000, Array<number>(2000).fill(5_003));
    expect(outcomes.filter((o) => o.allowed)).toHaveLength(1000);
    // Slot 500 (5,000–5,010 ms) leaves the window when slot 601 begins: 6,010 ms.
    expect(new Set(outcomes.filter((o) => !o.allowed).map((o) => o.retryAfterMs))).toEqual(new Set([1007]));
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
    expect(limiter.limitOf('big')).toBe(100);
    expect(limiter.limitOf('small')).toBe(20);
  });

  it('when a request is refused, then retryAfterMs counts to the moment the oldest admissions leave the window', async () => {
    let now = 1_000_013;
    const limiter = new AccountLimiter({ defaultLimit: 3, accountLimits: {}, replicas: 1, now: () => now });
    expect((await limiter.consume('a')).allowed).toBe(true); // slot 100,001
    now = 1_000_500;
    expect((await limiter.consume('a')).allowed).toBe(true); // slot 100,050
    expect((await limiter.consume('a')).allowed).toBe(true);
    expect(await limiter.consume('a')).toEqual({ allowed: false, retryAfterMs: 520 }); // slot 100,001 leaves at 1,001,020
    now = 1_001_019;
    expect(await limiter.consume('a')).toEqual({ allowed: false, retryAfterMs: 1 });
    now = 1_001_020;
    expect((await limiter.consume('a')).allowed).toBe(true);
    expect(await limiter.consume('a')).toEqual({ allowed: false, retryAfterMs: 490 }); // slot 100,050 leaves at 1,001,510
  });

  it('when the clock reads earlier than a request already counted, then the window does not move back', async () => {
    let now = 5_000;
    const limiter = new AccountLimiter({ defaultLimit: 2, accountLimits: {}, replicas: 1, now: () => now });
    expect((await limiter.consume('a')).allowed).toBe(true);
    now = 3_000;
    expect((await limiter.consume('a')).allowed).toBe(true);
    expect((await limiter.consume('a')).allowed).toBe(false);
  });

  it('when there is no Redis, then the backend is memory', () => {
    expect(new AccountLimiter({ defaultLimit: 1, accountLimits: {}, replicas: 1 }).backend()).toBe('memory');
  });
});

describe('AccountLimiter: shared counts and their fallbacks', () => {
  /** A stand-in for ioredis: `status`, the two script calls the limiter makes, and its `ready` event. */
  function fakeRedis(behaviour: { status: string; evalsha: () => Promise<unknown>; eval?: () => Promise<unknown> }): Redis & { calls: string[] } {
    const calls: string[] = [];
    return {
      calls,
      status: behaviour.status,
      evalsha: (...args: unknown[]) => (calls.push(`evalsha ${String(args[2])}`), behaviour.evalsha()),
      on: () => undefined,
      eval: (...args: unknown[]) => (calls.push(`eval ${String(args[2])}`), behaviour.eval!()),
    } as unknown as Redis & { calls: string[] };
  }

  it('when Redis answers, then its decision is the answer, in one call per request (EVALSHA on the account key)', async () => {
    const redis = fakeRedis({ status: 'ready', evalsha: () => Promise.resolve([0, 250]) });
    const limiter = new AccountLimiter({ defaultLimit: 10, accountLimits: {}, redis, replicas: 3 });
    expect(await limiter.consume('acct')).toEqual({ allowed: false, retryAfterMs: 250 });
    expect(redis.calls).toEqual(['evalsha hsmgw:throttle:acct']);
    expect(limiter.backend()).toBe('redis');
  });

  it('when Redis has lost the script (NOSCRIPT), then the request runs it with EVAL', async () => {
    const redis = fakeRedis({
      status: 'ready',
      evalsha: () => Promise.reject(new Error('NOSCRIPT No matching script. Please use EVAL.')),
      eval: () => Promise.resolve([1, 0]),
    });
    const limiter = new AccountLimiter({ defaultLimit: 10, accountLimits: {}, redis, replicas: 3 });
    expect(await limiter.consume('acct')).toEqual({ allowed: true, retryAfterMs: 0 });
    expect(redis.calls).toEqual(['evalsha hsmgw:throttle:acct', 'eval hsmgw:throttle:acct']);
  });

  it('when Redis stalls (its calls miss their deadline while the connection stays ready), then the backend says local_fallback until a call succeeds again', async () => {
    let stalled = true;
    const redis = fakeRedis({ status: 'ready', evalsha: () => (stalled ? Promise.reject(new Error('Command timed out')) : Promise.resolve([1, 0])) });
    const limiter = new AccountLimiter({ defaultLimit: 100, accountLimits: {}, redis, replicas: 2, now: () => 0 });
    expect(limiter.backend()).toBe('redis');
    expect((await limiter.consume('acct')).allowed).toBe(true); // at the replica's share
    expect(limiter.backend()).toBe('local_fallback');
    stalled = false;
    await limiter.consume('acct');
    expect(limiter.backend()).toBe('redis');
  });

  it('when Redis stalls right after this replica admitted through it, then its local share counts those admissions (no fresh share on top)', async () => {
    let now = 0;
    let stalled = false;
    const redis = fakeRedis({ status: 'ready', evalsha: () => (stalled ? Promise.reject(new Error('Command timed out')) : Promise.resolve([1, 0])) });
    const limiter = new AccountLimiter({ defaultLimit: 100, accountLimits: {}, redis, replicas: 2, now: () => now });
    for (let i = 0; i < 40; i++) await limiter.consume('acct'); // 40 admitted by Redis
    stalled = true;
    now = 500;
    let admitted = 0;
    for (let i = 0; i < 100; i++) if ((await limiter.consume('acct')).allowed) admitted++;
    expect(admitted).toBe(10); // the share is 50; 40 of it were used through Redis within the window
    now = 1010;
    for (let i = 0; i < 100; i++) if ((await limiter.consume('acct')).allowed) admitted++;
    expect(admitted).toBe(10 + 40); // the 40 left the window: room for them again
  });

  it('when Redis is unreachable, then each replica admits its share of the limit locally, and says so', async () => {
    let now = 0;
    const redis = fakeRedis({ status: 'reconnecting', evalsha: () => Promise.reject(new Error("Stream isn't writeable")) });
    const limiter = new AccountLimiter({ defaultLimit: 100, accountLimits: {}, redis, replicas: 3, now: () => now });
    expect(limiter.backend()).toBe('local_fallback');
    let admitted = 0;
    for (let i = 0; i < 200; i++) if ((await limiter.consume('acct')).allowed) admitted++;
    expect(admitted).toBe(33);
    now = 1010;
    expect((await limiter.consume('acct')).allowed).toBe(true);
  });

  it('when the cluster primary does not answer, then the worker admits its share locally until it answers again', async () => {
    let primaryUp = false;
    const limiter = new AccountLimiter({
      defaultLimit: 10,
      accountLimits: {},
      replicas: 2,
      now: () => 0,
      remote: () => (primaryUp ? Promise.resolve({ allowed: true, retryAfterMs: 0 }) : Promise.reject(new Error('timeout'))),
    });
    expect(limiter.backend()).toBe('cluster');
    const local = await Promise.all(Array.from({ length: 10 }, () => limiter.consume('acct')));
    expect(local.filter((d) => d.allowed)).toHaveLength(5);
    expect(limiter.backend()).toBe('local_fallback');
    primaryUp = true;
    expect((await limiter.consume('acct')).allowed).toBe(true);
    expect(limiter.backend()).toBe('cluster');
  });
});
