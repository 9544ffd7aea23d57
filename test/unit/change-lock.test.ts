import { describe, expect, it } from 'vitest';
import { redisChangeLock } from '../../src/keys/change-lock.js';
import { LifecycleError } from '../../src/keys/errors.js';

/** SET NX PX and the compare-and-delete script, in memory (the integration test uses a real redis-server). */
function fakeRedis(options: { down?: boolean } = {}) {
  const values = new Map<string, string>();
  return {
    values,
    async set(key: string, value: string, _px: 'PX', _ms: number, _nx: 'NX'): Promise<string | null> {
      if (options.down) throw new Error('Stream is not writeable');
      if (values.has(key)) return null;
      values.set(key, value);
      return 'OK';
    },
    async eval(_script: string, _keys: number, key: string, owner: string): Promise<number> {
      if (values.get(key) !== owner) return 0;
      values.delete(key);
      return 1;
    },
  };
}

describe('redisChangeLock', () => {
  it('when two changes run at once, then the second starts only after the first released the lock', async () => {
    const redis = fakeRedis();
    const lock = redisChangeLock(redis);
    const events: string[] = [];
    const change = (name: string) =>
      lock(async () => {
        events.push(`${name} start`);
        await new Promise((r) => setTimeout(r, 30));
        events.push(`${name} end`);
      });
    await Promise.all([change('a'), change('b')]);
    expect(events).toEqual(['a start', 'a end', 'b start', 'b end']);
    expect(redis.values.size).toBe(0);
  });

  it('when the change fails, then the lock is released all the same', async () => {
    const redis = fakeRedis();
    const lock = redisChangeLock(redis);
    await expect(lock(async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(redis.values.size).toBe(0);
  });

  it('when another holder keeps the lock past the wait, then the change is refused as unavailable', async () => {
    const redis = fakeRedis();
    redis.values.set('hsmgw:registry:lock', 'someone-else');
    const error = await redisChangeLock(redis, { waitMs: 100 })(async () => 'never').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LifecycleError);
    expect((error as LifecycleError).kind).toBe('unavailable');
  });

  it('when Redis is unreachable, then the change is refused, not made unserialized', async () => {
    let ran = false;
    const error = await redisChangeLock(fakeRedis({ down: true }))(async () => {
      ran = true;
    }).catch((e: unknown) => e);
    expect((error as LifecycleError).kind).toBe('unavailable');
    expect(ran).toBe(false);
  });
});
