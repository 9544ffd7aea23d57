import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, readSecret } from '../../src/config/load.js';

const MINIMAL = `
hsm:
  module: /usr/lib/softhsm/libsofthsm2.so
  tokenLabel: gateway
  pin: { file: secrets/pin }
registry:
  file: registry.json
`;

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-config-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function writeConfig(text: string, name = 'gateway.yaml'): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** Runs `fn` and returns the ConfigError it throws. */
function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError, but the call succeeded');
}

describe('loadConfig', () => {
  it('when the config has only the required settings, then every other setting gets its default', () => {
    const config = loadConfig(writeConfig(MINIMAL), {});
    expect(config.server).toEqual({
      host: '127.0.0.1',
      port: 8443,
      maxBodyBytes: 65536,
      shutdownTimeoutMs: 10000,
      regionId: 'cn-hangzhou',
      workers: 1,
      headersTimeoutMs: 10_000,
      requestTimeoutMs: 30_000,
      keepAliveTimeoutMs: 65_000,
    });
    expect(config.hsm.sessions).toBe(8);
    expect(config.hsm.acquireTimeoutMs).toBe(2000);
    expect(config.hsm.softhsmConf).toBeUndefined();
    expect(config.auth).toEqual({ timestampWindowSeconds: 900, accessKeys: [], failedAuth: { perSecond: 10, burst: 100, addresses: 10_000 } });
    expect(config.logging.level).toBe('info');
    expect(config.errors).toEqual({ recommendBaseUrl: 'docs/errors.md' });
  });

  it('when errors.recommendBaseUrl is set, then it is kept as written (a link, not a path resolved against the config folder)', () => {
    const config = loadConfig(writeConfig(`${MINIMAL}errors:\n  recommendBaseUrl: https://git.example.com/hsm-gateway/docs/errors.md\n`), {});
    expect(config.errors.recommendBaseUrl).toBe('https://git.example.com/hsm-gateway/docs/errors.md');
    expect(configErrorOf(() => loadConfig(writeConfig(`${MINIMAL}errors:\n  recommendBaseURL: x\n`), {})).message).toContain('recommendBaseURL');
  });

  it('when nothing is said of replays, then a shared store that does not answer refuses (503), Redis calls have a deadline of tens of ms, and no journal is kept', () => {
    const config = loadConfig(writeConfig(MINIMAL), {});
    expect(config.replay).toEqual({ whenSharedStoreDown: 'refuse', maxNonces: 8_000_000, maxNoncesPerAccount: 2_000_000, recoveryGraceMs: 5000 });
    const withRedis = loadConfig(writeConfig(`${MINIMAL}throttle:\n  redis: { url: redis://127.0.0.1:6379 }\n`), {});
    expect(withRedis.throttle.redis?.commandTimeoutMs).toBe(50);
  });

  it('when the replay journal is a relative path, then it is resolved against the config folder; an unknown whenSharedStoreDown is refused', () => {
    const config = loadConfig(writeConfig(`${MINIMAL}replay:\n  journal: state/nonces.journal\n  whenSharedStoreDown: local\n`), {});
    expect(config.replay.journal).toBe(join(dir, 'state', 'nonces.journal'));
    expect(config.replay.whenSharedStoreDown).toBe('local');
    expect(configErrorOf(() => loadConfig(writeConfig(`${MINIMAL}replay:\n  whenSharedStoreDown: ignore\n`), {})).message).toContain('whenSharedStoreDown');
  });

  it('when a token names vendor environment variables (mixed case too), then they are kept; a name with a space is refused', () => {
    const config = loadConfig(writeConfig(`${MINIMAL}\n`.replace('  pin: { file: secrets/pin }', '  pin: { file: secrets/pin }\n  environment: { ChrystokiConfigurationPath: /etc/luna, VENDOR_CONF: /etc/v.conf }')), {});
    expect(config.hsm.environment).toEqual({ ChrystokiConfigurationPath: '/etc/luna', VENDOR_CONF: '/etc/v.conf' });
    expect(() => loadConfig(writeConfig(MINIMAL.replace('  pin: { file: secrets/pin }', "  pin: { file: secrets/pin }\n  environment: { 'BAD NAME': x }")), {})).toThrow(ConfigError);
  });

  it('when registry.store is file, then registry.file is required; the default store is the token (#15 item 5)', () => {
    expect(loadConfig(writeConfig(MINIMAL), {}).registry.store).toBe('token');
    expect(loadConfig(writeConfig(MINIMAL.replace('registry:\n', 'registry:\n  store: file\n')), {}).registry).toMatchObject({ store: 'file', file: join(dir, 'registry.json') });
    const refused = configErrorOf(() => loadConfig(writeConfig(MINIMAL.replace('registry:\n  file: registry.json\n', 'registry:\n  store: file\n')), {}));
    expect(refused.message).toContain('registry.store: file needs registry.file');
  });

  it('when registry.store is postgres, then registry.postgres is required, its files resolve against the config, and a password in the URL is refused (#17)', () => {
    const pgConfig = MINIMAL.replace(
      'registry:\n',
      'registry:\n  store: postgres\n  postgres:\n    url: postgres://gw@db:5432/gw\n    password: { file: pg-password }\n    tls: { ca: pg-ca.pem }\n  secretsKey: { kekFile: kek.bin }\n',
    );
    expect(loadConfig(writeConfig(pgConfig), {}).registry).toMatchObject({
      store: 'postgres',
      postgres: { url: 'postgres://gw@db:5432/gw', password: { file: join(dir, 'pg-password') }, tls: { ca: join(dir, 'pg-ca.pem') } },
      secretsKey: { label: 'hsm-gateway-secrets', kekFile: join(dir, 'kek.bin') },
    });
    expect(loadConfig(writeConfig(MINIMAL), {}).registry.secretsKey).toEqual({ label: 'hsm-gateway-secrets' });
    expect(configErrorOf(() => loadConfig(writeConfig(MINIMAL.replace('registry:\n', 'registry:\n  store: postgres\n')), {})).message).toContain('registry.store: postgres needs registry.postgres.url');
    const inUrl = configErrorOf(() => loadConfig(writeConfig(MINIMAL.replace('registry:\n', 'registry:\n  store: postgres\n  postgres: { url: "postgres://gw:s3cret@db/gw" }\n')), {}));
    expect(inUrl.message).toContain('not in the URL');
    expect(inUrl.message).not.toContain('s3cret');
  });

  it("when file paths are relative, then they are resolved against the config file's folder, not the working directory", () => {
    mkdirSync(join(dir, 'conf'));
    const path = writeConfig(
      `${MINIMAL}auth:
  accessKeys:
    - accessKeyId: ak1
      secret: { file: ../secrets/ak1 }
    - accessKeyId: ak2
      secret: { env: AK2_SECRET }
`.replace('hsm:\n', 'hsm:\n  softhsmConf: softhsm2.conf\n'),
      'conf/gateway.yaml',
    );
    const config = loadConfig(path, {});
    expect(config.hsm.pin).toEqual({ file: join(dir, 'conf', 'secrets', 'pin') });
    expect(config.hsm.softhsmConf).toBe(join(dir, 'conf', 'softhsm2.conf'));
    expect(config.registry.file).toBe(join(dir, 'conf', 'registry.json'));
    expect(config.auth.accessKeys[0]!.secret).toEqual({ file: join(dir, 'secrets', 'ak1') });
    expect(config.auth.accessKeys[1]!.secret).toEqual({ env: 'AK2_SECRET' });
    expect(config.auth.accessKeys[0]).toMatchObject({ account: 'default', enabled: true });
  });

  it('when file paths are absolute, then they are kept as written', () => {
    const config = loadConfig(writeConfig(MINIMAL.replace('registry.json', '/etc/hsm-gateway/registry.json')), {});
    expect(config.registry.file).toBe('/etc/hsm-gateway/registry.json');
  });

  it('when HSM_GATEWAY_PORT is set, then it overrides the port from the file', () => {
    const path = writeConfig(`server:\n  port: 9000\n${MINIMAL}`);
    expect(loadConfig(path, { HSM_GATEWAY_PORT: '18443' }).server.port).toBe(18443);
  });

  it('when HSM_GATEWAY_PORT is set and the file has no server section, then the port is set and the other defaults stay', () => {
    const config = loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_PORT: '18443' });
    expect(config.server).toMatchObject({ port: 18443, host: '127.0.0.1' });
  });

  it('when HSM_GATEWAY_PORT is empty, then the file value stands', () => {
    expect(loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_PORT: '' }).server.port).toBe(8443);
  });

  it('when the other HSM_GATEWAY_* overrides are set, then they reach their settings', () => {
    const config = loadConfig(writeConfig(MINIMAL), {
      HSM_GATEWAY_HOST: '0.0.0.0',
      HSM_GATEWAY_LOG_LEVEL: 'debug',
      HSM_GATEWAY_PKCS11_MODULE: '/opt/hsm/lib.so',
      HSM_GATEWAY_TOKEN_LABEL: 'other',
      HSM_GATEWAY_SESSIONS: '4',
    });
    expect(config.server.host).toBe('0.0.0.0');
    expect(config.logging.level).toBe('debug');
    expect(config.hsm).toMatchObject({ module: '/opt/hsm/lib.so', tokenLabel: 'other', sessions: 4 });
  });

  it('when HSM_GATEWAY_WORKERS is a number or auto, then it sets server.workers; anything else is a ConfigError', () => {
    expect(loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_WORKERS: '3' }).server.workers).toBe(3);
    expect(loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_WORKERS: 'auto' }).server.workers).toBe('auto');
    expect(() => loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_WORKERS: 'two' })).toThrow(/HSM_GATEWAY_WORKERS must be a whole number or auto/);
    expect(() => loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_WORKERS: '0' })).toThrow(/workers/);
  });

  it('when HSM_GATEWAY_PORT is not a number, then it is a ConfigError naming the variable', () => {
    const err = configErrorOf(() => loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_PORT: 'eighty' }));
    expect(err.message).toContain('HSM_GATEWAY_PORT');
  });

  // SRC BUG (src/config/load.ts:25-26): Number(' ') is 0, which passes Number.isFinite and the schema (port min 0),
  // so a blank-but-not-empty HSM_GATEWAY_PORT silently makes the gateway listen on a random port.
  it('when HSM_GATEWAY_PORT is only whitespace, then it is a ConfigError (not port 0)', () => {
    configErrorOf(() => loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_PORT: ' ' }));
  });

  it('when HSM_GATEWAY_PORT is a number out of range, then it is a ConfigError', () => {
    configErrorOf(() => loadConfig(writeConfig(MINIMAL), { HSM_GATEWAY_PORT: '70000' }));
  });

  it('when a key is unknown (server.prot), then it is a ConfigError naming it', () => {
    const err = configErrorOf(() => loadConfig(writeConfig(`server:\n  prot: 8443\n${MINIMAL}`), {}));
    expect(err.message).toContain('prot');
  });

  it('when a top-level section is unknown, then it is a ConfigError naming it', () => {
    const err = configErrorOf(() => loadConfig(writeConfig(`${MINIMAL}telemetry:\n  enabled: true\n`), {}));
    expect(err.message).toContain('telemetry');
  });

  it('when a required setting is missing, then it is a ConfigError naming it', () => {
    const err = configErrorOf(() => loadConfig(writeConfig(MINIMAL.replace('  tokenLabel: gateway\n', '')), {}));
    expect(err.message).toContain('tokenLabel');
  });

  it('when the file is not valid YAML, then it is a ConfigError', () => {
    const err = configErrorOf(() => loadConfig(writeConfig('hsm: [unclosed\n  module: x\n'), {}));
    expect(err.message).toContain('not valid YAML');
  });

  it('when the file is a YAML list, then it is a ConfigError', () => {
    configErrorOf(() => loadConfig(writeConfig('- a\n- b\n'), {}));
  });

  it('when the file does not exist, then it is a ConfigError naming the path', () => {
    const path = join(dir, 'absent.yaml');
    expect(configErrorOf(() => loadConfig(path, {})).message).toContain(path);
  });

  it('when the PIN is written inline, then it is refused without repeating it', () => {
    const err = configErrorOf(() => loadConfig(writeConfig(MINIMAL.replace('{ file: secrets/pin }', '"918273"')), {}));
    expect(err.message).toContain('pin');
    expect(err.message).not.toContain('918273');
  });

  it('when an access key secret is written inline, then it is refused without repeating it', () => {
    const text = `${MINIMAL}auth:\n  accessKeys:\n    - accessKeyId: ak1\n      secret: "s3cr3t-value"\n`;
    const err = configErrorOf(() => loadConfig(writeConfig(text), {}));
    expect(err.message).not.toContain('s3cr3t-value');
  });

  it('when a secret reference names both env and file, then it is refused', () => {
    configErrorOf(() => loadConfig(writeConfig(MINIMAL.replace('{ file: secrets/pin }', '{ file: p, env: P }')), {}));
  });

  // SRC BUG (src/config/load.ts:27-28): applyEnv writes into `doc[section]` whatever it is; when the section is a
  // scalar (`server: 8443`, a plausible typo), `target[field] = value` throws a TypeError in strict mode
  // ("Cannot create property 'port' on number '8443'") instead of the ConfigError loadConfig promises.
  it('when a section is a scalar and an env override targets it, then it is a ConfigError (not a TypeError)', () => {
    const path = writeConfig(`server: 8443\n${MINIMAL}`);
    expect(() => loadConfig(path, { HSM_GATEWAY_PORT: '9000' })).toThrow(ConfigError);
  });

  it('when a section is a scalar and no env override targets it, then it is a ConfigError', () => {
    configErrorOf(() => loadConfig(writeConfig(`server: 8443\n${MINIMAL}`), {}));
  });
});

describe('readSecret', () => {
  it('when the reference names a set environment variable, then it returns its value', () => {
    expect(readSecret({ env: 'X' }, { X: 'v' })).toBe('v');
  });

  it('when the environment variable is missing or empty, then it is a ConfigError naming it and no secret', () => {
    const env = { OTHER_SECRET: 'do-not-print-me' };
    for (const e of [env, { ...env, X: '' }]) {
      const err = configErrorOf(() => readSecret({ env: 'X' }, e));
      expect(err.message).toContain('X');
      expect(err.message).not.toContain('do-not-print-me');
    }
  });

  it('when the reference names a file, then it returns the content without surrounding whitespace', () => {
    const path = join(dir, 'pin');
    writeFileSync(path, '  1234\n\n');
    expect(readSecret({ file: path }, {})).toBe('1234');
  });

  it('when the secret file does not exist, then it is a ConfigError naming the file', () => {
    const path = join(dir, 'missing-pin');
    const err = configErrorOf(() => readSecret({ file: path }, {}));
    expect(err.message).toContain(path);
    expect(err.message).toContain('ENOENT');
  });
});
