import pkcs11js from 'pkcs11js';
import { ckrOf } from './ckr.js';

/** Token labels are 32 bytes, blank-padded by the standard, NUL-padded by some writers. */
export const tokenLabelOf = (raw: string): string => raw.replace(/[\s\u0000]+$/, '');

/** Finds a PKCS#11 slot by its token label (SoftHSMv2 slot ids are random). */
export function findSlotByLabel(p11: pkcs11js.PKCS11, label: string): pkcs11js.Handle | undefined {
  return p11.C_GetSlotList(true).find((slot) => tokenLabelOf(p11.C_GetTokenInfo(slot).label) === label);
}

/**
 * C_Initialize with OS locking; "already initialized" is a success (another user of the module did it). `initArgs`,
 * when given, goes to the module in pReserved (NSS softokn reads its database directory there).
 */
export function initializeModule(p11: pkcs11js.PKCS11, modulePath: string, initArgs?: string): void {
  p11.load(modulePath);
  try {
    // Without CKF_OS_LOCKING_OK SoftHSMv2 corrupts its heap under concurrent async calls (measured).
    p11.C_Initialize(initializeOptions(initArgs));
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
  }
}

/** C_Initialize's arguments: OS locking, and the module's initialization string when there is one. */
export function initializeOptions(initArgs?: string): pkcs11js.InitializationOptions {
  return { flags: pkcs11js.CKF_OS_LOCKING_OK, ...(initArgs === undefined ? {} : { libraryParameters: libraryParameters(initArgs) }) };
}

/**
 * pkcs11js 2.1.7 copies `libraryParameters` into a buffer one byte short and so drops its last character (measured:
 * `configdir=sql:/db/x` reaches NSS as `configdir=sql:/db/`). A NUL appended is what gets dropped; should the binding
 * be fixed, the module still reads the string up to that NUL: the same string either way.
 */
const libraryParameters = (initArgs: string): string => `${initArgs}\u0000`;

/** C_Login as the user; "already logged in" is a success (the login is per token, shared by its sessions). */
export function loginUser(p11: pkcs11js.PKCS11, session: pkcs11js.Handle, pin: string): void {
  try {
    p11.C_Login(session, pkcs11js.CKU_USER, pin);
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
  }
}

/** CK_STATE values (PKCS#11 §5.6; pkcs11js does not export them). */
export const SESSION_STATE = { roPublic: 0, roUser: 1, rwPublic: 2, rwUser: 3, rwSecurityOfficer: 4 } as const;

/** Whether a session in this state can use the user's private objects (the login is alive). */
export const isLoggedInState = (state: number): boolean => state === SESSION_STATE.roUser || state === SESSION_STATE.rwUser;
