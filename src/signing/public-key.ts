import { createPublicKey, type KeyObject } from 'node:crypto';
import type { RawPublicKey } from '../hsm/objects.js';
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
  const point = uncompressedPoint(raw.ecPoint, spec.signatureBytes / 2);
  return createPublicKey({ key: ecSpki(Buffer.from(spec.ecParams, 'hex'), point), format: 'der', type: 'spki' });
}

/** DER SubjectPublicKeyInfo { { id-ecPublicKey, curve OID }, BIT STRING point } (JWK has no SM2 curve). */
function ecSpki(ecParams: Buffer, point: Buffer): Buffer {
  const ecPublicKey = Buffer.from('06072a8648ce3d0201', 'hex');
  const algorithm = Buffer.concat([Buffer.from([0x30, ecPublicKey.length + ecParams.length]), ecPublicKey, ecParams]);
  const bits = Buffer.concat([Buffer.from([0x03, point.length + 1, 0x00]), point]);
  return Buffer.concat([Buffer.from([0x30, algorithm.length + bits.length]), algorithm, bits]);
}

/** The uncompressed point 04 ‖ x ‖ y of an EC public key read from the token (for SM2's Z_A). */
export function ecPoint(raw: RawPublicKey, keySpec: KeySpec): Buffer {
  if (raw.kind !== 'EC') throw new Error(`key spec ${keySpec} but the token holds an RSA key`);
  return uncompressedPoint(raw.ecPoint, KEY_SPECS[keySpec].signatureBytes / 2);
}

export function publicKeyPem(raw: RawPublicKey, keySpec: KeySpec): string {
  return publicKeyObject(raw, keySpec).export({ type: 'spki', format: 'pem' }).toString();
}
