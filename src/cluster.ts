import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue, type Registry } from 'prom-client';
import type { Config } from './config/schema.js';
import { NonceJournal } from './http/auth/nonce-journal.js';
import { ReplayGuard, type SharedNonces, type SharedVerdict } from './http/auth/replay-guard.js';
import type { ChangeLock } from './keys/change-lock.js';
import { LifecycleError } from './keys/errors.js';
import type { Logger } from './observability/logger.js';
import { AccountLimiter, type ThrottleDecision } from './throttle/account-limiter.js';

/**
 * `server.workers` > 1: node:cluster. The primary bootstraps (demo), validates the config, forks the workers and
 * holds what the workers must share without Redis; each worker is a whole gateway (its own C_Initialize, sessions,
 * handles — SoftHSMv2 state is per process) behind the one listening socket the primary shares out.
 *
 * Shared through the primary (IPC), so that N workers behave as one gateway:
 * - the per-account limit: the primary's AccountLimiter (the sliding window of counted slots, in memory) counts for every worker
 *   (with `throttle.redis`, Redis counts instead, as across replicas); a worker that gets no answer limits locally
 *   at its share, as a replica does without Redis;
 * - the replay guard: a nonce accepted by one worker is refused by the others (each worker keeps its own guard as
 *   well; with Redis the nonces are shared there instead); the primary's guard has the journal (`replay.journal`),
 *   so a restart of the whole cluster still refuses what it accepted; a worker that gets no answer refuses the request
 *   (or decides locally, `replay.whenSharedStoreDown`);
 *   a request's nonce check and throttle ask travel together, and everything asked in the same tick goes in one
 *   message: one round trip per request at most, fewer under load (rate-limiter-flexible's RateLimiterCluster sends
 *   one message and arms one timer per request; measured at 1,000 req/s: p50 0.72-0.74 ms with this, 0.77-0.88 ms
 *   with RateLimiterCluster and a separate nonce message, 0.70-0.74 ms with no IPC at all);
 * - /metrics: whichever worker answers asks the primary, which collects the registry of every worker that listens and
 *   aggregates them (prom-client's aggregate); process metrics (CPU, memory, event-loop lag) carry a `worker` label.
 *
 * Signals: SIGTERM / SIGINT drain every worker (each runs the single-process drain; a worker signalled as well, as
 * the whole process group is, drains once) and the primary exits when they have; SIGHUP is passed on (each worker reloads). A worker that dies is replaced; one that dies before it ever
 * listened is a start-up failure, and the primary stops the others and exits 1.
 */
const GATE_CHANNEL = 'hsmgw:gate';
const METRICS_CHANNEL = 'hsmgw:metrics';
const REGISTRY_CHANNEL = 'hsmgw:registry';
/** The primary asks each serving worker for its registry (JSON) on this channel. */
const COLLECT_CHANNEL = 'hsmgw:metrics-collect';
/** A worker that does not hand its registry over within this is left out of that scrape (and said so). */
const COLLECT_TIMEOUT_MS = 2000;

type WorkerMetrics = MetricObjectWithValues<MetricValue<string>>[];

/** server.workers with `auto` resolved: one per core. */
export function workerCount(config: Config): number {
  return config.server.workers === 'auto' ? availableParallelism() : config.server.workers;
}

/** Which worker slot (0…N-1) this process fills; stable across restarts of that slot (audit file, metric label). */
export function workerSlot(): number | undefined {
  if (!cluster.isWorker) return undefined;
  const slot = Number(process.env.HSM_GATEWAY_WORKER_SLOT);
  return Number.isInteger(slot) ? slot : cluster.worker!.id - 1;
}

interface PrimaryOptions {
  workers: number;
  /** The per-account limits (throttle.defaultLimit / throttle.accounts), counted here for every worker. */
  limits: { defaultLimit: number; accountLimits: Readonly<Record<string, number>> };
  /** How long a nonce is remembered (as the workers' own guards), the guard's capacity and its journal. */
  replay: { ttlMs: number; maxEntries: number; maxEntriesPerAccount: number; journal?: string };
  /** How long SIGTERM waits for the workers to drain before killing them. */
  shutdownTimeoutMs: number;
  log: Logger;
}

export async function runPrimary(options: PrimaryOptions): Promise<void> {
  const channels = new PrimaryChannels(options);
  await channels.openJournal();
  const workers = superviseWorkers(options, channels);
  // `on`, not `once`: a second signal must not kill the primary mid-drain (its workers would exit at once with it:
  // a worker whose IPC channel closes exits).
  process.on('SIGTERM', () => workers.stop('SIGTERM'));
  process.on('SIGINT', () => workers.stop('SIGINT'));
  process.on('SIGHUP', () => workers.reload());
  options.log.info('cluster: starting workers', { workers: options.workers });
  workers.start();
}

/** The primary's side of the channels: the gate (nonce checks and throttle counts), the registry lock, the metrics. */
class PrimaryChannels {
  private readonly nonces: ReplayGuard;
  /** The workers that listen: a worker still starting has no registry to give, and one that died has none left. */
  private readonly serving = new Set<Worker>();
  private nextCollection = 0;
  private readonly collections = new Map<number, (metrics: WorkerMetrics | undefined) => void>();
  private journal: NonceJournal | undefined;
  private readonly limiter: AccountLimiter;
  private readonly registry = new RegistryLock();

  constructor(private readonly options: PrimaryOptions) {
    this.nonces = new ReplayGuard(options.replay.ttlMs, options.replay);
    this.limiter = new AccountLimiter({ ...options.limits, replicas: 1 });
  }

  /** The ids accepted before a restart, back in the guard; the journal for the ids accepted from now on. */
  async openJournal(): Promise<void> {
    const { journal, ttlMs } = this.options.replay;
    if (!journal) return;
    const opened = await NonceJournal.open(journal, ttlMs);
    for (const nonce of opened.remembered) this.nonces.restore(nonce);
    this.journal = opened.journal;
    this.options.log.info('replay guard: journal', { file: journal, restored: opened.remembered.length });
  }

  onMessage(worker: Worker, message: unknown): void {
    const m = message as { channel?: string; id?: number; items?: GateItem[] };
    if (m?.channel === GATE_CHANNEL && Array.isArray(m.items)) this.answerGate(worker, m.id, m.items);
    else if (m?.channel === REGISTRY_CHANNEL) this.registry.onMessage(worker, message as RegistryMessage);
    else if (m?.channel === METRICS_CHANNEL) this.answerMetrics(worker, m.id);
    else if (m?.channel === COLLECT_CHANNEL && m.id !== undefined) this.collections.get(m.id)?.((message as { metrics?: WorkerMetrics }).metrics);
  }

  /** A worker listens: its metrics are in every scrape from now on. */
  serves(worker: Worker): void {
    this.serving.add(worker);
  }

  /** A worker is gone: a lock it held or waited for is given to the next one; its metrics leave the scrapes. */
  forget(worker: Worker): void {
    this.registry.forget(worker);
    this.serving.delete(worker);
  }

  /** Everything a worker asked in one tick, answered in one message, in order. */
  private answerGate(worker: Worker, id: number | undefined, items: GateItem[]): void {
    Promise.all(items.map((item) => this.answerItem(item))).then(
      (results) => worker.isConnected() && worker.send({ channel: GATE_CHANNEL, id, results }),
      () => {}, // the worker's deadline turns this into its local fallback
    );
  }

  private async answerItem(item: GateItem): Promise<SharedVerdict | ThrottleDecision | null> {
    if (item[0] === 'consume') return this.limiter.consume(item[1]);
    const [, account, id, expiresAtMs] = item;
    if (item[0] === 'release') {
      this.nonces.release(account, id);
      return null;
    }
    const verdict = this.nonces.claim(account, id, expiresAtMs - Date.now());
    // Accepted: durable (handed to the OS) before the worker hears so, hence before its answer leaves.
    if (verdict === 'fresh' && this.journal) await this.journal.append({ account, id, expiresAtMs });
    return verdict;
  }

  /**
   * Every serving worker's registry, aggregated (prom-client's aggregate, each metric's own aggregator). Only the
   * workers that listen are asked: prom-client's own clusterMetrics() asks every forked worker, and a worker that is
   * still starting (after a restart) never answers, which failed the whole scrape after 5 s.
   */
  private answerMetrics(worker: Worker, id: number | undefined): void {
    Promise.all([...this.serving].map((w) => this.collectFrom(w)))
      .then((registries) => AggregatorRegistry.aggregate(registries.filter((r) => r !== undefined)).metrics())
      .then(
        (text) => worker.isConnected() && worker.send({ channel: METRICS_CHANNEL, id, text }),
        (err: unknown) => worker.isConnected() && worker.send({ channel: METRICS_CHANNEL, id, error: String((err as Error).message) }),
      );
  }

  /** One worker's registry, or undefined when it does not answer in time (that scrape goes on without it). */
  private collectFrom(worker: Worker): Promise<WorkerMetrics | undefined> {
    return new Promise((resolve) => {
      const id = this.nextCollection++;
      const done = (metrics: WorkerMetrics | undefined): void => {
        clearTimeout(timer);
        this.collections.delete(id);
        resolve(metrics);
      };
      const timer = setTimeout(() => {
        this.options.log.warn('cluster: a worker did not hand over its metrics in time; the scrape goes on without it', { pid: worker.process.pid });
        done(undefined);
      }, COLLECT_TIMEOUT_MS);
      this.collections.set(id, done);
      if (!worker.isConnected()) done(undefined);
      else worker.send({ channel: COLLECT_CHANNEL, id });
    });
  }
}

/**
 * Registry changes without Redis: one worker at a time holds the change lock, and a change one worker wrote is
 * announced to the others, so N workers behave as one gateway (the token's poll stays the bound).
 */
class RegistryLock {
  private holder: { worker: Worker; id: number } | undefined;
  private readonly waiting: Array<{ worker: Worker; id: number }> = [];

  onMessage(worker: Worker, m: RegistryMessage): void {
    if (m.op === 'lock' && m.id !== undefined) {
      this.waiting.push({ worker, id: m.id });
      this.grantNext();
    } else if (m.op === 'unlock' && this.holder?.worker === worker && this.holder.id === m.id) {
      this.holder = undefined;
      this.grantNext();
    } else if (m.op === 'changed') {
      for (const other of Object.values(cluster.workers ?? {})) {
        if (other && other !== worker && other.isConnected()) other.send({ channel: REGISTRY_CHANNEL, changed: true });
      }
    }
  }

  forget(worker: Worker): void {
    for (let i = this.waiting.length - 1; i >= 0; i--) if (this.waiting[i]!.worker === worker) this.waiting.splice(i, 1);
    if (this.holder?.worker === worker) {
      this.holder = undefined; // it died holding the lock
      this.grantNext();
    }
  }

  private grantNext(): void {
    while (!this.holder && this.waiting.length > 0) {
      const next = this.waiting.shift()!;
      if (!next.worker.isConnected()) continue;
      this.holder = next;
      next.worker.send({ channel: REGISTRY_CHANNEL, id: next.id, granted: true });
    }
  }
}

const signalWorkers = (signal: NodeJS.Signals): void => {
  for (const w of Object.values(cluster.workers ?? {})) w?.process.kill(signal);
};

const waitForWorkers = async (): Promise<void> => {
  while (Object.keys(cluster.workers ?? {}).length > 0) await new Promise((r) => setTimeout(r, 20));
};

/**
 * The workers' lives: one per slot; a worker that dies is replaced in its slot, one that dies before it ever listened
 * stops the gateway (exit 1); a stop drains them all (killed after the shutdown timeout) and exits 0.
 */
function superviseWorkers(options: PrimaryOptions, channels: PrimaryChannels): { start(): void; stop(signal: NodeJS.Signals): void; reload(): void } {
  const { log } = options;
  let stopping = false;
  const listening = new Set<number>();

  const onExit = (slot: number, worker: Worker, code: number | null, signal: string | null): void => {
    channels.forget(worker);
    if (stopping) return;
    if (!listening.has(slot)) {
      // It never served: a configuration or token problem the others have too. Stop like a single process would.
      log.error('a worker failed to start; stopping', { slot, code, signal });
      stopping = true;
      signalWorkers('SIGTERM');
      waitForWorkers().then(() => process.exit(1));
      return;
    }
    listening.delete(slot);
    log.error('a worker died; starting another in its slot', { slot, code, signal });
    setTimeout(() => !stopping && fork(slot), 500).unref();
  };

  const fork = (slot: number): void => {
    const worker = cluster.fork({ HSM_GATEWAY_WORKER_SLOT: String(slot) });
    worker.on('message', (message) => channels.onMessage(worker, message));
    worker.once('listening', () => {
      listening.add(slot);
      channels.serves(worker);
    });
    worker.once('exit', (code, signal) => onExit(slot, worker, code, signal));
  };

  return {
    start() {
      for (let slot = 0; slot < options.workers; slot++) fork(slot);
    },
    stop(signal) {
      if (stopping) return;
      stopping = true;
      log.info('signal received: draining the workers', { signal, workers: Object.keys(cluster.workers ?? {}).length });
      signalWorkers('SIGTERM');
      const killer = setTimeout(() => {
        log.error('workers did not drain in time: killing them');
        signalWorkers('SIGKILL');
      }, options.shutdownTimeoutMs + 5000);
      killer.unref();
      waitForWorkers().then(() => {
        log.info('stopped');
        process.exit(0);
      });
    },
    reload() {
      log.info('signal received: reloading every worker', { signal: 'SIGHUP' });
      signalWorkers('SIGHUP');
    },
  };
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

type GateItem = ['nonce' | 'release', account: string, id: number, expiresAtMs: number] | ['consume', account: string];

export interface ClusterGate {
  /** The primary's nonce guard. */
  nonces: SharedNonces;
  /** The primary's count for an account (AccountLimiter's `remote`). */
  consume(account: string): Promise<ThrottleDecision>;
}

/** A worker's side of the gate: asks made in the same tick travel in one message. */
export function clusterGate(timeoutMs = 1000): ClusterGate {
  const ask = requester<{ results: unknown[] }>(GATE_CHANNEL, timeoutMs);
  let batch: Array<{ item: GateItem; resolve: (result: unknown) => void; reject: (e: Error) => void }> = [];
  const flush = (): void => {
    const sent = batch;
    batch = [];
    ask({ items: sent.map((b) => b.item) }).then(
      ({ results }) => sent.forEach((b, i) => b.resolve(results[i])),
      (err: Error) => sent.forEach((b) => b.reject(err)),
    );
  };
  const enqueue = (item: GateItem): Promise<unknown> =>
    new Promise((resolve, reject) => {
      if (batch.length === 0) setImmediate(flush);
      batch.push({ item, resolve, reject });
    });
  return {
    nonces: {
      claim: ({ account, id, expiresAtMs }) => enqueue(['nonce', account, id, expiresAtMs]) as Promise<SharedVerdict>,
      release: (account, id) => void enqueue(['release', account, id, 0]).catch(() => undefined),
    },
    consume: (account) => enqueue(['consume', account]) as Promise<ThrottleDecision>,
  };
}

interface RegistryMessage {
  channel: string;
  op?: 'lock' | 'unlock' | 'changed';
  id?: number;
}

/** A worker's registry coordination without Redis: the primary's change lock, and changes announced to other workers. */
interface ClusterRegistryCoordination {
  lock: ChangeLock;
  /** Tells the other workers this one wrote a change. */
  announce: () => void;
  /** `listener` runs whenever another worker announced a change. */
  onChanged(listener: () => void): void;
}

export function clusterRegistryCoordination(waitMs = 15_000): ClusterRegistryCoordination {
  let next = 0;
  const granted = new Map<number, () => void>();
  const listeners: Array<() => void> = [];
  process.on('message', (message: unknown) => {
    const m = message as { channel?: string; changed?: boolean; granted?: boolean; id?: number };
    if (m?.channel !== REGISTRY_CHANNEL) return;
    if (m.changed === true) for (const listener of listeners) listener();
    else if (m.granted === true && m.id !== undefined) granted.get(m.id)?.();
  });
  return {
    async lock(work) {
      const id = next++;
      const acquired = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), waitMs);
        granted.set(id, () => {
          clearTimeout(timer);
          resolve(true);
        });
        process.send!({ channel: REGISTRY_CHANNEL, op: 'lock', id });
      });
      granted.delete(id);
      // Too late: if the grant still comes, give it straight back.
      if (!acquired) {
        granted.set(id, () => void process.send!({ channel: REGISTRY_CHANNEL, op: 'unlock', id }));
        throw new LifecycleError('unavailable', 'another worker is changing the registry; try again');
      }
      try {
        return await work();
      } finally {
        process.send!({ channel: REGISTRY_CHANNEL, op: 'unlock', id });
      }
    },
    announce: () => void process.send!({ channel: REGISTRY_CHANNEL, op: 'changed' }),
    onChanged: (listener) => void listeners.push(listener),
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

/** A worker's side of the primary's collection: this registry, as JSON, whenever the primary asks. */
export function answerMetricsCollection(registry: Registry): void {
  process.on('message', (message: unknown) => {
    const m = message as { channel?: string; id?: number };
    if (m?.channel !== COLLECT_CHANNEL || m.id === undefined) return;
    registry.getMetricsAsJSON().then(
      (metrics) => process.send?.({ channel: COLLECT_CHANNEL, id: m.id, metrics }),
      () => process.send?.({ channel: COLLECT_CHANNEL, id: m.id }),
    );
  });
}
