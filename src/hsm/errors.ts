import { ckrName } from './ckr.js';

/**
 * Typed failures of the HSM layer. They carry the raw CKR for logs; the operation layer maps them to the
 * client's error codes and never forwards the CKR itself.
 */
export class HsmError extends Error {
  /** True when the same operation may succeed on a fresh session (signing and verifying are idempotent). */
  readonly retryable: boolean;

  constructor(
    message: string,
    readonly ckr?: number,
    options?: { cause?: unknown; retryable?: boolean },
  ) {
    super(ckr === undefined ? message : `${message} (${ckrName(ckr)})`, options);
    this.name = new.target.name;
    this.retryable = options?.retryable ?? false;
  }
}

/** The token cannot serve now: down, being re-initialized, or no session became free in time. */
export class HsmUnavailableError extends HsmError {}

/** Too many requests are already waiting for a session: answered at once, not queued without bound. */
export class HsmBusyError extends HsmUnavailableError {}

/** No object on the token matches a registry entry (a registry/token mismatch, not a client error). */
export class HsmObjectNotFoundError extends HsmError {}

/** The token refused the operation for this key/mechanism/data. */
export class HsmOperationError extends HsmError {}

/**
 * The token refuses this key for the function asked (CKR_KEY_FUNCTION_NOT_PERMITTED): the gateway sets CKA_SIGN false
 * on a key that is disabled or pending deletion (keys/signing-gate.ts), so a replica whose registry is not yet up to
 * date is refused by the HSM itself. The caller's error, like a disabled key's: the token and the session are fine.
 */
export class HsmKeyNotPermittedError extends HsmOperationError {}
