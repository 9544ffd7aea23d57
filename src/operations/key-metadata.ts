import { type KeyRecord, type KeyVersionRecord } from '../keys/registry.js';
import { accessTo, resourceArn } from './authorize.js';
import type { OperationContext } from './context.js';

/**
 * What the KMS read actions say about keys, versions and aliases, in the cloud's field names and formats.
 * One place for the shapes, so DescribeKey, the lists and DescribeKeyVersion never drift apart.
 */

/** KMS dates are UTC `YYYY-MM-DDThh:mm:ssZ`; a registry date that does not parse is left out. */
export function kmsDate(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? undefined : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export const keyArn = (ctx: OperationContext, key: KeyRecord): string => resourceArn(ctx, key);

const aliasArn = (ctx: OperationContext, key: KeyRecord, aliasName: string): string => `acs:kms:${ctx.regionId}:${key.account}:${aliasName}`;

/** DescribeKey's KeyMetadata (the SDK's DescribeKeyResponseKeyMetadata). */
export function keyMetadata(ctx: OperationContext, key: KeyRecord): Record<string, string | undefined> {
  const first = key.versions[0];
  const latest = key.versions.at(-1);
  return {
    KeyId: key.keyId,
    KeySpec: key.keySpec,
    KeyUsage: key.usage,
    KeyState: key.state,
    CreationDate: kmsDate(key.createdAt ?? first?.createdAt),
    Creator: key.creator ?? key.account,
    Origin: 'Aliyun_KMS',
    ProtectionLevel: 'HSM',
    Arn: keyArn(ctx, key),
    Description: key.description ?? '',
    PrimaryKeyVersion: key.primaryKeyVersion ?? first?.keyVersionId,
    AutomaticRotation: 'Disabled',
    DeleteDate: key.state === 'PendingDeletion' ? kmsDate(key.deleteDate) : undefined,
    LastRotationDate: key.versions.length > 1 ? kmsDate(latest?.createdAt) : undefined,
  };
}

/** A KeyVersion of ListKeyVersions and DescribeKeyVersion; a version without a date takes its key's. */
export function keyVersionSummary(key: KeyRecord, version: KeyVersionRecord): Record<string, string | undefined> {
  return { KeyId: key.keyId, KeyVersionId: version.keyVersionId, CreationDate: kmsDate(version.createdAt ?? key.createdAt) };
}

/** Every alias of the keys given, ordered by alias name, as ListAliases and ListAliasesByKeyId answer them. */
export function aliasesOf(ctx: OperationContext, keys: readonly KeyRecord[]): Array<Record<string, string>> {
  return keys
    .flatMap((key) => key.aliases.map((AliasName) => ({ KeyId: key.keyId, AliasName, AliasArn: aliasArn(ctx, key, AliasName) })))
    .sort((a, b) => compare(a.AliasName, b.AliasName));
}

/** Plain code-unit order: stable across locales, unlike localeCompare. */
export const compare = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** The keys this caller may use (its account's, inside their ACL), by keyId. */
export function visibleKeys(ctx: OperationContext): KeyRecord[] {
  return ctx.registry
    .all()
    .filter((key) => accessTo(ctx, key) === 'allowed')
    .sort((a, b) => compare(a.keyId, b.keyId));
}
