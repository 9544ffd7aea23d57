import type { Operation } from './context.js';
import { readKeyDigestRequest } from './kms-request.js';
import { base64Param } from './params.js';

/** KMS 2016-01-20 AsymmetricVerify: check a signature over a digest on the token; a wrong one is `Value: false`. */
export const asymmetricVerify: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const signature = base64Param(params, 'Value');
    const { key, version, location, plan, digest } = readKeyDigestRequest(params, ctx);

    const valid = await ctx.signer.verify(location, plan, digest, signature);
    return { KeyId: key.keyId, KeyVersionId: version.keyVersionId, Value: valid, RequestId: ctx.requestId };
  },
};
