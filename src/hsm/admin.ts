import { ObjectClass, Template, type ITemplate } from 'graphene-pk11';
import pkcs11js from 'pkcs11js';
import { findSlotByLabel, initializeOptions } from './module.js';

/**
 * Administrative token operations (the admin CLI, the demo, the lifecycle API): initialize a token, the templates of
 * a signing key pair, storing a certificate. Never on the request path.
 */
export type KeyPairParams =
  | { kind: 'RSA'; modulusBits: number }
  /** EC; a vendor curve (SM2) names its own key-pair mechanism and key type (from the HSM profile). */
  | { kind: 'EC'; ecParams: Buffer; vendor?: { mechanism: number; keyType: number } };

/**
 * Initializes the first free slot as a token with this label, sets the user PIN, returns the slot. `initArgs` is the
 * module's initialization string (hsm.initArgs), given again when the module is re-initialized here.
 */
export function initToken(p11: pkcs11js.PKCS11, label: string, soPin: string, userPin: string, initArgs?: string): pkcs11js.Handle {
  const free = p11
    .C_GetSlotList(true)
    .find((slot) => (p11.C_GetTokenInfo(slot).flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0);
  if (free === undefined) throw new Error('no uninitialized slot to create a token in');
  p11.C_InitToken(free, soPin, label.padEnd(32, ' '));
  // SoftHSMv2 moves a freshly initialized token to a new slot id, seen only after re-initializing the library.
  p11.C_Finalize();
  p11.C_Initialize(initializeOptions(initArgs));
  const slot = findSlotByLabel(p11, label);
  if (slot === undefined) throw new Error(`token "${label}" not found after initialization`);
  const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  try {
    p11.C_Login(session, pkcs11js.CKU_SO, soPin);
    p11.C_InitPIN(session, userPin);
    p11.C_Logout(session);
  } finally {
    p11.C_CloseSession(session);
  }
  return slot;
}

/**
 * What makes a key pair a signing key and nothing else, whether generated on the token or imported onto it: some
 * modules (SoftHSMv2) default decrypt/unwrap/derive to true; the private key is sensitive and never extractable.
 * Written as graphene-pk11 templates (named attributes), handed to pkcs11js as its attribute arrays.
 */
const SIGNING_PUBLIC_KEY: ITemplate = { verify: true, encrypt: false, wrap: false };
const SIGNING_PRIVATE_KEY: ITemplate = { private: true, sign: true, decrypt: false, unwrap: false, derive: false, sensitive: true, extractable: false };
export const SIGNING_PUBLIC_KEY_USAGE: pkcs11js.Template = Template.toPkcs11(SIGNING_PUBLIC_KEY);
export const SIGNING_PRIVATE_KEY_USAGE: pkcs11js.Template = Template.toPkcs11(SIGNING_PRIVATE_KEY);

/**
 * A module-specific way a module needs the strict template adapted, tried only after that module refused the
 * strict one with the code named here. A fallback only leaves usage attributes out (the module then chooses them);
 * it never sets a usage true and never touches CKA_SENSITIVE, CKA_EXTRACTABLE or CKA_PRIVATE. Whatever the module
 * then made is read back and refused unless it is sensitive and never extractable (key-generation.ts).
 */
export interface TemplateFallback {
  /** Recorded on the key version (`template`) and shown by `keys describe`. */
  name: string;
  /** The module it is for, by C_GetInfo's manufacturerID. */
  library: RegExp;
  /** The refusal of the strict template that calls for it. */
  refusedWith: readonly number[];
  /** Attributes left out of both templates. */
  omit: readonly number[];
  why: string;
}

export const TEMPLATE_FALLBACKS: readonly TemplateFallback[] = [
  {
    name: 'tpm2-coupled-usages',
    library: /^tpm2-software\.github\.io/,
    refusedWith: [pkcs11js.CKR_GENERAL_ERROR],
    // Measured on tpm2-pkcs11 1.9 (swtpm): leaving out only one of the two is still refused; leaving out both
    // makes a key whose private object also has CKA_DECRYPT and whose public object also has CKA_ENCRYPT.
    omit: [pkcs11js.CKA_DECRYPT, pkcs11js.CKA_ENCRYPT],
    why:
      'tpm2-pkcs11 couples the usages of a TPM key (CKA_SIGN with CKA_DECRYPT, CKA_VERIFY with CKA_ENCRYPT) and refuses an explicit ' +
      'false for the partner with CKR_GENERAL_ERROR; the key is generated without CKA_DECRYPT/CKA_ENCRYPT in the template and may also decrypt',
  },
];

/** The mechanism and templates of a signing key pair: what generating one asks of the token (less `omit`, for a fallback). */
export function signingKeyPairTemplates(
  params: KeyPairParams,
  label: string,
  id: Buffer,
  omit: readonly number[] = [],
): { mechanism: number; publicTemplate: pkcs11js.Template; privateTemplate: pkcs11js.Template } {
  const common: ITemplate = { token: true, label, id };
  const vendorKeyType: ITemplate = params.kind === 'EC' && params.vendor ? { keyType: params.vendor.keyType } : {};
  const publicKey: ITemplate =
    params.kind === 'RSA'
      ? { ...common, ...SIGNING_PUBLIC_KEY, modulusBits: params.modulusBits, publicExponent: Buffer.from([1, 0, 1]) }
      : { ...common, ...SIGNING_PUBLIC_KEY, paramsEC: params.ecParams, ...vendorKeyType };
  const mechanism = params.kind === 'RSA' ? pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN : (params.vendor?.mechanism ?? pkcs11js.CKM_EC_KEY_PAIR_GEN);
  const kept = (template: pkcs11js.Template): pkcs11js.Template => template.filter((a) => !omit.includes(a.type));
  return {
    mechanism,
    publicTemplate: kept(Template.toPkcs11(publicKey)),
    privateTemplate: kept(Template.toPkcs11({ ...common, ...SIGNING_PRIVATE_KEY, ...vendorKeyType })),
  };
}

/** Stores a certificate on the token (CKO_CERTIFICATE, X.509), paired with its private key by label and CKA_ID. */
export function storeCertificate(
  p11: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  cert: { value: Buffer; subject: Buffer; issuer: Buffer; serialNumber: Buffer },
  label: string,
  id: Buffer,
): pkcs11js.Handle {
  const template: ITemplate = {
    class: ObjectClass.CERTIFICATE,
    certType: pkcs11js.CKC_X_509,
    token: true,
    private: false,
    label,
    id,
    subject: cert.subject,
    issuer: cert.issuer,
    serial: cert.serialNumber,
    value: cert.value,
  };
  return p11.C_CreateObject(session, Template.toPkcs11(template));
}
