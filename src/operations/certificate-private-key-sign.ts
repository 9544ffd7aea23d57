import { ALGORITHM_NAMES } from '../signing/algorithms.js';
import type { Operation } from './context.js';
import { base64Param, checkMessageSize, oneOf, required } from './params.js';
import { planFor } from './plan-for.js';
import { certificateById } from './resolve-certificate.js';

/** KMS 2016-01-20 CertificatePrivateKeySign: sign a message (RAW, ≤ 4 KB) or its digest with a certificate's key. */
export const certificatePrivateKeySign: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const certificateId = required(params, 'CertificateId');
    const algorithm = oneOf(params, 'Algorithm', ALGORITHM_NAMES);
    const messageType = oneOf(params, 'MessageType', ['RAW', 'DIGEST'] as const, 'RAW');
    const message = base64Param(params, 'Message');
    ctx.audit.algorithm = algorithm;

    const cert = certificateById(ctx, certificateId);
    const plan = planFor(ctx, algorithm, cert.keySpec, messageType);
    checkMessageSize('Message', message, messageType, plan.digestBytes);

    const signature = await ctx.signer.sign(cert, plan, message);
    return { CertificateId: cert.certificateId, SignatureValue: signature.toString('base64'), RequestId: ctx.requestId };
  },
};
