import { createRequire } from 'node:module';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The gateway's Prometheus metrics: its own, named hsm_gateway_*, and Node's defaults under their standard names
 * (process_*, nodejs_*). Labels are bounded: actions come from the dispatch map (anything else is
 * `unknown`), codes from the error catalog, mechanisms from the algorithm catalog, accounts from the operator's
 * configuration and capped (AccountLabels). No key ids, request ids or messages are ever labels.
 */
type Outcome = 'success' | 'client_error' | 'server_error' | 'throttled';

interface MetricSources {
  sessions: () => Array<{ token: string; inUse: number; idle: number; waiting: number }>;
  tokensUp: () => Array<{ token: string; up: boolean }>;
  limiterBackend: () => 'memory' | 'cluster' | 'redis' | 'local_fallback';
  /** Every account the gateway knows (its access keys'), with its configured requests per second. */
  accountLimits: () => Iterable<{ account: string; limit: number }>;
  /** registry.store: postgres: did the last call to the database succeed? (Absent for the other stores: no gauge.) */
  registryStoreUp?: () => boolean;
}

/**
 * Account names as label values, bounded: accounts are operator-defined, yet a site with many of them must not grow
 * the series without end. The first `cap` accounts seen keep their name, later ones share `_other`; with labels off,
 * every account is `_all`.
 */
export class AccountLabels {
  private readonly named = new Set<string>();

  constructor(private readonly cap: number) {}

  of(account: string): string {
    if (this.cap === 0) return '_all';
    if (this.named.has(account)) return account;
    if (this.named.size >= this.cap) return '_other';
    this.named.add(account);
    return account;
  }
}

/** In a node:cluster worker: its slot (a label on the process metrics) and the primary's aggregate of all workers. */
interface ClusterMetrics {
  slot: number;
  aggregate: () => Promise<string>;
  /** Hands this worker's registry to the primary's collection. */
  answer: (registry: Registry) => void;
}

const VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

export class GatewayMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'action' | 'outcome' | 'code'>;
  private readonly requestDuration: Histogram<'action'>;
  private readonly hsmDuration: Histogram<'operation' | 'mechanism'>;
  private readonly accountRequests: Counter<'account' | 'result'>;
  private readonly accounts: AccountLabels;
  private readonly auditWriteFailures: Counter;
  private readonly refusedConnections: Counter<'reason'>;

  /** `maxAccountLabels`: accounts with their own label (0: none, every account counted as `_all`). */
  constructor(
    sources: MetricSources,
    maxAccountLabels: number,
    private readonly cluster?: ClusterMetrics,
  ) {
    const accounts = (this.accounts = new AccountLabels(maxAccountLabels));
    const registers = [this.registry];
    // Node's default metrics keep their standard names (process_cpu_seconds_total, nodejs_eventloop_lag_seconds, …,
    // no prefix), so the usual Node.js dashboards and alert rules find them; only the gateway's own metrics are
    // prefixed hsm_gateway_. Process metrics (CPU, memory, event-loop lag) stay per worker in a cluster: summing or
    // averaging them hides the worker that is in trouble.
    const labels = cluster ? { worker: String(cluster.slot) } : undefined;
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 10, ...(labels ? { labels } : {}) });
    // The primary's collection (cluster.ts) is answered with this registry.
    cluster?.answer(this.registry);
    this.requests = new Counter({
      name: 'hsm_gateway_requests_total',
      help: 'API requests by action, outcome and Alibaba code (OK on success).',
      labelNames: ['action', 'outcome', 'code'],
      registers,
    });
    this.requestDuration = new Histogram({
      name: 'hsm_gateway_request_duration_seconds',
      help: 'API request latency, from arrival to response.',
      labelNames: ['action'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.hsmDuration = new Histogram({
      name: 'hsm_gateway_hsm_operation_duration_seconds',
      help: 'Token sign/verify latency (session wait included) by PKCS#11 mechanism.',
      labelNames: ['operation', 'mechanism'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.accountRequests = new Counter({
      name: 'hsm_gateway_account_requests_total',
      help: 'Authenticated requests that met the per-account limit, by account and result (admitted or throttled).',
      labelNames: ['account', 'result'],
      registers,
    });
    new Gauge({
      name: 'hsm_gateway_account_limit_requests_per_second',
      help: "Each account's configured limit (throttle.defaultLimit or its throttle.accounts entry), shared by all replicas.",
      labelNames: ['account'],
      registers,
      aggregator: 'max', // the same configuration in every worker
      collect() {
        this.reset();
        for (const { account, limit } of sources.accountLimits()) {
          const label = accounts.of(account);
          // `_other` and `_all` stand for many accounts: no single limit applies to them.
          if (label === account) this.set({ account }, limit);
        }
      },
    });
    this.auditWriteFailures = new Counter({
      name: 'hsm_gateway_audit_write_failures_total',
      help: 'Requests answered 503 because their audit record could not be written (the trail fails closed).',
      registers,
    });
    this.refusedConnections = new Counter({
      name: 'hsm_gateway_connections_refused_total',
      help: 'API connections closed on arrival: over server.maxConnections (max_connections) or server.maxConnectionsPerAddress (per_address).',
      labelNames: ['reason'],
      registers,
    });
    for (const reason of ['max_connections', 'per_address'] as const) this.refusedConnections.inc({ reason }, 0);
    new Gauge({
      name: 'hsm_gateway_hsm_sessions',
      help: 'Signing sessions per token: in use, idle, and requests waiting for one.',
      labelNames: ['token', 'state'],
      registers,
      collect() {
        this.reset();
        for (const s of sources.sessions()) {
          this.set({ token: s.token, state: 'in_use' }, s.inUse);
          this.set({ token: s.token, state: 'idle' }, s.idle);
          this.set({ token: s.token, state: 'waiting' }, s.waiting);
        }
      },
    });
    new Gauge({
      name: 'hsm_gateway_token_up',
      help: '1 when the token answers and its login session is alive.',
      labelNames: ['token'],
      registers,
      aggregator: 'min', // a cluster: 1 only when every worker has the token
      collect() {
        for (const t of sources.tokensUp()) this.set({ token: t.token }, t.up ? 1 : 0);
      },
    });
    new Gauge({
      name: 'hsm_gateway_limiter_backend',
      help: 'The per-account limiter in use: memory, redis, or local_fallback (Redis unreachable).',
      labelNames: ['backend'],
      registers,
      aggregator: 'max',
      collect() {
        const current = sources.limiterBackend();
        for (const backend of ['memory', 'cluster', 'redis', 'local_fallback'] as const) this.set({ backend }, backend === current ? 1 : 0);
      },
    });
    const registryStoreUp = sources.registryStoreUp;
    if (registryStoreUp) {
      new Gauge({
        name: 'hsm_gateway_registry_store_up',
        help: 'registry.store: postgres: 1 when the last call to the registry database (poll, load, change) succeeded; 0 while it is away (signing goes on from the loaded registry, changes answer 503).',
        registers,
        aggregator: 'min', // a cluster: 1 only when every worker reaches the database
        collect() {
          this.set(registryStoreUp() ? 1 : 0);
        },
      });
    }
    new Gauge({ name: 'hsm_gateway_build_info', help: 'Version of the gateway and of Node.', labelNames: ['version', 'node'], registers, aggregator: 'max' }).set(
      { version: VERSION, node: process.version },
      1,
    );
  }

  /** The exposition text: this process's registry, or in a cluster every worker's, aggregated by the primary. */
  exposition(): Promise<string> {
    return this.cluster ? this.cluster.aggregate() : this.registry.metrics();
  }

  observeRequest(action: string, outcome: Outcome, code: string, seconds: number): void {
    this.requests.inc({ action, outcome, code });
    this.requestDuration.observe({ action }, seconds);
  }

  observeHsm(operation: 'sign' | 'verify', mechanism: string, seconds: number): void {
    this.hsmDuration.observe({ operation, mechanism }, seconds);
  }

  connectionRefused(reason: 'max_connections' | 'per_address'): void {
    this.refusedConnections.inc({ reason });
  }

  auditWriteFailed(): void {
    this.auditWriteFailures.inc();
  }

  /** One authenticated request through the per-account limit. */
  observeAccount(account: string, admitted: boolean): void {
    this.accountRequests.inc({ account: this.accounts.of(account), result: admitted ? 'admitted' : 'throttled' });
  }
}

export function outcomeOf(status: number): Outcome {
  if (status === 429) return 'throttled';
  if (status >= 500) return 'server_error';
  if (status >= 400) return 'client_error';
  return 'success';
}
