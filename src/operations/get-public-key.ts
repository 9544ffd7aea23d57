import { ApiError } from '../http/error-catalog.js';
import type { Operation } from './context.js';
import { required } from './params.js';
import { resolveKey, resolveVersion } from './resolve-key.js';

/** KMS 2016-01-20 GetPublicKey: the PEM public key of a key version, as read from the token at start-up. */
export const getPublicKey: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const key = resolveKey(ctx, required(params, 'KeyId'));
    const version = resolveVersion(ctx, key, required(params, 'KeyVersionId'));
    if (key.state === 'PendingDeletion') throw new ApiError('Rejected.PendingDeletion', `The key ${key.keyId} is pending deletion.`);
    const pem = ctx.publicKeys.get(version.keyVersionId);
    if (!pem) throw new ApiError('ServiceUnavailableTemporary', 'The public key of this key version is not available on the HSM.');
    return { KeyId: key.keyId, KeyVersionId: version.keyVersionId, PublicKey: pem, RequestId: ctx.requestId };
  },
};
