import cluster from 'node:cluster';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runPrimary, workerCount } from './cluster.js';
import { ConfigError, loadConfig } from './config/load.js';
import type { DemoInfo } from './demo/bootstrap.js';
import { RegistryError } from './keys/errors.js';
import { createLogger } from './observability/logger.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

function configArgument(argv: string[]): string | undefined {
  const i = argv.indexOf('--config');
  if (i >= 0) return argv[i + 1];
  return argv.find((a) => a.startsWith('--config='))?.slice('--config='.length);
}

function banner(info: DemoInfo, secret: string): string {
  const key = info.keys[0]!;
  return [
    '',
    '================ hsm-gateway demo: created on first start ================',
    `Endpoint        ${info.endpoint}`,
    `AccessKeyId     ${info.accessKeyId}`,
    `AccessKeySecret ${secret}   (shown once; kept in ${info.accessKeySecretFile}, mode 0600)`,
    `Demo keys       ${info.keys.map((k) => `${k.alias} (${k.keySpec})`).join(', ')}`,
    `Described in    ${join(dirname(info.configFile), 'demo.json')}`,
    '',
    'Sign a digest with the official KMS SDK and verify it with openssl (from the checkout, in another shell):',
    '  node examples/asymmetric-sign.mjs',
    '',
    'or in your own code:',
    "  const Kms = require('@alicloud/kms20160120').default;",
    `  const kms = new Kms({ endpoint: '${info.endpoint.replace(/^http:\/\//, '')}', protocol: 'http', regionId: 'cn-hangzhou',`,
    `    accessKeyId: '${info.accessKeyId}', accessKeySecret: fs.readFileSync('${info.accessKeySecretFile}', 'utf8').trim() });`,
    `  const r = await kms.asymmetricSign({ keyId: '${key.alias}', keyVersionId: '${key.keyVersionId}',`,
    "    algorithm: 'RSA_PKCS1_SHA_256', digest: crypto.createHash('sha256').update('hello').digest('base64') });",
    '==========================================================================',
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const explicit = configArgument(process.argv.slice(2)) ?? process.env.HSM_GATEWAY_CONFIG;
  const home = resolve(process.env.HSM_GATEWAY_HOME ?? join(ROOT, '.data'));
  // The demo code (token and PKI tooling) is loaded only for the demo: a cluster primary keeps it out of its memory.
  const demo = explicit ? undefined : await import('./demo/bootstrap.js');
  const configPath = explicit ? resolve(explicit) : demo!.configPathOf(home);
  const early = createLogger(process.env.HSM_GATEWAY_LOG_LEVEL ?? 'info');

  // A cluster worker finds everything made: the primary bootstrapped the demo and validated the config before forking.
  if (!cluster.isWorker && demo && !demo.isBootstrapped(home)) {
    early.info('first start: creating the demo token, keys and credentials', { home });
    const info = demo.bootstrapDemo({
      home,
      modulePath: process.env.HSM_GATEWAY_PKCS11_MODULE ?? DEFAULT_MODULE,
      host: process.env.HSM_GATEWAY_HOST ?? '127.0.0.1',
      port: Number(process.env.HSM_GATEWAY_PORT ?? 8443),
    });
    const { readFileSync } = await import('node:fs');
    process.stdout.write(banner(info, readFileSync(info.accessKeySecretFile, 'utf8').trim()));
  }

  const config = loadConfig(configPath);
  const log = createLogger(config.logging.level);
  const workers = workerCount(config);
  if (cluster.isPrimary && workers > 1) {
    // The primary serves nothing itself (so it loads no token or HTTP code): see src/cluster.ts.
    runPrimary({
      workers,
      limits: { defaultLimit: config.throttle.defaultLimit, accountLimits: config.throttle.accounts },
      replayTtlMs: 2 * config.auth.timestampWindowSeconds * 1000,
      shutdownTimeoutMs: config.server.shutdownTimeoutMs,
      log,
    });
    return;
  }
  const { start } = await import('./server.js');
  const gateway = await start(config, log);

  const shutdown = (signal: string): void => {
    log.info('signal received', { signal });
    gateway.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('shutdown failed', { error: String(err) });
        process.exit(1);
      },
    );
  };
  process.on('SIGHUP', () => {
    // A bad edit must not take the gateway down: it keeps serving with what it had.
    const refused = (err: unknown): void => {
      log.error('reload refused; keeping the current access keys and registry', { error: (err as Error).message });
    };
    try {
      gateway.reload(loadConfig(configPath)).catch(refused);
    } catch (err) {
      refused(err);
    }
  });
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

/**
 * EX_CONFIG (sysexits.h): the config, the registry or the PIN is wrong. A supervisor must not restart on it
 * (systemd: RestartPreventExitStatus=78) — every start logs in once, and HSMs lock a PIN after a few wrong ones.
 */
const EXIT_CONFIG = 78;

/**
 * A wrong PIN (CKR_PIN_*) is a configuration error too. The CKR table (and with it the PKCS#11 binding) is loaded only
 * here, on the way out: a cluster primary never loads pkcs11js, and a CKR can only come from a process that did.
 */
async function isConfigurationError(err: unknown): Promise<boolean> {
  if (err instanceof ConfigError || err instanceof RegistryError) return true;
  const { ckrOf, classifyCkr } = await import('./hsm/ckr.js');
  const ckr = ckrOf(err) ?? ckrOf((err as { cause?: unknown })?.cause);
  return ckr !== undefined && classifyCkr(ckr) === 'login';
}

main().catch(async (err: unknown) => {
  // Start-up failures are configuration or environment problems: say what, not where in the code.
  const message = err instanceof ConfigError ? err.message : `start-up failed: ${(err as Error)?.message ?? String(err)}`;
  process.stderr.write(`hsm-gateway: ${message}\n`);
  process.exit((await isConfigurationError(err).catch(() => false)) ? EXIT_CONFIG : 1);
});
