import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { readSecret } from './config/load.js';
import type { Config } from './config/schema.js';
import { CredentialStore } from './http/auth/credentials.js';
import { ReplayGuard } from './http/auth/replay-guard.js';
import { createApp } from './http/app.js';
import { Token } from './hsm/token.js';
import { CertificateStoreError, loadCertificates } from './keys/certificate-store.js';
import { loadPublicKeys } from './keys/public-key-store.js';
import { KeyRegistry } from './keys/registry.js';
import type { Logger } from './observability/logger.js';
import { AuditTrail } from './observability/audit-trail.js';
import { GatewayMetrics } from './observability/metrics.js';
import { SigningPlans } from './signing/plan.js';
import { AccountLimiter } from './throttle/account-limiter.js';
import { connectRedis } from './throttle/redis.js';
import { Signer } from './signing/signer.js';

export interface Gateway {
  port: number;
  url: string;
  stop(): Promise<void>;
}

/** Start-up: secrets → token → plans → registry (handles preloaded) → HTTP. */
export async function start(config: Config, log: Logger): Promise<Gateway> {
  if (config.hsm.softhsmConf) process.env.SOFTHSM2_CONF = config.hsm.softhsmConf;
  const credentials = new CredentialStore(
    config.auth.accessKeys.map((k) => ({ accessKeyId: k.accessKeyId, secret: readSecret(k.secret), account: k.account, enabled: k.enabled })),
  );
  const registry = KeyRegistry.fromFile(config.registry.file);

  const token = new Token(
    {
      name: 'default',
      modulePath: config.hsm.module,
      tokenLabel: config.hsm.tokenLabel,
      pin: readSecret(config.hsm.pin),
      sessions: config.hsm.sessions,
      acquireTimeoutMs: config.hsm.acquireTimeoutMs,
      maxWaiting: config.hsm.maxWaiting,
      operationTimeoutMs: config.hsm.operationTimeoutMs,
      healthIntervalMs: config.hsm.healthIntervalMs,
    },
    log,
  );
  token.open();
  const tokens = new Map([['default', token]]);

  const plans = new SigningPlans(token.mechanisms);
  for (const line of plans.describe()) log.debug('signing plan', { plan: line });
  log.info('signing plans ready', { plans: plans.describe().length });

  const keyRefs = registry
    .all()
    .filter((k) => k.token === 'default')
    .flatMap((k) => k.versions.map((v) => ({ label: v.label, id: v.id })));
  const certificateRefs = registry
    .certificates()
    .filter((c) => c.token === 'default')
    .map((c) => ({ label: c.label, id: c.id }));
  const refs = [...keyRefs, ...certificateRefs];
  const { missing } = token.preload(refs, 'private');
  for (const ref of missing) log.warn('registry entry has no private key on the token', { label: ref.label });
  const { missing: noPublic } = token.preload(refs, 'public');
  for (const ref of noPublic) log.warn('registry entry has no public key object on the token: it cannot verify', { label: ref.label });
  const certificates = loadCertificates(registry.certificates(), (record, label, id) => {
    const holder = tokens.get(record.token);
    if (!holder) throw new CertificateStoreError(`certificate ${record.certificateId} names token "${record.token}", which is not configured`);
    return holder.certificate({ label, id });
  });
  const missingPublic = new Set(noPublic.map((r) => r.label));
  const publicKeys = loadPublicKeys(registry.all(), (key, version) =>
    key.token !== 'default' || missingPublic.has(version.label) ? undefined : token.publicKey({ label: version.label, id: version.id }),
  );
  log.info('key registry loaded', {
    keys: registry.all().length,
    versions: keyRefs.length,
    certificates: certificates.size,
    missingPrivate: missing.length,
    missingPublic: noPublic.length,
  });

  const redis = config.throttle.redis ? connectRedis(config.throttle.redis, log) : undefined;
  const limiter = new AccountLimiter({
    defaultLimit: config.throttle.defaultLimit,
    accountLimits: config.throttle.accounts,
    redis,
    replicas: config.throttle.replicas,
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
      )
    : undefined;

  // A broken chain in an existing audit file refuses to start: appending would hide where it broke.
  const audit = config.audit.file ? new AuditTrail(config.audit.file) : undefined;
  if (audit) log.info('audit trail', { file: config.audit.file });

  const app = createApp({
    limiter,
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
    registry,
    certificates,
    publicKeys,
    casRawMessageIsBase64: (account) => config.cas.rawMessageIsBase64 || config.cas.rawMessageIsBase64Accounts.includes(account),
    plans,
    signer: new Signer(tokens, (operation, mechanism, seconds) => metrics?.observeHsm(operation, mechanism, seconds)),
    tokens,
    log,
    maxBodyBytes: config.server.maxBodyBytes,
  });

  const server: Server = await new Promise((resolve, reject) => {
    const s = app.listen(config.server.port, config.server.host, (err?: Error) => (err ? reject(err) : resolve(s)));
    s.once('error', reject);
  });
  // Slow clients (slowloris) cannot hold sockets open forever: headers within 10 s, the whole request in 30 s.
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  const port = (server.address() as AddressInfo).port;
  const url = `http://${config.server.host}:${port}`;
  log.info('listening', { url });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      log.info('shutting down: no new connections, finishing in-flight requests');
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Keep-alive connections turn idle as their in-flight request is answered: close them as they do.
      const sweep = setInterval(() => server.closeIdleConnections(), 50);
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), config.server.shutdownTimeoutMs);
      await closed;
      clearInterval(sweep);
      clearTimeout(timer);
      await token.close();
      redis?.disconnect();
      audit?.close();
      log.info('stopped');
    })());

  return { port, url, stop };
}
