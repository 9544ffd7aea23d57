import type { Operation } from './context.js';
import { readCertificateMessageRequest } from './kms-request.js';

/** KMS 2016-01-20 CertificatePrivateKeySign: sign a message (RAW, ≤ 4 KB) or its digest with a certificate's key. */
export const certificatePrivateKeySign: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const { cert, plan, message } = readCertificateMessageRequest(params, ctx);

    const signature = await ctx.signer.sign(cert, plan, message);
    return { CertificateId: cert.certificateId, SignatureValue: signature.toString('base64'), RequestId: ctx.requestId };
  },
};
