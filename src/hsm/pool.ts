/**
 * A fixed-size pool of exclusive resources (PKCS#11 sessions: one operation per session at a time).
 * `acquire` waits in FIFO order up to a deadline; `discard` replaces a broken resource with a fresh one;
 * `drain` resolves once every lent resource is back, for graceful shutdown.
 */
export interface PoolHooks<T> {
  create: () => T;
  destroy: (item: T) => void;
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
  private closed = false;
  private drained: (() => void) | undefined;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly hooks: PoolHooks<T>,
    readonly size: number,
    private readonly maxWaiting = Number.POSITIVE_INFINITY,
  ) {
    for (let i = 0; i < size; i++) this.idle.push(hooks.create());
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

  release(item: T): void {
    const next = this.waiters.shift();
    if (next) {
      clearTimeout(next.timer);
      next.resolve(item);
      return;
    }
    this.lent--;
    this.idle.push(item);
    if (this.lent === 0) this.drained?.();
  }

  /** Destroys a broken resource and lends (or shelves) a fresh one in its place (none once closing). */
  discard(item: T): void {
    try {
      this.hooks.destroy(item);
    } catch {
      // Already broken; nothing more to free.
    }
    if (this.closed) {
      this.lent--;
      if (this.lent === 0) this.drained?.();
      return;
    }
    let fresh: T;
    try {
      fresh = this.hooks.create();
    } catch {
      // Cannot replace it now: the pool shrinks by one until the owner rebuilds it.
      this.lent--;
      if (this.lent === 0) this.drained?.();
      return;
    }
    this.release(fresh);
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
    for (const item of this.idle.splice(0)) {
      try {
        this.hooks.destroy(item);
      } catch {
        // Closing anyway.
      }
    }
  }
}
