import { createHash, randomBytes } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';

/**
 * Issues X.509 certificates whose signature is made elsewhere (by the HSM): the TBSCertificate is encoded
 * here with pkijs, handed to `sign`, and the returned signature is set as is. Used by the demo bootstrap
 * and admin tooling, never on the request path.
 */
export const OID = {
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  sha256WithRSAEncryption: '1.2.840.113549.1.1.11',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecdsaWithSHA256: '1.2.840.10045.4.3.2',
  sm2WithSM3: '1.2.156.10197.1.501',
  sha256: '2.16.840.1.101.3.4.2.1',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  data: '1.2.840.113549.1.7.1',
  signedData: '1.2.840.113549.1.7.2',
  contentType: '1.2.840.113549.1.9.3',
  messageDigest: '1.2.840.113549.1.9.4',
  signingTime: '1.2.840.113549.1.9.5',
} as const;

export type CertificateSignatureAlgorithm = 'sha256WithRSAEncryption' | 'ecdsaWithSHA256' | 'sm2WithSM3';

/**
 * A certificate subject: a common name (and organization), a full distinguished name as (attribute type OID, value)
 * pairs in encoding order (see `parseDistinguishedName`), or the DER Name of a CSR taken as it is.
 */
export type SubjectName =
  | { commonName: string; organization?: string }
  | { attributes: ReadonlyArray<readonly [string, string]> }
  | { der: Buffer };

/** `Signature` is `Buffer` for a key that signs in-process (demo set-up, tests) or `Promise<Buffer>` for a token session from the pool. */
export interface IssueRequest<Signature extends Buffer | Promise<Buffer> = Buffer> {
  subject: SubjectName;
  /** DER SubjectPublicKeyInfo of the subject's key. */
  subjectPublicKeyInfo: Buffer;
  /** The issuer's certificate (DER); absent for a self-signed root. */
  issuerCertificate?: Buffer;
  /** CA certificates get basicConstraints cA and keyCertSign; leaves get digitalSignature + nonRepudiation. */
  ca?: { pathLength?: number };
  validDays: number;
  /** Algorithm of the issuer's key. */
  signatureAlgorithm: CertificateSignatureAlgorithm;
  /** Extensions besides the standard four (e.g. a subjectAltName a CSR asked for). */
  extensions?: pkijs.Extension[];
  /** Signs the DER TBSCertificate with the issuer's key; returns the signature as the algorithm encodes it. */
  sign: (tbs: Buffer) => Signature;
}

const toAb = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;

/** Attribute types a distinguished name may use here, by their short names (RFC 4514 / OpenSSL). */
const DN_ATTRIBUTES: Readonly<Record<string, string>> = {
  C: '2.5.4.6',
  ST: '2.5.4.8',
  L: '2.5.4.7',
  STREET: '2.5.4.9',
  O: '2.5.4.10',
  OU: '2.5.4.11',
  CN: '2.5.4.3',
  SERIALNUMBER: '2.5.4.5',
  TITLE: '2.5.4.12',
  SN: '2.5.4.4',
  GN: '2.5.4.42',
  DC: '0.9.2342.19200300.100.1.25',
  EMAILADDRESS: '1.2.840.113549.1.9.1',
  E: '1.2.840.113549.1.9.1',
};
const IA5_ATTRIBUTES = new Set([DN_ATTRIBUTES.DC, DN_ATTRIBUTES.EMAILADDRESS]);

export class DistinguishedNameError extends Error {}

/** Splits on `separator` where it is not escaped with a backslash; unescapes the parts. */
function splitUnescaped(text: string, separator: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\\' && i + 1 < text.length) current += text[++i];
    else if (c === separator) {
      parts.push(current);
      current = '';
    } else current += c;
  }
  parts.push(current);
  return parts;
}

/**
 * A distinguished name from text, as (attribute type OID, value) pairs in encoding order (the root-most first).
 * Two spellings: OpenSSL's `/C=CN/O=Example/CN=host` (in encoding order) and RFC 4514's `CN=host,O=Example,C=CN`
 * (most specific first, so reversed here). Special characters are escaped with a backslash.
 */
export function parseDistinguishedName(text: string): Array<[string, string]> {
  const slashForm = text.startsWith('/');
  const parts = splitUnescaped(slashForm ? text.slice(1) : text, slashForm ? '/' : ',');
  const attributes = parts.map((part): [string, string] => {
    const eq = part.indexOf('=');
    const type = part.slice(0, eq).trim().toUpperCase();
    const value = part.slice(eq + 1).trim();
    const oid = DN_ATTRIBUTES[type];
    if (eq < 1 || !oid) throw new DistinguishedNameError(`"${part.trim()}" is not TYPE=value with TYPE one of ${Object.keys(DN_ATTRIBUTES).join(', ')}`);
    if (value === '') throw new DistinguishedNameError(`${type} has an empty value`);
    if (oid === DN_ATTRIBUTES.C && !/^[A-Za-z]{2}$/.test(value)) throw new DistinguishedNameError('C is a two-letter country code');
    return [oid, value];
  });
  return slashForm ? attributes : attributes.reverse();
}

/** One RDN per attribute (O, then CN): pkijs alone would put them all in one multi-valued RDN. */
function name(subject: SubjectName): pkijs.RelativeDistinguishedNames {
  if ('der' in subject) return pkijs.RelativeDistinguishedNames.fromBER(toAb(subject.der));
  const attributes: Array<readonly [string, string]> = [];
  if ('attributes' in subject) attributes.push(...subject.attributes);
  else {
    if (subject.organization) attributes.push([OID.organization, subject.organization]);
    attributes.push([OID.commonName, subject.commonName]);
  }
  const valueOf = (type: string, value: string): asn1js.PrintableString | asn1js.IA5String | asn1js.Utf8String =>
    type === DN_ATTRIBUTES.C
      ? new asn1js.PrintableString({ value })
      : IA5_ATTRIBUTES.has(type)
        ? new asn1js.IA5String({ value })
        : new asn1js.Utf8String({ value });
  const der = new asn1js.Sequence({
    value: attributes.map(
      ([type, value]) => new asn1js.Set({ value: [new pkijs.AttributeTypeAndValue({ type, value: valueOf(type, value) }).toSchema()] }),
    ),
  }).toBER(false);
  return pkijs.RelativeDistinguishedNames.fromBER(der);
}

function algorithmIdentifier(algorithm: CertificateSignatureAlgorithm): pkijs.AlgorithmIdentifier {
  return algorithm === 'sha256WithRSAEncryption'
    ? new pkijs.AlgorithmIdentifier({ algorithmId: OID.sha256WithRSAEncryption, algorithmParams: new asn1js.Null() })
    : new pkijs.AlgorithmIdentifier({ algorithmId: OID[algorithm] });
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's bits. */
function keyIdentifier(spki: pkijs.PublicKeyInfo): Buffer {
  return createHash('sha1').update(spki.subjectPublicKey.valueBlock.valueHexView).digest();
}

function extension(extnID: string, critical: boolean, value: asn1js.BaseBlock): pkijs.Extension {
  return new pkijs.Extension({ extnID, critical, extnValue: value.toBER(false) });
}

export function parseCertificate(der: Buffer): pkijs.Certificate {
  return pkijs.Certificate.fromBER(toAb(der));
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 (a two-digit year would read 19xx). */
export function x509Time(date: Date): pkijs.Time {
  // Whole seconds: DER GeneralizedTime would otherwise carry fractions that UTCTime cannot.
  const seconds = new Date(Math.floor(date.getTime() / 1000) * 1000);
  return new pkijs.Time({ type: seconds.getUTCFullYear() >= 2050 || seconds.getUTCFullYear() < 1950 ? 1 : 0, value: seconds });
}

function basicConstraints(ca: IssueRequest['ca']): { cA?: boolean; pathLenConstraint?: number } {
  if (!ca) return {};
  return ca.pathLength === undefined ? { cA: true } : { cA: true, pathLenConstraint: ca.pathLength };
}

/** The certificate without its signature, and the DER TBSCertificate the issuer's key signs. */
function toBeSigned(req: Omit<IssueRequest, 'sign'>): { cert: pkijs.Certificate; tbs: Buffer } {
  const spki = pkijs.PublicKeyInfo.fromBER(toAb(req.subjectPublicKeyInfo));
  const issuer = req.issuerCertificate ? parseCertificate(req.issuerCertificate) : undefined;
  const cert = new pkijs.Certificate();
  cert.version = 2;
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01; // positive, and exactly 16 bytes long
  cert.serialNumber = new asn1js.Integer({ valueHex: toAb(serial) });
  cert.subject = name(req.subject);
  cert.issuer = issuer ? issuer.subject : name(req.subject);
  const notBefore = new Date(Date.now() - 60_000);
  cert.notBefore = x509Time(notBefore);
  cert.notAfter = x509Time(new Date(notBefore.getTime() + req.validDays * 86_400_000));
  cert.subjectPublicKeyInfo = spki;

  const ski = keyIdentifier(spki);
  const aki = issuer ? keyIdentifier(issuer.subjectPublicKeyInfo) : ski;
  // keyCertSign + cRLSign = bits 5, 6 (0x06, 1 unused bit); digitalSignature + nonRepudiation = bits 0, 1 (0xC0, 6 unused).
  const keyUsage = req.ca
    ? new asn1js.BitString({ valueHex: new Uint8Array([0x06]).buffer, unusedBits: 1 })
    : new asn1js.BitString({ valueHex: new Uint8Array([0xc0]).buffer, unusedBits: 6 });
  cert.extensions = [
    // pkijs writes pathLenConstraint 0 when the key is present but undefined: pass it only when set.
    extension(OID.basicConstraints, true, new pkijs.BasicConstraints(basicConstraints(req.ca)).toSchema()),
    extension(OID.keyUsage, true, keyUsage),
    extension(OID.subjectKeyIdentifier, false, new asn1js.OctetString({ valueHex: toAb(ski) })),
    extension(OID.authorityKeyIdentifier, false, new pkijs.AuthorityKeyIdentifier({ keyIdentifier: new asn1js.OctetString({ valueHex: toAb(aki) }) }).toSchema()),
    ...(req.extensions ?? []),
  ];
  cert.signature = algorithmIdentifier(req.signatureAlgorithm);
  cert.signatureAlgorithm = algorithmIdentifier(req.signatureAlgorithm);

  const tbs = Buffer.from(cert.encodeTBS().toBER(false));
  cert.tbsView = new Uint8Array(tbs);
  return { cert, tbs };
}

function signed(cert: pkijs.Certificate, signature: Buffer): Buffer {
  cert.signatureValue = new asn1js.BitString({ valueHex: toAb(signature) });
  return Buffer.from(cert.toSchema(false).toBER(false));
}

/** Returns the DER certificate, or a promise of it when the issuer's key signs asynchronously. */
export function issueCertificate(req: IssueRequest<Buffer>): Buffer;
export function issueCertificate(req: IssueRequest<Promise<Buffer>>): Promise<Buffer>;
export function issueCertificate(req: IssueRequest<Buffer | Promise<Buffer>>): Buffer | Promise<Buffer> {
  const { cert, tbs } = toBeSigned(req);
  const signature = req.sign(tbs);
  return signature instanceof Promise ? signature.then((value) => signed(cert, value)) : signed(cert, signature);
}

/** The DER pieces a PKCS#11 certificate object carries besides its value. */
export function certificateObjectFields(der: Buffer): { value: Buffer; subject: Buffer; issuer: Buffer; serialNumber: Buffer } {
  const cert = parseCertificate(der);
  return {
    value: der,
    subject: Buffer.from(cert.subject.toSchema().toBER(false)),
    issuer: Buffer.from(cert.issuer.toSchema().toBER(false)),
    serialNumber: Buffer.from(cert.serialNumber.toBER(false)),
  };
}

export function toPem(der: Buffer, label = 'CERTIFICATE'): string {
  const body = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
}
