import { afterEach, describe, expect, it, vi } from 'vitest';
import { Pool, PoolClosedError, PoolFullError, PoolTimeoutError } from '../../src/hsm/pool.js';

interface Item {
  id: number;
}

/** A resource factory that numbers what it creates and records what it destroys. */
function fakeFactory() {
  let next = 1;
  const destroyed: number[] = [];
  const hooks = {
    create: vi.fn((): Item => ({ id: next++ })),
    destroy: vi.fn((item: Item) => {
      destroyed.push(item.id);
    }),
  };
  return { hooks, destroyed };
}

/** What the owner makes at start-up and hands to the pool. */
function made(hooks: { create: () => Item }, n: number): Item[] {
  return Array.from({ length: n }, () => hooks.create());
}

/** Lets every already-queued promise callback run (no timers involved). */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Tracks a promise's outcome without awaiting it. */
function track<T>(p: Promise<T>) {
  const state: { status: 'pending' | 'fulfilled' | 'rejected'; value?: T; error?: unknown } = { status: 'pending' };
  p.then(
    (value) => Object.assign(state, { status: 'fulfilled', value }),
    (error: unknown) => Object.assign(state, { status: 'rejected', error }),
  );
  return state;
}

describe('Pool', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('when it is built, then it creates `size` resources up front and lends none', () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 3));
    expect(hooks.create).toHaveBeenCalledTimes(3);
    expect(pool.size).toBe(3);
    expect(pool.inUse).toBe(0);
    expect(pool.waiting).toBe(0);
  });

  it('when a resource is released, then the next acquire gets it again and nothing new is created', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const first = await pool.acquire(1000);
    expect(pool.inUse).toBe(1);
    pool.release(first);
    expect(pool.inUse).toBe(0);
    expect(await pool.acquire(1000)).toBe(first);
    expect(hooks.create).toHaveBeenCalledTimes(1);
  });

  it('when several resources are acquired, then each borrower gets a different one', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 3));
    const items = await Promise.all([pool.acquire(1000), pool.acquire(1000), pool.acquire(1000)]);
    expect(new Set(items.map((i) => i.id)).size).toBe(3);
    expect(pool.inUse).toBe(3);
  });

  it('when all are lent, then acquire waits and the waiters get released resources in FIFO order', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 2));
    const a = await pool.acquire(1000);
    const b = await pool.acquire(1000);
    const w1 = track(pool.acquire(60_000));
    const w2 = track(pool.acquire(60_000));
    const w3 = track(pool.acquire(60_000));
    await settle();
    expect(pool.waiting).toBe(3);
    expect([w1.status, w2.status, w3.status]).toEqual(['pending', 'pending', 'pending']);

    pool.release(b);
    await settle();
    expect(w1).toMatchObject({ status: 'fulfilled', value: b });
    expect([w2.status, w3.status]).toEqual(['pending', 'pending']);

    pool.release(a);
    await settle();
    expect(w2).toMatchObject({ status: 'fulfilled', value: a });
    expect(w3.status).toBe('pending');

    pool.release(b);
    await settle();
    expect(w3).toMatchObject({ status: 'fulfilled', value: b });
    expect(pool.waiting).toBe(0);
    expect(pool.inUse).toBe(2);
  });

  it('when nothing is released before the deadline, then acquire rejects with PoolTimeoutError and stops waiting', async () => {
    vi.useFakeTimers();
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const held = await pool.acquire(100);
    const waiter = pool.acquire(100);
    const outcome = expect(waiter).rejects.toBeInstanceOf(PoolTimeoutError);
    expect(pool.waiting).toBe(1);
    await vi.advanceTimersByTimeAsync(99);
    expect(pool.waiting).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    await outcome;
    expect(pool.waiting).toBe(0);
    // The resource released later goes back on the shelf, not to the waiter that gave up.
    pool.release(held);
    expect(pool.inUse).toBe(0);
    expect(await pool.acquire(100)).toBe(held);
  });

  it('when the first of two waiters times out, then the second one still gets the next released resource', async () => {
    vi.useFakeTimers();
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const held = await pool.acquire(100);
    const early = pool.acquire(100);
    const earlyOutcome = expect(early).rejects.toBeInstanceOf(PoolTimeoutError);
    const late = track(pool.acquire(10_000));
    await vi.advanceTimersByTimeAsync(100);
    await earlyOutcome;
    expect(pool.waiting).toBe(1);
    pool.release(held);
    await vi.advanceTimersByTimeAsync(0);
    expect(late).toMatchObject({ status: 'fulfilled', value: held });
  });

  it('when a resource is discarded, then it is destroyed and a fresh one takes its place', async () => {
    const { hooks, destroyed } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const broken = await pool.acquire(1000);
    pool.discard(broken);
    expect(destroyed).toEqual([broken.id]);
    expect(hooks.create).toHaveBeenCalledTimes(2);
    // The slot stays lent until the (asynchronous) replacement arrives.
    expect(pool.inUse).toBe(1);
    await settle();
    expect(pool.inUse).toBe(0);
    const fresh = await pool.acquire(1000);
    expect(fresh).not.toBe(broken);
    expect(fresh.id).toBe(2);
  });

  it('when a resource is discarded while someone waits, then the waiter gets the fresh one', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const broken = await pool.acquire(1000);
    const waiter = track(pool.acquire(60_000));
    pool.discard(broken);
    await settle();
    expect(waiter.status).toBe('fulfilled');
    expect(waiter.value).not.toBe(broken);
    expect(pool.inUse).toBe(1);
  });

  it('when destroying the broken resource throws, then discard still replaces it', async () => {
    const { hooks } = fakeFactory();
    hooks.destroy.mockImplementationOnce(() => {
      throw new Error('already closed');
    });
    const pool = new Pool(hooks, made(hooks, 1));
    const broken = await pool.acquire(1000);
    expect(() => pool.discard(broken)).not.toThrow();
    expect((await pool.acquire(1000)).id).toBe(2);
  });

  it('when the replacement cannot be created, then the pool shrinks by one and nothing is lent', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const broken = await pool.acquire(1000);
    hooks.create.mockImplementationOnce(() => {
      throw new Error('token gone');
    });
    pool.discard(broken);
    expect(pool.inUse).toBe(0);
    await expect(pool.close()).resolves.toBeUndefined();
  });

  it('when a resource made after a moment is asked for, then an older idle one is destroyed and replaced, and a newer one is lent as it is', async () => {
    const { hooks, destroyed } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 2));
    const broken = await pool.acquire(1000);
    const moment = pool.made;
    pool.discard(broken); // its replacement (3) is made after the moment
    await settle();
    expect((await pool.acquireMadeAfter(moment, 1000)).id).toBe(3);
    expect((await pool.acquireMadeAfter(moment, 1000)).id).toBe(4); // 2 was older: replaced
    expect(destroyed.sort()).toEqual([1, 2]);
    expect(pool.inUse).toBe(2);
  });

  it('when the replacement for an older resource cannot be made, then the pool shrinks by one and the caller gets the error', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    hooks.create.mockImplementationOnce(() => {
      throw new Error('token gone');
    });
    await expect(pool.acquireMadeAfter(pool.made, 1000)).rejects.toThrow('token gone');
    expect(pool.inUse).toBe(0);
    await expect(pool.close()).resolves.toBeUndefined();
  });

  it('when closed with nothing lent, then it destroys every resource at once', async () => {
    const { hooks, destroyed } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 3));
    await pool.close();
    expect(destroyed.sort()).toEqual([1, 2, 3]);
  });

  it('when closed, then waiters are rejected with PoolClosedError, close waits for lent resources, then destroys all', async () => {
    const { hooks, destroyed } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 2));
    const a = await pool.acquire(1000);
    const b = await pool.acquire(1000);
    const waiter = track(pool.acquire(60_000));

    const closing = track(pool.close());
    await settle();
    expect(waiter.status).toBe('rejected');
    expect(waiter.error).toBeInstanceOf(PoolClosedError);
    expect(pool.waiting).toBe(0);
    expect(closing.status).toBe('pending');
    expect(destroyed).toEqual([]);

    pool.release(a);
    await settle();
    expect(closing.status).toBe('pending');
    expect(destroyed).toEqual([]);

    pool.release(b);
    await settle();
    expect(closing.status).toBe('fulfilled');
    expect(destroyed.sort()).toEqual([a.id, b.id].sort());
  });

  it('when closing or closed, then acquire rejects with PoolClosedError', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const held = await pool.acquire(1000);
    const closing = pool.close();
    await expect(pool.acquire(1000)).rejects.toBeInstanceOf(PoolClosedError);
    pool.release(held);
    await closing;
    await expect(pool.acquire(1000)).rejects.toBeInstanceOf(PoolClosedError);
  });

  it('when a lent resource is discarded during close, then close still finishes and opens no replacement', async () => {
    const { hooks, destroyed } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const broken = await pool.acquire(1000);
    const closing = track(pool.close());
    pool.discard(broken);
    await settle();
    expect(closing.status).toBe('fulfilled');
    // A closing pool (a token being re-initialized) must not open new sessions on the old module.
    expect(destroyed).toEqual([1]);
  });
  it('when close() is called twice while a resource is lent, then both calls resolve after the release', async () => {
    const { hooks, destroyed } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1));
    const held = await pool.acquire(1000);
    const first = track(pool.close());
    const second = track(pool.close());
    pool.release(held);
    await settle();
    expect(second.status).toBe('fulfilled');
    expect(first.status).toBe('fulfilled');
    expect(destroyed).toEqual([held.id]);
  });
});

describe('Pool wait queue bound', () => {
  it('when maxWaiting requests already wait, then the next acquire fails at once with PoolFullError', async () => {
    const { hooks } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 1), 2);
    const held = await pool.acquire(1000);
    const waiting = [pool.acquire(1000), pool.acquire(1000)].map((p) => p.catch((e: unknown) => e));
    await expect(pool.acquire(1000)).rejects.toBeInstanceOf(PoolFullError);
    expect(pool.waiting).toBe(2);
    const closed = pool.close();
    expect((await Promise.all(waiting)).every((e) => e instanceof PoolClosedError)).toBe(true);
    pool.release(held);
    await closed;
  });

  it('when the idle resources are renewed, then each is destroyed and replaced, the lent ones are left alone, and close still waits for the lent one', async () => {
    const { hooks, destroyed } = fakeFactory();
    const pool = new Pool(hooks, made(hooks, 3));
    const held = await pool.acquire(1000);
    pool.renewIdle();
    await settle();
    expect(destroyed.sort()).toEqual([1, 2, 3].filter((id) => id !== held.id).sort());
    expect(hooks.create).toHaveBeenCalledTimes(5);
    expect(pool.inUse).toBe(1);
    const fresh = [await pool.acquire(1000), await pool.acquire(1000)];
    expect(fresh.map((i) => i.id).sort()).toEqual([4, 5]);
    for (const item of [held, ...fresh]) pool.release(item);
    expect(pool.inUse).toBe(0);
    await pool.close();
  });
});
