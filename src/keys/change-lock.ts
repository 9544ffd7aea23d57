import { randomBytes } from 'node:crypto';
import { LifecycleError } from './errors.js';

/**
 * Serializes registry changes across replicas. Every change starts from a fresh read of the token, so with the lock
 * two replicas never write over each other (e.g. one adds an alias while another disables the same key) and neither
 * is refused. Cluster workers without Redis use the primary's lock (cluster.ts); the processes sharing a SoftHSMv2
 * token, a lock file in its token directory (host-lock.ts). Elsewhere, separate replicas without Redis are
 * serialized per process only; across them, the token store's compare-and-swap (registry-cas.ts) decides: of two
 * simultaneous changes of one record (or two bindings of one alias) at most one is made, the other is answered 409
 * (Rejected.UnexpectedState) and nothing of it stays — never a silent lost update or a double binding.
 */
export type ChangeLock = <T>(work: () => Promise<T>) => Promise<T>;

/** No lock across processes: changes are serialized inside this process only. */
export const localOnly: ChangeLock = (work) => work();

interface LockClient {
  set(key: string, value: string, px: 'PX', ms: number, nx: 'NX'): Promise<string | null>;
  eval(script: string, keys: number, ...args: string[]): Promise<unknown>;
}

/** Deletes the lock only if it is still ours (it may have expired and been taken by another replica). */
const RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/**
 * A Redis lock (SET NX PX with a random owner token, compare-and-delete to release). The TTL outlives any change
 * (a key generation is the longest: ~1 s for RSA-3072 on SoftHSMv2), so a replica that dies holding it blocks
 * changes for at most ttlMs. Redis unreachable: the change is refused (503), never made unserialized.
 */
export function redisChangeLock(redis: LockClient, options: { key?: string; ttlMs?: number; waitMs?: number } = {}): ChangeLock {
  const key = options.key ?? 'hsmgw:registry:lock';
  const ttlMs = options.ttlMs ?? 30_000;
  const waitMs = options.waitMs ?? 10_000;
  return async (work) => {
    const owner = randomBytes(16).toString('hex');
    const deadline = Date.now() + waitMs;
    for (let delay = 10; ; delay = Math.min(delay * 2, 200)) {
      let taken: string | null;
      try {
        taken = await redis.set(key, owner, 'PX', ttlMs, 'NX');
      } catch {
        throw new LifecycleError('unavailable', 'the registry lock (Redis) is unreachable; try again');
      }
      if (taken === 'OK') break;
      if (Date.now() + delay > deadline) throw new LifecycleError('unavailable', 'another replica is changing the registry; try again');
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
    try {
      return await work();
    } finally {
      await redis.eval(RELEASE, 1, key, owner).catch(() => undefined); // expires by itself otherwise
    }
  };
}

/** Redis pub/sub channel on which a writer announces a registry change, so other processes refresh at once. */
export const REGISTRY_CHANNEL = 'hsmgw:registry:changed';

/** How processes sharing a Redis coordinate registry changes: the lock, and the announcement after a write. */
export function redisCoordination(redis: LockClient & { publish(channel: string, message: string): Promise<unknown> }): {
  lock: ChangeLock;
  announce: () => void;
} {
  return { lock: redisChangeLock(redis), announce: () => void redis.publish(REGISTRY_CHANNEL, 'changed').catch(() => undefined) };
}
