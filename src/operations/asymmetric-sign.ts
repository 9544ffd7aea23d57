import { ApiError, invalid } from '../http/error-catalog.js';
import { ALGORITHM_NAMES, algorithmFits } from '../signing/algorithms.js';
import type { Operation } from './context.js';
import { base64Param, booleanParam, oneOf, required } from './params.js';
import { assertCanSign, resolveKey, resolveVersion } from './resolve-key.js';

/** KMS 2016-01-20 AsymmetricSign: sign a caller-computed digest with a key version. */
export const asymmetricSign: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const keyIdParam = required(params, 'KeyId');
    const keyVersionId = required(params, 'KeyVersionId');
    const algorithm = oneOf(params, 'Algorithm', ALGORITHM_NAMES);
    const digest = base64Param(params, 'Digest');
    const dryRun = booleanParam(params, 'DryRun');
    ctx.audit.algorithm = algorithm;

    const key = resolveKey(ctx, keyIdParam);
    const version = resolveVersion(ctx, key, keyVersionId);
    assertCanSign(key);
    if (!algorithmFits(algorithm, key.keySpec)) {
      throw invalid('Algorithm', `${algorithm} cannot be used with a key of spec ${key.keySpec}.`);
    }
    const plan = ctx.plans.get(algorithm, key.keySpec, 'DIGEST');
    if (!plan) throw new ApiError('ServiceUnavailableTemporary', `The HSM offers no mechanism for ${algorithm}.`);
    if (digest.length !== plan.digestBytes) {
      throw invalid('Digest', `a ${algorithm} digest is ${plan.digestBytes} bytes (got ${digest.length}).`);
    }
    if (dryRun) throw new ApiError('DryRunOperation');

    const signature = await ctx.signer.sign({ token: key.token, label: version.label, id: version.id }, plan, digest);
    return { KeyId: key.keyId, KeyVersionId: version.keyVersionId, Value: signature.toString('base64'), RequestId: ctx.requestId };
  },
};
