import type { CertificateRecord, KeyRecord, KeyVersionRecord } from '../keys/registry.js';
import { ALGORITHM_NAMES } from '../signing/algorithms.js';
import type { SigningPlan } from '../signing/plan.js';
import type { KeyLocation } from '../signing/signer.js';
import type { OperationContext } from './context.js';
import { base64Param, checkMessageSize, oneOf, required } from './params.js';
import { planFor } from './plan-for.js';
import { certificateById } from './resolve-certificate.js';
import { assertSignVerifyKey, resolveKey, resolveVersion } from './resolve-key.js';

/** What the KMS sign and verify actions read alike, validated in the same order for both. */

interface KeyDigestRequest {
  key: KeyRecord;
  version: KeyVersionRecord;
  location: KeyLocation;
  plan: SigningPlan;
  digest: Buffer;
}

/** AsymmetricSign / AsymmetricVerify: KeyId (GUID or alias), KeyVersionId, Algorithm, Digest. */
export function readKeyDigestRequest(params: Record<string, string>, ctx: OperationContext): KeyDigestRequest {
  const keyIdParam = required(params, 'KeyId');
  const keyVersionId = required(params, 'KeyVersionId');
  const algorithm = oneOf(params, 'Algorithm', ALGORITHM_NAMES);
  const digest = base64Param(params, 'Digest');
  ctx.audit.algorithm = algorithm;
  ctx.audit.messageType = 'DIGEST';

  const key = resolveKey(ctx, keyIdParam);
  const version = resolveVersion(ctx, key, keyVersionId);
  assertSignVerifyKey(key);
  const plan = planFor(ctx, algorithm, key, 'DIGEST');
  checkMessageSize('Digest', digest, 'DIGEST', plan.digestBytes);
  return { key, version, location: { token: key.token, label: version.label, id: version.id }, plan, digest };
}

interface CertificateMessageRequest {
  cert: CertificateRecord;
  plan: SigningPlan;
  message: Buffer;
}

/** CertificatePrivateKeySign / CertificatePublicKeyVerify: CertificateId, Algorithm, Message, MessageType. */
export function readCertificateMessageRequest(params: Record<string, string>, ctx: OperationContext): CertificateMessageRequest {
  const certificateId = required(params, 'CertificateId');
  const algorithm = oneOf(params, 'Algorithm', ALGORITHM_NAMES);
  const messageType = oneOf(params, 'MessageType', ['RAW', 'DIGEST'] as const, 'RAW');
  const message = base64Param(params, 'Message');
  ctx.audit.algorithm = algorithm;
  ctx.audit.messageType = messageType;

  const cert = certificateById(ctx, certificateId);
  const plan = planFor(ctx, algorithm, cert, messageType);
  checkMessageSize('Message', message, messageType, plan.digestBytes);
  return { cert, plan, message };
}
