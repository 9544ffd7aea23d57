import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import type { Express } from 'express';
import type { Redis } from 'ioredis';
import { answerMetricsCollection, clusterGate, clusterMetricsText, clusterRegistryCoordination, workerCount, workerSlot, type ClusterGate } from './cluster.js';
import { readSecret } from './config/load.js';
import { replayGuardOptions, type Config } from './config/schema.js';
import { CredentialStore } from './http/auth/credentials.js';
import { FailedAuthLimiter } from './http/auth/failed-auth-limiter.js';
import { NonceJournal } from './http/auth/nonce-journal.js';
import { appendOnly, RedisNonces } from './http/auth/redis-nonces.js';
import { ReplayCheck, ReplayGuard, type SharedNonces } from './http/auth/replay-guard.js';
import { createApp, createManagementApp } from './http/app.js';
import { ApiError } from './http/error-catalog.js';
import { rawErrorResponse } from './http/render.js';
import { defaultMaxConnections, limitConnections, RefusedConnectionsLog } from './http/connection-limits.js';
import { openListener, type Listener, type ListenerOptions } from './http/listener.js';
import type { AppDeps } from './http/deps.js';
import { HsmUnavailableError } from './hsm/errors.js';
import type { Token } from './hsm/token.js';
import { REGISTRY_CHANNEL, redisCoordination, type ChangeLock } from './keys/change-lock.js';
import { LifecycleError } from './keys/errors.js';
import { retryFirstLoad } from './keys/first-load.js';
import { KeyLifecycle } from './keys/lifecycle.js';
import { Policy } from './keys/policy.js';
import type { PostgresRecords } from './keys/postgres-records.js';
import { RegistryMaterial } from './keys/registry-material.js';
import { postgresStoreOf } from './open-registry.js';
import { KeyRegistry } from './keys/registry.js';
import { checkTokenRegistryView, RegistrySource, type AccessKeyRecord, type RegistrySnapshot } from './keys/registry-source.js';
import { propagationBoundMs, SigningGate } from './keys/signing-gate.js';
import { UnseenKeys } from './keys/unseen-keys.js';
import type { Logger } from './observability/logger.js';
import { AuditTrail } from './observability/audit-trail.js';
import { GatewayMetrics } from './observability/metrics.js';
import { openTokens, reportCapabilities } from './open-tokens.js';
import { Signer } from './signing/signer.js';
import { AccountLimiter } from './throttle/account-limiter.js';
import { connectRedis } from './throttle/redis.js';

/**
 * The gateway process: start() builds the services (tokens → signing plans → registry → limiter, metrics, audit),
 * keeps the registry fresh, listens; stop() drains; reload() re-reads access keys and the registry file (SIGHUP).
 */
export interface Gateway {
  port: number;
  url: string;
  /** The management listener (server.management): /metrics and the detailed /readyz. */
  managementPort?: number;
  managementUrl?: string;
  stop(): Promise<void>;
  /** Re-reads the access keys and the registry file (SIGHUP); rejects (keeping the old state) when they are broken. */
  reload(config: Config): Promise<void>;
}

export async function start(config: Config, log: Logger): Promise<Gateway> {
  const services = await buildServices(config, log);
  const freshness = keepRegistryFresh(config, services, log);
  const slot = services.sharing.slot;
  const api = await listenApi(config, createApp(services.deps, { serveMetrics: !config.server.management }), services.deps, slot, log);
  const management = config.server.management && (await listenManagement(config, services.deps, slot, log));
  let stopping: Promise<void> | undefined;
  return {
    port: api.port,
    url: api.url,
    ...(management ? { managementPort: management.port, managementUrl: management.url } : {}),
    stop: () => (stopping ??= drain(config, services, () => freshness.close(), { api, management }, log)),
    reload: (next) => reload(next, services, log),
  };
}

/** The configured token of this name (a key that names another cannot sign: 503, as the signer answers it). */
function tokenNamed(tokens: ReadonlyMap<string, Token>, name: string): Token {
  const token = tokens.get(name);
  if (!token) throw new HsmUnavailableError(`a key names token "${name}", which is not configured`);
  return token;
}

/** The start-up reconciliation of CKA_SIGN with the keys' states (signing-gate.ts), in the background; logs what it changed. */
function reconcileSigning(gate: SigningGate, snapshot: RegistrySnapshot, log: Logger): void {
  gate.reconcile(snapshot).then(
    (outcome) => {
      if (outcome.stopped + outcome.allowed + outcome.failed > 0) log.warn('CKA_SIGN of keys brought in line with their state in the registry (a change cut off half-way, or changed outside the gateway)', outcome);
    },
    (err: unknown) => log.warn('the start-up reconciliation of CKA_SIGN failed', { error: (err as Error).message }),
  );
}

/** How this process shares state with the others: Redis when configured, else the cluster primary (a worker), else nothing. */
interface Sharing {
  redis?: Redis;
  /** This process's node:cluster worker slot (server.workers > 1). */
  slot?: number;
  /** The primary's limiter and nonce guard: a cluster worker without Redis. */
  gate?: ClusterGate;
  /**
   * Registry changes serialized and announced across processes (over Redis, else through the cluster primary, which
   * also passes on the other workers' announcements: `onChanged`).
   */
  coordination?: { lock: ChangeLock; announce: () => void; onChanged?: (listener: () => void) => void; close?: () => void };
}

/** What start() built: the app's dependencies, and what keeping them fresh, reloading and stopping need. */
interface Services {
  deps: AppDeps;
  /** The config the access keys were last read from (SIGHUP replaces it). */
  state: { config: Config; draining: boolean };
  tokens: ReadonlyMap<string, Token>;
  sharing: Sharing;
  source: RegistrySource;
  material: RegistryMaterial;
  /** Re-initializes a module that does not show keys other processes made (tpm2-pkcs11) when the registry names one. */
  unseen: UnseenKeys;
  lifecycle: KeyLifecycle;
  audit?: AuditTrail;
  replay: ReplayParts;
  /** Stops listening for other processes' registry changes. */
  stopListening: () => void;
  /** The snapshot the app's dependencies were built from (none when it could not be loaded at start-up). */
  built?: RegistrySnapshot;
  /** Why the registry could not be loaded at start-up (registry.store: postgres, the database away): retried. */
  notLoaded?: unknown;
}

/** Start-up: tokens → signing plans → registry (handles preloaded) → limiter, metrics, audit → the app's dependencies. */
async function buildServices(config: Config, log: Logger): Promise<Services> {
  const { tokens, plans, homes } = openTokens(config, log);
  await reportCapabilities(config, homes, log);
  const sharing = sharingOf(config, log);
  const limiter = limiterOf(config, sharing);
  // The accounts come from the credentials in force (they change with the registry and SIGHUP); read at scrape time.
  // A scrape can come before they exist: a cluster worker that is still starting answers the primary's collection.
  let credentialsInForce: AppDeps['auth'] | undefined;
  const accounts = (): Iterable<string> => credentialsInForce?.credentials.accounts() ?? [];
  // registry.store: postgres only: the token store's health is hsm_gateway_token_up{token="default"}.
  const registryStore = config.registry.store === 'postgres' ? () => source.storeStatus()! : undefined;
  const metrics = config.metrics.enabled ? metricsOf(config, tokens, limiter, sharing.slot, accounts, registryStore) : undefined;
  const signer = new Signer(tokens, (operation, mechanism, seconds) => metrics?.observeHsm(operation, mechanism, seconds));
  const { lock, announce } = sharing.coordination ?? {};
  if (config.registry.store === 'token') await checkTokenRegistryView(tokens.get('default')!, log);
  const postgres = config.registry.store === 'postgres' ? postgresStoreOf(config, 'gateway', log) : undefined;
  const source = new RegistrySource({ token: tokens.get('default')!, store: config.registry.store, file: config.registry.file, postgres, log, lock, announce, hostLock: config.registry.softhsmLock });
  const stopListening = listenForOtherWriters(sharing, source, postgres?.records, log);
  const first = await firstLoad(config, source);
  const material = new RegistryMaterial(tokens, signer, log);
  const loaded = 'snapshot' in first ? material.derive(first.snapshot.registry) : { registry: new KeyRegistry({ keys: [], certificates: [] }), certificates: new Map(), publicKeys: new Map() };
  const gate = new SigningGate(source, (name) => tokenNamed(tokens, name), {
    propagationBoundMs: propagationBoundMs(config.registry.refreshIntervalMs),
    log,
    capabilitiesOf: (name) => homes.find((h) => h.name === name)?.capabilities.known(),
  });
  const lifecycle = new KeyLifecycle(source, homes, { gate });
  const unseen = new UnseenKeys(
    homes.map((home) => ({ name: home.name, token: home.token, otherProcessesObjects: () => home.capabilities.otherProcessesObjects() })),
    log,
  );
  unseen.missingAtStart(material.missingPrivateKeys);
  // A change cut off half-way (a crash between the record and CKA_SIGN) is brought in line here, off the request path:
  // at once, or when the registry first loads (PostgreSQL away at start-up).
  if (!sharing.slot) {
    if ('snapshot' in first) reconcileSigning(gate, first.snapshot, log);
    else {
      let reconciled = false;
      source.onChange((snapshot) => {
        if (!reconciled) reconcileSigning(gate, snapshot, log);
        reconciled = true;
      });
    }
  }
  log.info('throttling', { defaultLimit: config.throttle.defaultLimit, backend: limiter.backend(), replicas: config.throttle.replicas });
  const audit = auditTrailOf(config, sharing.slot, log);
  const state = { config, draining: false };
  const replay = await replayOf(config, sharing, log);
  const deps: AppDeps = {
    draining: () => state.draining,
    limiter,
    replay: replay.check,
    audit,
    failedAuth: new FailedAuthLimiter(config.auth.failedAuth),
    metrics,
    auth: {
      credentials: credentialsOf(config, 'snapshot' in first ? first.snapshot.accessKeys : []),
      timestampWindowMs: config.auth.timestampWindowSeconds * 1000,
    },
    regionId: config.server.regionId,
    ...loaded,
    lifecycle,
    registryState: () => ({ store: config.registry.store, loaded: source.loaded, ...(postgres ? { storeStatus: source.storeStatus()! } : {}) }),
    registryCatchingUp: () => source.catchingUp(),
    casRawMessageIsBase64: (account) => config.cas.rawMessageIsBase64 || config.cas.rawMessageIsBase64Accounts.includes(account),
    plans,
    signer,
    tokens,
    log,
    maxBodyBytes: config.server.maxBodyBytes,
    recommendBaseUrl: config.errors.recommendBaseUrl,
  };
  credentialsInForce = deps.auth;
  return { deps, state, tokens, sharing, source, material, unseen, lifecycle, audit, replay, stopListening, ...('error' in first ? { notLoaded: first.error } : { built: first.snapshot }) };
}

/**
 * The start-up load. With registry.store: postgres and the database unreachable, the gateway starts without its
 * registry (not ready, 503; keepRegistryFresh retries); anything else that fails (the secrets key missing, a broken
 * registry file) is a configuration error and stops the start, as before.
 */
async function firstLoad(config: Config, source: RegistrySource): Promise<{ snapshot: RegistrySnapshot } | { error: unknown }> {
  try {
    return { snapshot: await source.load() };
  } catch (err) {
    if (config.registry.store === 'postgres' && err instanceof LifecycleError && err.kind === 'unavailable') return { error: err };
    throw err;
  }
}

/** A node:cluster worker (server.workers > 1) shares limits, nonces, metrics and registry changes through the primary unless Redis does. */
function sharingOf(config: Config, log: Logger): Sharing {
  const slot = workerSlot();
  const redis = config.throttle.redis ? connectRedis(config.throttle.redis, log) : undefined;
  // The registry lock and its announcements are not on a request's path: their own connection, with a longer deadline
  // than the throttle's and the nonces' tens of milliseconds.
  if (redis) {
    const slower = redis.duplicate({ commandTimeout: 2000 });
    slower.on('error', () => undefined); // the request connection's close/ready log says what an operator needs
    return { redis, slot, coordination: { ...redisCoordination(slower), close: () => slower.disconnect() } };
  }
  if (slot !== undefined) return { slot, gate: clusterGate(), coordination: clusterRegistryCoordination() };
  return {};
}

/**
 * Another process wrote a registry change and said so (Redis pub/sub, or the cluster primary): refresh at once rather
 * than at the next poll, which stays as the bound when a message is lost.
 */
function listenForOtherWriters(sharing: Sharing, source: RegistrySource, postgres: PostgresRecords | undefined, log: Logger): () => void {
  const refresh = (): void => void source.refresh().catch(() => undefined);
  // An announcement means the change is acknowledged already: requests wait for its refresh (source.catchingUp()).
  const notified = (): void => void source.notified().catch(() => undefined);
  sharing.coordination?.onChanged?.(notified);
  // registry.store: postgres — NOTIFY on every commit; after a reconnect the refresh compares the generation, so a
  // notification missed while away is never a missed change.
  // Logged when the connection comes and when it is lost, not at each failed reconnection (every 5 s while the
  // database is away; the refresh and start-up logs say that once).
  let connected = false;
  const listening = postgres?.listen({
    changed: refresh,
    resync: refresh,
    connection: (up) => {
      if (up === connected) return;
      connected = up;
      if (up) log.info('listening for registry changes in PostgreSQL');
      else log.warn('lost the PostgreSQL connection that listens for registry changes; reconnecting');
    },
  });
  const stopPostgres = (): void => {
    void listening?.close().then(() => postgres?.close());
  };
  const subscriber = sharing.redis?.duplicate();
  if (!subscriber) return stopPostgres;
  subscriber.on('error', () => undefined);
  subscriber.on('message', notified);
  // No offline queue on this client: (re-)subscribe each time the connection is ready.
  subscriber.on('ready', () => void subscriber.subscribe(REGISTRY_CHANNEL).catch(() => undefined));
  return () => {
    subscriber.disconnect();
    stopPostgres();
  };
}

interface ReplayParts {
  check: ReplayCheck;
  journal?: NonceJournal;
  redisNonces?: RedisNonces;
}

/**
 * The replay guard: this process's ids (back from the journal after a restart), the journal, and the store shared with
 * the other replicas (Redis) or workers (the cluster primary, which keeps the journal then).
 */
async function replayOf(config: Config, sharing: Sharing, log: Logger): Promise<ReplayParts> {
  const options = replayGuardOptions(config);
  const guard = new ReplayGuard(options.ttlMs, options);
  const file = sharing.gate ? undefined : config.replay.journal && sharing.slot !== undefined ? perWorkerFile(config.replay.journal, sharing.slot) : config.replay.journal;
  let journal: NonceJournal | undefined;
  if (file) {
    const opened = await NonceJournal.open(file, options.ttlMs);
    for (const nonce of opened.remembered) guard.restore(nonce);
    journal = opened.journal;
    log.info('replay guard: journal', { file, restored: opened.remembered.length });
  } else if (!sharing.gate) {
    log.warn('replay guard: no replay.journal, so a restart forgets the accepted nonces (replays within their window are accepted after it)');
  }
  let shared: SharedNonces | undefined = sharing.gate?.nonces;
  let redisNonces: RedisNonces | undefined;
  if (sharing.redis) {
    shared = redisNonces = new RedisNonces(sharing.redis, guard, { graceMs: config.replay.recoveryGraceMs, log });
    const redis = sharing.redis;
    redis.once('ready', () => {
      void appendOnly(redis).then((aof) => {
        // Not relied upon (the epoch is), but a Redis that keeps its data spares the replicas a recovery after its restart.
        if (aof === false) log.warn('replay guard: Redis keeps no append-only file; after its restart the replicas re-publish their nonces and refuse (or decide locally) for replay.recoveryGraceMs');
      });
    });
  }
  const check = new ReplayCheck(guard, {
    ...(shared ? { shared } : {}),
    ...(journal ? { journal } : {}),
    whenSharedStoreDown: config.replay.whenSharedStoreDown,
  });
  return { check, ...(journal ? { journal } : {}), ...(redisNonces ? { redisNonces } : {}) };
}

function limiterOf(config: Config, sharing: Sharing): AccountLimiter {
  return new AccountLimiter({
    defaultLimit: config.throttle.defaultLimit,
    accountLimits: config.throttle.accounts,
    redis: sharing.redis,
    // The share each process keeps while the shared count (primary or Redis) is away.
    replicas: config.throttle.replicas * (sharing.slot !== undefined ? workerCount(config) : 1),
    ...(sharing.gate ? { remote: sharing.gate.consume } : {}),
  });
}

function metricsOf(
  config: Config,
  tokens: ReadonlyMap<string, Token>,
  limiter: AccountLimiter,
  slot: number | undefined,
  accounts: () => Iterable<string>,
  registryStore: (() => { up: boolean }) | undefined,
): GatewayMetrics {
  return new GatewayMetrics(
    {
      sessions: () => [...tokens].map(([name, t]) => ({ token: name, ...t.stats() })),
      tokensUp: () => [...tokens].map(([name, t]) => ({ token: name, up: t.status().ok })),
      limiterBackend: () => limiter.backend(),
      accountLimits: () => [...accounts()].map((account) => ({ account, limit: limiter.limitOf(account) })),
      ...(registryStore ? { registryStoreUp: () => registryStore().up } : {}),
    },
    config.metrics.accountLabels ? config.metrics.maxAccountLabels : 0,
    slot === undefined ? undefined : { slot, aggregate: clusterMetricsText(), answer: answerMetricsCollection },
  );
}

/** `dir/audit.log` → `dir/audit.worker-1.log` (a trail file has one writer). */
function perWorkerFile(file: string, slot: number): string {
  const ext = extname(file);
  return `${file.slice(0, file.length - ext.length)}.worker-${slot}${ext}`;
}

/**
 * A broken chain in an existing audit file refuses to start: appending would hide where it broke. One process per
 * trail file: cluster workers each keep their own chain, audit.log → audit.worker-<slot>.log. While serving, a trail
 * that cannot write fails closed (requests 503, /readyz 503) and recovers by itself; each change is logged once.
 */
function auditTrailOf(config: Config, slot: number | undefined, log: Logger): AuditTrail | undefined {
  const file = config.audit.file && slot !== undefined ? perWorkerFile(config.audit.file, slot) : config.audit.file;
  if (!file) return undefined;
  const { rotateBytes, maxFiles, maxBytes, fsync } = config.audit;
  const audit = new AuditTrail(file, {
    rotateBytes,
    maxFiles,
    maxBytes,
    fsync,
    onStateChange: (s) => (s.ok ? log.warn('audit trail recovered', { detail: s.detail }) : log.error('audit trail cannot write: refusing requests', { detail: s.detail })),
  });
  log.info('audit trail', { file });
  return audit;
}

/** The access keys of the config file and those kept on the token (made by the admin CLI), secrets resolved. */
function credentialsOf(config: Config, onToken: readonly AccessKeyRecord[]): CredentialStore {
  const fromConfig = config.auth.accessKeys.map((k) => ({
    ...k,
    secrets: [readSecret(k.secret), ...(k.secondarySecret ? [readSecret(k.secondarySecret)] : [])],
  }));
  const fromToken = onToken.filter((k) => !fromConfig.some((c) => c.accessKeyId === k.accessKeyId));
  return new CredentialStore(
    [...fromConfig, ...fromToken].map((k) => ({
      accessKeyId: k.accessKeyId,
      secrets: k.secrets,
      account: k.account,
      enabled: k.enabled,
      ...(k.policies ? { policy: new Policy(k.policies) } : {}),
    })),
  );
}

/**
 * A change on the token (through any replica or the CLI) or in the file: derive handles, certificates and public
 * keys again and swap them in; requests in flight keep the state they started with. The poll also destroys keys
 * whose deletion window has passed.
 */
function keepRegistryFresh(config: Config, services: Services, log: Logger): { close(): void } {
  const { source, material, unseen, deps, state, lifecycle } = services;
  const apply = (snapshot: RegistrySnapshot): void => {
    try {
      const derived = material.derive(snapshot.registry, true);
      deps.auth.credentials = credentialsOf(state.config, snapshot.accessKeys);
      Object.assign(deps, derived);
    } catch (err) {
      log.error('registry change not applied; serving the previous registry', { error: (err as Error).message });
    }
  };
  // Not loaded at start-up (PostgreSQL away): retried with backoff until it loads (by this or, sooner, by the LISTEN
  // connection's resync); the poll waits for that.
  const retry = services.notLoaded === undefined ? undefined : retryFirstLoad(() => source.load(), () => source.loaded, services.notLoaded, log);
  source.onChange((snapshot) => {
    apply(snapshot);
    retry?.loadedElsewhere();
    // A key another process made that the module does not show yet (tpm2-pkcs11): shown after a re-initialization,
    // then the registry's material is read again (the newest snapshot: more changes may have come meanwhile).
    void unseen.reveal(material.missingPrivateKeys).then(
      (reopened) => {
        if (reopened.length > 0) apply(source.current());
      },
      (err: unknown) => log.warn('could not tell whether the module shows keys other processes made', { error: (err as Error).message }),
    );
  });
  // Published while the services were still being built (a NOTIFY or the LISTEN connection's first resync during the
  // start-up awaits): not seen by the listener above, so applied now — else the snapshot would say "current" while the
  // app served the older one until the next change.
  if (source.loaded && source.current() !== services.built) {
    apply(source.current());
    retry?.loadedElsewhere();
  }
  // A store away for minutes (PostgreSQL down) is logged when it starts and when it ends, not at every poll.
  let failing: string | undefined;
  const poll = setInterval(() => {
    if (!source.loaded) return;
    source
      .refresh()
      .then(() => {
        if (failing !== undefined) log.info('registry refresh works again', { after: failing });
        failing = undefined;
        // Its own failures are not the refresh's: a lost race (another replica purged or cancelled meanwhile) is tried
        // again at the next poll; token objects a destroy left behind (the record is gone) are named for an operator.
        return lifecycle.purgeExpired().catch((err: unknown) => {
          log.warn('purging keys past their deletion window failed', { error: (err as Error).message });
          return [];
        });
      })
      .then((purged) => {
        if (purged.length > 0) log.info('keys destroyed after their deletion window', { keyIds: purged });
      })
      .catch((err: unknown) => {
        const message = (err as Error).message;
        if (failing !== message) log.warn('registry refresh failed; serving the loaded registry and retrying at every interval', { error: message });
        failing = message;
      });
  }, config.registry.refreshIntervalMs);
  poll.unref();
  return {
    close() {
      clearInterval(poll);
      retry?.close();
      services.stopListening();
    },
  };
}

const timeoutsOf = (config: Config): ListenerOptions['timeouts'] => ({
  headersMs: config.server.headersTimeoutMs,
  requestMs: config.server.requestTimeoutMs,
  keepAliveMs: config.server.keepAliveTimeoutMs,
});

/** The API listener: TLS when configured, slow-client timeouts, connection limits (refusals logged and counted). */
async function listenApi(config: Config, app: Express, deps: AppDeps, slot: number | undefined, log: Logger): Promise<Listener & { refusals: RefusedConnectionsLog }> {
  const tls = config.server.tls;
  const listener = await openListener(app, {
    host: config.server.host,
    port: config.server.port,
    timeouts: timeoutsOf(config),
    refusedRequestAnswer: refusedRequestAnswer(config),
    prototypes: { request: app.request, response: app.response },
    tls: tls && {
      cert: readFileSync(tls.cert),
      key: readSecret(tls.key),
      ca: tls.clientCa ? readFileSync(tls.clientCa) : undefined,
      requestCert: tls.requireClientCertificate,
      rejectUnauthorized: tls.requireClientCertificate,
      minVersion: 'TLSv1.2',
    },
  });
  const limits = { max: config.server.maxConnections ?? defaultMaxConnections(), perAddress: config.server.maxConnectionsPerAddress };
  const refusals = new RefusedConnectionsLog(log, limits);
  limitConnections(listener.server, limits, (reason, address) => {
    deps.metrics?.connectionRefused(reason);
    refusals.refused(reason, address);
  });
  log.info('listening', {
    url: listener.url,
    uvThreadpoolSize: Number(process.env.UV_THREADPOOL_SIZE ?? 4),
    maxConnections: limits.max,
    maxConnectionsPerAddress: limits.perAddress,
    ...(slot === undefined ? {} : { worker: slot }),
  });
  return { ...listener, refusals };
}

/** server.management: /metrics and the detailed /readyz on their own port (cluster workers share it, as the API's). */
async function listenManagement(config: Config, deps: AppDeps, slot: number | undefined, log: Logger): Promise<Listener> {
  const { host, port } = config.server.management!;
  const app = createManagementApp(deps, slot);
  const listener = await openListener(app, { host, port, timeouts: timeoutsOf(config), prototypes: { request: app.request, response: app.response } });
  log.info('management listening', { url: listener.url, ...(slot === undefined ? {} : { worker: slot }) });
  return listener;
}

/** Alibaba error bodies for what the HTTP parser refuses before the app: a request line + headers over 16 KB (431), malformed HTTP (400). */
function refusedRequestAnswer(config: Config): (err: NodeJS.ErrnoException) => string {
  return (err) => {
    const error = err.code === 'HPE_HEADER_OVERFLOW' ? new ApiError('RequestHeaderFieldsTooLarge') : new ApiError('InvalidParameter', 'The request is not well-formed HTTP.');
    return rawErrorResponse(error, { requestId: randomUUID(), hostId: 'hsm-gateway', recommendBaseUrl: config.errors.recommendBaseUrl });
  };
}

/**
 * SIGTERM: the API listener closes at once (a load balancer's next connection goes to another replica), /readyz turns
 * 503, requests already on the wire are answered — each with `Connection: close` — and at server.shutdownTimeoutMs
 * whatever is left is closed. Then the management listener (it served /metrics and /readyz meanwhile), the tokens,
 * Redis and the audit trail.
 */
async function drain(
  config: Config,
  services: Services,
  stopRefreshing: () => void,
  listeners: { api: Listener & { refusals: RefusedConnectionsLog }; management?: Listener },
  log: Logger,
): Promise<void> {
  log.info('shutting down: no new connections; answering the requests in flight');
  services.state.draining = true;
  stopRefreshing();
  await listeners.api.drain(config.server.shutdownTimeoutMs);
  listeners.api.refusals.flush();
  await listeners.management?.drain(1000, 0);
  for (const token of services.tokens.values()) await token.close();
  services.replay.redisNonces?.stop();
  await services.replay.journal?.close();
  services.sharing.redis?.disconnect();
  services.sharing.coordination?.close?.();
  await services.audit?.close();
  log.info('stopped');
}

/**
 * Re-reads the access keys and the key registry (SIGHUP): a new secret, a disabled key or a new alias takes effect
 * without a restart. Requests in flight finish with the state they started with. Token and listener settings need a
 * restart.
 */
async function reload(next: Config, services: Services, log: Logger): Promise<void> {
  const { source, deps, state } = services;
  credentialsOf(next, source.current().accessKeys); // a secret that cannot be read refuses the reload here
  await source.reloadFile(next.registry.file);
  state.config = next;
  deps.auth.credentials = credentialsOf(next, source.current().accessKeys);
  log.info('reloaded access keys and key registry', { accessKeys: next.auth.accessKeys.length });
}
