import { execFile } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes, sign as nodeSign, verify as nodeVerify, X509Certificate, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import pkcs11js from 'pkcs11js';
import { signingKeyPairTemplates, SIGNING_PRIVATE_KEY_USAGE } from '../../../src/hsm/admin.js';
import { ckrName, ckrOf } from '../../../src/hsm/ckr.js';
import { findSlotByLabel, initializeModule, tokenLabelOf } from '../../../src/hsm/module.js';
import { findObjects, readPublicKey } from '../../../src/hsm/objects.js';
import { p1363ToDer } from '../../../src/signing/der.js';
import { digestInfo } from '../../../src/signing/digest-info.js';
import { KEY_SPECS } from '../../../src/signing/key-specs.js';
import { publicKeyObject } from '../../../src/signing/public-key.js';
import { certificateObjectFields, issueCertificate } from '../../../src/signing/x509.js';
import { opensslVerifyDigest, opensslVerifyMessage } from '../openssl.js';
import type { ModuleInstance } from './common.js';

/**
 * Black-box probes of one PKCS#11 module through pkcs11js, the way the gateway calls it. Each probe answers a short
 * string for the capability table: `ok`, the CKR name of the refusal, or what was seen.
 */

type Handle = pkcs11js.Handle;
const ROOT = resolve(import.meta.dirname, '../../..');

/**
 * What a failed call answered: its CKR name, else the error's message. pkcs11js 2.1.7 throws errors without `code`
 * from C_CreateObject, C_CopyObject and C_SetAttributeValue (its subclass overrides skip the wrapper that parses
 * it): their message is "CKR_NAME:number".
 */
function outcome(err: unknown): string {
  const ckr = ckrOf(err) ?? ckrFromMessage(err);
  return ckr === undefined ? `error: ${(err as Error).message}` : (MISSING_NAMES.get(ckr) ?? ckrName(ckr));
}

/** CKR values pkcs11js 2.1.7 has no constant for (PKCS#11 3.0), so ckrName prints them as hex. */
const MISSING_NAMES = new Map<number, string>([[0x140, 'CKR_CURVE_NOT_SUPPORTED']]);

function ckrFromMessage(err: unknown): number | undefined {
  const m = /^(CKR_\w+):(\d+)$/.exec((err as Error)?.message ?? '');
  return m ? Number(m[2]) : undefined;
}

/** Runs `f`; `ok` (or what it returns) on success, the CKR name on failure. */
function attempt(f: () => string | void): string {
  try {
    return f() ?? 'ok';
  } catch (err) {
    return outcome(err);
  }
}

/** The module loaded and initialized in this process, with one logged-in R/W session. */
export class RawToken {
  readonly p11 = new pkcs11js.PKCS11();
  slot!: Handle;
  session!: Handle;

  constructor(readonly inst: ModuleInstance) {}

  /** C_Initialize (with the instance's initArgs), find the token, open a session, log in. */
  open(): void {
    initializeModule(this.p11, this.inst.modulePath, this.inst.initArgs);
    const slot = findSlotByLabel(this.p11, this.inst.tokenLabel);
    if (slot === undefined) throw new Error(`no token "${this.inst.tokenLabel}" in ${this.inst.modulePath}`);
    this.slot = slot;
    this.session = this.openSession();
    try {
      this.p11.C_Login(this.session, pkcs11js.CKU_USER, this.inst.pin);
    } catch (err) {
      if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
    }
  }

  openSession(): Handle {
    return this.p11.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  }

  /** C_Finalize, then open() again: what a gateway's recovery does. */
  reopen(): void {
    this.finalize();
    this.open();
  }

  finalize(): void {
    try {
      this.p11.C_Finalize();
    } catch {
      // Not initialized.
    }
  }

  /** Token objects with this CKA_LABEL, any class. */
  find(label: string, cls?: number): Handle[] {
    return findObjects(this.p11, this.session, [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: label },
      ...(cls === undefined ? [] : [{ type: pkcs11js.CKA_CLASS, value: cls }]),
    ]);
  }

  classOf(handle: Handle): number {
    const [attr] = this.p11.C_GetAttributeValue(this.session, handle, [{ type: pkcs11js.CKA_CLASS }]);
    return (attr!.value as Buffer).readUInt32LE(0);
  }
}

/** C_Initialize with pReserved NULL (no initArgs), in a child process (this one keeps its own initialization). */
export function initializeWithoutArgs(inst: ModuleInstance): Promise<string> {
  return runChild(inst, 'init-null', {});
}

interface TokenFacts {
  label: string;
  manufacturer: string;
  model: string;
  library: string;
  flags: string[];
  pinLength: string;
  maxSessions: string;
}

const TOKEN_FLAGS: Array<[number, string]> = [
  [pkcs11js.CKF_RNG, 'RNG'],
  [pkcs11js.CKF_LOGIN_REQUIRED, 'LOGIN_REQUIRED'],
  [pkcs11js.CKF_USER_PIN_INITIALIZED, 'USER_PIN_INITIALIZED'],
  [pkcs11js.CKF_TOKEN_INITIALIZED, 'TOKEN_INITIALIZED'],
  [pkcs11js.CKF_PROTECTED_AUTHENTICATION_PATH, 'PROTECTED_AUTHENTICATION_PATH'],
  [pkcs11js.CKF_SO_PIN_TO_BE_CHANGED, 'SO_PIN_TO_BE_CHANGED'],
  [pkcs11js.CKF_USER_PIN_TO_BE_CHANGED, 'USER_PIN_TO_BE_CHANGED'],
];

/** CK_EFFECTIVELY_INFINITE (0) and CK_UNAVAILABLE_INFORMATION (~0, which pkcs11js cuts to 32 bits; openCryptoki says ~0 − 1). */
const count = (n: number): string => (n === 0 ? 'unlimited' : n >= 0xfffffffe ? 'n/a (~0)' : String(n));

export function tokenFacts(t: RawToken): TokenFacts {
  const info = t.p11.C_GetTokenInfo(t.slot);
  const lib = t.p11.C_GetInfo();
  // Blank-padded by the standard, NUL-padded by some modules (tpm2-pkcs11's model): tokenLabelOf strips both.
  return {
    label: tokenLabelOf(info.label),
    manufacturer: tokenLabelOf(info.manufacturerID),
    model: tokenLabelOf(info.model),
    library: `${tokenLabelOf(lib.manufacturerID)} ${tokenLabelOf(lib.libraryDescription)} ${lib.libraryVersion.major}.${lib.libraryVersion.minor}`,
    flags: TOKEN_FLAGS.filter(([bit]) => (info.flags & bit) !== 0).map(([, name]) => name),
    pinLength: `${info.minPinLen}–${info.maxPinLen}`,
    maxSessions: count(info.maxSessionCount),
  };
}

/** The mechanisms the gateway plans with (src/signing/plan.ts), by the short names the table uses. */
const GATEWAY_MECHANISMS: Array<[number, string]> = [
  [pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN, 'RSA_PKCS_KEY_PAIR_GEN'],
  [pkcs11js.CKM_EC_KEY_PAIR_GEN, 'EC_KEY_PAIR_GEN'],
  [pkcs11js.CKM_RSA_PKCS, 'RSA_PKCS'],
  [pkcs11js.CKM_SHA256_RSA_PKCS, 'SHA256_RSA_PKCS'],
  [pkcs11js.CKM_RSA_PKCS_PSS, 'RSA_PKCS_PSS'],
  [pkcs11js.CKM_SHA256_RSA_PKCS_PSS, 'SHA256_RSA_PKCS_PSS'],
  [pkcs11js.CKM_ECDSA, 'ECDSA'],
  [pkcs11js.CKM_ECDSA_SHA256, 'ECDSA_SHA256'],
];

export function mechanisms(t: RawToken): { total: number; gateway: string[] } {
  const list = new Set(t.p11.C_GetMechanismList(t.slot));
  return { total: list.size, gateway: GATEWAY_MECHANISMS.filter(([m]) => list.has(m)).map(([, name]) => name) };
}

export const SPECS = ['RSA_2048', 'RSA_3072', 'EC_P256', 'EC_P256K'] as const;
export type MatrixSpec = (typeof SPECS)[number];

const paramsOf = (spec: MatrixSpec) => {
  const s = KEY_SPECS[spec];
  return s.kind === 'RSA' ? ({ kind: 'RSA', modulusBits: s.modulusBits } as const) : ({ kind: 'EC', ecParams: Buffer.from(s.ecParams, 'hex') } as const);
};

/**
 * The `false` usages the lenient template leaves out of the strict one (src/hsm/admin.ts): CKA_DECRYPT and
 * CKA_ENCRYPT. That is the least tpm2-pkcs11 needs (measured: leaving out either alone, or WRAP/UNWRAP/DERIVE instead,
 * is still CKR_GENERAL_ERROR); its keys then have both usages (`keyUsages`).
 */
const LEFT_OUT = new Set<number>([pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_DECRYPT]);

export interface ProbeKey {
  spec: MatrixSpec;
  label: string;
  privateKey: Handle;
  publicKey: KeyObject;
}

/**
 * C_GenerateKeyPair with the gateway's strict sign-only template (`strict`), or with the same template less
 * CKA_DECRYPT/CKA_ENCRYPT false (`lenient`: what a fallback could ask of a module that couples usages).
 */
export function generate(t: RawToken, spec: MatrixSpec, template: 'strict' | 'lenient'): { result: string; key?: ProbeKey } {
  const label = `probe-${spec.toLowerCase()}-${template}-${randomBytes(3).toString('hex')}`;
  const { mechanism, publicTemplate, privateTemplate } = signingKeyPairTemplates(paramsOf(spec), label, randomBytes(8));
  const strip = (tpl: pkcs11js.Template): pkcs11js.Template => (template === 'strict' ? tpl : tpl.filter((a) => !(LEFT_OUT.has(a.type) && a.value === false)));
  try {
    const pair = t.p11.C_GenerateKeyPair(t.session, { mechanism }, strip(publicTemplate), strip(privateTemplate));
    const publicKey = publicKeyObject(readPublicKey(t.p11, t.session, pair.publicKey), spec);
    return { result: 'ok', key: { spec, label, privateKey: pair.privateKey, publicKey } };
  } catch (err) {
    return { result: outcome(err) };
  }
}

/** What a key made on the token may do: its usages that are true, and whether it is sensitive / extractable. */
export function keyUsages(t: RawToken, key: ProbeKey): string {
  const flags = (handle: Handle, attrs: Array<[number, string]>): string[] =>
    attrs.filter(([type]) => attempt(() => ((t.p11.C_GetAttributeValue(t.session, handle, [{ type }])[0]!.value as Buffer)[0] === 1 ? 'yes' : 'no')) === 'yes').map(([, name]) => name);
  const [publicKey] = t.find(key.label, pkcs11js.CKO_PUBLIC_KEY);
  const priv = flags(key.privateKey, [
    [pkcs11js.CKA_SIGN, 'SIGN'],
    [pkcs11js.CKA_DECRYPT, 'DECRYPT'],
    [pkcs11js.CKA_UNWRAP, 'UNWRAP'],
    [pkcs11js.CKA_DERIVE, 'DERIVE'],
  ]);
  const pub = publicKey ? flags(publicKey, [[pkcs11js.CKA_VERIFY, 'VERIFY'], [pkcs11js.CKA_ENCRYPT, 'ENCRYPT'], [pkcs11js.CKA_WRAP, 'WRAP']]) : ['(no public key object)'];
  const protection = flags(key.privateKey, [[pkcs11js.CKA_SENSITIVE, 'sensitive'], [pkcs11js.CKA_EXTRACTABLE, 'EXTRACTABLE']]);
  return `private ${priv.join(' ')}; public ${pub.join(' ')}; ${protection.includes('sensitive') ? 'sensitive' : 'NOT sensitive'}, ${protection.includes('EXTRACTABLE') ? 'EXTRACTABLE' : 'not extractable'}`;
}

const PSS: pkcs11js.RsaPSS = { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 };

/** One way of signing: the mechanism, what it is given (the message or its SHA-256), how openssl checks it. */
interface SignWay {
  name: string;
  kind: 'RSA' | 'EC';
  mechanism: pkcs11js.Mechanism;
  input: 'message' | 'digest';
  pss: boolean;
}

const SIGN_WAYS: SignWay[] = [
  { name: 'RSA_PKCS (DigestInfo)', kind: 'RSA', mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS }, input: 'digest', pss: false },
  { name: 'SHA256_RSA_PKCS', kind: 'RSA', mechanism: { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, input: 'message', pss: false },
  { name: 'RSA_PKCS_PSS', kind: 'RSA', mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: PSS }, input: 'digest', pss: true },
  { name: 'SHA256_RSA_PKCS_PSS', kind: 'RSA', mechanism: { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS_PSS, parameter: PSS }, input: 'message', pss: true },
  { name: 'ECDSA', kind: 'EC', mechanism: { mechanism: pkcs11js.CKM_ECDSA }, input: 'digest', pss: false },
  { name: 'ECDSA_SHA256', kind: 'EC', mechanism: { mechanism: pkcs11js.CKM_ECDSA_SHA256 }, input: 'message', pss: false },
];

export const waysFor = (spec: MatrixSpec): SignWay[] => SIGN_WAYS.filter((w) => w.kind === KEY_SPECS[spec].kind);

/** What the token is given to sign: the message, or the SHA-256 (in its DigestInfo for CKM_RSA_PKCS). */
function tokenInput(way: SignWay, message: Buffer): Buffer {
  if (way.input === 'message') return message;
  const digest = createHash('sha256').update(message).digest();
  return way.mechanism.mechanism === pkcs11js.CKM_RSA_PKCS ? digestInfo('sha256', digest) : digest;
}

/** ECDSA comes back as r‖s; openssl and Node's default want DER. */
const asDer = (way: SignWay, signature: Buffer): Buffer => (way.kind === 'EC' ? p1363ToDer(signature) : signature);

/** Signs on the token (C_SignInit + C_Sign) and verifies the signature with openssl: `ok`, a CKR, or `bad signature`. */
export function signAndVerify(t: RawToken, key: ProbeKey, way: SignWay, session = t.session): string {
  const message = Buffer.from(`module matrix ${key.label} ${way.name}`);
  let signature: Buffer;
  try {
    t.p11.C_SignInit(session, way.mechanism, key.privateKey);
    signature = t.p11.C_Sign(session, tokenInput(way, message), Buffer.alloc(512));
  } catch (err) {
    return outcome(err);
  }
  const publicKeyPem = key.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  try {
    if (way.input === 'message') opensslVerifyMessage({ publicKeyPem, message, signature: asDer(way, signature), pss: way.pss });
    else opensslVerifyDigest({ publicKeyPem, digest: createHash('sha256').update(message).digest(), signature: asDer(way, signature), pss: way.pss });
    return 'ok';
  } catch {
    return 'bad signature';
  }
}

/** C_VerifyInit + C_Verify on the token with the key's public key object, over a signature made in this process. */
export function verifyOnToken(t: RawToken, key: ProbeKey, way: SignWay): string {
  return attempt(() => {
    const message = Buffer.from('verify on the token');
    t.p11.C_SignInit(t.session, way.mechanism, key.privateKey);
    const signature = t.p11.C_Sign(t.session, tokenInput(way, message), Buffer.alloc(512));
    const [publicKey] = t.find(key.label, pkcs11js.CKO_PUBLIC_KEY);
    if (!publicKey) return 'no public key object';
    t.p11.C_VerifyInit(t.session, way.mechanism, publicKey);
    const good = t.p11.C_Verify(t.session, tokenInput(way, message), signature);
    return good ? 'ok' : 'false for a good signature';
  });
}

/** The registry's kind of object: a private CKO_DATA token object (src/keys/registry-objects.ts). */
function dataTemplate(label: string): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_APPLICATION, value: 'hsm-gateway/module-matrix' },
    { type: pkcs11js.CKA_VALUE, value: Buffer.from('{"probe":true}') },
  ];
}

export function createData(t: RawToken): string {
  return attempt(() => void t.p11.C_CreateObject(t.session, dataTemplate(`probe-data-${randomBytes(3).toString('hex')}`)));
}

/** A self-signed certificate made in this process, stored as CKO_CERTIFICATE (what certs import does). */
export function createCertificate(t: RawToken): string {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const der = issueCertificate({
    subject: { commonName: 'module matrix probe' },
    subjectPublicKeyInfo: key.publicKey.export({ type: 'spki', format: 'der' }),
    ca: { pathLength: 0 },
    validDays: 30,
    signatureAlgorithm: 'ecdsaWithSHA256',
    sign: (tbs) => nodeSign('sha256', tbs, key.privateKey),
  });
  return attempt(() => void t.p11.C_CreateObject(t.session, certificateTemplate(der, `probe-cert-${randomBytes(3).toString('hex')}`)));
}

function certificateTemplate(der: Buffer, label: string): pkcs11js.Template {
  const fields = certificateObjectFields(der);
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
    { type: pkcs11js.CKA_CERTIFICATE_TYPE, value: pkcs11js.CKC_X_509 },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: randomBytes(8) },
    { type: pkcs11js.CKA_SUBJECT, value: fields.subject },
    { type: pkcs11js.CKA_ISSUER, value: fields.issuer },
    { type: pkcs11js.CKA_SERIAL_NUMBER, value: fields.serialNumber },
    { type: pkcs11js.CKA_VALUE, value: fields.value },
  ];
}

/** An RSA-2048 private key made in this process, put on the token sensitive and sign-only (what certs import does). */
export function createPrivateKey(t: RawToken): string {
  const jwk = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const b = (v: string | undefined): Buffer => Buffer.from(v ?? '', 'base64url');
  return attempt(
    () =>
      void t.p11.C_CreateObject(t.session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_LABEL, value: `probe-import-${randomBytes(3).toString('hex')}` },
        { type: pkcs11js.CKA_ID, value: randomBytes(8) },
        ...SIGNING_PRIVATE_KEY_USAGE,
        { type: pkcs11js.CKA_MODULUS, value: b(jwk.n) },
        { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: b(jwk.e) },
        { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: b(jwk.d) },
        { type: pkcs11js.CKA_PRIME_1, value: b(jwk.p) },
        { type: pkcs11js.CKA_PRIME_2, value: b(jwk.q) },
        { type: pkcs11js.CKA_EXPONENT_1, value: b(jwk.dp) },
        { type: pkcs11js.CKA_EXPONENT_2, value: b(jwk.dq) },
        { type: pkcs11js.CKA_COEFFICIENT, value: b(jwk.qi) },
      ]),
  );
}

/**
 * A key pair the gateway must refuse to import: extractable, and allowed to decrypt and unwrap (what openCryptoki
 * took from the old import check). 'ok' when the module made it, else its CKR.
 */
export function extractableKeyPair(t: RawToken, label: string, id: Buffer): string {
  return attempt(
    () =>
      void t.p11.C_GenerateKeyPair(
        t.session,
        { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_ID, value: id },
          { type: pkcs11js.CKA_VERIFY, value: true },
          { type: pkcs11js.CKA_MODULUS_BITS, value: 2048 },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
        ],
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_ID, value: id },
          { type: pkcs11js.CKA_SIGN, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: true },
          { type: pkcs11js.CKA_UNWRAP, value: true },
          { type: pkcs11js.CKA_SENSITIVE, value: true },
          { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        ],
      ),
  );
}

/**
 * An RSA-2048 key pair made in this process and written onto the token (C_CreateObject, sensitive, not extractable,
 * sign-only): a key that existed outside the HSM (CKA_NEVER_EXTRACTABLE false). 'ok', or the module's CKR.
 */
export function writtenKeyPair(t: RawToken, label: string, id: Buffer): string {
  const jwk = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const b = (v: string | undefined): Buffer => Buffer.from(v ?? '', 'base64url');
  const common = [
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
    { type: pkcs11js.CKA_MODULUS, value: b(jwk.n) },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: b(jwk.e) },
  ];
  return attempt(() => {
    const key = t.p11.C_CreateObject(t.session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      ...common,
      ...SIGNING_PRIVATE_KEY_USAGE,
      { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: b(jwk.d) },
      { type: pkcs11js.CKA_PRIME_1, value: b(jwk.p) },
      { type: pkcs11js.CKA_PRIME_2, value: b(jwk.q) },
      { type: pkcs11js.CKA_EXPONENT_1, value: b(jwk.dp) },
      { type: pkcs11js.CKA_EXPONENT_2, value: b(jwk.dq) },
      { type: pkcs11js.CKA_COEFFICIENT, value: b(jwk.qi) },
    ]);
    try {
      t.p11.C_CreateObject(t.session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, ...common, { type: pkcs11js.CKA_VERIFY, value: true }]);
    } catch (err) {
      t.p11.C_DestroyObject(t.session, key);
      throw err;
    }
  });
}

const CLASS_NAMES = new Map<number, string>([
  [pkcs11js.CKO_PRIVATE_KEY, 'private key'],
  [pkcs11js.CKO_PUBLIC_KEY, 'public key'],
  [pkcs11js.CKO_CERTIFICATE, 'certificate'],
  [pkcs11js.CKO_DATA, 'data'],
]);

/**
 * A key pair made by the module's own tool (or pkcs11-tool) in another process: which objects the token then holds
 * under its label, and whether it signs (verified with openssl, the public key from the public key object or the
 * certificate).
 */
export async function toolKey(t: RawToken, spec: 'RSA_2048' | 'EC_P256'): Promise<{ objects: string; sign: string; tool: string; label: string; idHex?: string }> {
  const made = await t.inst.toolKeyPair(spec, `tool-${spec.toLowerCase()}-${randomBytes(3).toString('hex')}`, randomBytes(8).toString('hex'));
  const seen = t.find(made.label);
  let found = seen;
  if (found.length === 0) {
    // A module that reads its store once (at C_Initialize) sees the tool's objects only after re-initializing.
    t.reopen();
    found = t.find(made.label);
  }
  const classes = found.map((h) => t.classOf(h));
  let objects = [...new Set(classes.map((c) => CLASS_NAMES.get(c) ?? `class ${c}`))].sort().join(' + ') + (seen.length === 0 && found.length > 0 ? ' (after re-initialize)' : '');
  let privateKey = found.find((_, i) => classes[i] === pkcs11js.CKO_PRIVATE_KEY);
  const certificate = found.find((_, i) => classes[i] === pkcs11js.CKO_CERTIFICATE);
  if (!privateKey && certificate) {
    // NSS: the key pair carries the certificate's CKA_ID but no label (the nickname lives on the certificate).
    const [id] = t.p11.C_GetAttributeValue(t.session, certificate, [{ type: pkcs11js.CKA_ID }]);
    const byId = findObjects(t.p11, t.session, [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_ID, value: id!.value as Buffer },
    ]).filter((h) => t.classOf(h) !== pkcs11js.CKO_CERTIFICATE);
    const labels = byId.map((h) => (t.p11.C_GetAttributeValue(t.session, h, [{ type: pkcs11js.CKA_LABEL }])[0]!.value as Buffer).toString('utf8'));
    const kinds = [...new Set(byId.map((h) => CLASS_NAMES.get(t.classOf(h)) ?? 'object'))].sort().join(' + ');
    if (byId.length > 0) objects += `; ${kinds} by its CKA_ID, ${labels.every((l) => l === '') ? 'no label' : `labelled ${labels.join(', ')}`}`;
    privateKey = byId.find((h) => t.classOf(h) === pkcs11js.CKO_PRIVATE_KEY);
  }
  if (!privateKey) return { objects: objects || 'none', sign: 'no private key', tool: made.tool, label: made.label, idHex: made.idHex };
  const publicObject = found.find((_, i) => classes[i] === pkcs11js.CKO_PUBLIC_KEY);
  let publicKey: KeyObject;
  if (publicObject) publicKey = publicKeyObject(readPublicKey(t.p11, t.session, publicObject), spec);
  else {
    const [value] = t.p11.C_GetAttributeValue(t.session, certificate!, [{ type: pkcs11js.CKA_VALUE }]);
    publicKey = new X509Certificate(value!.value as Buffer).publicKey;
  }
  const way = waysFor(spec)[0]!;
  return { objects, sign: signAndVerify(t, { spec, label: made.label, privateKey, publicKey }, way), tool: made.tool, label: made.label, idHex: made.idHex };
}

/**
 * Another process (a child node, the module initialized there) writes an object; does this process, initialized
 * before, see it? `seen`, or `not seen` (then: after C_Finalize + C_Initialize?).
 */
export async function crossProcess(t: RawToken, kind: 'data' | 'certificate'): Promise<string> {
  const label = `probe-xproc-${randomBytes(3).toString('hex')}`;
  const written = await runChild(t.inst, `write-${kind}`, { OBJECT_LABEL: label });
  if (written !== 'ok') return `child could not write: ${written}`;
  if (t.find(label).length > 0) return `seen (${kind} object)`;
  t.reopen();
  return t.find(label).length > 0 ? `not seen; seen after re-initialize (${kind} object)` : `not seen, not even after re-initialize (${kind} object)`;
}

/** 200 signatures at once over 8 sessions (C_SignAsync, one operation per session at a time), all verified. */
export async function concurrentSigns(t: RawToken, key: ProbeKey, way: SignWay, total = 200, sessions = 8): Promise<{ result: string; ms: number }> {
  const started = Date.now();
  const opened = Array.from({ length: sessions }, () => t.openSession());
  const message = Buffer.from('concurrent');
  const input = tokenInput(way, message);
  let bad = 0;
  let failure: string | undefined;
  try {
    await Promise.all(
      opened.map(async (session, i) => {
        for (let n = i; n < total; n += sessions) {
          try {
            t.p11.C_SignInit(session, way.mechanism, key.privateKey);
            const signature = await t.p11.C_SignAsync(session, input, Buffer.alloc(512));
            const options = way.kind === 'EC' ? { key: key.publicKey, dsaEncoding: 'ieee-p1363' as const } : way.pss ? { key: key.publicKey, padding: 6, saltLength: 32 } : key.publicKey;
            if (!nodeVerify('sha256', message, options, signature)) bad++;
          } catch (err) {
            failure ??= outcome(err);
            return;
          }
        }
      }),
    );
  } finally {
    for (const s of opened) attempt(() => t.p11.C_CloseSession(s));
  }
  const ms = Date.now() - started;
  if (failure) return { result: failure, ms };
  return { result: bad === 0 ? 'ok' : `${bad} of ${total} did not verify`, ms };
}

/**
 * The backend goes away and comes back (p11-kit server, tpm2-abrmd, pkcsslotd): what a sign answers while it is
 * down, on the same session once it is back, and after C_Finalize + C_Initialize.
 */
export async function backendLoss(t: RawToken, key: ProbeKey, way: SignWay): Promise<{ down: string; back: string; reinitialized: string }> {
  const backend = t.inst.backend!;
  await backend.stop();
  const down = signAndVerify(t, key, way);
  await backend.start();
  const back = signAndVerify(t, key, way);
  let reinitialized: string;
  try {
    t.reopen();
    const [handle] = t.find(key.label, pkcs11js.CKO_PRIVATE_KEY);
    reinitialized = handle ? signAndVerify(t, { ...key, privateKey: handle }, way) : 'key not found';
  } catch (err) {
    reinitialized = outcome(err);
  }
  return { down, back, reinitialized };
}

/**
 * A child node process that loads the module as the gateway does (dist/hsm/module.js, built by the set-up script)
 * and does one thing: `init-null` (C_Initialize without initArgs), `write-data`, `write-certificate`. Prints ok or
 * the CKR name.
 */
function runChild(inst: ModuleInstance, action: string, extraEnv: Record<string, string>): Promise<string> {
  const script = join(inst.dir, 'matrix-child.mjs');
  writeFileSync(
    script,
    `import pkcs11js from ${JSON.stringify(join(ROOT, 'node_modules/pkcs11js/index.js'))};
import { findSlotByLabel, initializeModule } from ${JSON.stringify(join(ROOT, 'dist/hsm/module.js'))};
const { MATRIX_MODULE, MATRIX_LABEL, MATRIX_PIN, MATRIX_INIT_ARGS, MATRIX_ACTION, OBJECT_LABEL } = process.env;
const p11 = new pkcs11js.PKCS11();
const name = (err) => Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === err.code)?.[0] ?? String(err.message);
try {
  if (MATRIX_ACTION === 'init-null') {
    p11.load(MATRIX_MODULE);
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } else {
    initializeModule(p11, MATRIX_MODULE, MATRIX_INIT_ARGS || undefined);
    const slot = findSlotByLabel(p11, MATRIX_LABEL);
    const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p11.C_Login(session, pkcs11js.CKU_USER, MATRIX_PIN);
    const template = JSON.parse(process.env.MATRIX_TEMPLATE, (k, v) => (v && v.type === 'Buffer' ? Buffer.from(v.data) : v));
    p11.C_CreateObject(session, template);
    p11.C_Logout(session);
  }
  p11.C_Finalize();
  console.log('ok');
} catch (err) {
  console.log(name(err));
}
`,
  );
  const template =
    action === 'write-data'
      ? dataTemplate(extraEnv.OBJECT_LABEL!)
      : action === 'write-certificate'
        ? certificateTemplate(selfSigned(), extraEnv.OBJECT_LABEL!)
        : [];
  return new Promise((done) => {
    execFile(
      process.execPath,
      [script],
      {
        env: {
          ...process.env,
          ...inst.env,
          ...extraEnv,
          MATRIX_MODULE: inst.modulePath,
          MATRIX_LABEL: inst.tokenLabel,
          MATRIX_PIN: inst.pin,
          MATRIX_INIT_ARGS: inst.initArgs ?? '',
          MATRIX_ACTION: action,
          MATRIX_TEMPLATE: JSON.stringify(template),
        },
        timeout: 60_000,
      },
      (err, stdout, stderr) => done(err ? `child failed: ${err.message} ${stderr}` : stdout.trim().split('\n').pop() ?? ''),
    );
  });
}

function selfSigned(): Buffer {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return issueCertificate({
    subject: { commonName: 'module matrix cross-process probe' },
    subjectPublicKeyInfo: key.publicKey.export({ type: 'spki', format: 'der' }),
    validDays: 30,
    signatureAlgorithm: 'ecdsaWithSHA256',
    sign: (tbs) => nodeSign('sha256', tbs, key.privateKey),
  });
}
