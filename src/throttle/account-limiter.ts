import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

/**
 * Per-account request limits: a sliding window of counted slots, in memory or in Redis shared by replicas.
 *
 * The promise (limit L requests per second): a burst of up to L from a quiet account passes at once; no rolling
 * second, whatever its start, admits more than L (+5 % allowed, none used); under steady overload the account
 * still gets ≥ 95 % of L every second (up to 2× its limit; ≈ 99 % over time at any overload).
 *
 * Algorithm. Time is cut into slots of SLOT_MS = 10 ms, N = 100 to the second. Each account keeps its admissions
 * per slot for the current slot and the N before it (WINDOW_SLOTS = N + 1 = 101 slots, 1,010 ms) and their total.
 * A request in slot s is admitted iff the total over slots s−N … s is below L; it then counts in slot s.
 *
 * (1) No rolling second admits more than L. A second [t, t + 1000 ms) meets at most N + 1 consecutive slots
 *     k … k+N. Take the last admission in them, in slot m ≤ k+N: the slots counted for it, m−N … m, include k … m,
 *     and every admission in k … k+N happened in k … m no later than it. It was admitted, so those slots held < L
 *     before it and ≤ L with it. (Counting only N slots would let a burst late in slot k and another early in
 *     slot k+N both pass: 2L within one second. The previous design capped every 50 ms slot at L/20 instead,
 *     which kept the bound but refused bursts far below the limit.)
 * (2) A burst up to L from a quiet account passes at once. An account with no admission in the last 1,010 ms
 *     has an empty window, and the count stays below L until the L-th request.
 * (3) Overload. Let every slot bring the same a ≥ L/(N+1) requests (steady traffic at rate a·N ≥ L·N/(N+1)).
 *     Every N+1 consecutive slots then hold exactly L admissions: the first N+1 do (they fill up to L, and
 *     (N+1)a ≥ L requests came); and if slots s−N−1 … s−1 hold L, slot s has room for what slot s−N−1 held,
 *     c ≤ a, and gets that many, so s−N … s hold L. Hence an aligned second (N slots) admits ≥ L − a, any rolling
 *     second (N−1 whole slots of some N+1) ≥ L − 2a, and the long-run rate is L·N/(N+1) ≈ 0.99 L. At twice the
 *     limit (a = L/50): ≥ 0.98 L per aligned second, ≥ 0.96 L per rolling second. The property tests check ≥ 95 %
 *     per rolling second for uneven rates from 1× to 2× too; at 10× single seconds dip to ≈ 0.9 L (a = L/10).
 *     Room freed by a burst comes back a window later all at once: after a burst the floor holds over time.
 * Retry hint: a refused request learns when enough of the oldest slots leave the window for one more request
 * (`x-acs-retry-after`, ms).
 *
 * Cost: per account at most 101 counters and a running total; a request touches its own slot and the slots that
 * left the window since the account's previous request, so its work does not grow with the limit. In Redis the
 * same steps run as one Lua script (EVALSHA, EVAL when Redis answers NOSCRIPT): one round trip per request,
 * atomic across replicas, timed by Redis's own clock so that skew between gateway hosts cannot shift the window.
 * Why not rate-limiter-flexible (used before): it counts fixed windows (each starting at a key's first request),
 * and a full window followed at once by the next lets 2L through within one rolling second (its BurstyRateLimiter
 * adds a burst allowance on top of a rate: the same excess). It has no sliding window, hence this small one.
 */
type LimiterBackend = 'memory' | 'cluster' | 'redis' | 'local_fallback';

export interface ThrottleDecision {
  allowed: boolean;
  /** Milliseconds until enough old slots leave the window for one more request (for `x-acs-retry-after`). */
  retryAfterMs: number;
}

/** Slot length. */
export const SLOT_MS = 10;
/** Slots counted for a request: a second's worth (100) and the current one. */
export const WINDOW_SLOTS = 1000 / SLOT_MS + 1;

/** One account's window in memory: admissions per slot in a ring, the total over the window, the newest slot. */
class SlidingWindow {
  private readonly counts = new Uint32Array(WINDOW_SLOTS);
  private total = 0;
  /** The newest slot seen; a request whose clock reads earlier counts in it (the window never moves back). */
  head = Number.NEGATIVE_INFINITY;

  take(now: number, limit: number): ThrottleDecision {
    const slot = this.advance(Math.floor(now / SLOT_MS));
    if (this.total < limit) {
      this.counts[slot % WINDOW_SLOTS]!++;
      this.total++;
      return { allowed: true, retryAfterMs: 0 };
    }
    // The oldest slots whose departure leaves room for one more: slot j leaves when slot j + WINDOW_SLOTS begins.
    const need = this.total - limit + 1;
    let freed = 0;
    let reopens = slot + WINDOW_SLOTS;
    for (let j = Math.max(0, slot - WINDOW_SLOTS + 1); j <= slot; j++) {
      freed += this.counts[j % WINDOW_SLOTS]!;
      if (freed >= need) {
        reopens = j + WINDOW_SLOTS;
        break;
      }
    }
    return { allowed: false, retryAfterMs: Math.max(1, Math.ceil(reopens * SLOT_MS - now)) };
  }

  /** Moves the window to `slot` (dropping the slots that left it); returns the slot to count in. */
  private advance(slot: number): number {
    if (slot <= this.head) return this.head;
    if (slot - this.head >= WINDOW_SLOTS) {
      this.counts.fill(0);
      this.total = 0;
    } else {
      for (let j = this.head + 1; j <= slot; j++) {
        const i = j % WINDOW_SLOTS; // slot j − WINDOW_SLOTS, leaving
        this.total -= this.counts[i]!;
        this.counts[i] = 0;
      }
    }
    this.head = slot;
    return slot;
  }
}

/** Accounts' windows in one process; windows idle for a whole window are dropped (they hold nothing). */
class MemoryWindows {
  private readonly windows = new Map<string, SlidingWindow>();
  private sweptAt = Number.NEGATIVE_INFINITY;

  take(account: string, now: number, limit: number): ThrottleDecision {
    const slot = Math.floor(now / SLOT_MS);
    if (slot - this.sweptAt >= WINDOW_SLOTS) {
      for (const [name, window] of this.windows) if (slot - window.head >= WINDOW_SLOTS) this.windows.delete(name);
      this.sweptAt = slot;
    }
    let window = this.windows.get(account);
    if (!window) this.windows.set(account, (window = new SlidingWindow()));
    return window.take(now, limit);
  }
}

/**
 * The same window in one Redis hash per account: field <slot index> → admissions, plus `head` (newest slot),
 * `total` (over the window) and `retry` (the slot at which a refused account gets room again, for `limit`; 0 once
 * anything is admitted — cached so that a flood of refusals reads the whole window at most once per change).
 * The key expires a window after its last admission, when it holds nothing that still counts.
 */
const WINDOW_SCRIPT = `
local key = KEYS[1]
local limit, slotMs, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if not now then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local slot = math.floor(now / slotMs)
local state = redis.call('HMGET', key, 'head', 'total', 'retry', 'limit')
local head, total, retry = tonumber(state[1]), tonumber(state[2]) or 0, tonumber(state[3]) or 0
if tonumber(state[4]) ~= limit then retry = 0 end
local moved = true
if head == nil or slot - head >= window then
  if head ~= nil then redis.call('DEL', key) end
  total, retry = 0, 0
elseif slot <= head then
  slot, moved = head, false
else
  local gone = {}
  for j = head - window + 1, slot - window do gone[#gone + 1] = string.format('%d', j) end
  local counts = redis.call('HMGET', key, unpack(gone))
  for i = 1, #counts do total = total - (tonumber(counts[i]) or 0) end
  redis.call('HDEL', key, unpack(gone))
end
local field = string.format('%d', slot)
if total < limit then
  redis.call('HINCRBY', key, field, 1)
  redis.call('HSET', key, 'head', field, 'total', total + 1, 'retry', 0)
  redis.call('PEXPIRE', key, (window + 1) * slotMs)
  return {1, 0}
end
if retry <= slot then
  local fields = {}
  for j = slot - window + 1, slot do fields[#fields + 1] = string.format('%d', j) end
  local counts = redis.call('HMGET', key, unpack(fields))
  local need, freed = total - limit + 1, 0
  retry = slot + window
  for i = 1, #counts do
    freed = freed + (tonumber(counts[i]) or 0)
    if freed >= need then
      retry = slot + i
      break
    end
  end
  moved = true
end
if moved then redis.call('HSET', key, 'head', field, 'total', total, 'retry', string.format('%d', retry), 'limit', limit) end
return {0, math.max(1, math.ceil(retry * slotMs - now))}
`;
const WINDOW_SCRIPT_SHA = createHash('sha1').update(WINDOW_SCRIPT).digest('hex');

interface AccountLimiterOptions {
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
  /** The clock (ms); tests only. Given, it times the Redis window too (else Redis's own clock does). */
  now?: () => number;
}

export class AccountLimiter {
  private readonly now: () => number;
  /** The count when this process is the only one counting (no Redis, no cluster primary). */
  private readonly own = new MemoryWindows();
  /** Each replica's share while the shared count (Redis or the cluster primary) does not answer. */
  private readonly fallback = new MemoryWindows();
  private remoteDown = false;
  /** The last Redis call failed or missed its deadline: a stalled Redis keeps its connection `ready`. */
  private redisFailing = false;

  constructor(private readonly options: AccountLimiterOptions) {
    this.now = options.now ?? Date.now;
    // A new connection starts afresh; after a stall the next call that succeeds clears it.
    options.redis?.on('ready', () => (this.redisFailing = false));
  }

  backend(): LimiterBackend {
    if (!this.options.redis) return this.options.remote ? (this.remoteDown ? 'local_fallback' : 'cluster') : 'memory';
    return this.options.redis.status === 'ready' && !this.redisFailing ? 'redis' : 'local_fallback';
  }

  limitOf(account: string): number {
    return this.options.accountLimits[account] ?? this.options.defaultLimit;
  }

  async consume(account: string): Promise<ThrottleDecision> {
    const limit = this.limitOf(account);
    const { redis, remote } = this.options;
    if (redis) {
      try {
        const decision = await this.consumeInRedis(redis, account, limit);
        this.redisFailing = false;
        // What this replica admits through Redis counts in its own share too: when Redis stalls, the share is what is
        // left of it in the last second, not a fresh second's worth on top of what Redis has just admitted.
        if (decision.allowed) this.fallback.take(account, this.now(), Number.POSITIVE_INFINITY);
        return decision;
      } catch {
        // Redis away or slow (commands fail fast, src/throttle/redis.ts): this replica's share, counted here.
        this.redisFailing = true;
      }
    } else if (remote) {
      try {
        const decision = await remote(account);
        this.remoteDown = false;
        return decision;
      } catch {
        this.remoteDown = true;
      }
    } else {
      return this.own.take(account, this.now(), limit);
    }
    return this.fallback.take(account, this.now(), Math.max(1, Math.floor(limit / this.options.replicas)));
  }

  private async consumeInRedis(redis: Redis, account: string, limit: number): Promise<ThrottleDecision> {
    const args: Array<string | number> = [`hsmgw:throttle:${account}`, limit, SLOT_MS, WINDOW_SLOTS];
    if (this.options.now) args.push(this.now());
    let reply: unknown;
    try {
      reply = await redis.evalsha(WINDOW_SCRIPT_SHA, 1, ...args);
    } catch (err) {
      if (!(err instanceof Error && err.message.startsWith('NOSCRIPT'))) throw err;
      reply = await redis.eval(WINDOW_SCRIPT, 1, ...args); // also caches the script for the next EVALSHA
    }
    const [allowed, retryAfterMs] = reply as [number, number];
    return { allowed: allowed === 1, retryAfterMs };
  }
}
