import { createHash } from 'node:crypto';
import { ApiError, invalid, missing } from '../http/error-catalog.js';
import { algorithmFits, type AlgorithmName } from '../signing/algorithms.js';
import { buildDetachedSignedData } from '../signing/cms.js';
import type { Operation, OperationContext } from './context.js';
import { base64Param, checkMessageSize, oneOf, optionalInteger, optionalParam, required } from './params.js';
import { certificateByCasIdentifiers } from './resolve-certificate.js';

/** CAS signing algorithms → the KMS algorithm that signs, and whether the answer is a bare signature or CMS. */
const CAS_ALGORITHMS = {
  SHA256withRSA: { algorithm: 'RSA_PKCS1_SHA_256', output: 'signature' },
  'SHA256withRSA/PSS': { algorithm: 'RSA_PSS_SHA_256', output: 'signature' },
  SHA256withECDSA: { algorithm: 'ECDSA_SHA_256', output: 'signature' },
  'SHA256withRSA/P7': { algorithm: 'RSA_PKCS1_SHA_256', output: 'cms' },
} as const satisfies Record<string, { algorithm: AlgorithmName; output: 'signature' | 'cms' }>;
type CasAlgorithm = keyof typeof CAS_ALGORITHMS;
const CAS_ALGORITHM_NAMES = Object.keys(CAS_ALGORITHMS) as CasAlgorithm[];

const MESSAGE_TYPES = ['RAW', 'BASE64', 'DIGEST'] as const;
type CasMessageType = (typeof MESSAGE_TYPES)[number];

/** The bytes to sign: RAW is the UTF-8 string (or Base64 under the 2024 compatibility switch). */
function messageBytes(params: Record<string, string>, type: CasMessageType, ctx: OperationContext): Buffer {
  if (type === 'RAW' && !ctx.casRawMessageIsBase64) return Buffer.from(required(params, 'Message'), 'utf8');
  return base64Param(params, 'Message');
}

/** CAS 2020-04-07 Sign: sign RAW / BASE64 / DIGEST messages with a repository certificate, or answer CMS (P7). */
export const casSign: Operation = {
  xmlRoot: 'SignResponse',
  async handle(params, ctx) {
    const signingAlgorithm = oneOf(params, 'SigningAlgorithm', CAS_ALGORITHM_NAMES);
    if (params.MessageType === 'BLIND') throw invalid('MessageType', 'BLIND signing is not supported by this gateway.');
    const messageType = oneOf(params, 'MessageType', MESSAGE_TYPES, 'RAW');
    const certIdentifier = optionalParam(params, 'CertIdentifier');
    const customIdentifier = optionalParam(params, 'CustomIdentifier');
    const warehouseId = optionalInteger(params, 'WarehouseId');
    if (certIdentifier === undefined && customIdentifier === undefined) throw missing('CertIdentifier or CustomIdentifier');
    const data = messageBytes(params, messageType, ctx);
    const { algorithm, output } = CAS_ALGORITHMS[signingAlgorithm];
    ctx.audit.algorithm = signingAlgorithm;

    const cert = certificateByCasIdentifiers(ctx, { certIdentifier, customIdentifier, warehouseId });
    if (!algorithmFits(algorithm, cert.keySpec)) {
      throw invalid('SigningAlgorithm', `${signingAlgorithm} cannot be used with a certificate key of spec ${cert.keySpec}.`);
    }
    const kind = messageType === 'DIGEST' ? 'DIGEST' : 'RAW';
    const plan = ctx.plans.get(algorithm, cert.keySpec, output === 'cms' ? 'RAW' : kind);
    if (!plan) throw new ApiError('ServiceUnavailableTemporary', `The HSM offers no mechanism for ${signingAlgorithm}.`);
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
        // The signed attributes are the RAW message of an RSA PKCS#1 v1.5 SHA-256 signature.
        sign: (signedAttributes) => ctx.signer.sign(cert, plan, signedAttributes),
      });
    } else {
      signature = await ctx.signer.sign(cert, plan, data);
    }
    return { Signature: signature.toString('base64'), RequestId: ctx.requestId };
  },
};
