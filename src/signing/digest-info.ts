/**
 * DER prefixes of the PKCS#1 v1.5 DigestInfo (RFC 8017 §9.2 note 1): CKM_RSA_PKCS signs its input as is,
 * so a caller-supplied digest is wrapped in its DigestInfo first.
 */
const DIGEST_INFO_PREFIX = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
} as const;

export function digestInfo(hash: keyof typeof DIGEST_INFO_PREFIX, digest: Buffer): Buffer {
  return Buffer.concat([DIGEST_INFO_PREFIX[hash], digest]);
}
