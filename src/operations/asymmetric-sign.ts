import { ApiError } from '../http/error-catalog.js';
import type { Operation } from './context.js';
import { readKeyDigestRequest } from './kms-request.js';
import { booleanParam } from './params.js';

/** KMS 2016-01-20 AsymmetricSign: sign a caller-computed digest with a key version. */
export const asymmetricSign: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const dryRun = booleanParam(params, 'DryRun');
    const { key, version, location, plan, digest } = readKeyDigestRequest(params, ctx);
    // DryRun answers after every check a real call makes (parameters, key, ACL, state), before signing.
    if (dryRun) throw new ApiError('DryRunOperation');

    const signature = await ctx.signer.sign(location, plan, digest);
    return { KeyId: key.keyId, KeyVersionId: version.keyVersionId, Value: signature.toString('base64'), RequestId: ctx.requestId };
  },
};
