import { asymmetricSign } from './asymmetric-sign.js';
import { asymmetricVerify } from './asymmetric-verify.js';
import { casSign } from './cas-sign.js';
import { casVerify } from './cas-verify.js';
import { certificatePrivateKeySign } from './certificate-private-key-sign.js';
import { certificatePublicKeyVerify } from './certificate-public-key-verify.js';
import { getPublicKey } from './get-public-key.js';
import type { Operation } from './context.js';
import { KMS_LIFECYCLE_OPERATIONS } from './key-lifecycle.js';
import { CAS_READ_OPERATIONS, KMS_READ_OPERATIONS } from './read-operations.js';

/** One API version: its actions and the throttling code its clients know. */
interface ApiVersion {
  /** The service prefix of its RAM actions (`kms:AsymmetricSign`, `yundun-cert:Sign`). */
  ramService: 'kms' | 'yundun-cert';
  throttlingCode: 'Rejected.Throttling' | 'Throttling.User';
  actions: Readonly<Record<string, Operation>>;
}

/** (Version, Action) → operation: an explicit map, never a lookup by whatever name a header carries. */
const API_VERSIONS: Readonly<Record<string, ApiVersion>> = {
  '2016-01-20': {
    // KMS
    ramService: 'kms',
    throttlingCode: 'Rejected.Throttling',
    actions: {
      AsymmetricSign: asymmetricSign,
      AsymmetricVerify: asymmetricVerify,
      CertificatePrivateKeySign: certificatePrivateKeySign,
      CertificatePublicKeyVerify: certificatePublicKeyVerify,
      GetPublicKey: getPublicKey,
      ...KMS_READ_OPERATIONS,
      ...KMS_LIFECYCLE_OPERATIONS,
    },
  },
  '2020-04-07': {
    // Certificate Management Service (CAS); its SDK raises ThrottlingError for any code containing "Throttling".
    ramService: 'yundun-cert',
    throttlingCode: 'Throttling.User',
    actions: {
      Sign: casSign,
      Verify: casVerify,
      ...CAS_READ_OPERATIONS,
    },
  },
};

/** Where a request goes: its operation, and what its API version calls a throttled request and its RAM actions. */
export interface Route {
  operation: Operation;
  /** The operation's own flag (Operation.changesState), for the replay check. */
  changesState: boolean;
  throttlingCode: ApiVersion['throttlingCode'];
  ramService: ApiVersion['ramService'];
}

type Dispatch = Route | { error: 'no-action' | 'no-version' };

/** Every (Version, Action) the map serves (the fuzz campaign drives each; its test checks none is left out). */
export function apiActions(): Array<{ version: string; action: string }> {
  return Object.entries(API_VERSIONS).flatMap(([version, api]) => Object.keys(api.actions).map((action) => ({ version, action })));
}

export function isKnownAction(action: string): boolean {
  return Object.values(API_VERSIONS).some((api) => Object.hasOwn(api.actions, action));
}

export function dispatch(version: string | undefined, action: string): Dispatch {
  if (!isKnownAction(action)) return { error: 'no-action' };
  const api = version === undefined || !Object.hasOwn(API_VERSIONS, version) ? undefined : API_VERSIONS[version];
  const operation = api && Object.hasOwn(api.actions, action) ? api.actions[action] : undefined;
  return api && operation ? { operation, changesState: operation.changesState === true, throttlingCode: api.throttlingCode, ramService: api.ramService } : { error: 'no-version' };
}

/** The throttling code the clients of API `version` know (an unknown version: the KMS one, as the default API). */
export function throttlingCodeOf(version: string | undefined): ApiVersion['throttlingCode'] {
  return version !== undefined && Object.hasOwn(API_VERSIONS, version) ? API_VERSIONS[version]!.throttlingCode : 'Rejected.Throttling';
}
