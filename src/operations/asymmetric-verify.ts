import { ALGORITHM_NAMES } from '../signing/algorithms.js';
import type { Operation } from './context.js';
import { base64Param, checkMessageSize, oneOf, required } from './params.js';
import { planFor } from './plan-for.js';
import { assertSignVerifyKey, resolveKey, resolveVersion } from './resolve-key.js';

/** KMS 2016-01-20 AsymmetricVerify: check a signature over a digest on the token; a wrong one is `Value: false`. */
export const asymmetricVerify: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const keyIdParam = required(params, 'KeyId');
    const keyVersionId = required(params, 'KeyVersionId');
    const algorithm = oneOf(params, 'Algorithm', ALGORITHM_NAMES);
    const digest = base64Param(params, 'Digest');
    const signature = base64Param(params, 'Value');
    ctx.audit.algorithm = algorithm;

    const key = resolveKey(ctx, keyIdParam);
    const version = resolveVersion(ctx, key, keyVersionId);
    assertSignVerifyKey(key);
    const plan = planFor(ctx, algorithm, key.keySpec, 'DIGEST');
    checkMessageSize('Digest', digest, 'DIGEST', plan.digestBytes);

    const valid = await ctx.signer.verify({ token: key.token, label: version.label, id: version.id }, plan, digest, signature);
    return { KeyId: key.keyId, KeyVersionId: version.keyVersionId, Value: valid, RequestId: ctx.requestId };
  },
};
