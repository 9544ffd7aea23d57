import { asymmetricSign } from './asymmetric-sign.js';
import { asymmetricVerify } from './asymmetric-verify.js';
import { casSign } from './cas-sign.js';
import { casVerify } from './cas-verify.js';
import { certificatePrivateKeySign } from './certificate-private-key-sign.js';
import { certificatePublicKeyVerify } from './certificate-public-key-verify.js';
import { getPublicKey } from './get-public-key.js';
import type { Operation } from './context.js';
import { CAS_READ_OPERATIONS, KMS_READ_OPERATIONS } from './read-operations.js';

/** (Version, Action) → operation: an explicit map, never a lookup by whatever name a header carries. */
export const OPERATIONS: Readonly<Record<string, Readonly<Record<string, Operation>>>> = {
  '2016-01-20': {
    AsymmetricSign: asymmetricSign,
    AsymmetricVerify: asymmetricVerify,
    CertificatePrivateKeySign: certificatePrivateKeySign,
    ...KMS_READ_OPERATIONS,
    CertificatePublicKeyVerify: certificatePublicKeyVerify,
    GetPublicKey: getPublicKey,
  },
  '2020-04-07': {
    Sign: casSign,
    ...CAS_READ_OPERATIONS,
    Verify: casVerify,
  },
};

export type Dispatch = { operation: Operation } | { error: 'no-action' | 'no-version' };

export function dispatch(version: string | undefined, action: string): Dispatch {
  const known = Object.values(OPERATIONS).some((actions) => Object.hasOwn(actions, action));
  if (!known) return { error: 'no-action' };
  const actions = version === undefined ? undefined : OPERATIONS[version];
  const operation = actions && Object.hasOwn(actions, action) ? actions[action] : undefined;
  return operation ? { operation } : { error: 'no-version' };
}
