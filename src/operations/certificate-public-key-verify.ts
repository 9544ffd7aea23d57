import type { Operation } from './context.js';
import { readCertificateMessageRequest } from './kms-request.js';
import { base64Param } from './params.js';

/** KMS 2016-01-20 CertificatePublicKeyVerify: check a signature with a certificate's key; wrong is `false`. */
export const certificatePublicKeyVerify: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const signature = base64Param(params, 'SignatureValue');
    const { cert, plan, message } = readCertificateMessageRequest(params, ctx);

    const valid = await ctx.signer.verify(cert, plan, message, signature);
    return { CertificateId: cert.certificateId, SignatureValid: valid, RequestId: ctx.requestId };
  },
};
