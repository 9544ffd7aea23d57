import { readFileSync } from 'node:fs';
import http, { type Server } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { availableParallelism } from 'node:os';
import { extname } from 'node:path';
import { clusterGate, clusterMetricsText, workerSlot } from './cluster.js';
import { readSecret } from './config/load.js';
import type { Config, TokenConfig } from './config/schema.js';
import { CredentialStore } from './http/auth/credentials.js';
import { ReplayGuard, SharedReplayGuard } from './http/auth/replay-guard.js';
import { createApp, type AppDeps } from './http/app.js';
import { Token } from './hsm/token.js';
import { CertificateStoreError, loadCertificates, type CertificateMaterial } from './keys/certificate-store.js';
import { Policy } from './keys/policy.js';
import { loadPublicKeys } from './keys/public-key-store.js';
import { KeyRegistry } from './keys/registry.js';
import type { Logger } from './observability/logger.js';
import { AuditTrail } from './observability/audit-trail.js';
import { GatewayMetrics } from './observability/metrics.js';
import { SigningPlans } from './signing/plan.js';
import { AccountLimiter } from './throttle/account-limiter.js';
import { connectRedis } from './throttle/redis.js';
import { ecPoint } from './signing/public-key.js';
import { Signer } from './signing/signer.js';
import { sm2Za } from './signing/sm2.js';

export interface Gateway {
  port: number;
  url: string;
  stop(): Promise<void>;
  reload(config: Config): void;
}

function openToken(name: string, config: TokenConfig, log: Logger): Token {
  // Modules read their configuration from the environment at C_Initialize (SoftHSMv2: SOFTHSM2_CONF).
  if (config.softhsmConf) process.env.SOFTHSM2_CONF = config.softhsmConf;
  for (const [variable, value] of Object.entries(config.environment)) process.env[variable] = value;
  const token = new Token(
    {
      name,
      modulePath: config.module,
      tokenLabel: config.tokenLabel,
      pin: readSecret(config.pin),
      sessions: config.sessions,
      acquireTimeoutMs: config.acquireTimeoutMs,
      maxWaiting: config.maxWaiting,
      operationTimeoutMs: config.operationTimeoutMs,
      healthIntervalMs: config.healthIntervalMs,
    },
    log,
  );
  token.open();
  return token;
}

/** SM2 signs e = SM3(Z_A ‖ M): Z_A depends on the signer's public key, so it is computed once, here. */
function rememberSm2Za(registry: KeyRegistry, tokens: ReadonlyMap<string, Token>, absent: ReadonlySet<string>, signer: Signer): void {
  const sm2 = [
    ...registry.all().filter((k) => k.keySpec === 'EC_SM2').flatMap((k) => k.versions.map((v) => ({ token: k.token, label: v.label, id: v.id }))),
    ...registry.certificates().filter((c) => c.keySpec === 'EC_SM2').map((c) => ({ token: c.token, label: c.label, id: c.id })),
  ];
  for (const location of sm2) {
    const token = tokens.get(location.token);
    if (!token || absent.has(`${location.token}\u0000${location.label}`)) continue;
    signer.rememberZa(location, sm2Za(ecPoint(token.publicKey({ label: location.label, id: location.id }), 'EC_SM2')));
  }
}

function credentialsOf(config: Config): CredentialStore {
  return new CredentialStore(
    config.auth.accessKeys.map((k) => ({
      accessKeyId: k.accessKeyId,
      secrets: [readSecret(k.secret), ...(k.secondarySecret ? [readSecret(k.secondarySecret)] : [])],
      account: k.account,
      enabled: k.enabled,
      ...(k.policies ? { policy: new Policy(k.policies) } : {}),
    })),
  );
}

/**
 * The registry and what is derived from it on the tokens: handles found, certificates and public keys read, SM2
 * Z_A computed. At start-up, and again on reload (SIGHUP): requests in flight keep the state they started with.
 */
function loadRegistry(
  config: Config,
  tokens: ReadonlyMap<string, Token>,
  signer: Signer,
  log: Logger,
): { registry: KeyRegistry; certificates: Map<string, CertificateMaterial>; publicKeys: Map<string, string> } {
  const registry = KeyRegistry.fromFile(config.registry.file);
  const tokenOf = (name: string, what: string): Token => {
    const token = tokens.get(name);
    if (!token) throw new CertificateStoreError(`${what} names token "${name}", which is not configured`);
    return token;
  };
  for (const key of [...registry.all(), ...registry.certificates()]) tokenOf(key.token, `registry entry (${key.keySpec})`);
  let missingPrivate = 0;
  let missingPublic = 0;
  const absent = new Set<string>();
  for (const [name, token] of tokens) {
    const refs = [
      ...registry.all().filter((k) => k.token === name).flatMap((k) => k.versions.map((v) => ({ label: v.label, id: v.id }))),
      ...registry.certificates().filter((c) => c.token === name).map((c) => ({ label: c.label, id: c.id })),
    ];
    const { missing } = token.preload(refs, 'private');
    for (const ref of missing) log.warn('registry entry has no private key on the token', { token: name, label: ref.label });
    const { missing: noPublic } = token.preload(refs, 'public');
    for (const ref of noPublic) {
      absent.add(`${name}\u0000${ref.label}`);
      log.warn('registry entry has no public key object on the token: it cannot verify', { token: name, label: ref.label });
    }
    missingPrivate += missing.length;
    missingPublic += noPublic.length;
  }
  const certificates = loadCertificates(registry.certificates(), (record, label, id) =>
    tokenOf(record.token, `certificate ${record.certificateId}`).certificate({ label, id }),
  );
  const publicKeys = loadPublicKeys(registry.all(), (key, version) =>
    absent.has(`${key.token}\u0000${version.label}`) ? undefined : tokenOf(key.token, `key ${key.keyId}`).publicKey({ label: version.label, id: version.id }),
  );
  rememberSm2Za(registry, tokens, absent, signer);
  log.info('key registry loaded', { keys: registry.all().length, certificates: certificates.size, missingPrivate, missingPublic });
  return { registry, certificates, publicKeys };
}

/** server.workers with `auto` resolved: one per core. */
export function workerCount(config: Config): number {
  return config.server.workers === 'auto' ? availableParallelism() : config.server.workers;
}

/** `dir/audit.log` → `dir/audit.worker-1.log` (a trail file has one writer). */
export function perWorkerFile(file: string, slot: number): string {
  const ext = extname(file);
  return `${file.slice(0, file.length - ext.length)}.worker-${slot}${ext}`;
}

/** Start-up: secrets → tokens → plans → registry (handles preloaded) → HTTP. */
export async function start(config: Config, log: Logger): Promise<Gateway> {
  const credentials = credentialsOf(config);

  const tokens = new Map<string, Token>();
  const plans = new Map<string, SigningPlans>();
  for (const [name, tokenConfig] of [['default', config.hsm] as const, ...Object.entries(config.tokens)]) {
    const token = openToken(name, tokenConfig, log);
    tokens.set(name, token);
    const tokenPlans = new SigningPlans(token.mechanisms, tokenConfig.profile);
    plans.set(name, tokenPlans);
    for (const line of tokenPlans.describe()) log.debug('signing plan', { token: name, plan: line });
    log.info('signing plans ready', { token: name, plans: tokenPlans.describe().length });
  }
  const tokenOf = (name: string, what: string): Token => {
    const token = tokens.get(name);
    if (!token) throw new CertificateStoreError(`${what} names token "${name}", which is not configured`);
    return token;
  };

  const signer = new Signer(tokens, (operation, mechanism, seconds) => metrics?.observeHsm(operation, mechanism, seconds));
  const loaded = loadRegistry(config, tokens, signer, log);

  // A node:cluster worker (server.workers > 1) shares limits, nonces and metrics through the primary unless Redis does.
  const slot = workerSlot();
  const redis = config.throttle.redis ? connectRedis(config.throttle.redis, log) : undefined;
  const gate = slot !== undefined && !redis ? clusterGate() : undefined;
  const limiter = new AccountLimiter({
    defaultLimit: config.throttle.defaultLimit,
    accountLimits: config.throttle.accounts,
    redis,
    // The share each process keeps while the shared count (primary or Redis) is away.
    replicas: config.throttle.replicas * (slot !== undefined ? workerCount(config) : 1),
    ...(gate ? { remote: gate.consume } : {}),
  });
  log.info('throttling', { defaultLimit: config.throttle.defaultLimit, backend: limiter.backend(), replicas: config.throttle.replicas });
  const metrics = config.metrics.enabled
    ? new GatewayMetrics(
        {
          sessions: () => [...tokens].map(([name, t]) => ({ token: name, ...t.stats() })),
          tokensUp: () => [...tokens].map(([name, t]) => ({ token: name, up: t.ready().ok })),
          limiterBackend: () => limiter.backend(),
        },
        config.metrics.accountLabels,
        slot === undefined ? undefined : { slot, aggregate: clusterMetricsText() },
      )
    : undefined;

  // A broken chain in an existing audit file refuses to start: appending would hide where it broke.
  // One process per trail file: cluster workers each keep their own chain, audit.log → audit.worker-<slot>.log.
  const auditFile = config.audit.file && slot !== undefined ? perWorkerFile(config.audit.file, slot) : config.audit.file;
  const audit = auditFile ? new AuditTrail(auditFile) : undefined;
  if (audit) log.info('audit trail', { file: auditFile });

  let draining = false;
  const deps: AppDeps = {
    draining: () => draining,
    limiter,
    sharedReplayGuard: redis
      ? new SharedReplayGuard(redis, 2 * config.auth.timestampWindowSeconds * 1000)
      : gate
        ? new SharedReplayGuard(gate.nonceStore, 2 * config.auth.timestampWindowSeconds * 1000)
        : undefined,
    audit: audit && {
      write(record) {
        try {
          audit.write(record);
        } catch (err) {
          // The response is already sent; the failure must at least be loud.
          log.error('audit trail write failed', { requestId: record.requestId, error: String((err as Error).message) });
        }
      },
    },
    metrics,
    auth: {
      credentials,
      replayGuard: new ReplayGuard(2 * config.auth.timestampWindowSeconds * 1000),
      timestampWindowMs: config.auth.timestampWindowSeconds * 1000,
    },
    regionId: config.server.regionId,
    ...loaded,
    casRawMessageIsBase64: (account) => config.cas.rawMessageIsBase64 || config.cas.rawMessageIsBase64Accounts.includes(account),
    plans,
    signer,
    tokens,
    log,
    maxBodyBytes: config.server.maxBodyBytes,
  };
  const app = createApp(deps);

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

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      log.info('shutting down: draining, then closing the listener');
      // Drain first: /readyz turns 503 (load balancers stop sending), every answer closes its connection, and
      // requests already on the wire — accepted sockets whose request is not parsed yet count as "idle" to Node
      // and would be reset by an immediate close — get parsed and answered.
      draining = true;
      const deadline = Date.now() + config.server.shutdownTimeoutMs;
      await new Promise((r) => setTimeout(r, Math.min(250, config.server.shutdownTimeoutMs)));
      while (inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), Math.max(0, deadline - Date.now()));
      await closed;
      clearTimeout(timer);
      for (const token of tokens.values()) await token.close();
      redis?.disconnect();
      audit?.close();
      log.info('stopped');
    })());

  /**
   * Re-reads the access keys and the key registry (SIGHUP): a new secret, a disabled key or a new alias takes
   * effect without a restart. Requests in flight finish with the state they started with. Token and listener
   * settings need a restart.
   */
  const reload = (next: Config): void => {
    const nextCredentials = credentialsOf(next);
    const nextRegistry = loadRegistry(next, tokens, signer, log);
    deps.auth.credentials = nextCredentials;
    Object.assign(deps, nextRegistry);
    log.info('reloaded access keys and key registry', { accessKeys: next.auth.accessKeys.length });
  };

  return { port, url, stop, reload };
}
