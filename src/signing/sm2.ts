import { createHash } from 'node:crypto';

/**
 * SM2 digest preparation (GB/T 32918.2-2016): the token signs e = SM3(Z_A ‖ M), and only the gateway knows M,
 * so Z_A (§5.5) is computed here from the signer's public key. SM3 is Node's own (OpenSSL 3), not hand-written.
 */
export const SM2_DEFAULT_USER_ID = Buffer.from('1234567812345678', 'ascii');

// The SM2 recommended curve parameters (GB/T 32918.5-2017).
const CURVE = Buffer.from(
  'FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC' + // a
    '28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93' + // b
    '32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7' + // xG
    'BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0', // yG
  'hex',
);

const sm3 = (...parts: Buffer[]): Buffer => {
  const h = createHash('sm3');
  for (const p of parts) h.update(p);
  return h.digest();
};

/** Z_A = SM3(ENTL_A ‖ ID_A ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA); `point` is the uncompressed 04 ‖ xA ‖ yA. */
export function sm2Za(point: Buffer, userId: Buffer = SM2_DEFAULT_USER_ID): Buffer {
  if (point.length !== 65 || point[0] !== 0x04) throw new RangeError('an SM2 public key point is 65 bytes, 04 ‖ x ‖ y');
  if (userId.length >= 8192) throw new RangeError('the SM2 user id is at most 8191 bytes');
  const entl = Buffer.alloc(2);
  entl.writeUInt16BE(userId.length * 8);
  return sm3(entl, userId, CURVE, point.subarray(1));
}

/** e = SM3(Z_A ‖ M): what an SM2 token signs for message M (§6.1 A1–A2). */
export function sm2E(za: Buffer, message: Buffer): Buffer {
  return sm3(za, message);
}
