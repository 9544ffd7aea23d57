import { createPublicKey, type KeyObject } from 'node:crypto';
import type { RawPublicKey } from '../hsm/token.js';
import { KEY_SPECS, type KeySpec } from './key-specs.js';

const b64url = (b: Buffer): string => b.toString('base64url');

/**
 * CKA_EC_POINT is a DER OCTET STRING around the uncompressed point 04‖x‖y; some modules return the bare point.
 * The expected point size tells the two apart.
 */
function uncompressedPoint(ecPoint: Buffer, fieldBytes: number): Buffer {
  const pointBytes = 2 * fieldBytes + 1;
  const point = ecPoint.length === pointBytes ? ecPoint : ecPoint.subarray(ecPoint.length - pointBytes);
  const wrapped = ecPoint.length === pointBytes + 2 && ecPoint[0] === 0x04 && ecPoint[1] === pointBytes;
  if (point[0] !== 0x04 || (ecPoint.length !== pointBytes && !wrapped)) throw new Error('unsupported CKA_EC_POINT encoding');
  return point;
}

/** Turns a public key read from the token into a Node KeyObject (SPKI), checked against the key spec. */
export function publicKeyObject(raw: RawPublicKey, keySpec: KeySpec): KeyObject {
  const spec = KEY_SPECS[keySpec];
  if (raw.kind === 'RSA') {
    if (spec.kind !== 'RSA') throw new Error(`key spec ${keySpec} but the token holds an RSA key`);
    return createPublicKey({ key: { kty: 'RSA', n: b64url(raw.modulus), e: b64url(raw.publicExponent) }, format: 'jwk' });
  }
  if (spec.kind !== 'EC') throw new Error(`key spec ${keySpec} but the token holds an EC key`);
  if (raw.ecParams.toString('hex') !== spec.ecParams) throw new Error(`key spec ${keySpec} but the token key is on another curve`);
  const size = spec.signatureBytes / 2;
  const point = uncompressedPoint(raw.ecPoint, size);
  return createPublicKey({
    key: { kty: 'EC', crv: spec.jwkCurve, x: b64url(point.subarray(1, 1 + size)), y: b64url(point.subarray(1 + size)) },
    format: 'jwk',
  });
}

export function publicKeyPem(raw: RawPublicKey, keySpec: KeySpec): string {
  return publicKeyObject(raw, keySpec).export({ type: 'spki', format: 'pem' }).toString();
}
