import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { OID, parseCertificate, x509Time } from './x509.js';

/**
 * CMS SignedData (RFC 5652) for CAS `SHA256withRSA/P7`: detached content, signed attributes (contentType,
 * signingTime, messageDigest), the signer certificate and its chain, and an RSA PKCS#1 v1.5 SHA-256 signature
 * made by the HSM over the DER of the signed attributes. Encoding is pkijs's; only the signature is ours.
 */
export interface DetachedSignedDataInput {
  /** SHA-256 of the content (the caller's DIGEST when the message is a digest). */
  contentDigest: Buffer;
  signerCertificate: Buffer;
  /** Issuer certificates to include, nearest first. */
  chain: readonly Buffer[];
  signingTime: Date;
  /** Signs the DER SET OF signed attributes (RSA PKCS#1 v1.5 with SHA-256 over those bytes). */
  sign: (signedAttributes: Buffer) => Promise<Buffer>;
}

const toAb = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;

function attribute(type: string, value: asn1js.BaseBlock): pkijs.Attribute {
  return new pkijs.Attribute({ type, values: [value] });
}

/** DER orders a SET OF by the encodings of its elements; verifiers re-encode, so the order must be DER's. */
function derSorted(attributes: pkijs.Attribute[]): pkijs.Attribute[] {
  const encoded = attributes.map((a) => ({ a, der: Buffer.from(a.toSchema().toBER(false)) }));
  return encoded.sort((x, y) => Buffer.compare(x.der, y.der)).map((e) => e.a);
}

export async function buildDetachedSignedData(input: DetachedSignedDataInput): Promise<Buffer> {
  const signer = parseCertificate(input.signerCertificate);
  const sha256 = new pkijs.AlgorithmIdentifier({ algorithmId: OID.sha256, algorithmParams: new asn1js.Null() });

  const signedAttrs = new pkijs.SignedAndUnsignedAttributes({
    type: 0,
    attributes: derSorted([
      attribute(OID.contentType, new asn1js.ObjectIdentifier({ value: OID.data })),
      // RFC 5652 §11.3: UTCTime for 1950–2049, GeneralizedTime outside.
      attribute(OID.signingTime, x509Time(input.signingTime).toSchema()),
      attribute(OID.messageDigest, new asn1js.OctetString({ valueHex: toAb(input.contentDigest) })),
    ]),
  });
  // The signature covers the attributes as a SET (tag 0x31), not as the [0] IMPLICIT field they travel in.
  const toSign = Buffer.from(signedAttrs.toSchema().toBER(false));
  toSign[0] = 0x31;

  const signerInfo = new pkijs.SignerInfo({
    version: 1,
    sid: new pkijs.IssuerAndSerialNumber({ issuer: signer.issuer, serialNumber: signer.serialNumber }),
    digestAlgorithm: sha256,
    signedAttrs,
    signatureAlgorithm: new pkijs.AlgorithmIdentifier({ algorithmId: OID.rsaEncryption, algorithmParams: new asn1js.Null() }),
    signature: new asn1js.OctetString({ valueHex: toAb(await input.sign(toSign)) }),
  });

  const signedData = new pkijs.SignedData({
    version: 1,
    digestAlgorithms: [sha256],
    encapContentInfo: new pkijs.EncapsulatedContentInfo({ eContentType: OID.data }),
    certificates: [signer, ...input.chain.map(parseCertificate)],
    signerInfos: [signerInfo],
  });
  const contentInfo = new pkijs.ContentInfo({ contentType: OID.signedData, content: signedData.toSchema(true) });
  return Buffer.from(contentInfo.toSchema().toBER(false));
}
