import { z } from 'zod';
import { PolicyDocumentSchema } from '../keys/policy.js';

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
      })
      .strict()
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
     * refreshIntervalMs: a change made through one is served by the others within that bound.
     */
    registry: z
      .object({
        store: z.enum(['token', 'file']).default('token'),
        file: z.string().min(1).optional(),
        refreshIntervalMs: z.number().int().min(50).max(60_000).default(1000),
      })
      .strict()
      .refine((r) => r.store !== 'file' || r.file !== undefined, { message: 'registry.store: file needs registry.file (the path of the registry file)', path: ['file'] })
      .prefault({}),
    auth: z
      .object({
        timestampWindowSeconds: z.number().int().positive().default(900),
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
            /** How long a command may take before this replica decides alone (at its share), in ms. */
            commandTimeoutMs: z.number().int().positive().default(250),
          })
          .strict()
          .optional(),
        /** Replicas sharing the limit: while Redis is unreachable each admits defaultLimit / replicas locally. */
        replicas: z.number().int().positive().default(1),
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
      })
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
    logging: z
      .object({ level: z.enum(['error', 'warn', 'info', 'debug']).default('info') })
      .strict()
      .prefault({}),
  })
  .strict();

export type Config = z.infer<typeof ConfigSchema>;
