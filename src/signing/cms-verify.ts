import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { OID } from './x509.js';

/**
 * What a detached CMS SignedData (as `SHA256withRSA/P7` produces) claims, parsed by pkijs: who signed it
 * (issuer + serial), the digest it signed, and the bytes the signature covers. The cryptographic check itself
 * is the caller's (on the token, with the registered certificate's key).
 */
interface SignedDataClaims {
  signerIssuer: Buffer;
  signerSerial: Buffer;
  digestAlgorithm: string;
  signatureAlgorithm: string;
  contentType: string | undefined;
  messageDigest: Buffer | undefined;
  /** DER of the signed attributes as a SET (tag 0x31): what the signature is over. */
  signedAttributes: Buffer;
  signature: Buffer;
  /** True when the content is embedded (not detached). */
  hasContent: boolean;
}

const toAb = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;

function attributeValue(attrs: pkijs.Attribute[], type: string): asn1js.BaseBlock | undefined {
  return attrs.find((a) => a.type === type)?.values[0];
}

/** Undefined when the bytes are not a SignedData with exactly one signer that has signed attributes. */
export function readSignedData(der: Buffer): SignedDataClaims | undefined {
  let signedData: pkijs.SignedData;
  try {
    const info = pkijs.ContentInfo.fromBER(toAb(der));
    if (info.contentType !== OID.signedData) return undefined;
    signedData = new pkijs.SignedData({ schema: info.content });
  } catch {
    return undefined;
  }
  if (signedData.signerInfos.length !== 1) return undefined;
  const signer = signedData.signerInfos[0]!;
  if (!signer.signedAttrs || !(signer.sid instanceof pkijs.IssuerAndSerialNumber)) return undefined;
  const attrs = signer.signedAttrs.attributes;
  const contentType = attributeValue(attrs, OID.contentType);
  const messageDigest = attributeValue(attrs, OID.messageDigest);
  return {
    signerIssuer: Buffer.from(signer.sid.issuer.toSchema().toBER(false)),
    signerSerial: Buffer.from(signer.sid.serialNumber.toBER(false)),
    digestAlgorithm: signer.digestAlgorithm.algorithmId,
    signatureAlgorithm: signer.signatureAlgorithm.algorithmId,
    contentType: contentType instanceof asn1js.ObjectIdentifier ? contentType.valueBlock.toString() : undefined,
    messageDigest: messageDigest instanceof asn1js.OctetString ? Buffer.from(messageDigest.valueBlock.valueHexView) : undefined,
    signedAttributes: Buffer.from(signer.signedAttrs.encodedValue),
    signature: Buffer.from(signer.signature.valueBlock.valueHexView),
    hasContent: signedData.encapContentInfo.eContent !== undefined,
  };
}
