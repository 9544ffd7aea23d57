import { z } from 'zod';
import { PolicyDocumentSchema } from '../keys/policy.js';

/** The project's own error reference, relative to the checkout, until an operator points it elsewhere. */
const DEFAULT_RECOMMEND_BASE_URL = 'docs/errors.md';

/** A secret is never written in the config: it names an environment variable or a file that holds it. */
export const SecretRefSchema = z.union([
  z.object({ env: z.string().min(1) }).strict(),
  z.object({ file: z.string().min(1) }).strict(),
]);
export type SecretRef = z.infer<typeof SecretRefSchema>;

/** A PKCS#11 constant: a number, or a hex string such as "0x80001002". */
const Pkcs11Constant = z.union([z.number().int().nonnegative(), z.string().regex(/^0x[0-9a-fA-F]+$/).transform((h) => Number.parseInt(h, 16))]);

/**
 * An HSM profile: what a vendor adds to PKCS#11. SM2 uses vendor-defined key types and mechanisms whose values
 * differ per vendor; the gateway computes e = SM3(Z_A ‖ M) and the mechanism signs e.
 */
const HsmProfileSchema = z
  .object({
    sm2: z
      .object({
        keyType: Pkcs11Constant,
        keyPairGenMechanism: Pkcs11Constant,
        signMechanism: Pkcs11Constant,
        /** What the sign mechanism returns: r‖s (`raw`) or DER SEQUENCE { r, s } (`der`). */
        signOutput: z.enum(['raw', 'der']).default('raw'),
      })
      .strict()
      .optional(),
  })
  .strict();

const TokenSchema = z
  .object({
    module: z.string().min(1),
    tokenLabel: z.string().min(1),
    pin: SecretRefSchema,
    /** Signing sessions; each runs one C_Sign at a time on the libuv thread pool. */
    sessions: z.number().int().min(1).max(256).default(8),
    acquireTimeoutMs: z.number().int().positive().default(2000),
    /** Requests allowed to wait for a session; more are answered 503 at once (default: sessions × 32). */
    maxWaiting: z.number().int().nonnegative().optional(),
    /** Deadline of one sign/verify on the token; past it the client gets 503. */
    operationTimeoutMs: z.number().int().positive().default(10000),
    /** How often the token's health is probed (a vanished token is noticed and re-initialized). */
    healthIntervalMs: z.number().int().nonnegative().default(2000),
    /** SoftHSMv2 only: the softhsm2.conf to use (sets SOFTHSM2_CONF before C_Initialize). */
    softhsmConf: z.string().optional(),
    /** Environment the module reads at C_Initialize (e.g. its store directory); set before loading it. */
    // Vendors name their variables as they like (Luna: ChrystokiConfigurationPath): any portable variable name.
    environment: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).default({}),
    /**
     * The module's initialization string, passed to C_Initialize in pReserved (pkcs11js `libraryParameters`). NSS
     * softokn needs it (`configdir='sql:/path/to/db'`); most modules want none (absent: pReserved is NULL).
     */
    initArgs: z.string().min(1).optional(),
    profile: HsmProfileSchema.default({}),
  })
  .strict();
export type TokenConfig = z.infer<typeof TokenSchema>;

export const ConfigSchema = z
  .object({
    server: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(8443),
        /** Largest accepted request body; RAW messages are at most 4 KB, so 64 KB leaves room for encoding. */
        maxBodyBytes: z.number().int().positive().default(65536),
        /** TLS on the listener (the SDKs then use protocol https); absent: plain HTTP (loopback / behind a proxy). */
        tls: z
          .object({
            cert: z.string().min(1),
            key: SecretRefSchema,
            /** CA bundle that client certificates must chain to (mTLS). */
            clientCa: z.string().min(1).optional(),
            requireClientCertificate: z.boolean().default(false),
          })
          .strict()
          .refine((t) => !t.requireClientCertificate || t.clientCa !== undefined, 'requireClientCertificate needs clientCa')
          .optional(),
        /** Region named in ARNs (acs:kms:<region>:<account>:key/<id>) and in the SSL identifiers' suffix. */
        regionId: z.string().min(1).default('cn-hangzhou'),
        /** How long SIGTERM waits for in-flight requests before closing the token anyway. */
        shutdownTimeoutMs: z.number().int().positive().default(10000),
        /**
         * Gateway processes (node:cluster) sharing the listener; each opens its own token sessions. 1 (default): one
         * process — at 1,000 req/s it has half the latency and memory of a cluster. `auto` (one per core) or N: more
         * throughput at saturation, where one process's main thread (HTTP, authentication) is the limit. See
         * bench/README.md for the figures.
         */
        workers: z.union([z.literal('auto'), z.number().int().min(1).max(64)]).default(1),
        /** A request's headers must arrive within this (slowloris); checked every second or more often. */
        headersTimeoutMs: z.number().int().min(100).default(10_000),
        /** The whole request (headers and body) must arrive within this. */
        requestTimeoutMs: z.number().int().min(100).default(30_000),
        /**
         * A keep-alive connection with no request for this long is closed. Longer than the clients' own idle timeout
         * (Node's global agent, which the official SDKs use: 5 s; load balancers: 60 s), so that the client closes
         * first: at an equal timeout a request sent on a socket the server is closing fails with ECONNRESET.
         */
        keepAliveTimeoutMs: z.number().int().min(100).default(65_000),
        /**
         * Open API connections per gateway process; more are closed at once (logged, counted). Absent: the process's
         * open-file limit minus 128 (half of it when that is 256 or less), so that a flood of connections cannot take
         * the descriptors the token, the audit trail and Redis need.
         */
        maxConnections: z.number().int().positive().optional(),
        /** Open API connections per client address per process; absent: no per-address limit (behind a proxy, all share one). */
        maxConnectionsPerAddress: z.number().int().positive().optional(),
        /**
         * A second, plain-HTTP listener for operators: /metrics and the detailed /readyz (token, module, PKCS#11 error).
         * When it is set, the API listener serves neither /metrics nor the details.
         */
        management: z
          .object({
            host: z.string().default('127.0.0.1'),
            port: z.number().int().min(0).max(65535),
          })
          .strict()
          .optional(),
      })
      .strict()
      .refine((s) => s.headersTimeoutMs <= s.requestTimeoutMs, 'headersTimeoutMs must not exceed requestTimeoutMs')
      .prefault({}),
    /** The default token (named "default" in the registry). */
    hsm: TokenSchema,
    /** More tokens, by the name registry entries give in `token` (e.g. an SM2-capable HSM beside SoftHSM). */
    tokens: z.record(z.string().regex(/^[a-z][a-z0-9-]*$/), TokenSchema).default({}),
    /**
     * Where the key registry lives. `token` (the default): on the default token (CKO_DATA records every replica and
     * the admin CLI share), plus static read-only entries from `file`; the gateway checks at start-up that the module
     * shows other processes' objects, and refuses to start where it does not (tpm2-pkcs11, nShield by default).
     * `file`: the registry is `file` alone (read-only through the API, reloaded on SIGHUP); the admin CLI prints the
     * entries of keys and certificates it makes for it. Replicas poll the token's generation marker every
     * refreshIntervalMs: a change made through one is served by the others within that bound. `postgres`: the records
     * live in PostgreSQL (access-key secrets sealed by the token), replicas learn changes by LISTEN/NOTIFY, the poll
     * of the database's generation stays as the backstop.
     */
    registry: z
      .object({
        store: z.enum(['token', 'file', 'postgres']).default('token'),
        file: z.string().min(1).optional(),
        refreshIntervalMs: z.number().int().min(50).max(60_000).default(1000),
        /**
         * registry.store: token on SoftHSMv2 — the processes sharing its token directory (replicas, cluster workers, the
         * CLI) make their registry changes one at a time, under a lock file there (hsm-gateway-registry.lock): SoftHSMv2
         * can hide from a process an object another wrote at the same moment, which leaves the compare-and-swap alone a
         * millisecond's window where two changes both win. false: the compare-and-swap alone (its own tests).
         */
        softhsmLock: z.boolean().default(true),
        /** registry.store: postgres — the database every replica and the admin CLI share (see `registry init`). */
        postgres: z
          .object({
            /** postgres://user@host:port/database; a password in it is refused (it belongs in `password`). */
            url: z
              .string()
              .regex(/^postgres(ql)?:\/\//, 'a postgres:// URL')
              .refine((u) => !/^postgres(ql)?:\/\/[^/@]*:[^/@]*@/.test(u), 'the password goes in registry.postgres.password (a file or an environment variable), not in the URL'),
            password: SecretRefSchema.optional(),
            /** Verify the server's certificate against this CA (PEM file): TLS to the database. */
            tls: z.object({ ca: z.string().min(1) }).strict().optional(),
          })
          .strict()
          .optional(),
        /**
         * Seals the access-key secrets kept in PostgreSQL: an AES-256 key on the default token (made by `registry init`),
         * or, where the token has no AES-GCM, a 32-byte key-encryption key in `kekFile` (weaker: the key is on disk).
         */
        secretsKey: z
          .object({
            label: z.string().min(1).max(32).default('hsm-gateway-secrets'),
            kekFile: z.string().min(1).optional(),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .refine((r) => r.store !== 'file' || r.file !== undefined, { message: 'registry.store: file needs registry.file (the path of the registry file)', path: ['file'] })
      .refine((r) => r.store !== 'postgres' || r.postgres !== undefined, { message: 'registry.store: postgres needs registry.postgres.url', path: ['postgres'] })
      .prefault({}),
    auth: z
      .object({
        timestampWindowSeconds: z.number().int().positive().default(900),
        /**
         * Requests that fail before they authenticate, per client address: `burst` at once, then `perSecond`; past
         * that the address gets 429 before its signature is even checked. `addresses`: how many are remembered.
         */
        failedAuth: z
          .object({
            perSecond: z.number().positive().default(10),
            burst: z.number().int().positive().default(100),
            addresses: z.number().int().positive().default(10_000),
          })
          .strict()
          .prefault({}),
        accessKeys: z
          .array(
            z
              .object({
                accessKeyId: z.string().min(1),
                secret: SecretRefSchema,
                /** A second live secret, for rotation: add it, move clients, drop the first (SIGHUP reloads). */
                secondarySecret: SecretRefSchema.optional(),
                /** RAM-style policies; absent: the access key may do everything on its account's keys. */
                policies: z.array(PolicyDocumentSchema).optional(),
                account: z.string().min(1).default('default'),
                enabled: z.boolean().default(true),
              })
              .strict(),
          )
          .default([]),
      })
      .strict()
      .prefault({}),
    /** Per-account request limits (the seeds promise 1,000 requests per second per account). */
    throttle: z
      .object({
        /** Requests per second per account. */
        defaultLimit: z.number().int().positive().default(1000),
        /** Per-account overrides: account → requests per second. */
        accounts: z.record(z.string(), z.number().int().positive()).default({}),
        /** Count in Redis so that every replica shares one limit per account; absent: in memory. */
        redis: z
          .object({
            url: z.string().min(1),
            password: SecretRefSchema.optional(),
            /**
             * The deadline of every Redis call on a request's path (the throttle count and the nonce check), in ms.
             * Past it the throttle decides at this replica's share and the nonce check counts as "cannot tell"
             * (`replay.whenSharedStoreDown`): a stalled Redis costs a request this long, not the stall.
             */
            commandTimeoutMs: z.number().int().positive().default(50),
          })
          .strict()
          .optional(),
        /** Replicas sharing the limit: while Redis is unreachable each admits defaultLimit / replicas locally. */
        replicas: z.number().int().positive().default(1),
      })
      .strict()
      .prefault({}),
    /** The replay guard: every accepted (AccessKeyId, SignatureNonce) is refused for as long as its timestamp is in the window. */
    replay: z
      .object({
        /**
         * The journal of accepted nonces (two segment files, `<file>` and `<file>.previous`): a restarted gateway
         * still refuses what it accepted before. Absent: a restart forgets them (logged as a warning at start).
         * Cluster workers with Redis each keep `<file>.worker-<n>`.
         */
        journal: z.string().min(1).optional(),
        /**
         * A request whose nonce the shared store (Redis, or the cluster primary) cannot check in time: `refuse`
         * (503, the default) or `local` — accept it after this replica's own check, which accepts replays across
         * replicas during the outage. State-changing actions (key lifecycle, aliases) are refused either way.
         */
        whenSharedStoreDown: z.enum(['refuse', 'local']).default('refuse'),
        /** Nonces remembered at once (≈ 45 bytes each), and per account, so that no account can fill the guard alone. */
        maxNonces: z.number().int().positive().default(8_000_000),
        maxNoncesPerAccount: z.number().int().positive().default(2_000_000),
        /**
         * After Redis lost its data, how long the replicas refuse (or decide locally) requests whose nonce Redis does
         * not know, while every replica re-publishes its own: longer than a replica's 1 s epoch poll plus its re-publication.
         */
        recoveryGraceMs: z.number().int().nonnegative().default(5000),
      })
      .strict()
      .prefault({}),
    metrics: z
      .object({
        enabled: z.boolean().default(true),
        /** Label the per-account metrics with the account name; off: every account is counted as `_all`. */
        accountLabels: z.boolean().default(true),
        /** Accounts with their own label (the first seen); the rest share `_other`, so the series stay bounded. */
        maxAccountLabels: z.number().int().positive().default(1000),
      })
      .strict()
      .prefault({}),
    audit: z
      .object({
        /** A hash-chained audit file (one line per request); absent: audit lines go to the log only. */
        file: z.string().min(1).optional(),
        /** Rotate the file before it grows past this size. */
        rotateBytes: z.number().int().positive().default(100 * 1024 * 1024),
        /** Rotated files kept; after a rotation the oldest beyond this are deleted. */
        maxFiles: z.number().int().positive().default(20),
        /** Total size of the rotated files kept; after a rotation the oldest are deleted until they fit. */
        maxBytes: z.number().int().positive().default(2 * 1024 * 1024 * 1024),
        /** fdatasync every batch of lines (survives a power loss; costs a disk flush per batch). */
        fsync: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    /**
     * The tokens' deep capability probe (key pairs per key spec, object classes, other processes' objects; see
     * src/hsm/capabilities.ts). With `cacheFile`, a gateway probes each token it does not find there at start-up and
     * writes the answer (per library, model, serial and firmware); `token info` refreshes it. Without, start-up reads
     * only the mechanisms and their flags, and `token info` probes when asked.
     */
    capabilities: z
      .object({ cacheFile: z.string().min(1).optional() })
      .strict()
      .prefault({}),
    /** Compatibility switches for CAS Sign. */
    cas: z
      .object({
        /**
         * The 2024 CAS Sign document said Message is Base64 even for MessageType RAW; the 2026 one says RAW is the
         * raw string. Off by default (2026 behaviour); on for everyone, or only for the listed accounts.
         */
        rawMessageIsBase64: z.boolean().default(false),
        rawMessageIsBase64Accounts: z.array(z.string().min(1)).default([]),
      })
      .strict()
      .prefault({}),
    /** What error bodies link to. */
    errors: z
      .object({
        /**
         * Base of the `Recommend` link in every error body (the cloud links its troubleshooting page there); the
         * code's anchor in docs/errors.md is appended as `#<anchor>`. Point it at where your users read the docs.
         */
        recommendBaseUrl: z.string().min(1).default(DEFAULT_RECOMMEND_BASE_URL),
      })
      .strict()
      .prefault({}),
    logging: z
      .object({ level: z.enum(['error', 'warn', 'info', 'debug']).default('info') })
      .strict()
      .prefault({}),
  })
  .strict();

export type Config = z.infer<typeof ConfigSchema>;

/** How long a nonce is remembered (twice the window: a timestamp may be up to one window ahead) and how many. */
export function replayGuardOptions(config: Config): { ttlMs: number; maxEntries: number; maxEntriesPerAccount: number } {
  return { ttlMs: 2 * config.auth.timestampWindowSeconds * 1000, maxEntries: config.replay.maxNonces, maxEntriesPerAccount: config.replay.maxNoncesPerAccount };
}
