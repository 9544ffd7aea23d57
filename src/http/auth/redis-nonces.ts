import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from '../../observability/logger.js';
import type { ReplayGuard, RememberedNonce, SharedNonces, SharedVerdict } from './replay-guard.js';

/**
 * The nonce ids every replica shares, in Redis: `hsmgw:nonce:<id in hex>` (fixed size, whatever the client sent)
 * with the request's own expiry, set only for requests that passed authentication, and deleted again when the
 * request is throttled. Each call has the connection's deadline (`throttle.redis.commandTimeoutMs`): past it the call
 * rejects, and ReplayCheck refuses or decides locally (`replay.whenSharedStoreDown`).
 *
 * Redis losing its data (a restart without persistence, FLUSHALL, a failover to an empty replica) would silently
 * forget every nonce and let captured requests play again on any replica. The replicas notice it through an epoch:
 * `hsmgw:epoch` holds a random value every replica adopts; the claim script compares it with the caller's, so a
 * replica notices on its next request, and an idle one within `pollMs`. A replica that sees the epoch it knew change
 * (or vanish) concludes that Redis lost its nonces: it marks `hsmgw:nonce-recovery` for `graceMs` (Redis expires the
 * mark by its own clock) and re-publishes every id of its own guard (the live ones, with their remaining time). While
 * the mark exists a claim that finds the id free answers `unsure` (it is stored all the same): another replica may not
 * have re-published yet, so ReplayCheck refuses such requests (or accepts them, for signing with `local`). The grace
 * must cover the slowest replica's poll and re-publication (5 s by default for a 1 s poll).
 * Persistence: the gateway logs at start whether Redis keeps an append-only file; it does not rely on it (even with
 * AOF `everysec` the last second may be lost, and FLUSHALL is always possible) — the epoch is what it relies on.
 */
const EPOCH_KEY = 'hsmgw:epoch';
/**
 * Redis keeps an id this much longer than the request's own window: the expiry is computed on the accepting
 * replica's clock, and a replica whose clock runs behind by up to this much still finds the id.
 */
const HOST_SKEW_ALLOWANCE_MS = 5000;
const RECOVERY_KEY = 'hsmgw:nonce-recovery';

// KEYS: epoch, nonce, recovery mark. ARGV: the caller's epoch, ms to keep. → -1 epoch changed (nothing stored),
// 0 used, 1 fresh, 2 stored but Redis lost its data lately (the replicas are re-publishing).
const CLAIM_SCRIPT = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if not redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'NX') then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
return 1
`;
const CLAIM_SCRIPT_SHA = createHash('sha1').update(CLAIM_SCRIPT).digest('hex');
const VERDICTS: Record<number, SharedVerdict> = { 0: 'used', 1: 'fresh', 2: 'unsure' };

export const nonceKey = (id: number): string => `hsmgw:nonce:${id.toString(16)}`;

export class RedisNonces implements SharedNonces {
  private epoch: string | undefined;
  private syncing: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly redis: Redis,
    /** This replica's own guard: what it re-publishes when Redis has lost its data. */
    private readonly guard: ReplayGuard,
    private readonly options: { graceMs: number; pollMs?: number; log: Logger },
  ) {
    redis.on('ready', () => void this.sync());
    if (redis.status === 'ready') void this.sync();
    this.timer = setInterval(() => void this.sync(), options.pollMs ?? 1000);
    this.timer.unref();
  }

  async claim(nonce: RememberedNonce): Promise<SharedVerdict> {
    if (this.epoch === undefined) await this.sync(); // the first requests after start wait for the epoch (one round trip or so)
    const keepMs = Math.max(1, Math.ceil(nonce.expiresAtMs - Date.now())) + HOST_SKEW_ALLOWANCE_MS;
    const args = [EPOCH_KEY, nonceKey(nonce.id), RECOVERY_KEY, this.epoch ?? '', keepMs];
    let reply: unknown;
    try {
      reply = await this.redis.evalsha(CLAIM_SCRIPT_SHA, 3, ...args);
    } catch (err) {
      if (!(err instanceof Error && err.message.startsWith('NOSCRIPT'))) throw err;
      reply = await this.redis.eval(CLAIM_SCRIPT, 3, ...args);
    }
    if (reply === -1) {
      void this.sync();
      return 'unsure'; // nothing stored: whether the id is known elsewhere cannot be told until the epoch is adopted
    }
    return VERDICTS[reply as number] ?? 'unsure';
  }

  release(_account: string, id: number): void {
    void this.redis.del(nonceKey(id)).catch(() => undefined); // it expires by itself otherwise
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Adopts Redis's epoch; when the one this replica knew is gone, marks the recovery and re-publishes its own ids. */
  private sync(): Promise<void> {
    this.syncing ??= this.adopt().finally(() => (this.syncing = undefined)).catch(() => undefined);
    return this.syncing;
  }

  private async adopt(): Promise<void> {
    const current = await this.redis.get(EPOCH_KEY);
    if (current !== null && current === this.epoch) return;
    // Lost: the epoch this replica had adopted changed, or no epoch is left while this replica holds ids (it restarted
    // with its journal). A replica starting with nothing against an empty Redis is a first start: no grace.
    const lost = (this.epoch !== undefined && current !== this.epoch) || (current === null && this.guard.size > 0);
    if (lost) await this.redis.set(RECOVERY_KEY, '1', 'PX', this.options.graceMs);
    if (current === null) await this.redis.set(EPOCH_KEY, randomBytes(12).toString('hex'), 'NX');
    const adopted = await this.redis.get(EPOCH_KEY);
    const published = await this.republish();
    this.epoch = adopted ?? undefined;
    if (lost) this.options.log.warn('replay guard: Redis lost its nonces (new epoch); re-published this replica\'s', { published });
    else this.options.log.info('replay guard: nonces shared in Redis', { published });
  }

  /** Every live id of this replica's guard, SET NX with its remaining time, 1,000 per pipeline. */
  private async republish(): Promise<number> {
    let count = 0;
    let pipeline = this.redis.pipeline();
    const now = Date.now();
    for (const nonce of this.guard.entries()) {
      let ms = Math.ceil(nonce.expiresAtMs - now);
      if (ms <= 0) continue;
      ms += HOST_SKEW_ALLOWANCE_MS;
      pipeline.set(nonceKey(nonce.id), '1', 'PX', ms, 'NX');
      if (++count % 1000 === 0) {
        await pipeline.exec();
        pipeline = this.redis.pipeline();
      }
    }
    if (count % 1000 !== 0) await pipeline.exec();
    return count;
  }
}

/** Whether Redis keeps an append-only file (logged at start; the gateway relies on the epoch, not on this). */
export async function appendOnly(redis: Redis): Promise<boolean | undefined> {
  try {
    return /aof_enabled:1/.test(await redis.info('persistence'));
  } catch {
    return undefined;
  }
}
