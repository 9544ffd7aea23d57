import { ApiError, invalid } from '../http/error-catalog.js';
import { type KeyRecord, type KeyVersionRecord } from '../keys/registry.js';
import { accessTo } from './authorize.js';
import type { OperationContext } from './context.js';

/**
 * KeyId (GUID or alias) → the key, as this caller may see it. Aliases are the caller's account's own; a key of
 * another account is reported exactly like a key that does not exist, so ids cannot be probed across accounts.
 */
export function resolveKey(ctx: OperationContext, keyIdOrAlias: string): KeyRecord {
  const key = ctx.registry.find(keyIdOrAlias, ctx.caller.account);
  const access = key ? accessTo(ctx, key) : 'invisible';
  if (!key || access === 'invisible') {
    throw keyIdOrAlias.startsWith('alias/')
      ? new ApiError('Forbidden.AliasNotFound', `The specified Alias is not found: ${keyIdOrAlias}`)
      : new ApiError('Forbidden.KeyNotFound', `The specified Key is not found: ${keyIdOrAlias}`);
  }
  if (access === 'forbidden') {
    // Named as the caller named it: an alias must not reveal the GUID to a caller outside the key's ACL.
    throw new ApiError('Forbidden.NoPermission', `The AccessKey ${ctx.caller.accessKeyId} is not allowed to use the key ${keyIdOrAlias}.`);
  }
  ctx.audit.keyId = key.keyId;
  return key;
}

export function resolveVersion(ctx: OperationContext, key: KeyRecord, keyVersionId: string): KeyVersionRecord {
  const version = ctx.registry.version(key, keyVersionId);
  if (!version) throw invalid('KeyVersionId', `the version ${keyVersionId} does not belong to the key ${key.keyId}.`);
  ctx.audit.keyVersionId = version.keyVersionId;
  return version;
}

/** Only Enabled keys whose usage is SIGN/VERIFY may sign or verify. */
export function assertSignVerifyKey(key: KeyRecord): void {
  if (key.state === 'Disabled') throw new ApiError('Rejected.Disabled', `The key ${key.keyId} is disabled.`);
  if (key.state === 'PendingDeletion') throw new ApiError('Rejected.PendingDeletion', `The key ${key.keyId} is pending deletion.`);
  if (key.usage !== 'SIGN/VERIFY') throw invalid('KeyId', `the key ${key.keyId} has usage ${key.usage}; only SIGN/VERIFY keys can sign.`);
}
