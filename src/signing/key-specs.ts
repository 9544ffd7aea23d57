/** Key specs the gateway signs with, and what the token needs to know about each. */
export const KEY_SPECS = {
  RSA_2048: { kind: 'RSA', modulusBits: 2048, signatureBytes: 256 },
  RSA_3072: { kind: 'RSA', modulusBits: 3072, signatureBytes: 384 },
  // ecParams: DER of the curve's OBJECT IDENTIFIER, as CKA_EC_PARAMS wants it.
  EC_P256: { kind: 'EC', curve: 'P-256', jwkCurve: 'P-256', ecParams: '06082a8648ce3d030107', signatureBytes: 64 },
  EC_P256K: { kind: 'EC', curve: 'secp256k1', jwkCurve: 'secp256k1', ecParams: '06052b8104000a', signatureBytes: 64 },
  // SM2 keys live on a vendor token (key type and mechanisms from its HSM profile).
  EC_SM2: { kind: 'EC', curve: 'SM2', jwkCurve: 'SM2', ecParams: '06082a811ccf5501822d', signatureBytes: 64 },
} as const;

export type KeySpec = keyof typeof KEY_SPECS;
export const KEY_SPEC_NAMES = Object.keys(KEY_SPECS) as KeySpec[];

