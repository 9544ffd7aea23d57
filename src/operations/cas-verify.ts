import { createHash } from 'node:crypto';
import { ApiError } from '../http/error-catalog.js';
import { readSignedData } from '../signing/cms-verify.js';
import { OID, parseCertificate } from '../signing/x509.js';
import { readCasRequest, type CasRequest } from './cas-request.js';
import type { Operation, OperationContext } from './context.js';
import { base64Param, checkMessageSize } from './params.js';
import { planFor } from './plan-for.js';

const RSA_SIGNATURE_OIDS: readonly string[] = [OID.rsaEncryption, OID.sha256WithRSAEncryption];

/**
 * A `SHA256withRSA/P7` signature is valid when the CMS was signed by exactly this certificate (issuer + serial),
 * its messageDigest is the message's SHA-256 (or the given DIGEST), and the RSA signature over the signed
 * attributes verifies on the token with the certificate's key. The certificate itself chains to the
 * configured root: it was read from the token with its chain at start-up.
 */
async function verifyCms(ctx: OperationContext, req: CasRequest, cms: Buffer): Promise<boolean> {
  const claims = readSignedData(cms);
  const material = ctx.certificates.get(req.cert.certificateId);
  if (!material) throw new ApiError('ServiceUnavailableTemporary', 'The certificate is not available on the HSM.');
  if (!claims || claims.hasContent || !claims.messageDigest) return false;
  const signer = parseCertificate(material.der);
  const sameSigner =
    claims.signerIssuer.equals(Buffer.from(signer.issuer.toSchema().toBER(false))) &&
    claims.signerSerial.equals(Buffer.from(signer.serialNumber.toBER(false)));
  const expectedDigest = req.kind === 'DIGEST' ? req.data : createHash('sha256').update(req.data).digest();
  if (!sameSigner || claims.digestAlgorithm !== OID.sha256 || !RSA_SIGNATURE_OIDS.includes(claims.signatureAlgorithm)) return false;
  if (claims.contentType !== OID.data || !claims.messageDigest.equals(expectedDigest)) return false;
  const plan = planFor(ctx, 'RSA_PKCS1_SHA_256', req.cert, 'RAW', { param: 'SigningAlgorithm', name: req.signingAlgorithm });
  return ctx.signer.verify(req.cert, plan, claims.signedAttributes, claims.signature);
}

/** CAS 2020-04-07 Verify: check a bare signature or a P7 (CMS) signature with a repository certificate. */
export const casVerify: Operation = {
  xmlRoot: 'VerifyResponse',
  async handle(params, ctx) {
    const req = readCasRequest(params, ctx);
    const signature = base64Param(params, 'SignatureValue');
    const plan = planFor(ctx, req.algorithm, req.cert, req.output === 'cms' ? 'RAW' : req.kind, {
      param: 'SigningAlgorithm',
      name: req.signingAlgorithm,
    });
    checkMessageSize('Message', req.data, req.kind, plan.digestBytes);
    const valid = req.output === 'cms' ? await verifyCms(ctx, req, signature) : await ctx.signer.verify(req.cert, plan, req.data, signature);
    return { SignatureValid: valid, RequestId: ctx.requestId };
  },
};
