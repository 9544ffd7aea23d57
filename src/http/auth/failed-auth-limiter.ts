/**
 * Failed authentications per client address: a token bucket per address (`burst` failures at once, then `perSecond`),
 * checked before the request signature is verified, so that a client sending garbage or guessing secrets costs a map
 * lookup and a 429, not an HMAC, a log line of its choosing and an audit line per try. Only failures are counted: a
 * client whose requests authenticate is never slowed down here (the per-account limit is for that).
 *
 * The addresses are kept in a bounded LRU map (insertion order, refreshed on use): many addresses can push each
 * other out, never grow memory. An evicted address starts again with a full bucket.
 */
interface FailedAuthLimits {
  /** Failures allowed per second per address, once the burst is spent. */
  perSecond: number;
  /** Failures allowed at once from an address that has been quiet. */
  burst: number;
  /** Addresses remembered at most. */
  addresses: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

export class FailedAuthLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly now: () => number;

  constructor(
    private readonly limits: FailedAuthLimits,
    now?: () => number,
  ) {
    this.now = now ?? Date.now;
  }

  /** 0 when `address` may try; else the milliseconds until its next failure would be allowed. */
  retryAfterMs(address: string): number {
    const bucket = this.buckets.get(address);
    if (!bucket) return 0;
    const tokens = this.refill(bucket);
    return tokens >= 1 ? 0 : Math.ceil(((1 - tokens) / this.limits.perSecond) * 1000);
  }

  /** `address` failed to authenticate once. */
  failed(address: string): void {
    const bucket = this.buckets.get(address);
    const tokens = bucket ? this.refill(bucket) : this.limits.burst;
    this.buckets.delete(address);
    this.buckets.set(address, { tokens: tokens - 1, at: this.now() });
    if (this.buckets.size > this.limits.addresses) this.buckets.delete(this.buckets.keys().next().value!);
  }

  /** Addresses remembered (tests: the map stays bounded). */
  get size(): number {
    return this.buckets.size;
  }

  private refill(bucket: Bucket): number {
    const elapsed = Math.max(0, this.now() - bucket.at) / 1000;
    return Math.min(this.limits.burst, bucket.tokens + elapsed * this.limits.perSecond);
  }
}
