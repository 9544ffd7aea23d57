import pkcs11js from 'pkcs11js';

/**
 * What a private key on the token may do and how it is protected, read back from the token (never assumed from
 * the template asked for: modules fill in, couple or ignore attributes). Used after generation, before a key is
 * imported or a certificate registered for it, and by `keys describe`.
 */

type Handle = pkcs11js.Handle;

/** Each attribute as the token answers it; undefined where the module will not say (CKR_ATTRIBUTE_TYPE_INVALID, …). */
export interface KeyProtection {
  sign?: boolean;
  decrypt?: boolean;
  unwrap?: boolean;
  derive?: boolean;
  sensitive?: boolean;
  extractable?: boolean;
  alwaysSensitive?: boolean;
  neverExtractable?: boolean;
  /** The public key object's usages (absent without a public key object). */
  public?: { verify?: boolean; encrypt?: boolean; wrap?: boolean };
}

const PRIVATE_ATTRIBUTES: ReadonlyArray<readonly [keyof Omit<KeyProtection, 'public'>, number]> = [
  ['sign', pkcs11js.CKA_SIGN],
  ['decrypt', pkcs11js.CKA_DECRYPT],
  ['unwrap', pkcs11js.CKA_UNWRAP],
  ['derive', pkcs11js.CKA_DERIVE],
  ['sensitive', pkcs11js.CKA_SENSITIVE],
  ['extractable', pkcs11js.CKA_EXTRACTABLE],
  ['alwaysSensitive', pkcs11js.CKA_ALWAYS_SENSITIVE],
  ['neverExtractable', pkcs11js.CKA_NEVER_EXTRACTABLE],
];
const PUBLIC_ATTRIBUTES: ReadonlyArray<readonly [keyof NonNullable<KeyProtection['public']>, number]> = [
  ['verify', pkcs11js.CKA_VERIFY],
  ['encrypt', pkcs11js.CKA_ENCRYPT],
  ['wrap', pkcs11js.CKA_WRAP],
];

/** One CK_BBOOL attribute; undefined when the module refuses to answer it (one at a time: a refusal spoils a batch). */
function readBool(p11: pkcs11js.PKCS11, session: Handle, handle: Handle, type: number): boolean | undefined {
  try {
    const value = p11.C_GetAttributeValue(session, handle, [{ type }])[0]?.value;
    return Buffer.isBuffer(value) && value.length > 0 ? value[0] !== 0 : undefined;
  } catch {
    return undefined;
  }
}

export function readKeyProtection(p11: pkcs11js.PKCS11, session: Handle, privateKey: Handle, publicKey?: Handle): KeyProtection {
  const protection: KeyProtection = {};
  for (const [name, type] of PRIVATE_ATTRIBUTES) {
    const value = readBool(p11, session, privateKey, type);
    if (value !== undefined) protection[name] = value;
  }
  if (publicKey !== undefined) {
    const pub: NonNullable<KeyProtection['public']> = {};
    for (const [name, type] of PUBLIC_ATTRIBUTES) {
      const value = readBool(p11, session, publicKey, type);
      if (value !== undefined) pub[name] = value;
    }
    protection.public = pub;
  }
  return protection;
}

/**
 * What is wrong with a key the gateway is to sign with, each as a sentence an operator can act on. `imported`
 * flaws are those every key that existed outside the HSM has (CKA_NEVER_EXTRACTABLE / CKA_ALWAYS_SENSITIVE false):
 * an operator may accept them for a bring-your-own key; the others are never accepted.
 */
export function protectionFlaws(p: KeyProtection): { always: string[]; imported: string[] } {
  const always: string[] = [];
  const imported: string[] = [];
  if (p.sign !== true) always.push(p.sign === false ? 'it may not sign (CKA_SIGN is false)' : 'the token does not say whether it may sign (CKA_SIGN unreadable)');
  if (p.extractable !== false) always.push(p.extractable ? 'it is extractable (CKA_EXTRACTABLE is true): it can be exported from the HSM' : 'the token does not say whether it is extractable (CKA_EXTRACTABLE unreadable)');
  if (p.sensitive !== true) always.push(p.sensitive === false ? 'it is not sensitive (CKA_SENSITIVE is false): its private parts can be read' : 'the token does not say whether it is sensitive (CKA_SENSITIVE unreadable)');
  if (p.neverExtractable !== true) {
    imported.push(p.neverExtractable === false ? 'it was extractable or made outside the HSM once (CKA_NEVER_EXTRACTABLE is false)' : 'the token does not say whether it was ever extractable (CKA_NEVER_EXTRACTABLE unreadable)');
  }
  if (p.alwaysSensitive === false) imported.push('it was not always sensitive (CKA_ALWAYS_SENSITIVE is false)');
  return { always, imported };
}

/** One line for people: the protection first, then what the private and public key may do. */
export function describeProtection(p: KeyProtection): string {
  const flag = (value: boolean | undefined, yes: string, no: string): string => (value === undefined ? `${yes}?` : value ? yes : no);
  const usages = (entries: Array<[string, boolean | undefined]>): string =>
    entries
      .filter(([, v]) => v !== false)
      .map(([name, v]) => (v === undefined ? `${name}?` : name))
      .join(' ') || 'nothing';
  const parts = [
    flag(p.sensitive, 'sensitive', 'NOT SENSITIVE'),
    flag(p.extractable === undefined ? undefined : !p.extractable, 'not extractable', 'EXTRACTABLE'),
    flag(p.neverExtractable, 'never extractable', 'once extractable or imported'),
    flag(p.alwaysSensitive, 'always sensitive', 'not always sensitive'),
  ];
  const priv = usages([['SIGN', p.sign], ['DECRYPT', p.decrypt], ['UNWRAP', p.unwrap], ['DERIVE', p.derive]]);
  const pub = p.public ? usages([['VERIFY', p.public.verify], ['ENCRYPT', p.public.encrypt], ['WRAP', p.public.wrap]]) : 'no public key object';
  return `${parts.join(', ')}; private key may ${priv}; public key may ${pub}`;
}
