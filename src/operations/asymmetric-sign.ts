import { ApiError } from '../http/error-catalog.js';
import { ALGORITHM_NAMES } from '../signing/algorithms.js';
import type { Operation } from './context.js';
import { base64Param, booleanParam, checkMessageSize, oneOf, required } from './params.js';
import { planFor } from './plan-for.js';
import { assertSignVerifyKey, resolveKey, resolveVersion } from './resolve-key.js';

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
    assertSignVerifyKey(key);
    const plan = planFor(ctx, algorithm, key.keySpec, 'DIGEST');
    checkMessageSize('Digest', digest, 'DIGEST', plan.digestBytes);
    if (dryRun) throw new ApiError('DryRunOperation');

    const signature = await ctx.signer.sign({ token: key.token, label: version.label, id: version.id }, plan, digest);
    return { KeyId: key.keyId, KeyVersionId: version.keyVersionId, Value: signature.toString('base64'), RequestId: ctx.requestId };
  },
};
