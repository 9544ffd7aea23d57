import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ConfigSchema, type Config, type SecretRef, type TokenConfig } from './schema.js';

export class ConfigError extends Error {}

/** Environment variables that override one setting each (applied after the file, before validation). */
const ENV_OVERRIDES: ReadonlyArray<{ env: string; path: [string, string]; type: 'string' | 'number' | 'workers' }> = [
  { env: 'HSM_GATEWAY_HOST', path: ['server', 'host'], type: 'string' },
  { env: 'HSM_GATEWAY_PORT', path: ['server', 'port'], type: 'number' },
  { env: 'HSM_GATEWAY_LOG_LEVEL', path: ['logging', 'level'], type: 'string' },
  { env: 'HSM_GATEWAY_PKCS11_MODULE', path: ['hsm', 'module'], type: 'string' },
  { env: 'HSM_GATEWAY_TOKEN_LABEL', path: ['hsm', 'tokenLabel'], type: 'string' },
  { env: 'HSM_GATEWAY_SESSIONS', path: ['hsm', 'sessions'], type: 'number' },
  { env: 'HSM_GATEWAY_THROTTLE_LIMIT', path: ['throttle', 'defaultLimit'], type: 'number' },
  { env: 'HSM_GATEWAY_WORKERS', path: ['server', 'workers'], type: 'workers' },
];

function applyEnv(doc: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  for (const o of ENV_OVERRIDES) {
    const raw = env[o.env];
    if (raw === undefined || raw === '') continue;
    const [section, field] = o.path;
    const numeric = o.type === 'number' || (o.type === 'workers' && raw.trim() !== 'auto');
    if (numeric && !/^\d+$/.test(raw.trim())) throw new ConfigError(`${o.env} must be a whole number${o.type === 'workers' ? ' or auto' : ''} (got "${raw}")`);
    const value = numeric ? Number(raw.trim()) : o.type === 'workers' ? 'auto' : raw;
    const target = (doc[section] ??= {}) as unknown;
    if (typeof target !== 'object' || target === null || Array.isArray(target)) {
      throw new ConfigError(`${o.env} overrides ${section}.${field}, but "${section}" in the config is not a mapping`);
    }
    (target as Record<string, unknown>)[field] = value;
  }
}

/** Reads, overrides and validates the YAML config; relative paths are taken from the config file's folder. */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) throw new ConfigError(`config ${path} is not valid YAML:\n${doc.errors.map((e) => e.message).join('\n')}`);
  const data = (doc.toJS() ?? {}) as Record<string, unknown>;
  if (typeof data !== 'object' || Array.isArray(data)) throw new ConfigError(`config ${path} must be a mapping`);
  applyEnv(data, env);
  const parsed = ConfigSchema.safeParse(data);
  if (!parsed.success) throw new ConfigError(`config ${path} is invalid:\n${z.prettifyError(parsed.error)}`);
  return resolvePaths(parsed.data, dirname(resolve(path)));
}

function resolvePaths(config: Config, base: string): Config {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  const ref = (r: SecretRef): SecretRef => ('file' in r ? { file: abs(r.file) } : r);
  const tokenPaths = (t: TokenConfig): TokenConfig => ({
    ...t,
    pin: ref(t.pin),
    softhsmConf: t.softhsmConf === undefined ? undefined : abs(t.softhsmConf),
  });
  return {
    ...config,
    server: {
      ...config.server,
      tls: config.server.tls && {
        ...config.server.tls,
        cert: abs(config.server.tls.cert),
        key: ref(config.server.tls.key),
        clientCa: config.server.tls.clientCa === undefined ? undefined : abs(config.server.tls.clientCa),
      },
    },
    hsm: tokenPaths(config.hsm),
    tokens: Object.fromEntries(Object.entries(config.tokens).map(([name, t]) => [name, tokenPaths(t)])),
    registry: {
      ...config.registry,
      file: config.registry.file === undefined ? undefined : abs(config.registry.file),
      postgres: config.registry.postgres && {
        ...config.registry.postgres,
        password: config.registry.postgres.password && ref(config.registry.postgres.password),
        tls: config.registry.postgres.tls && { ca: abs(config.registry.postgres.tls.ca) },
      },
      secretsKey: { ...config.registry.secretsKey, kekFile: config.registry.secretsKey.kekFile === undefined ? undefined : abs(config.registry.secretsKey.kekFile) },
    },
    throttle: {
      ...config.throttle,
      redis: config.throttle.redis && { ...config.throttle.redis, password: config.throttle.redis.password && ref(config.throttle.redis.password) },
    },
    audit: { ...config.audit, file: config.audit.file === undefined ? undefined : abs(config.audit.file) },
    capabilities: { cacheFile: config.capabilities.cacheFile === undefined ? undefined : abs(config.capabilities.cacheFile) },
    replay: { ...config.replay, journal: config.replay.journal === undefined ? undefined : abs(config.replay.journal) },
    auth: {
      ...config.auth,
      accessKeys: config.auth.accessKeys.map((k) => ({ ...k, secret: ref(k.secret), secondarySecret: k.secondarySecret && ref(k.secondarySecret) })),
    },
  };
}

/** Reads a secret from where its reference points; the value never appears in errors. */
export function readSecret(ref: SecretRef, env: NodeJS.ProcessEnv = process.env): string {
  if ('env' in ref) {
    const v = env[ref.env];
    if (v === undefined || v === '') throw new ConfigError(`the environment variable ${ref.env} (a secret) is not set`);
    return v;
  }
  try {
    return readFileSync(ref.file, 'utf8').trim();
  } catch (err) {
    throw new ConfigError(`cannot read the secret file ${ref.file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}
