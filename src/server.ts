import { readFileSync } from 'node:fs';
import http, { type Server } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { extname } from 'node:path';
import type { Express } from 'express';
import type { Redis } from 'ioredis';
import { clusterGate, clusterMetricsText, clusterRegistryCoordination, workerCount, workerSlot, type ClusterGate } from './cluster.js';
import { readSecret } from './config/load.js';
import type { Config } from './config/schema.js';
import { CredentialStore } from './http/auth/credentials.js';
import { ReplayCheck, ReplayGuard, SharedReplayGuard } from './http/auth/replay-guard.js';
import { createApp } from './http/app.js';
import type { AppDeps } from './http/deps.js';
import type { Token } from './hsm/token.js';
import { REGISTRY_CHANNEL, redisCoordination, type ChangeLock } from './keys/change-lock.js';
import { KeyLifecycle } from './keys/lifecycle.js';
import { Policy } from './keys/policy.js';
import { RegistryMaterial } from './keys/registry-material.js';
import { checkTokenRegistryView, RegistrySource, type AccessKeyRecord } from './keys/registry-source.js';
import type { Logger } from './observability/logger.js';
import { AuditTrail } from './observability/audit-trail.js';
import { GatewayMetrics } from './observability/metrics.js';
import { openTokens } from './open-tokens.js';
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
  stop(): Promise<void>;
  /** Re-reads the access keys and the registry file (SIGHUP); rejects (keeping the old state) when they are broken. */
  reload(config: Config): Promise<void>;
}

export async function start(config: Config, log: Logger): Promise<Gateway> {
  const services = await buildServices(config, log);
  const freshness = keepRegistryFresh(config, services, log);
  const listener = await listen(config, createApp(services.deps), services.sharing.slot, log);
  let stopping: Promise<void> | undefined;
  return {
    port: listener.port,
    url: listener.url,
    stop: () => (stopping ??= drain(config, services, () => freshness.close(), listener, log)),
    reload: (next) => reload(next, services, log),
  };
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
  coordination?: { lock: ChangeLock; announce: () => void; onChanged?: (listener: () => void) => void };
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
  lifecycle: KeyLifecycle;
  audit?: AuditTrail;
  /** Stops listening for other processes' registry changes. */
  stopListening: () => void;
}

/** Start-up: tokens → signing plans → registry (handles preloaded) → limiter, metrics, audit → the app's dependencies. */
async function buildServices(config: Config, log: Logger): Promise<Services> {
  const { tokens, plans, homes } = openTokens(config, log);
  const sharing = sharingOf(config, log);
  const limiter = limiterOf(config, sharing);
  // The accounts come from the credentials in force (they change with the registry and SIGHUP); read at scrape time.
  const accounts = (): Iterable<string> => deps.auth.credentials.accounts();
  const metrics = config.metrics.enabled ? metricsOf(config, tokens, limiter, sharing.slot, accounts) : undefined;
  const signer = new Signer(tokens, (operation, mechanism, seconds) => metrics?.observeHsm(operation, mechanism, seconds));
  const { lock, announce } = sharing.coordination ?? {};
  if (config.registry.store === 'token') await checkTokenRegistryView(tokens.get('default')!, log);
  const source = new RegistrySource({ token: tokens.get('default')!, store: config.registry.store, file: config.registry.file, log, lock, announce });
  const stopListening = listenForOtherWriters(sharing, source);
  const first = await source.load();
  const material = new RegistryMaterial(tokens, signer, log);
  const loaded = material.derive(first.registry);
  const lifecycle = new KeyLifecycle(source, homes);
  log.info('throttling', { defaultLimit: config.throttle.defaultLimit, backend: limiter.backend(), replicas: config.throttle.replicas });
  const audit = auditTrailOf(config, sharing.slot, log);
  const state = { config, draining: false };
  const nonceTtlMs = 2 * config.auth.timestampWindowSeconds * 1000;
  const nonceStore = sharing.redis ?? sharing.gate?.nonceStore;
  const deps: AppDeps = {
    draining: () => state.draining,
    limiter,
    replay: new ReplayCheck(new ReplayGuard(nonceTtlMs), nonceStore && new SharedReplayGuard(nonceStore, nonceTtlMs)),
    audit: audit && auditSink(audit, log),
    metrics,
    auth: {
      credentials: credentialsOf(config, first.accessKeys),
      timestampWindowMs: config.auth.timestampWindowSeconds * 1000,
    },
    regionId: config.server.regionId,
    ...loaded,
    lifecycle,
    casRawMessageIsBase64: (account) => config.cas.rawMessageIsBase64 || config.cas.rawMessageIsBase64Accounts.includes(account),
    plans,
    signer,
    tokens,
    log,
    maxBodyBytes: config.server.maxBodyBytes,
  };
  return { deps, state, tokens, sharing, source, material, lifecycle, audit, stopListening };
}

/** A node:cluster worker (server.workers > 1) shares limits, nonces, metrics and registry changes through the primary unless Redis does. */
function sharingOf(config: Config, log: Logger): Sharing {
  const slot = workerSlot();
  const redis = config.throttle.redis ? connectRedis(config.throttle.redis, log) : undefined;
  if (redis) return { redis, slot, coordination: redisCoordination(redis) };
  if (slot !== undefined) return { slot, gate: clusterGate(), coordination: clusterRegistryCoordination() };
  return {};
}

/**
 * Another process wrote a registry change and said so (Redis pub/sub, or the cluster primary): refresh at once rather
 * than at the next poll, which stays as the bound when a message is lost.
 */
function listenForOtherWriters(sharing: Sharing, source: RegistrySource): () => void {
  const refresh = (): void => void source.refresh().catch(() => undefined);
  sharing.coordination?.onChanged?.(refresh);
  const subscriber = sharing.redis?.duplicate();
  if (!subscriber) return () => undefined;
  subscriber.on('error', () => undefined);
  subscriber.on('message', refresh);
  // No offline queue on this client: (re-)subscribe each time the connection is ready.
  subscriber.on('ready', () => void subscriber.subscribe(REGISTRY_CHANNEL).catch(() => undefined));
  return () => subscriber.disconnect();
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
): GatewayMetrics {
  return new GatewayMetrics(
    {
      sessions: () => [...tokens].map(([name, t]) => ({ token: name, ...t.stats() })),
      tokensUp: () => [...tokens].map(([name, t]) => ({ token: name, up: t.status().ok })),
      limiterBackend: () => limiter.backend(),
      accountLimits: () => [...accounts()].map((account) => ({ account, limit: limiter.limitOf(account) })),
    },
    config.metrics.accountLabels ? config.metrics.maxAccountLabels : 0,
    slot === undefined ? undefined : { slot, aggregate: clusterMetricsText() },
  );
}

/** `dir/audit.log` → `dir/audit.worker-1.log` (a trail file has one writer). */
function perWorkerFile(file: string, slot: number): string {
  const ext = extname(file);
  return `${file.slice(0, file.length - ext.length)}.worker-${slot}${ext}`;
}

/**
 * A broken chain in an existing audit file refuses to start: appending would hide where it broke. One process per
 * trail file: cluster workers each keep their own chain, audit.log → audit.worker-<slot>.log.
 */
function auditTrailOf(config: Config, slot: number | undefined, log: Logger): AuditTrail | undefined {
  const file = config.audit.file && slot !== undefined ? perWorkerFile(config.audit.file, slot) : config.audit.file;
  if (!file) return undefined;
  const audit = new AuditTrail(file);
  log.info('audit trail', { file });
  return audit;
}

function auditSink(audit: AuditTrail, log: Logger): NonNullable<AppDeps['audit']> {
  return {
    write(record) {
      try {
        audit.write(record);
      } catch (err) {
        // The response is already sent; the failure must at least be loud.
        log.error('audit trail write failed', { requestId: record.requestId, error: String((err as Error).message) });
      }
    },
  };
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
  const { source, material, deps, state, lifecycle } = services;
  source.onChange((snapshot) => {
    try {
      const derived = material.derive(snapshot.registry, true);
      deps.auth.credentials = credentialsOf(state.config, snapshot.accessKeys);
      Object.assign(deps, derived);
    } catch (err) {
      log.error('registry change not applied; serving the previous registry', { error: (err as Error).message });
    }
  });
  const poll = setInterval(() => {
    source
      .refresh()
      .then(() => lifecycle.purgeExpired())
      .then((purged) => {
        if (purged.length > 0) log.info('keys destroyed after their deletion window', { keyIds: purged });
      })
      .catch((err: unknown) => log.warn('registry refresh failed; retrying at the next interval', { error: (err as Error).message }));
  }, config.registry.refreshIntervalMs);
  poll.unref();
  return {
    close() {
      clearInterval(poll);
      services.stopListening();
    },
  };
}

interface Listener {
  server: Server;
  port: number;
  url: string;
  /** Requests received and not answered yet. */
  inFlight: () => number;
}

async function listen(config: Config, app: Express, slot: number | undefined, log: Logger): Promise<Listener> {
  const tls = config.server.tls;
  const server: Server = tls
    ? https.createServer(
        {
          cert: readFileSync(tls.cert),
          key: readSecret(tls.key),
          ca: tls.clientCa ? readFileSync(tls.clientCa) : undefined,
          requestCert: tls.requireClientCertificate,
          rejectUnauthorized: tls.requireClientCertificate,
          minVersion: 'TLSv1.2',
        },
        app,
      )
    : http.createServer(app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.server.port, config.server.host, () => resolve());
  });
  let inFlight = 0;
  server.on('request', (_req, res: http.ServerResponse) => {
    inFlight++;
    res.once('close', () => inFlight--);
  });
  // Slow clients (slowloris) cannot hold sockets open forever: headers within 10 s, the whole request in 30 s.
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  const port = (server.address() as AddressInfo).port;
  const url = `${tls ? 'https' : 'http'}://${config.server.host}:${port}`;
  log.info('listening', { url, uvThreadpoolSize: Number(process.env.UV_THREADPOOL_SIZE ?? 4), ...(slot === undefined ? {} : { worker: slot }) });
  return { server, port, url, inFlight: () => inFlight };
}

/**
 * Drain first: /readyz turns 503 (load balancers stop sending), every answer closes its connection, and requests
 * already on the wire — accepted sockets whose request is not parsed yet count as "idle" to Node and would be reset by
 * an immediate close — get parsed and answered. Then the listener closes, the tokens, Redis and the audit trail.
 */
async function drain(config: Config, services: Services, stopRefreshing: () => void, listener: Listener, log: Logger): Promise<void> {
  log.info('shutting down: draining, then closing the listener');
  services.state.draining = true;
  stopRefreshing();
  await closeListener(listener, config.server.shutdownTimeoutMs);
  for (const token of services.tokens.values()) await token.close();
  services.sharing.redis?.disconnect();
  services.audit?.close();
  log.info('stopped');
}

/** Waits (at most `timeoutMs`) for the requests in flight, then closes the listener and, at the deadline, every connection. */
async function closeListener({ server, inFlight }: Listener, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  await new Promise((r) => setTimeout(r, Math.min(250, timeoutMs)));
  while (inFlight() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  const timer = setTimeout(() => server.closeAllConnections(), Math.max(0, deadline - Date.now()));
  await closed;
  clearTimeout(timer);
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
