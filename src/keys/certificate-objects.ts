import { createHash, type KeyObject, type X509Certificate } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { SIGNING_PRIVATE_KEY_USAGE, SIGNING_PUBLIC_KEY_USAGE, storeCertificate } from '../hsm/admin.js';
import { destroyQuietly, findObjects } from '../hsm/objects.js';
import { KEY_SPECS, type KeySpec } from '../signing/key-specs.js';
import { certificateObjectFields } from '../signing/x509.js';
import { invalid } from './certificate-input.js';
import { LifecycleError } from './errors.js';

/**
 * The token objects of a certificate: an imported private key (sensitive, never extractable again) with its public
 * key and certificate beside it, and the certificates of its chain, each stored once and named by label.
 */

type P11 = pkcs11js.PKCS11;
export type Handle = pkcs11js.Handle;

const fromB64url = (value: string | undefined): Buffer => Buffer.from(value ?? '', 'base64url');

/**
 * The templates that put an existing private key on a token, and its public key beside it: the private key is
 * sensitive and not extractable from then on, signs and does nothing else.
 */
function importTemplates(key: KeyObject, keySpec: KeySpec, label: string, id: Buffer, subject: Buffer): { privateTemplate: pkcs11js.Template; publicTemplate: pkcs11js.Template } {
  const common = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
    { type: pkcs11js.CKA_SUBJECT, value: subject },
  ];
  const privateTemplate: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, ...common, ...SIGNING_PRIVATE_KEY_USAGE];
  const publicTemplate: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    ...common,
    { type: pkcs11js.CKA_PRIVATE, value: false },
    ...SIGNING_PUBLIC_KEY_USAGE,
  ];
  const spec = KEY_SPECS[keySpec];
  const parts = spec.kind === 'RSA' ? rsaParts(key) : ecParts(key, Buffer.from(spec.ecParams, 'hex'));
  privateTemplate.push(...parts.private);
  publicTemplate.push(...parts.public);
  return { privateTemplate, publicTemplate };
}

/** The key-type attributes of an RSA key pair: the public parts on both objects, the private ones on the private key. */
function rsaParts(key: KeyObject): { private: pkcs11js.Template; public: pkcs11js.Template } {
  const jwk = key.export({ format: 'jwk' });
  const publicParts = [
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
    { type: pkcs11js.CKA_MODULUS, value: fromB64url(jwk.n) },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: fromB64url(jwk.e) },
  ];
  return {
    private: [
      ...publicParts,
      { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: fromB64url(jwk.d) },
      { type: pkcs11js.CKA_PRIME_1, value: fromB64url(jwk.p) },
      { type: pkcs11js.CKA_PRIME_2, value: fromB64url(jwk.q) },
      { type: pkcs11js.CKA_EXPONENT_1, value: fromB64url(jwk.dp) },
      { type: pkcs11js.CKA_EXPONENT_2, value: fromB64url(jwk.dq) },
      { type: pkcs11js.CKA_COEFFICIENT, value: fromB64url(jwk.qi) },
    ],
    public: publicParts,
  };
}

/** The key-type attributes of an EC key pair: the private value on the private key, the point on the public one. */
function ecParts(key: KeyObject, ecParams: Buffer): { private: pkcs11js.Template; public: pkcs11js.Template } {
  const jwk = key.export({ format: 'jwk' });
  const point = Buffer.concat([Buffer.from([0x04]), fromB64url(jwk.x), fromB64url(jwk.y)]);
  return {
    private: [
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
      { type: pkcs11js.CKA_EC_PARAMS, value: ecParams },
      { type: pkcs11js.CKA_VALUE, value: fromB64url(jwk.d) },
    ],
    public: [
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
      { type: pkcs11js.CKA_EC_PARAMS, value: ecParams },
      // CKA_EC_POINT is the DER OCTET STRING around the uncompressed point (PKCS#11 2.40 §2.3.3).
      { type: pkcs11js.CKA_EC_POINT, value: Buffer.concat([Buffer.from([0x04, point.length]), point]) },
    ],
  };
}

const certificateTemplate = (extra: pkcs11js.Template): pkcs11js.Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
  { type: pkcs11js.CKA_TOKEN, value: true },
  ...extra,
];

const labelOf = (p11: P11, session: Handle, handle: Handle): string =>
  (p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }])[0]!.value as Buffer).toString('utf8');

/** The labels of the certificate objects on the token that hold this DER. */
export function labelsHolding(p11: P11, session: Handle, der: Buffer): string[] {
  return findObjects(p11, session, certificateTemplate([{ type: pkcs11js.CKA_VALUE, value: der }])).map((handle) => labelOf(p11, session, handle));
}

/**
 * The label of a certificate object holding this DER on the token, reusing one that is already there (and is the
 * only certificate with its label, so a chain entry names it alone), else storing it under `chain/<fingerprint>`.
 */
export function chainCertificateLabel(p11: P11, session: Handle, der: Buffer, created: Handle[]): string {
  for (const label of labelsHolding(p11, session, der)) {
    if (label !== '' && findObjects(p11, session, certificateTemplate([{ type: pkcs11js.CKA_LABEL, value: label }])).length === 1) return label;
  }
  const label = `chain/${createHash('sha256').update(der).digest('hex').slice(0, 32)}`;
  if (findObjects(p11, session, certificateTemplate([{ type: pkcs11js.CKA_LABEL, value: label }])).length > 0) {
    throw invalid(`a different certificate object on the token is already labelled "${label}"`);
  }
  created.push(storeCertificate(p11, session, certificateObjectFields(der), label, createHash('sha256').update(der).digest().subarray(0, 16)));
  return label;
}

/**
 * Puts an imported certificate on the token: its private and public key and its certificate under `label` / `id`, and
 * its chain (reusing chain certificates already there). Every object made is pushed onto `created`; on failure they
 * are destroyed again before the error is thrown. `registered`: token objects already registered as a certificate.
 */
export function putImportedCertificate(
  p11: P11,
  session: Handle,
  imported: { key: KeyObject; keySpec: KeySpec; label: string; id: Buffer; leaf: X509Certificate; chain: readonly X509Certificate[] },
  registered: (label: string) => boolean,
  created: Handle[],
): string[] {
  const leafDer = Buffer.from(imported.leaf.raw);
  const fields = certificateObjectFields(leafDer);
  try {
    for (const existing of labelsHolding(p11, session, leafDer)) {
      if (registered(existing)) throw new LifecycleError('certificate-exists', `this certificate is already registered (token object "${existing}")`);
    }
    const { privateTemplate, publicTemplate } = importTemplates(imported.key, imported.keySpec, imported.label, imported.id, fields.subject);
    created.push(p11.C_CreateObject(session, privateTemplate));
    created.push(p11.C_CreateObject(session, publicTemplate));
    created.push(storeCertificate(p11, session, fields, imported.label, imported.id));
    return imported.chain.map((c) => chainCertificateLabel(p11, session, Buffer.from(c.raw), created));
  } catch (err) {
    destroyQuietly(p11, session, created.reverse()); // the error that matters is the one thrown below
    throw err;
  }
}
