/**
 * Remembers each (AccessKeyId, nonce) for as long as a request carrying it could still pass the timestamp
 * window, so a captured request cannot be played again. Entries expire in insertion order (the TTL is fixed),
 * so pruning only ever looks at the oldest ones.
 */
export class ReplayGuard {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries = 2_000_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records the nonce; false when it was already seen (a replay) or the guard is full. */
  checkAndRemember(accessKeyId: string, nonce: string): boolean {
    const t = this.now();
    this.prune(t);
    const key = `${accessKeyId}\u0000${nonce}`;
    if (this.seen.has(key)) return false;
    // A full guard refuses rather than forgets: forgetting would reopen the replay window.
    if (this.seen.size >= this.maxEntries) return false;
    this.seen.set(key, t + this.ttlMs);
    return true;
  }

  get size(): number {
    return this.seen.size;
  }

  private prune(t: number): void {
    for (const [key, expiry] of this.seen) {
      if (expiry > t) break;
      this.seen.delete(key);
    }
  }
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

  async checkAndRemember(accessKeyId: string, nonce: string): Promise<boolean | undefined> {
    try {
      const stored = await this.redis.set(`hsmgw:nonce:${accessKeyId}:${nonce}`, '1', 'PX', this.ttlMs, 'NX');
      return stored === 'OK';
    } catch {
      return undefined;
    }
  }
}
