/**
 * A fixed-size pool of exclusive resources (PKCS#11 sessions: one operation per session at a time).
 * `acquire` waits in FIFO order up to a deadline; `discard` replaces a broken resource with a fresh one (made
 * asynchronously: on a network HSM opening a session is a round trip); `close` resolves once every lent resource
 * is back, for graceful shutdown.
 */
interface PoolHooks<T> {
  create: () => T | Promise<T>;
  destroy: (item: T) => void | Promise<void>;
}

interface Waiter<T> {
  resolve: (item: T) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class PoolTimeoutError extends Error {}
export class PoolClosedError extends Error {}
export class PoolFullError extends Error {}

export class Pool<T> {
  private readonly idle: T[] = [];
  private readonly waiters: Waiter<T>[] = [];
  private lent = 0;
  private madeCount = 0;
  /** When each resource was made (a value of `made`); the initial ones are absent (0). */
  private readonly madeAt = new Map<T, number>();
  private closed = false;
  private drained: (() => void) | undefined;
  private closing: Promise<void> | undefined;

  readonly size: number;

  /** `initial`: the resources to lend, made by the owner (at start-up, synchronously). */
  constructor(
    private readonly hooks: PoolHooks<T>,
    initial: readonly T[],
    private readonly maxWaiting = Number.POSITIVE_INFINITY,
  ) {
    this.idle.push(...initial);
    this.size = initial.length;
  }

  get inUse(): number {
    return this.lent;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  acquire(timeoutMs: number): Promise<T> {
    if (this.closed) return Promise.reject(new PoolClosedError('the pool is closed'));
    if (this.idle.length === 0 && this.waiters.length >= this.maxWaiting) {
      // A bounded queue: beyond it, fail fast instead of holding memory and the client for nothing.
      return Promise.reject(new PoolFullError(`${this.waiters.length} requests are already waiting`));
    }
    const item = this.idle.pop();
    if (item !== undefined) {
      this.lent++;
      return Promise.resolve(item);
    }
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter<T> = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          reject(new PoolTimeoutError(`no resource became free within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** How many resources this pool has made so far (the initial ones not counted): a moment for `acquireMadeAfter`. */
  get made(): number {
    return this.madeCount;
  }

  /**
   * Like `acquire`, but what is lent was made after `moment` (a value of `made`): an older resource taken is destroyed
   * and replaced first. For a retry after a session failure: a device that dropped one session has often dropped them
   * all (a YubiHSM after 30 s idle, a network HSM that restarted), and the idle ones are as dead as the one that
   * failed. A failure to make it shrinks the pool by one, as a failed replacement in `discard` does, and is thrown.
   */
  async acquireMadeAfter(moment: number, timeoutMs: number): Promise<T> {
    const taken = await this.acquire(timeoutMs);
    if ((this.madeAt.get(taken) ?? 0) > moment) return taken;
    this.destroyQuietly(taken);
    try {
      return await this.make();
    } catch (err) {
      this.returned();
      throw err;
    }
  }

  private async make(): Promise<T> {
    return this.noteMade(await this.hooks.create());
  }

  private noteMade(item: T): T {
    this.madeAt.set(item, ++this.madeCount);
    return item;
  }

  release(item: T): void {
    const next = this.waiters.shift();
    if (next) {
      clearTimeout(next.timer);
      next.resolve(item);
      return;
    }
    this.idle.push(item);
    this.returned();
  }

  /** Destroys a broken resource and lends (or shelves) a fresh one in its place (none once closing). */
  discard(item: T): void {
    this.destroyQuietly(item);
    if (this.closed) {
      this.returned();
      return;
    }
    // The slot stays lent until its replacement exists: a waiter gets the fresh resource, not a broken one.
    void (async () => {
      let fresh: T;
      try {
        fresh = this.noteMade(await this.hooks.create());
      } catch {
        // Cannot replace it now: the pool shrinks by one until the owner rebuilds it.
        this.returned();
        return;
      }
      if (this.closed) {
        this.destroyQuietly(fresh);
        this.returned();
      } else {
        this.release(fresh);
      }
    })();
  }

  /** Replaces every idle resource with a fresh one (the token dropped its sessions: the idle ones are likely dead). */
  renewIdle(): void {
    for (const item of this.idle.splice(0)) {
      // Counted as lent while its replacement is made, as discard() expects.
      this.lent++;
      this.discard(item);
    }
  }

  private returned(): void {
    this.lent--;
    if (this.lent === 0) this.drained?.();
  }

  private destroyQuietly(item: T): void {
    this.madeAt.delete(item);
    try {
      void Promise.resolve(this.hooks.destroy(item)).catch(() => {
        // Already broken; nothing more to free.
      });
    } catch {
      // Already broken; nothing more to free.
    }
  }

  /** Stops lending, fails the waiters, waits for lent resources, then destroys everything (once). */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new PoolClosedError('the pool is closing'));
    }
    if (this.lent > 0) await new Promise<void>((resolve) => (this.drained = resolve));
    await Promise.all(this.idle.splice(0).map((item) => Promise.resolve().then(() => this.hooks.destroy(item)).catch(() => {})));
  }
}
