import { createHash } from 'node:crypto';
import { ApiError } from '../error-catalog.js';

/**
 * Remembers each (AccessKeyId, nonce) for as long as a request carrying it could still pass the timestamp
 * window, so a captured request cannot be played again. That is until the request's own timestamp leaves the window
 * (`keepMs` from now), at most `ttlMs` (twice the window: a timestamp may be up to one window ahead). Pruning looks at the
 * oldest entries only and stops at the first one still live: an entry behind it that expired earlier (its request
 * carried an older timestamp) is dropped a little late, never early.
 *
 * Memory: ≈ 45 bytes per nonce (measured: 1 M entries, +45 MB of heap): an entry is a 53-bit hash of (AccessKeyId,
 * nonce) and its expiry in whole seconds, both kept unboxed by V8, where text keys took ≈ 180 bytes. A caller whose
 * timestamps match the clock keeps its nonces for one window, so the default cap (8 M, ≈ 360 MB) holds ≈ 8,900 req/s
 * sustained with the 15-minute window. Two different nonces share a hash with a chance of 1 in 2⁵³ per pair: at a full
 * guard, one request in ≈ 10⁹ would be refused as a replay.
 */
export class ReplayGuard {
  /** Hash of (AccessKeyId, nonce) → expiry, in seconds since the guard started (small integers, rounded up). */
  private readonly seen = new Map<number, number>();
  private readonly epochMs: number;

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries = 8_000_000,
    private readonly now: () => number = Date.now,
  ) {
    this.epochMs = now();
  }

  /** Records the nonce; false when it was already seen (a replay) or the guard is full. */
  checkAndRemember(accessKeyId: string, nonce: string, keepMs?: number): boolean {
    const t = this.now();
    this.prune(t);
    const key = nonceKey(accessKeyId, nonce);
    if (this.seen.has(key)) return false;
    // A full guard refuses rather than forgets: forgetting would reopen the replay window.
    if (this.seen.size >= this.maxEntries) return false;
    const keep = keepMs === undefined ? this.ttlMs : Math.max(1, Math.min(keepMs, this.ttlMs));
    this.seen.set(key, Math.ceil((t + keep - this.epochMs) / 1000));
    return true;
  }

  get size(): number {
    return this.seen.size;
  }

  private prune(t: number): void {
    const nowSeconds = (t - this.epochMs) / 1000;
    for (const [key, expiry] of this.seen) {
      if (expiry > nowSeconds) break;
      this.seen.delete(key);
    }
  }
}

/** 53 bits of SHA-256 over the access key id and the nonce, NUL-separated ("ab"+"c" and "a"+"bc" differ). */
function nonceKey(accessKeyId: string, nonce: string): number {
  const digest = createHash('sha256').update(accessKeyId).update('\u0000').update(nonce).digest();
  return digest.readUIntBE(0, 6) * 32 + (digest[6]! >> 3);
}

/**
 * The same guard shared by every replica through Redis (SET NX with an expiry): a request replayed to another
 * replica is refused too. Redis unreachable → undefined ("cannot tell"): the local guard still holds for this
 * replica, and the limiter's fallback metric already says Redis is away.
 */
export class SharedReplayGuard {
  constructor(
    private readonly redis: { set(key: string, value: string, px: 'PX', ms: number, nx: 'NX'): Promise<string | null> },
    private readonly ttlMs: number,
  ) {}

  async checkAndRemember(accessKeyId: string, nonce: string, keepMs?: number): Promise<boolean | undefined> {
    const ttl = keepMs === undefined ? this.ttlMs : Math.max(1, Math.min(this.ttlMs, keepMs));
    try {
      const stored = await this.redis.set(`hsmgw:nonce:${accessKeyId}:${nonce}`, '1', 'PX', ttl, 'NX');
      return stored === 'OK';
    } catch {
      return undefined;
    }
  }
}

/**
 * The replay check, in one place: this replica's guard, then the guard the replicas or cluster workers share (Redis,
 * or the cluster primary), when there is one. It runs after authentication, so a nonce is only remembered for a
 * request whose signature and timestamp are valid (nobody can burn another caller's nonces).
 */
export class ReplayCheck {
  constructor(
    private readonly local: ReplayGuard,
    private readonly shared?: SharedReplayGuard,
  ) {}

  /**
   * Throws SignatureNonceUsed at once (before anything else is asked) when this replica has seen the nonce; otherwise
   * the promise rejects with it when the shared guard has. A shared guard that cannot tell (Redis away) lets it pass:
   * the local guard still holds for this replica.
   */
  check(caller: { accessKeyId: string; nonce: string; nonceKeepMs: number }): Promise<void> {
    if (!this.local.checkAndRemember(caller.accessKeyId, caller.nonce, caller.nonceKeepMs)) throw new ApiError('SignatureNonceUsed');
    if (!this.shared) return Promise.resolve();
    return this.shared.checkAndRemember(caller.accessKeyId, caller.nonce, caller.nonceKeepMs).then((fresh) => {
      if (fresh === false) throw new ApiError('SignatureNonceUsed');
    });
  }
}
