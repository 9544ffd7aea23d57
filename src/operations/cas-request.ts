import { invalid, missing } from '../http/error-catalog.js';
import type { CertificateRecord } from '../keys/registry.js';
import type { AlgorithmName } from '../signing/algorithms.js';
import type { OperationContext } from './context.js';
import { base64Param, oneOf, optionalInteger, optionalParam, required } from './params.js';
import { certificateByCasIdentifiers } from './resolve-certificate.js';

/** What CAS Sign and Verify read alike: the algorithm, the message and the certificate it names. */

/** CAS signing algorithms → the KMS algorithm underneath, and whether the signature is bare or CMS. */
const CAS_ALGORITHMS = {
  SHA256withRSA: { algorithm: 'RSA_PKCS1_SHA_256', output: 'signature' },
  'SHA256withRSA/PSS': { algorithm: 'RSA_PSS_SHA_256', output: 'signature' },
  SHA256withECDSA: { algorithm: 'ECDSA_SHA_256', output: 'signature' },
  // DIGEST for SM2 is e = SM3(Z_A ‖ M) (GB/T 32918.2 §6.1), as for KMS SM2DSA.
  SM3withSM2: { algorithm: 'SM2DSA', output: 'signature' },
  'SHA256withRSA/P7': { algorithm: 'RSA_PKCS1_SHA_256', output: 'cms' },
} as const satisfies Record<string, { algorithm: AlgorithmName; output: 'signature' | 'cms' }>;
export type CasAlgorithm = keyof typeof CAS_ALGORITHMS;
const CAS_ALGORITHM_NAMES = Object.keys(CAS_ALGORITHMS) as CasAlgorithm[];

const MESSAGE_TYPES = ['RAW', 'BASE64', 'DIGEST'] as const;

export interface CasRequest {
  signingAlgorithm: CasAlgorithm;
  algorithm: AlgorithmName;
  output: 'signature' | 'cms';
  /** DIGEST when the Message is a digest, RAW when it is the data (RAW string or BASE64). */
  kind: 'RAW' | 'DIGEST';
  /** The data (or digest) bytes. */
  data: Buffer;
  cert: CertificateRecord;
}

/** RAW is the UTF-8 string (or Base64 under the 2024 compatibility switch); BASE64 and DIGEST are Base64. */
function messageBytes(params: Record<string, string>, type: (typeof MESSAGE_TYPES)[number], ctx: OperationContext): Buffer {
  if (type === 'RAW' && !ctx.casRawMessageIsBase64) return Buffer.from(required(params, 'Message'), 'utf8');
  return base64Param(params, 'Message');
}

export function readCasRequest(params: Record<string, string>, ctx: OperationContext): CasRequest {
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
  ctx.audit.messageType = messageType;
  const cert = certificateByCasIdentifiers(ctx, { certIdentifier, customIdentifier, warehouseId });
  return { signingAlgorithm, algorithm, output, kind: messageType === 'DIGEST' ? 'DIGEST' : 'RAW', data, cert };
}
