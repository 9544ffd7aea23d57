import { once } from 'node:events';
import type { Redis } from 'ioredis';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { ckrName, ckrOf } from '../hsm/ckr.js';
import type { Token, TokenLogger } from '../hsm/token.js';
import { AccessKeys } from '../keys/access-keys.js';
import { CertificateLifecycle } from '../keys/certificate-lifecycle.js';
import { redisCoordination } from '../keys/change-lock.js';
import { KeyLifecycle, type KeyHome } from '../keys/lifecycle.js';
import { propagationBoundMs, SigningGate } from '../keys/signing-gate.js';
import type { PostgresRecords } from '../keys/postgres-records.js';
import { RegistrySource, type PostgresStore, type RegistrySnapshot } from '../keys/registry-source.js';
import { Signer } from '../signing/signer.js';
import { CapabilityCache } from '../hsm/capabilities.js';
import { postgresRecordsOf, postgresStoreOf } from '../open-registry.js';
import { homeOf, openToken, tokenConfigs, type OpenLogger, type ProbedHome } from '../open-tokens.js';
import type { Logger } from '../observability/logger.js';
import { connectRedis } from '../throttle/redis.js';
import { UnavailableError } from './output.js';

/**
 * What an admin command works on, opened only when it asks: the config, the default token with the registry on it,
 * the other tokens. Tokens are opened with one session and no health probe, and always closed at the end.
 */
export class AdminContext {
  private loaded: Config | undefined;
  private readonly opened = new Map<string, ProbedHome>();
  private source: RegistrySource | undefined;
  private redis: Redis | undefined;
  private cache: CapabilityCache | undefined;
  private postgres: PostgresRecords | undefined;
  private postgresWithSealer: PostgresStore | undefined;

  constructor(
    readonly configPath: string,
    /** True when the config was named (--config or $HSM_GATEWAY_CONFIG), not the default path. */
    readonly explicitConfig: boolean,
    private readonly warn: (message: string) => void,
  ) {}

  /** The CLI's logger: progress stays quiet, warnings go to stderr as one line each. */
  readonly log: OpenLogger = {
    debug: () => undefined,
    info: () => undefined,
    warn: (message, meta) => this.warn(`warning: ${message}${meta ? ` ${JSON.stringify(meta)}` : ''}`),
    error: (message, meta) => this.warn(`warning: ${message}${meta ? ` ${JSON.stringify(meta)}` : ''}`),
  };

  config(): Config {
    this.loaded ??= loadConfig(this.configPath);
    return this.loaded;
  }

  /** registry.store: file — the CLI makes token objects and prints the registry file's entries for them. */
  fileStore(): boolean {
    return this.config().registry.store === 'file';
  }

  /** One configured token, opened (and logged in) on first use. */
  home(name: string): ProbedHome {
    const existing = this.opened.get(name);
    if (existing) return existing;
    const tokenConfig = tokenConfigs(this.config()).find(([n]) => n === name)?.[1];
    if (!tokenConfig) throw new UnavailableError(`token "${name}" is not configured in ${this.configPath}`);
    let token: Token;
    try {
      token = openToken(name, tokenConfig, this.log as TokenLogger, { sessions: 1, healthIntervalMs: 0 });
    } catch (err) {
      const ckr = ckrOf(err);
      const reason = ckr === undefined ? (err as Error).message : ckrName(ckr);
      throw new UnavailableError(`cannot open token "${name}" (label "${tokenConfig.tokenLabel}", module ${tokenConfig.module}): ${reason}`);
    }
    this.cache ??= new CapabilityCache(this.config().capabilities.cacheFile);
    const home = homeOf(name, token, tokenConfig, this.log, this.cache);
    this.opened.set(name, home);
    return home;
  }

  token(name: string): Token {
    return this.home(name).token;
  }

  /** Every configured token, the default first (key generation may pick any of them). */
  allHomes(): ProbedHome[] {
    return tokenConfigs(this.config()).map(([name]) => this.home(name));
  }

  /** The registry kept on the default token (plus the read-only file, if configured), read now. */
  async registry(): Promise<RegistrySource> {
    if (!this.source) {
      const { store, file, softhsmLock } = this.config().registry;
      const postgres = store === 'postgres' ? postgresStoreOf(this.config(), 'cli', this.log) : undefined;
      if (postgres) {
        await this.postgres?.close();
        this.postgres = postgres.records;
      }
      const source = new RegistrySource({ token: this.token('default'), store, file, postgres, log: this.log, hostLock: softhsmLock, ...(store === 'token' ? await this.coordination() : {}) });
      await source.load();
      this.source = source;
    }
    return this.source;
  }

  async snapshot(): Promise<RegistrySnapshot> {
    return (await this.registry()).current();
  }

  /**
   * The key lifecycle. Changes of state and aliases touch only the default token; creating, rotating and importing
   * keys may use any configured token (`allTokens`).
   */
  async keys(allTokens: boolean): Promise<KeyLifecycle> {
    const source = await this.registry();
    // A change that stops a key signing is refused by the key's own token (opened when needed), or waits the bound.
    const gate = new SigningGate(source, (name) => this.token(name), {
      propagationBoundMs: propagationBoundMs(this.config().registry.refreshIntervalMs),
      log: this.log,
      notice: (message) => this.warn(`note: ${message}`),
      capabilitiesOf: (name) => this.home(name).capabilities.known(),
    });
    return new KeyLifecycle(source, allTokens ? this.allHomes() : [this.home('default')], { gate });
  }

  /** The access keys kept on the default token. */
  async accessKeys(): Promise<AccessKeys> {
    return new AccessKeys(await this.registry());
  }

  async certificates(): Promise<CertificateLifecycle> {
    const source = await this.registry();
    const homes = this.allHomes();
    return new CertificateLifecycle(source, homes, new Signer(new Map(homes.map((h) => [h.name, h.token]))), { regionId: this.config().server.regionId });
  }

  /**
   * With Redis configured, the CLI takes the gateways' registry lock and announces its changes, so running gateways
   * apply them at once rather than at their next poll.
   */
  private async coordination(): Promise<Partial<ReturnType<typeof redisCoordination>>> {
    const redisConfig = this.config().throttle.redis;
    if (!redisConfig) return {};
    const redis = connectRedis(redisConfig, this.log as Logger);
    this.redis = redis;
    const ready = await Promise.race([once(redis, 'ready').then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000).unref())]);
    if (!ready) throw new UnavailableError(`Redis (${redisConfig.url}) is configured but unreachable: changes could not be serialized with the running gateways`);
    return redisCoordination(redis);
  }

  /**
   * registry.postgres — the database client (`registry init`, `registry history`); closed with the context. The
   * section is enough, whatever registry.store says: a registry is prepared (and migrated) before the switch.
   */
  postgresRecords(): PostgresRecords {
    this.requirePostgres();
    this.postgres ??= postgresRecordsOf(this.config());
    return this.postgres;
  }

  /** registry.postgres with the sealer of access-key secrets (`registry migrate`); closed with the context. */
  postgresStore(): PostgresStore {
    this.requirePostgres();
    this.postgresWithSealer ??= postgresStoreOf(this.config(), 'cli', this.log);
    return this.postgresWithSealer;
  }

  private requirePostgres(): void {
    const { store, postgres } = this.config().registry;
    if (!postgres) throw new UnavailableError(`no PostgreSQL registry is configured (registry.postgres in ${this.configPath}; registry.store: ${store})`);
  }

  /** Logs out and finalizes every token opened. */
  async close(): Promise<void> {
    this.redis?.disconnect();
    await this.postgres?.close().catch(() => undefined);
    await this.postgresWithSealer?.records.close().catch(() => undefined);
    for (const home of this.opened.values()) await home.token.close().catch(() => undefined);
    this.opened.clear();
  }
}
