import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Redis } from 'ioredis';

/**
 * Per-account request limits, counted by rate-limiter-flexible (in memory, or in Redis shared by replicas).
 *
 * The promise is "N requests per second": no sliding one-second window may admit more than N + 5 %. A plain
 * one-second window (or a full token bucket) admits up to 2N across a window boundary, so the second is cut
 * into slots (20 of 50 ms for N = 1,000) and each slot gets N / slots: any sliding second overlaps at most
 * slots + 1 of them, i.e. admits at most N + N / slots. The cost is that a burst is spread over the second
 * instead of passing at once. Each slot is its own limiter key; the library does the atomic counting and expiry.
 */
export type LimiterBackend = 'memory' | 'cluster' | 'redis' | 'local_fallback';

export interface ThrottleDecision {
  allowed: boolean;
  /** Milliseconds until the next slot opens (for `x-acs-retry-after`). */
  retryAfterMs: number;
}

/** At most 20 slots (the +5 % bound), and a whole number of requests per slot. */
export function slotPlan(limit: number): { slots: number; perSlot: number; slotMs: number } {
  let slots = Math.min(20, limit);
  while (slots > 1 && limit % slots !== 0) slots--;
  return { slots, perSlot: limit / slots, slotMs: 1000 / slots };
}

export interface AccountLimiterOptions {
  defaultLimit: number;
  /** Per-account limits (requests per second) overriding the default. */
  accountLimits: Readonly<Record<string, number>>;
  /** Shared counting in Redis; absent: in memory (one replica). */
  redis?: Redis;
  /** Replicas sharing the quota: while Redis is unreachable each one admits its share locally. */
  replicas: number;
  /**
   * A node:cluster worker without Redis: the cluster primary counts for every worker (src/cluster.ts), so the limit
   * holds per account whichever worker a connection lands on. If the primary does not answer, this worker limits
   * locally at its share (`replicas` = the number of workers).
   */
  remote?: (account: string) => Promise<ThrottleDecision>;
  now?: () => number;
}

export class AccountLimiter {
  private readonly limiters = new Map<number, { limiter: RateLimiterAbstract; slotMs: number }>();
  private readonly now: () => number;

  constructor(private readonly options: AccountLimiterOptions) {
    this.now = options.now ?? Date.now;
  }

  backend(): LimiterBackend {
    if (!this.options.redis) return this.options.remote ? (this.remoteDown ? 'local_fallback' : 'cluster') : 'memory';
    return this.options.redis.status === 'ready' ? 'redis' : 'local_fallback';
  }

  limitOf(account: string): number {
    return this.options.accountLimits[account] ?? this.options.defaultLimit;
  }

  private remoteDown = false;

  async consume(account: string): Promise<ThrottleDecision> {
    if (this.options.remote && !this.options.redis) {
      try {
        const decision = await this.options.remote(account);
        this.remoteDown = false;
        return decision;
      } catch {
        this.remoteDown = true;
      }
    }
    const { limiter, slotMs } = this.limiterFor(this.limitOf(account));
    const now = this.now();
    const slot = Math.floor(now / slotMs);
    const retryAfterMs = Math.max(1, Math.ceil((slot + 1) * slotMs - now));
    try {
      await limiter.consume(`${account}:${slot}`, 1);
      return { allowed: true, retryAfterMs: 0 };
    } catch (err) {
      if (err instanceof RateLimiterRes) return { allowed: false, retryAfterMs };
      throw err;
    }
  }

  private limiterFor(limit: number): { limiter: RateLimiterAbstract; slotMs: number } {
    let entry = this.limiters.get(limit);
    if (!entry) {
      const { perSlot, slotMs } = slotPlan(limit);
      // Slot keys live one second: long enough to count their slot, short enough to keep memory flat.
      const base = { points: perSlot, duration: 1, keyPrefix: `hsmgw:rps${limit}` };
      const local = new RateLimiterMemory({ ...base, points: Math.max(1, Math.floor(perSlot / this.options.replicas)) });
      const limiter = this.options.redis
        ? new RateLimiterRedis({ ...base, storeClient: this.options.redis, insuranceLimiter: local })
        : this.options.remote
          ? local // only used while the cluster primary does not answer
          : new RateLimiterMemory(base);
      entry = { limiter, slotMs };
      this.limiters.set(limit, entry);
    }
    return entry;
  }
}
