import pkcs11js from 'pkcs11js';

/**
 * The PKCS#11 failure model in one place: what a return value means for the session and the token.
 *   data     – the request was wrong for the key or mechanism; the session is fine, keep it.
 *   session  – this session (or a handle it used) is no good; close it and open another.
 *   fatal    – the token or library is gone; mark the token down and re-initialize.
 *   login    – the PIN is wrong or locked; never retry (a retry loop would lock the token).
 */
export type CkrClass = 'data' | 'session' | 'fatal' | 'login';

const NAMES = new Map<number, string>(
  Object.entries(pkcs11js as unknown as Record<string, unknown>)
    .filter((e): e is [string, number] => e[0].startsWith('CKR_') && typeof e[1] === 'number')
    .map(([name, code]) => [code, name]),
);

export function ckrName(code: number): string {
  return NAMES.get(code) ?? `CKR_0x${code.toString(16).padStart(8, '0')}`;
}

const DATA = new Set([
  pkcs11js.CKR_DATA_INVALID,
  pkcs11js.CKR_DATA_LEN_RANGE,
  pkcs11js.CKR_MECHANISM_INVALID,
  pkcs11js.CKR_MECHANISM_PARAM_INVALID,
  pkcs11js.CKR_KEY_TYPE_INCONSISTENT,
  pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED,
  pkcs11js.CKR_KEY_SIZE_RANGE,
  pkcs11js.CKR_ARGUMENTS_BAD,
  pkcs11js.CKR_FUNCTION_NOT_SUPPORTED,
]);

const FATAL = new Set([
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_DEVICE_MEMORY,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
  pkcs11js.CKR_GENERAL_ERROR,
  pkcs11js.CKR_HOST_MEMORY,
  pkcs11js.CKR_SLOT_ID_INVALID,
]);

const LOGIN = new Set([pkcs11js.CKR_PIN_INCORRECT, pkcs11js.CKR_PIN_LOCKED, pkcs11js.CKR_PIN_EXPIRED, pkcs11js.CKR_PIN_INVALID]);

export function classifyCkr(code: number): CkrClass {
  if (DATA.has(code)) return 'data';
  if (FATAL.has(code)) return 'fatal';
  if (LOGIN.has(code)) return 'login';
  // Everything else (session/handle invalid, operation active, not logged in, …) costs at most one session.
  return 'session';
}

/** The CKR code of an error thrown by pkcs11js, if it is one. */
export function ckrOf(err: unknown): number | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof (err as { code: unknown }).code === 'number') {
    return (err as { code: number }).code;
  }
  return undefined;
}
