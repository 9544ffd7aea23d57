import pkcs11js from 'pkcs11js';
import { ckrOf, classifyCkr } from './ckr.js';
import { HsmError, HsmKeyNotPermittedError, HsmObjectNotFoundError, HsmOperationError, HsmUnavailableError } from './errors.js';

/**
 * What a failed token operation means for the session it ran on, the cached object handles, the token, and the
 * operation itself. A pure table of rules (the Token applies them), so each rule has a test of its own:
 *
 * | failure                                  | session | handles | token         | retry once |
 * |------------------------------------------|---------|---------|---------------|------------|
 * | key not on the token                     | keep    | keep    | fine          | no         |
 * | not a PKCS#11 error                      | replace | keep    | fine          | no         |
 * | data / mechanism / key refused           | keep    | keep    | fine          | no         |
 * | key function not permitted (CKA_SIGN off)| keep    | keep    | fine          | no         |
 * | session-class (handle invalid, …)        | replace | keep    | probe         | yes        |
 * | login lost (CKR_USER_NOT_LOGGED_IN)      | keep    | keep    | probe         | yes        |
 * | stale object handle                      | replace | drop    | probe         | yes        |
 * | device-class (device error, general…)    | replace | keep    | probe         | yes        |
 * | PIN incorrect / locked / expired         | replace | keep    | down for good | no         |
 *
 * "probe": one failed call is not proof that the token is down (tpm2-pkcs11 answers CKR_GENERAL_ERROR for a
 * template it dislikes; a throttled CloudHSM answers CKR_DEVICE_ERROR): a health check on a fresh session decides
 * (the token answers, the session opens and is logged in, and the token computes: `cannotCompute` below).
 * A check that fails marks the token down; a check that finds the login gone (a network HSM that restarted, a
 * YubiHSM after 30 s idle: every session and the login dropped) logs in again, once, on a fresh session, and the
 * handle cache is dropped then (Token.check). One check runs at a time and every failure of the moment shares it:
 * sessions dropped by the device fail many requests at once, and they wait for one answer instead of each guessing.
 * "down for good": retrying a login would lock the token.
 */
/**
 * The health check's C_GenerateRandom (0: it computed): whether its answer says the token cannot compute. A library
 * that keeps its sessions, login and objects itself answers everything else while its backend is gone (tpm2-pkcs11
 * once tpm2-abrmd went away: CKR_GENERAL_ERROR for every sign on every fresh session, and for C_GenerateRandom, until
 * it is re-initialized; measured in module-matrix.test.ts). Only a device-class answer counts: a module without a
 * generator (CKR_RANDOM_NO_RNG, CKR_FUNCTION_NOT_SUPPORTED) or that wants a login first tells nothing.
 */
export const cannotCompute = (randomRv: number): boolean => randomRv !== 0 && classifyCkr(randomRv) === 'device';

interface Reaction {
  session: 'keep' | 'replace';
  dropHandles: boolean;
  token: 'fine' | 'probe' | 'down-for-good';
  /** The typed error for the caller; `retryable` says whether one more try on a fresh session may succeed. */
  error: HsmError;
}

const STALE_HANDLE = new Set([pkcs11js.CKR_OBJECT_HANDLE_INVALID, pkcs11js.CKR_KEY_HANDLE_INVALID]);
/** The login is per application and shared by every session: the session is fine once the user is logged in again. */
const LOGIN_LOST = new Set([pkcs11js.CKR_USER_NOT_LOGGED_IN]);

export function reactionTo(err: unknown): Reaction {
  if (err instanceof HsmObjectNotFoundError) return { session: 'keep', dropHandles: false, token: 'fine', error: err };
  if (err instanceof HsmError) return { session: 'replace', dropHandles: false, token: 'fine', error: err };
  const ckr = ckrOf(err);
  if (ckr === undefined) {
    return { session: 'replace', dropHandles: false, token: 'fine', error: new HsmOperationError('PKCS#11 call failed', undefined, { cause: err }) };
  }
  if (STALE_HANDLE.has(ckr)) {
    // The token's objects changed under us (reloaded, restored, replaced): find them again, once.
    return { session: 'replace', dropHandles: true, token: 'probe', error: new HsmOperationError('stale object handle', ckr, { cause: err, retryable: true }) };
  }
  if (ckr === pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED) {
    // A disabled key (CKA_SIGN false, set by the lifecycle change): the caller's error, answered as a disabled key is.
    return { session: 'keep', dropHandles: false, token: 'fine', error: new HsmKeyNotPermittedError('the token does not permit this key to sign', ckr, { cause: err }) };
  }
  if (LOGIN_LOST.has(ckr)) {
    return { session: 'keep', dropHandles: false, token: 'probe', error: new HsmUnavailableError('the login was lost', ckr, { cause: err, retryable: true }) };
  }
  switch (classifyCkr(ckr)) {
    case 'data':
      // A failed C_SignInit/C_VerifyInit starts no operation and a failed C_Sign/C_Verify ends it (PKCS#11 §5.2),
      // so the session is clean. (CKR_BUFFER_TOO_SMALL keeps the operation open: it is classed 'session'.)
      return { session: 'keep', dropHandles: false, token: 'fine', error: new HsmOperationError('token refused the operation', ckr, { cause: err }) };
    case 'session':
      return { session: 'replace', dropHandles: false, token: 'probe', error: new HsmOperationError('session failure', ckr, { cause: err, retryable: true }) };
    case 'device':
      return { session: 'replace', dropHandles: false, token: 'probe', error: new HsmUnavailableError('token failure', ckr, { cause: err, retryable: true }) };
    case 'login':
      return { session: 'replace', dropHandles: false, token: 'down-for-good', error: new HsmUnavailableError('the PIN was refused', ckr, { cause: err }) };
  }
}
