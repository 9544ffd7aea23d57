import { createRequire } from 'node:module';
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The gateway's Prometheus metrics: its own, named hsm_gateway_*, and Node's defaults under their standard names
 * (process_*, nodejs_*). Labels are bounded: actions come from the dispatch map (anything else is
 * `unknown`), codes from the error catalog, mechanisms from the algorithm catalog, accounts only when the
 * operator turns account labels on. No key ids, request ids or messages are ever labels.
 */
type Outcome = 'success' | 'client_error' | 'server_error' | 'throttled';

interface MetricSources {
  sessions: () => Array<{ token: string; inUse: number; idle: number; waiting: number }>;
  tokensUp: () => Array<{ token: string; up: boolean }>;
  limiterBackend: () => 'memory' | 'cluster' | 'redis' | 'local_fallback';
}

/** In a node:cluster worker: its slot (a label on the process metrics) and the primary's aggregate of all workers. */
interface ClusterMetrics {
  slot: number;
  aggregate: () => Promise<string>;
}

const VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

export class GatewayMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'action' | 'outcome' | 'code'>;
  private readonly requestDuration: Histogram<'action'>;
  private readonly hsmDuration: Histogram<'operation' | 'mechanism'>;
  private readonly throttledRequests: Counter<'account'>;
  private readonly refusedConnections: Counter<'reason'>;

  constructor(
    sources: MetricSources,
    private readonly accountLabels: boolean,
    private readonly cluster?: ClusterMetrics,
  ) {
    const registers = [this.registry];
    // Node's default metrics keep their standard names (process_cpu_seconds_total, nodejs_eventloop_lag_seconds, …,
    // no prefix), so the usual Node.js dashboards and alert rules find them; only the gateway's own metrics are
    // prefixed hsm_gateway_. Process metrics (CPU, memory, event-loop lag) stay per worker in a cluster: summing or
    // averaging them hides the worker that is in trouble.
    const labels = cluster ? { worker: String(cluster.slot) } : undefined;
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 10, ...(labels ? { labels } : {}) });
    // prom-client answers the primary's aggregation requests with these registries.
    if (cluster) {
      new AggregatorRegistry(); // registers the worker's answering side
      AggregatorRegistry.setRegistries([this.registry]);
    }
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
    this.throttledRequests = new Counter({
      name: 'hsm_gateway_throttled_requests_total',
      help: 'Requests refused by the per-account limit (account is _all unless account labels are on).',
      labelNames: ['account'],
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

  throttled(account: string): void {
    this.throttledRequests.inc({ account: this.accountLabels ? account : '_all' });
  }
}

export function outcomeOf(status: number): Outcome {
  if (status === 429) return 'throttled';
  if (status >= 500) return 'server_error';
  if (status >= 400) return 'client_error';
  return 'success';
}
