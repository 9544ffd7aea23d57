import { ALGORITHM_NAMES } from '../signing/algorithms.js';
import type { Operation } from './context.js';
import { base64Param, checkMessageSize, oneOf, required } from './params.js';
import { planFor } from './plan-for.js';
import { certificateById } from './resolve-certificate.js';

/** KMS 2016-01-20 CertificatePublicKeyVerify: check a signature with a certificate's key; wrong is `false`. */
export const certificatePublicKeyVerify: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const certificateId = required(params, 'CertificateId');
    const algorithm = oneOf(params, 'Algorithm', ALGORITHM_NAMES);
    const messageType = oneOf(params, 'MessageType', ['RAW', 'DIGEST'] as const, 'RAW');
    const message = base64Param(params, 'Message');
    const signature = base64Param(params, 'SignatureValue');
    ctx.audit.algorithm = algorithm;

    const cert = certificateById(ctx, certificateId);
    const plan = planFor(ctx, algorithm, cert.keySpec, messageType);
    checkMessageSize('Message', message, messageType, plan.digestBytes);

    const valid = await ctx.signer.verify(cert, plan, message, signature);
    return { CertificateId: cert.certificateId, SignatureValid: valid, RequestId: ctx.requestId };
  },
};
