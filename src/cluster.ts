import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import { RateLimiterClusterMaster } from 'rate-limiter-flexible';
import { ReplayGuard } from './http/auth/replay-guard.js';
import type { Logger } from './observability/logger.js';

/**
 * `server.workers` > 1: node:cluster. The primary bootstraps (demo), validates the config, forks the workers and
 * holds what the workers must share without Redis; each worker is a whole gateway (its own C_Initialize, sessions,
 * handles — SoftHSMv2 state is per process) behind the one listening socket the primary shares out.
 *
 * Shared through the primary (IPC), so that N workers behave as one gateway:
 * - the per-account limit: rate-limiter-flexible's RateLimiterClusterMaster counts, workers ask with
 *   RateLimiterCluster (with `throttle.redis`, Redis counts instead, as across replicas);
 * - the replay guard: a nonce accepted by one worker is refused by the others (each worker keeps its own guard as
 *   well; with Redis the nonces are shared there too);
 * - /metrics: whichever worker answers asks the primary, which aggregates every worker's registry (prom-client
 *   AggregatorRegistry); process metrics (CPU, memory, event-loop lag) carry a `worker` label.
 *
 * Signals: SIGTERM / SIGINT drain every worker (each runs the single-process drain) and the primary exits when they
 * have; SIGHUP is passed on (each worker reloads). A worker that dies is replaced; one that dies before it ever
 * listened is a start-up failure, and the primary stops the others and exits 1.
 */
const NONCE_CHANNEL = 'hsmgw:nonce';
const METRICS_CHANNEL = 'hsmgw:metrics';

/** Which worker slot (0…N-1) this process fills; stable across restarts of that slot (audit file, metric label). */
export function workerSlot(): number | undefined {
  if (!cluster.isWorker) return undefined;
  const slot = Number(process.env.HSM_GATEWAY_WORKER_SLOT);
  return Number.isInteger(slot) ? slot : cluster.worker!.id - 1;
}

export interface PrimaryOptions {
  workers: number;
  /** How long a nonce is remembered (as the workers' own guards). */
  replayTtlMs: number;
  /** How long SIGTERM waits for the workers to drain before killing them. */
  shutdownTimeoutMs: number;
  log: Logger;
}

export function runPrimary(options: PrimaryOptions): void {
  const { log } = options;
  new RateLimiterClusterMaster();
  const aggregator = new AggregatorRegistry();
  const nonces = new ReplayGuard(options.replayTtlMs);
  let stopping = false;
  const listening = new Set<number>();

  const onMessage = (worker: Worker, message: unknown): void => {
    const m = message as { channel?: string; id?: number; checks?: Array<[string, string]> };
    if (m?.channel === NONCE_CHANNEL && Array.isArray(m.checks)) {
      worker.send({ channel: NONCE_CHANNEL, id: m.id, results: m.checks.map(([accessKeyId, nonce]) => nonces.checkAndRemember(accessKeyId, nonce)) });
    } else if (m?.channel === METRICS_CHANNEL) {
      aggregator.clusterMetrics().then(
        (text) => worker.isConnected() && worker.send({ channel: METRICS_CHANNEL, id: m.id, text }),
        (err: unknown) => worker.isConnected() && worker.send({ channel: METRICS_CHANNEL, id: m.id, error: String((err as Error).message) }),
      );
    }
  };

  const fork = (slot: number): void => {
    const worker = cluster.fork({ HSM_GATEWAY_WORKER_SLOT: String(slot) });
    worker.on('message', (message) => onMessage(worker, message));
    worker.once('listening', () => listening.add(slot));
    worker.once('exit', (code, signal) => {
      if (stopping) return;
      if (!listening.has(slot)) {
        // It never served: a configuration or token problem the others have too. Stop like a single process would.
        log.error('a worker failed to start; stopping', { slot, code, signal });
        stopping = true;
        for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
        waitForWorkers().then(() => process.exit(1));
        return;
      }
      listening.delete(slot);
      log.error('a worker died; starting another in its slot', { slot, code, signal });
      setTimeout(() => !stopping && fork(slot), 500).unref();
    });
  };

  const waitForWorkers = async (): Promise<void> => {
    while (Object.keys(cluster.workers ?? {}).length > 0) await new Promise((r) => setTimeout(r, 20));
  };

  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info('signal received: draining the workers', { signal, workers: Object.keys(cluster.workers ?? {}).length });
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    const killer = setTimeout(() => {
      log.error('workers did not drain in time: killing them');
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
    }, options.shutdownTimeoutMs + 5000);
    killer.unref();
    waitForWorkers().then(() => {
      log.info('stopped');
      process.exit(0);
    });
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    log.info('signal received: reloading every worker', { signal: 'SIGHUP' });
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGHUP');
  });

  log.info('cluster: starting workers', { workers: options.workers });
  for (let slot = 0; slot < options.workers; slot++) fork(slot);
}

/** A worker's line to the primary: request/answer over the cluster IPC channel, one channel per kind. */
function requester<Answer>(channel: string, timeoutMs: number): (payload: Record<string, unknown>) => Promise<Answer> {
  let next = 0;
  const pending = new Map<number, { resolve: (a: Answer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  process.on('message', (message: unknown) => {
    const m = message as { channel?: string; id?: number } & Answer;
    if (m?.channel !== channel || m.id === undefined) return;
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    clearTimeout(p.timer);
    p.resolve(m);
  });
  return (payload) =>
    new Promise<Answer>((resolve, reject) => {
      const id = next++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`no answer from the cluster primary within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, { resolve, reject, timer });
      process.send!({ channel, id, ...payload });
    });
}

/**
 * The primary's nonce guard, in the shape SharedReplayGuard expects of Redis (SET NX PX). Checks made in the same
 * tick travel in one message, so the IPC cost per request falls as the load rises.
 */
export function clusterNonceStore(): { set(key: string, value: string, px: 'PX', ms: number, nx: 'NX'): Promise<string | null> } {
  const ask = requester<{ results: boolean[] }>(NONCE_CHANNEL, 1000);
  let batch: Array<{ check: [string, string]; resolve: (ok: boolean) => void; reject: (e: Error) => void }> = [];
  const flush = (): void => {
    const sent = batch;
    batch = [];
    ask({ checks: sent.map((b) => b.check) }).then(
      ({ results }) => sent.forEach((b, i) => b.resolve(results[i] === true)),
      (err: Error) => sent.forEach((b) => b.reject(err)),
    );
  };
  return {
    set(key) {
      // key: hsmgw:nonce:<accessKeyId>:<nonce> (the access key id has no colon; the nonce may)
      const rest = key.slice('hsmgw:nonce:'.length);
      const colon = rest.indexOf(':');
      return new Promise<boolean>((resolve, reject) => {
        if (batch.length === 0) setImmediate(flush);
        batch.push({ check: [rest.slice(0, colon), rest.slice(colon + 1)], resolve, reject });
      }).then((ok) => (ok ? 'OK' : null));
    },
  };
}

/** The whole cluster's metrics, aggregated by the primary. */
export function clusterMetricsText(): () => Promise<string> {
  const ask = requester<{ text?: string; error?: string }>(METRICS_CHANNEL, 6000);
  return async () => {
    const answer = await ask({});
    if (answer.error !== undefined) throw new Error(answer.error);
    return answer.text!;
  };
}
