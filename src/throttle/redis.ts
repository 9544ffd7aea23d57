import { Redis } from 'ioredis';
import { readSecret } from '../config/load.js';
import type { SecretRef } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';

/**
 * The Redis connection of a request's path, shared with the other replicas: the limiter's counts and the replay
 * guard's nonces. Commands fail fast while Redis is away (no offline queue), and a command that takes longer than
 * `commandTimeoutMs` (50 ms by default) fails too — a stalled Redis (SIGSTOP, a long fork, a network that drops
 * packets) costs each request that deadline, not the stall: the limiter's local share takes over and the nonce check
 * says it cannot tell (the request is refused or decided locally, `replay.whenSharedStoreDown`). The client keeps
 * reconnecting and everything is shared again when Redis answers. Both transitions are logged.
 */
export function connectRedis(options: { url: string; password?: SecretRef; commandTimeoutMs?: number }, log: Logger): Redis {
  const redis = new Redis(options.url, {
    password: options.password ? readSecret(options.password) : undefined,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: 1000,
    commandTimeout: options.commandTimeoutMs ?? 50,
    retryStrategy: (attempt) => Math.min(attempt * 100, 1000),
  });
  let shared = false;
  redis.on('ready', () => {
    shared = true;
    log.info('throttling: Redis reachable, limits shared across replicas');
  });
  redis.on('close', () => {
    if (shared) log.warn('throttling: Redis unreachable, each replica limits locally at its share of the quota');
    shared = false;
  });
  // Errors are expected while Redis is away: the close/ready transitions above are what an operator needs.
  redis.on('error', () => {});
  return redis;
}
