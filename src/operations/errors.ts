import { HsmKeyNotPermittedError, HsmObjectNotFoundError, HsmUnavailableError } from '../hsm/errors.js';
import { ApiError, type ErrorCode } from '../http/error-catalog.js';
import { LifecycleError, RegistryError, type LifecycleErrorKind } from '../keys/errors.js';

/** What a refused lifecycle change is called on the wire. */
const LIFECYCLE_ERRORS: Readonly<Record<LifecycleErrorKind, ErrorCode>> = {
  'key-not-found': 'Forbidden.KeyNotFound',
  'alias-not-found': 'Forbidden.AliasNotFound',
  'alias-exists': 'Rejected.AlreadyExists',
  'key-exists': 'Rejected.AlreadyExists',
  'access-key-not-found': 'InvalidAccessKeyId.NotFound',
  'invalid-state': 'Rejected.UnexpectedState',
  invalid: 'InvalidParameter',
  'not-on-token': 'Rejected.UnsupportedOperation',
  unsupported: 'Rejected.UnsupportedOperation',
  unavailable: 'ServiceUnavailableTemporary',
  conflict: 'Rejected.UnexpectedState',
  'certificate-not-found': 'Certificate.NotFound',
  'certificate-exists': 'Rejected.AlreadyExists',
};

const REGISTRY_UNUSABLE = 'The key registry cannot be used now because of a configuration problem on the gateway; its log has the cause under this RequestId.';

/**
 * The typed errors the layers below an operation throw (keys, HSM), as the error catalog names them; undefined for
 * anything else. An HSM error's detail stays in the log, never in the answer.
 */
export function catalogued(err: unknown): ApiError | undefined {
  if (err instanceof ApiError) return err;
  if (err instanceof HsmUnavailableError) return new ApiError('ServiceUnavailableTemporary');
  if (err instanceof LifecycleError) return new ApiError(LIFECYCLE_ERRORS[err.kind], err.message);
  // The HSM refused the key (CKA_SIGN false): it was disabled or scheduled for deletion, and this replica's registry
  // has not caught up yet. The same answer a disabled key gets from the registry.
  if (err instanceof HsmKeyNotPermittedError) return new ApiError('Rejected.Disabled', 'The key is disabled.');
  if (err instanceof HsmObjectNotFoundError) return new ApiError('ServiceUnavailableTemporary', 'The key is not available on the HSM.');
  // The registry cannot be used as configured (the secrets key missing on the token, records that contradict each
  // other): nothing the caller can fix, and nothing to show them either (key labels, record ids): the log has it.
  if (err instanceof RegistryError) return new ApiError('ServiceUnavailableTemporary', REGISTRY_UNUSABLE);
  return undefined;
}
