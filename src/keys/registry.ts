import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { KEY_SPEC_NAMES } from '../signing/key-specs.js';
import { RegistryError } from './errors.js';

/**
 * The key registry: which KMS key ids, aliases and versions exist, which token object each version is,
 * its key spec, state and usage, and who may use it. It is a JSON file (the demo bootstrap writes one;
 * operators write or generate theirs), validated when the gateway starts.
 */
const KeyVersionSchema = z.object({
  keyVersionId: z.string().min(1),
  /** CKA_LABEL of the private key (and its public key) on the token. */
  label: z.string().min(1),
  /** CKA_ID, hex; pairs the private key with its public key and certificate. */
  id: z.string().regex(/^([0-9a-fA-F]{2})+$/).optional(),
  createdAt: z.iso.datetime({ offset: true }).optional(),
  /** How a generated version was made: 'strict', or the module's documented fallback (src/hsm/admin.ts). */
  template: z.string().min(1).optional(),
  /**
   * Bring your own key accepted by an operator although the key existed outside the HSM (CKA_NEVER_EXTRACTABLE
   * false): what was accepted, and when. Shown by `keys describe`.
   */
  importOverride: z.object({ accepted: z.array(z.string()).min(1), at: z.iso.datetime({ offset: true }) }).optional(),
});

/** Alibaba's alias rule: `alias/` then 1–255 of letters, digits, `_ - / :` (new ones may not start `alias/acs/`). */
const ALIAS_PATTERN = /^alias\/[a-zA-Z0-9:/_-]{1,255}$/;

/** May an alias with this name be created? (`alias/acs/…` is the cloud's own.) */
export const isNewAliasName = (alias: string): boolean => ALIAS_PATTERN.test(alias) && !alias.startsWith('alias/acs/');

export const KeySchema = z.object({
  keyId: z.string().min(1),
  /** The account that owns the key: callers of another account do not see it. */
  account: z.string().min(1).default('default'),
  keySpec: z.enum(KEY_SPEC_NAMES as [string, ...string[]]),
  usage: z.enum(['SIGN/VERIFY', 'ENCRYPT/DECRYPT']).default('SIGN/VERIFY'),
  state: z.enum(['Enabled', 'Disabled', 'PendingDeletion']).default('Enabled'),
  aliases: z.array(z.string().regex(ALIAS_PATTERN, 'an alias is "alias/" followed by 1–255 letters, digits, ":", "/", "_" or "-"')).default([]),
  /** Access keys of the owning account allowed to use the key; absent means every access key of the account. */
  accessKeyIds: z.array(z.string()).optional(),
  /** Which configured token holds the key. */
  token: z.string().default('default'),
  versions: z.array(KeyVersionSchema).min(1),
  /** The version that signs when none is named (KMS PrimaryKeyVersion); the first version when absent. */
  primaryKeyVersion: z.string().optional(),
  createdAt: z.iso.datetime({ offset: true }).optional(),
  /** PendingDeletion: when the key's token objects are destroyed. */
  deleteDate: z.iso.datetime({ offset: true }).optional(),
  creator: z.string().optional(),
  description: z.string().optional(),
});

/**
 * A certificate whose private key is on the token. The certificate itself is a CKO_CERTIFICATE with the same
 * label and CKA_ID as its private key; `chainLabels` name its issuers' certificates on the token, nearest first.
 */
export const CertificateSchema = z.object({
  /** KMS CertificateId (GUID). */
  certificateId: z.string().min(1),
  /** CAS `Identifier` of a private certificate (CertIdentifier). */
  casIdentifier: z.string().min(1).optional(),
  /** CAS SSL-style identifier `{Certificate ID}-cn-hangzhou` (CertIdentifier). */
  sslIdentifier: z.string().min(1).optional(),
  /** CAS CustomIdentifier. */
  customIdentifier: z.string().min(1).optional(),
  /** CAS certificate repository. */
  warehouseId: z.number().int().nonnegative().optional(),
  account: z.string().min(1).default('default'),
  keySpec: z.enum(KEY_SPEC_NAMES as [string, ...string[]]),
  state: z.enum(['Enabled', 'Disabled', 'PendingDeletion']).default('Enabled'),
  accessKeyIds: z.array(z.string()).optional(),
  token: z.string().default('default'),
  label: z.string().min(1),
  id: z.string().regex(/^([0-9a-fA-F]{2})+$/).optional(),
  chainLabels: z.array(z.string().min(1)).default([]),
  description: z.string().optional(),
  /** `certs register` of a key the operator accepted although it existed outside the HSM (as for keys import). */
  importOverride: z.object({ accepted: z.array(z.string()).min(1), at: z.iso.datetime({ offset: true }) }).optional(),
});

export const RegistryFileSchema = z.object({ keys: z.array(KeySchema), certificates: z.array(CertificateSchema).default([]) });

export type KeyRecord = z.infer<typeof KeySchema> & { keySpec: (typeof KEY_SPEC_NAMES)[number] };
export type KeyVersionRecord = z.infer<typeof KeyVersionSchema>;
export type CertificateRecord = z.infer<typeof CertificateSchema> & { keySpec: (typeof KEY_SPEC_NAMES)[number] };
export type RegistryFile = z.input<typeof RegistryFileSchema>;

/** A registry file, read and validated; errors name the file and what is wrong in it. */
export function readRegistryFile(path: string): RegistryFile {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new RegistryError(`cannot read the key registry ${path}: ${(err as Error).message}`);
  }
  const parsed = RegistryFileSchema.safeParse(data);
  if (!parsed.success) throw new RegistryError(`invalid key registry ${path}:\n${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

/**
 * Aliases belong to an account, as in the cloud: the same name in two accounts is two aliases, and nothing one
 * account does with a name can be seen from another. An alias is stored in its key's record, so it belongs to the
 * account of the key it names (records written before aliases were per account load unchanged, the same way).
 */
const aliasKey = (account: string, alias: string): string => `${account}\u0000${alias}`;

export class KeyRegistry {
  private readonly byId = new Map<string, KeyRecord>();
  /** By account and alias name (aliasKey). */
  private readonly byAlias = new Map<string, KeyRecord>();
  private readonly certificatesById = new Map<string, CertificateRecord>();
  private readonly byCertIdentifier = new Map<string, CertificateRecord>();
  private readonly byCustomIdentifier = new Map<string, CertificateRecord>();

  constructor(input: RegistryFile, validated = false) {
    const file = validated ? (input as z.output<typeof RegistryFileSchema>) : RegistryFileSchema.parse(input);
    const versions = new Set<string>();
    for (const key of file.keys as KeyRecord[]) {
      if (this.byId.has(key.keyId)) throw new RegistryError(`duplicate keyId ${key.keyId}`);
      this.byId.set(key.keyId, key);
      for (const alias of key.aliases) {
        if (this.byAlias.has(aliasKey(key.account, alias))) throw new RegistryError(`alias ${alias} of account ${key.account} is bound to two keys`);
        this.byAlias.set(aliasKey(key.account, alias), key);
      }
      for (const v of key.versions) {
        if (versions.has(v.keyVersionId)) throw new RegistryError(`duplicate keyVersionId ${v.keyVersionId}`);
        versions.add(v.keyVersionId);
      }
    }
    for (const cert of file.certificates as CertificateRecord[]) {
      const unique = (index: Map<string, CertificateRecord>, value: string | undefined, what: string): void => {
        if (value === undefined) return;
        if (index.has(value)) throw new RegistryError(`${what} ${value} names two certificates`);
        index.set(value, cert);
      };
      unique(this.certificatesById, cert.certificateId, 'certificateId');
      // CertIdentifier accepts either identifier, so both live in one namespace.
      unique(this.byCertIdentifier, cert.casIdentifier, 'CAS identifier');
      unique(this.byCertIdentifier, cert.sslIdentifier, 'CAS identifier');
      unique(this.byCustomIdentifier, cert.customIdentifier, 'customIdentifier');
    }
  }

  /**
   * Records each validated by its schema already (a registry read from the token or the database: RegistrySource parses
   * every record once, 500 at a time). Not parsed again: at 10,000 keys that took 35–40 ms of the 53 ms the index
   * takes, in one piece on the event loop.
   */
  static ofValidated(file: { keys: KeyRecord[]; certificates: CertificateRecord[] }): KeyRegistry {
    return new KeyRegistry(file, true);
  }

  static fromFile(path: string): KeyRegistry {
    return new KeyRegistry(readRegistryFile(path));
  }

  /** A key of this account, by GUID or by one of the account's `alias/…` names. */
  find(keyIdOrAlias: string, account: string): KeyRecord | undefined {
    if (keyIdOrAlias.startsWith('alias/')) return this.alias(account, keyIdOrAlias);
    const key = this.byId.get(keyIdOrAlias);
    return key?.account === account ? key : undefined;
  }

  /** A key by GUID, whatever its account (admin tooling; requests go through `find`). */
  key(keyId: string): KeyRecord | undefined {
    return this.byId.get(keyId);
  }

  /** The key this account's alias names. */
  alias(account: string, alias: string): KeyRecord | undefined {
    return this.byAlias.get(aliasKey(account, alias));
  }

  /** The accounts that have an alias of this name (the admin CLI, to tell which one an operator means). */
  accountsWithAlias(alias: string): string[] {
    return [...new Set(this.all().filter((k) => k.aliases.includes(alias)).map((k) => k.account))].sort();
  }

  version(key: KeyRecord, keyVersionId: string): KeyVersionRecord | undefined {
    return key.versions.find((v) => v.keyVersionId === keyVersionId);
  }

  all(): KeyRecord[] {
    return [...this.byId.values()];
  }

  certificate(certificateId: string): CertificateRecord | undefined {
    return this.certificatesById.get(certificateId);
  }

  /** CAS CertIdentifier: a private certificate's Identifier or an SSL `{id}-cn-hangzhou`. */
  certificateByCertIdentifier(identifier: string): CertificateRecord | undefined {
    return this.byCertIdentifier.get(identifier);
  }

  certificateByCustomIdentifier(identifier: string): CertificateRecord | undefined {
    return this.byCustomIdentifier.get(identifier);
  }

  certificates(): CertificateRecord[] {
    return [...this.certificatesById.values()];
  }
}

export type Access = 'allowed' | 'invisible' | 'forbidden';

/**
 * May this caller use the key or certificate? Those of other accounts are invisible; inside the account the
 * ACL decides.
 */
export function accessOf(key: { account: string; accessKeyIds?: string[] }, caller: { account: string; accessKeyId: string }): Access {
  if (key.account !== caller.account) return 'invisible';
  if (key.accessKeyIds && !key.accessKeyIds.includes(caller.accessKeyId)) return 'forbidden';
  return 'allowed';
}
