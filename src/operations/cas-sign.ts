import { createHash } from 'node:crypto';
import { ApiError } from '../http/error-catalog.js';
import { buildDetachedSignedData } from '../signing/cms.js';
import { readCasRequest } from './cas-request.js';
import type { Operation } from './context.js';
import { checkMessageSize } from './params.js';
import { planFor } from './plan-for.js';

/** CAS 2020-04-07 Sign: sign RAW / BASE64 / DIGEST messages with a repository certificate, or answer CMS (P7). */
export const casSign: Operation = {
  xmlRoot: 'SignResponse',
  async handle(params, ctx) {
    const { signingAlgorithm, algorithm, output, kind, data, cert } = readCasRequest(params, ctx);
    // CMS signs its signed attributes (a RAW message) whatever the caller's message type.
    const plan = planFor(ctx, algorithm, cert, output === 'cms' ? 'RAW' : kind, { param: 'SigningAlgorithm', name: signingAlgorithm });
    checkMessageSize('Message', data, kind, plan.digestBytes);

    let signature: Buffer;
    if (output === 'cms') {
      const material = ctx.certificates.get(cert.certificateId);
      if (!material) throw new ApiError('ServiceUnavailableTemporary', 'The certificate is not available on the HSM.');
      signature = await buildDetachedSignedData({
        contentDigest: kind === 'DIGEST' ? data : createHash('sha256').update(data).digest(),
        signerCertificate: material.der,
        chain: material.chain,
        signingTime: new Date(),
        sign: (signedAttributes) => ctx.signer.sign(cert, plan, signedAttributes),
      });
    } else {
      signature = await ctx.signer.sign(cert, plan, data);
    }
    return { Signature: signature.toString('base64'), RequestId: ctx.requestId };
  },
};
