import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import winston from 'winston';
import { loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import type { RegistryFile } from '../../src/keys/registry.js';
import { start, type Gateway } from '../../src/server.js';

export const SOFTHSM_MODULE = process.env.HSM_GATEWAY_PKCS11_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';

interface ExtraAccessKey {
  accessKeyId: string;
  secret: string;
  account: string;
  enabled?: boolean;
}

export interface TestGateway {
  home: string;
  demo: DemoInfo;
  secret: string;
  pin: string;
  /** host:port, the way the SDKs take an endpoint. */
  endpoint: string;
  url: string;
  gateway: Gateway;
  close(): Promise<void>;
}

/**
 * A real gateway on a fresh SoftHSMv2 token in a temp dir, bootstrapped exactly as the first `npm start`
 * does, listening on a free port. `edit` may change the registry and add access keys before start.
 */
export async function startTestGateway(options?: {
  extraAccessKeys?: ExtraAccessKey[];
  editRegistry?: (registry: RegistryFile, demo: DemoInfo) => void;
  sessions?: number;
  editConfig?: (config: Config) => void;
  /** The gateway's logger (default: silent, or warn on the console with HSM_GATEWAY_TEST_LOGS=1). */
  log?: winston.Logger;
}): Promise<TestGateway> {
  const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-test-'));
  // A test that edits the registry before start gets the demo registry as a file (read-only through the API);
  // every other test gets it on the token, as `npm start` does.
  const registryIn = options?.editRegistry ? 'file' : 'token';
  const demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0, registryIn });
  const config = loadConfig(demo.configFile, {});
  if (options?.editRegistry) {
    const registry = JSON.parse(readFileSync(config.registry.file!, 'utf8')) as RegistryFile;
    options.editRegistry(registry, demo);
    writeFileSync(config.registry.file!, JSON.stringify(registry));
  }
  for (const extra of options?.extraAccessKeys ?? []) {
    const file = join(home, 'secrets', `${extra.accessKeyId}.secret`);
    writeFileSync(file, extra.secret, { mode: 0o600 });
    config.auth.accessKeys.push({ accessKeyId: extra.accessKeyId, secret: { file }, account: extra.account, enabled: extra.enabled ?? true });
  }
  config.server.port = 0;
  if (options?.sessions) config.hsm.sessions = options.sessions;
  options?.editConfig?.(config);
  // HSM_GATEWAY_TEST_LOGS=1 shows the gateway's own log lines while debugging a test.
  const log =
    options?.log ??
    (process.env.HSM_GATEWAY_TEST_LOGS
      ? winston.createLogger({ level: 'warn', transports: [new winston.transports.Console()] })
      : winston.createLogger({ silent: true }));
  const gateway = await start(config, log);
  return {
    home,
    demo,
    secret: readFileSync(demo.accessKeySecretFile, 'utf8').trim(),
    pin: readFileSync(join(home, 'secrets', 'user-pin'), 'utf8').trim(),
    endpoint: `127.0.0.1:${gateway.port}`,
    url: gateway.url,
    gateway,
    async close() {
      await gateway.stop();
      rmSync(home, { recursive: true, force: true });
    },
  };
}
