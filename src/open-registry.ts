import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { readSecret } from './config/load.js';
import type { Config } from './config/schema.js';
import { RegistryError } from './keys/errors.js';
import { PostgresRecords } from './keys/postgres-records.js';
import type { PostgresStore } from './keys/registry-source.js';
import { FileSecretSealer, HsmSecretSealer, secretsKey, type SecretSealer } from './keys/secret-sealer.js';

/**
 * registry.store: postgres, wired from the config for the gateway (server.ts) and the admin CLI alike: the database
 * client (password and CA read from their files), and the sealer of access-key secrets — the AES key on the default
 * token that `registry init` made, or a key-encryption key file where the token has no AES-GCM.
 */
export function postgresRecordsOf(config: Config): PostgresRecords {
  const pgConfig = config.registry.postgres;
  if (!pgConfig) throw new RegistryError('registry.store: postgres needs registry.postgres.url');
  return new PostgresRecords({
    url: pgConfig.url,
    ...(pgConfig.password ? { password: readSecret(pgConfig.password) } : {}),
    ...(pgConfig.tls ? { tlsCa: readFileSync(pgConfig.tls.ca, 'utf8') } : {}),
  });
}

export function postgresStoreOf(config: Config, actor: string, log: { warn(m: string, meta?: Record<string, unknown>): void }): PostgresStore {
  const { label, kekFile } = config.registry.secretsKey;
  let sealer: (p11: Parameters<PostgresStore['sealer']>[0], session: Parameters<PostgresStore['sealer']>[1]) => SecretSealer;
  if (kekFile) {
    const kek = readFileSync(kekFile);
    const fileSealer = new FileSecretSealer(kek);
    log.warn('access-key secrets are sealed with a key-encryption key from a file (registry.secretsKey.kekFile), not by the HSM', { kekFile });
    sealer = () => fileSealer;
  } else {
    // Found on every use, not cached: a handle does not survive the token's re-initialization or a new login.
    sealer = (p11, session) => {
      const found = secretsKey(p11, session, label, false);
      if (!found) throw new RegistryError(`the secrets key "${label}" is not on the default token: run "hsm-gateway registry init" first`);
      return new HsmSecretSealer(p11, session, found.key);
    };
  }
  return { records: postgresRecordsOf(config), actor: `${actor}@${hostname()}:${process.pid}`, sealer };
}
