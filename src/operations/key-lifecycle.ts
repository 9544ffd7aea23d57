import { ApiError, invalid } from '../http/error-catalog.js';
import type { KeyLifecycle } from '../keys/lifecycle.js';
import { KEY_SPEC_NAMES } from '../signing/key-specs.js';
import type { Operation, OperationContext } from './context.js';
import { keyMetadata, kmsDate } from './key-metadata.js';
import { booleanParam, oneOf, optionalParam, required } from './params.js';
import { resolveKey } from './resolve-key.js';

/**
 * The KMS 2016-01-20 key lifecycle actions. Each resolves the key the way signing does (account, ACL, RAM policy on
 * the key's ARN, for this action), then asks the lifecycle to change the token-kept registry; the other replicas serve
 * the change at once when it is announced, at the latest after their next poll.
 */
function lifecycleOf(ctx: OperationContext): KeyLifecycle {
  if (!ctx.lifecycle) throw new ApiError('Rejected.UnsupportedOperation', 'This gateway does not manage keys.');
  return ctx.lifecycle;
}

const done = (ctx: OperationContext): Record<string, unknown> => ({ RequestId: ctx.requestId });

/** A change on one key named by KeyId (GUID or alias), answered with just the RequestId. */
function keyChange(change: (lifecycle: KeyLifecycle, account: string, keyId: string, params: Record<string, string>) => Promise<unknown>): Operation {
  return {
    xmlRoot: 'KMS',
    async handle(params, ctx) {
      const key = resolveKey(ctx, required(params, 'KeyId'));
      await change(lifecycleOf(ctx), ctx.caller.account, key.keyId, params);
      return done(ctx);
    },
  };
}

const createKey: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const keySpec = oneOf(params, 'KeySpec', KEY_SPEC_NAMES);
    const usage = oneOf(params, 'KeyUsage', ['SIGN/VERIFY', 'ENCRYPT/DECRYPT'], 'SIGN/VERIFY');
    if (usage !== 'SIGN/VERIFY') throw invalid('KeyUsage', 'this gateway makes signing keys only (SIGN/VERIFY).');
    oneOf(params, 'ProtectionLevel', ['HSM'], 'HSM');
    oneOf(params, 'Origin', ['Aliyun_KMS'], 'Aliyun_KMS');
    if (booleanParam(params, 'EnableAutomaticRotation')) {
      throw new ApiError('Rejected.UnsupportedOperation', 'Automatic rotation is not supported; rotate with CreateKeyVersion.');
    }
    // Creating a key is an action on the account's key space: a policy grants it on `key/*` (or `*`).
    const arn = `acs:kms:${ctx.regionId}:${ctx.caller.account}:key/*`;
    if (ctx.caller.policy && !ctx.caller.policy.allows(ctx.ramAction, arn)) {
      throw new ApiError('Forbidden.NoPermission', `The AccessKey ${ctx.caller.accessKeyId} is not allowed to create keys.`);
    }
    const description = optionalParam(params, 'Description');
    const key = await lifecycleOf(ctx).createKey({
      account: ctx.caller.account,
      keySpec,
      creator: ctx.caller.accessKeyId,
      ...(description ? { description } : {}),
    });
    ctx.audit.keyId = key.keyId;
    return { KeyMetadata: keyMetadata(ctx, key), RequestId: ctx.requestId };
  },
};

const createKeyVersion: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const key = resolveKey(ctx, required(params, 'KeyId'));
    const { version } = await lifecycleOf(ctx).createKeyVersion(ctx.caller.account, key.keyId);
    ctx.audit.keyVersionId = version.keyVersionId;
    return {
      KeyVersion: { KeyId: key.keyId, KeyVersionId: version.keyVersionId, CreationDate: kmsDate(version.createdAt) },
      RequestId: ctx.requestId,
    };
  },
};

const enableKey = keyChange((lifecycle, account, keyId) => lifecycle.enableKey(account, keyId));
const disableKey = keyChange((lifecycle, account, keyId) => lifecycle.disableKey(account, keyId));
const cancelKeyDeletion = keyChange((lifecycle, account, keyId) => lifecycle.cancelKeyDeletion(account, keyId));

const scheduleKeyDeletion = keyChange((lifecycle, account, keyId, params) => {
  const days = required(params, 'PendingWindowInDays');
  if (!/^\d{1,4}$/.test(days)) throw invalid('PendingWindowInDays', 'a whole number of days from 7 to 366.');
  return lifecycle.scheduleKeyDeletion(account, keyId, Number(days));
});

const updateKeyDescription = keyChange((lifecycle, account, keyId, params) => {
  const description = params.Description;
  if (description === undefined) throw new ApiError('MissingParameter', 'The input parameter "Description" that is mandatory for processing this request is not supplied.');
  return lifecycle.updateKeyDescription(account, keyId, description);
});

const createAlias: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const alias = required(params, 'AliasName');
    const key = resolveKey(ctx, required(params, 'KeyId'));
    // The alias is the caller's account's: a name only another account uses is free here (and that is not revealed).
    await lifecycleOf(ctx).createAlias(ctx.caller.account, alias, key.keyId);
    return done(ctx);
  },
};

/**
 * An existing alias of the caller's account named by AliasName, resolved like a KeyId (the caller must be allowed on
 * its key); another account's alias of that name answers exactly as a name that exists nowhere.
 */
function existingAlias(params: Record<string, string>, ctx: OperationContext): string {
  const alias = required(params, 'AliasName');
  if (!alias.startsWith('alias/')) throw invalid('AliasName', 'an alias starts with "alias/".');
  resolveKey(ctx, alias);
  return alias;
}

const updateAlias: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const alias = existingAlias(params, ctx); // the caller must be allowed on the key the alias leaves…
    const key = resolveKey(ctx, required(params, 'KeyId')); // …and on the key it moves to
    await lifecycleOf(ctx).updateAlias(ctx.caller.account, alias, key.keyId);
    return done(ctx);
  },
};

const deleteAlias: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    await lifecycleOf(ctx).deleteAlias(ctx.caller.account, existingAlias(params, ctx));
    return done(ctx);
  },
};

const CHANGES: Record<string, Operation> = {
  CreateKey: createKey,
  CreateKeyVersion: createKeyVersion,
  EnableKey: enableKey,
  DisableKey: disableKey,
  ScheduleKeyDeletion: scheduleKeyDeletion,
  CancelKeyDeletion: cancelKeyDeletion,
  UpdateKeyDescription: updateKeyDescription,
  CreateAlias: createAlias,
  UpdateAlias: updateAlias,
  DeleteAlias: deleteAlias,
};

/** To spread into the '2016-01-20' entry of API_VERSIONS; every one of them changes state. */
export const KMS_LIFECYCLE_OPERATIONS: Record<string, Operation> = Object.fromEntries(
  Object.entries(CHANGES).map(([action, operation]) => [action, { ...operation, changesState: true } satisfies Operation]),
);
