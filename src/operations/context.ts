import type { Caller } from '../http/auth/authenticate.js';
import type { CertificateMaterial } from '../keys/certificate-store.js';
import type { KeyLifecycle } from '../keys/lifecycle.js';
import type { KeyRegistry } from '../keys/registry.js';
import type { SigningPlans } from '../signing/plan.js';
import type { Signer } from '../signing/signer.js';

/** What an operation may use: the caller, the registry, the plans and the signer. Never the HTTP request. */
export interface OperationContext {
  caller: Caller;
  /** The RAM action of this request, e.g. `kms:AsymmetricSign` or `yundun-cert:Sign`. */
  ramAction: string;
  requestId: string;
  /** Region for ARNs in responses. */
  regionId: string;
  registry: KeyRegistry;
  /** Key lifecycle changes (absent in unit tests that only sign). */
  lifecycle?: KeyLifecycle;
  /** Signing plans per token name. */
  plans: ReadonlyMap<string, SigningPlans>;
  signer: Signer;
  /** Public keys (PEM) read from the token at start-up, by KeyVersionId. */
  publicKeys: ReadonlyMap<string, string>;
  /** Certificates (and chains) read from the token at start-up, by CertificateId. */
  certificates: ReadonlyMap<string, CertificateMaterial>;
  /** CAS compatibility: does this caller's RAW Message arrive Base64-encoded (2024 document)? */
  casRawMessageIsBase64: boolean;
  /** Facts the operation learnt (key id, algorithm) for the audit line. */
  audit: Record<string, string>;
}

export interface Operation {
  /** Root element of an XML success response (the KMS seed shows `<KMS>`). */
  xmlRoot: string;
  /**
   * Changes state (keys, versions, aliases): a replay of it is never accepted on a replica's word alone, even with
   * `replay.whenSharedStoreDown: local`.
   */
  changesState?: true;
  handle(params: Record<string, string>, ctx: OperationContext): Promise<Record<string, unknown>>;
}
