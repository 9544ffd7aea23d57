import { readFileSync } from 'node:fs';
import http, { type Server } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { availableParallelism } from 'node:os';
import { extname } from 'node:path';
import { clusterGate, clusterMetricsText, clusterRegistryCoordination, workerSlot } from './cluster.js';
import { readSecret } from './config/load.js';
import type { Config } from './config/schema.js';
import { CredentialStore } from './http/auth/credentials.js';
import { ReplayGuard, SharedReplayGuard } from './http/auth/replay-guard.js';
import { createApp, type AppDeps } from './http/app.js';
import type { Token } from './hsm/token.js';
import { CertificateStoreError, loadCertificates, type CertificateMaterial } from './keys/certificate-store.js';
import { Policy } from './keys/policy.js';
import { loadPublicKeys } from './keys/public-key-store.js';
import { REGISTRY_CHANNEL, redisCoordination } from './keys/change-lock.js';
import { KeyLifecycle } from './keys/lifecycle.js';
import type { CertificateRecord, KeyRecord, KeyRegistry, KeyVersionRecord } from './keys/registry.js';
import { RegistrySource, type AccessKeyRecord } from './keys/registry-source.js';
import type { Logger } from './observability/logger.js';
import { AuditTrail } from './observability/audit-trail.js';
import { GatewayMetrics } from './observability/metrics.js';
import { openTokens } from './open-tokens.js';
import { AccountLimiter } from './throttle/account-limiter.js';
import { connectRedis } from './throttle/redis.js';
import { ecPoint } from './signing/public-key.js';
import { Signer } from './signing/signer.js';
import { sm2Za } from './signing/sm2.js';

export interface Gateway {
  port: number;
  url: string;
  stop(): Promise<void>;
  /** Re-reads the access keys and the registry file (SIGHUP); rejects (keeping the old state) when they are broken. */
  reload(config: Config): Promise<void>;
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

/** What was read from the tokens for earlier snapshots: a refresh reads only what is new (10,000 keys, one change). */
interface DerivedCache {
  publicKeys: Map<string, string>;
  certificates: Map<string, CertificateMaterial>;
}

/**
 * The registry and what is derived from it on the tokens: handles found, certificates and public keys read, SM2
 * Z_A computed. At start-up, and again on every change: requests in flight keep the state they started with.
 */
function deriveFromRegistry(
  registry: KeyRegistry,
  tokens: ReadonlyMap<string, Token>,
  signer: Signer,
  log: Logger,
  cache: DerivedCache,
  /** On a refresh, one broken entry is logged and left out rather than holding back every other change. */
  lenient = false,
): { registry: KeyRegistry; certificates: Map<string, CertificateMaterial>; publicKeys: Map<string, string> } {
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
  const certificateKey = (c: CertificateRecord): string => [c.certificateId, c.token, c.label, c.id ?? '', c.keySpec, ...c.chainLabels].join('\u0000');
  const certificates = new Map<string, CertificateMaterial>();
  for (const record of registry.certificates()) {
    const cached = cache.certificates.get(certificateKey(record));
    if (cached) {
      certificates.set(record.certificateId, cached);
      continue;
    }
    try {
      const [material] = loadCertificates([record], (r, label, id) => tokenOf(r.token, `certificate ${r.certificateId}`).certificate({ label, id })).values();
      certificates.set(record.certificateId, material!);
    } catch (err) {
      if (!lenient) throw err;
      log.error('certificate left out: it cannot be read from the token', { certificateId: record.certificateId, error: (err as Error).message });
    }
  }
  const versionKey = (key: KeyRecord, version: KeyVersionRecord): string => [version.keyVersionId, key.token, version.label, version.id ?? '', key.keySpec].join('\u0000');
  const publicKeys = loadPublicKeys(registry.all(), (key, version) => {
    if (absent.has(`${key.token}\u0000${version.label}`)) return undefined;
    return tokenOf(key.token, `key ${key.keyId}`).publicKey({ label: version.label, id: version.id });
  }, (key, version) => cache.publicKeys.get(versionKey(key, version)));
  cache.certificates = new Map(registry.certificates().filter((c) => certificates.has(c.certificateId)).map((c) => [certificateKey(c), certificates.get(c.certificateId)!]));
  cache.publicKeys = new Map(
    registry.all().flatMap((k) => k.versions.filter((v) => publicKeys.has(v.keyVersionId)).map((v) => [versionKey(k, v), publicKeys.get(v.keyVersionId)!] as const)),
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
  const { tokens, plans, homes } = openTokens(config, log);

  const signer = new Signer(tokens, (operation, mechanism, seconds) => metrics?.observeHsm(operation, mechanism, seconds));
  const redis = config.throttle.redis ? connectRedis(config.throttle.redis, log) : undefined;
  // A node:cluster worker (server.workers > 1) shares limits, nonces, metrics and registry changes through the primary
  // unless Redis does.
  const slot = workerSlot();
  const source = new RegistrySource({
    token: tokens.get('default')!,
    file: config.registry.file,
    log,
    // Changes are serialized and announced across processes: over Redis, else through the cluster primary.
    ...(redis ? redisCoordination(redis) : slot !== undefined ? clusterRegistryCoordination(() => void source.refresh().catch(() => undefined)) : {}),
  });
  const first = await source.load();
  const derivedCache: DerivedCache = { publicKeys: new Map(), certificates: new Map() };
  const loaded = deriveFromRegistry(first.registry, tokens, signer, log, derivedCache);
  let staticConfig = config;
  const credentials = credentialsOf(config, first.accessKeys);
  const lifecycle = new KeyLifecycle(source, homes);

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
          tokensUp: () => [...tokens].map(([name, t]) => ({ token: name, up: t.status().ok })),
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
    lifecycle,
    casRawMessageIsBase64: (account) => config.cas.rawMessageIsBase64 || config.cas.rawMessageIsBase64Accounts.includes(account),
    plans,
    signer,
    tokens,
    log,
    maxBodyBytes: config.server.maxBodyBytes,
  };
  // A change on the token (through any replica or the CLI) or in the file: derive handles, certificates and public
  // keys again and swap them in; requests in flight keep the state they started with.
  source.onChange((snapshot) => {
    try {
      const derived = deriveFromRegistry(snapshot.registry, tokens, signer, log, derivedCache, true);
      deps.auth.credentials = credentialsOf(staticConfig, snapshot.accessKeys);
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
  // With Redis, replicas hear of a change at once; the poll stays as the bound when a message is lost.
  const subscriber = redis?.duplicate();
  if (subscriber) {
    subscriber.on('error', () => undefined);
    subscriber.on('message', () => void source.refresh().catch(() => undefined));
    // No offline queue on this client: (re-)subscribe each time the connection is ready.
    subscriber.on('ready', () => void subscriber.subscribe(REGISTRY_CHANNEL).catch(() => undefined));
  }

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
      clearInterval(poll);
      subscriber?.disconnect();
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
  const reload = async (next: Config): Promise<void> => {
    credentialsOf(next, source.current().accessKeys); // a secret that cannot be read refuses the reload here
    await source.reloadFile(next.registry.file);
    staticConfig = next;
    deps.auth.credentials = credentialsOf(next, source.current().accessKeys);
    log.info('reloaded access keys and key registry', { accessKeys: next.auth.accessKeys.length });
  };

  return { port, url, stop, reload };
}
