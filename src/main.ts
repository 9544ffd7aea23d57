import cluster from 'node:cluster';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runPrimary, workerCount } from './cluster.js';
import { ConfigError, loadConfig } from './config/load.js';
import { replayGuardOptions, type Config } from './config/schema.js';
import { RegistryError } from './keys/errors.js';
import { createLogger, type Logger } from './observability/logger.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

function configArgument(argv: string[]): string | undefined {
  const i = argv.indexOf('--config');
  if (i >= 0) return argv[i + 1];
  return argv.find((a) => a.startsWith('--config='))?.slice('--config='.length);
}

async function main(): Promise<void> {
  const explicit = configArgument(process.argv.slice(2)) ?? process.env.HSM_GATEWAY_CONFIG;
  const configPath = explicit ? resolve(explicit) : await demoConfig();
  const config = loadConfig(configPath);
  const log = createLogger(config.logging.level);
  const workers = workerCount(config);
  if (cluster.isPrimary && workers > 1) {
    // The primary serves nothing itself (so it loads no token or HTTP code): see src/cluster.ts.
    await runPrimary({
      workers,
      limits: { defaultLimit: config.throttle.defaultLimit, accountLimits: config.throttle.accounts },
      // With Redis the nonces are shared there and each worker journals its own; without, the primary's guard does.
      replay: { ...replayGuardOptions(config), ...(config.replay.journal && !config.throttle.redis ? { journal: config.replay.journal } : {}) },
      shutdownTimeoutMs: config.server.shutdownTimeoutMs,
      log,
    });
    return;
  }
  await serve(config, configPath, log);
}

/**
 * No config given: the demo's, made on the first start (token, keys, credentials, config). The demo code (token and
 * PKI tooling) is loaded only here: a cluster primary given a config keeps it out of its memory.
 */
async function demoConfig(): Promise<string> {
  const home = resolve(process.env.HSM_GATEWAY_HOME ?? join(ROOT, '.data'));
  const demo = await import('./demo/bootstrap.js');
  // A cluster worker finds everything made: the primary bootstrapped the demo and validated the config before forking.
  if (!cluster.isWorker && !demo.isBootstrapped(home)) {
    createLogger(process.env.HSM_GATEWAY_LOG_LEVEL ?? 'info').info('first start: creating the demo token, keys and credentials', { home });
    const info = demo.bootstrapDemo({
      home,
      modulePath: process.env.HSM_GATEWAY_PKCS11_MODULE ?? DEFAULT_MODULE,
      host: process.env.HSM_GATEWAY_HOST ?? '127.0.0.1',
      port: Number(process.env.HSM_GATEWAY_PORT ?? 8443),
    });
    process.stdout.write(demo.demoBanner(info));
  }
  return demo.configPathOf(home);
}

/** One gateway process (alone, or a cluster worker): SIGTERM / SIGINT drain and exit (a repeated signal changes nothing), SIGHUP reloads. */
async function serve(config: Config, configPath: string, log: Logger): Promise<void> {
  const { start } = await import('./server.js');
  const gateway = await start(config, log);
  let stopping = false;
  const shutdown = (signal: string): void => {
    log.info('signal received', { signal });
    if (stopping) return; // the drain goes on; server.shutdownTimeoutMs bounds it
    stopping = true;
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
  // `on`, not `once`: after its last listener Node restores the default action, and a second SIGTERM would kill the
  // process mid-drain, cutting every request in flight. A cluster worker gets two whenever the whole process group is
  // signalled (systemd's KillMode=control-group, Ctrl-C, kill -- -<pgid>): its own, and the one the primary passes on.
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
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
