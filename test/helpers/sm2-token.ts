import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';

/**
 * The SM2 test token (softhsm/sm2-token: a PKCS#11 module that emulates a vendor SM2 HSM) and the SM2 helpers a
 * client of it needs: Z_A and e (GB/T 32918.2 §5.5, §6.1), the SubjectPublicKeyInfo that OpenSSL reads, and the
 * r‖s ⇄ DER conversions. Written independently of the C module and of src/signing/sm2.ts, to cross-check both.
 */
export const ROOT = resolve(import.meta.dirname, '../..');
const SM2TOKEN_BUILD = resolve(ROOT, 'softhsm/sm2-token/build');
export const SM2TOKEN_MODULE = resolve(SM2TOKEN_BUILD, 'libsm2token.so');
export const SM2TOKEN_ASAN_MODULE = resolve(SM2TOKEN_BUILD, 'libsm2token-asan.so');
export const SM2TOKEN_ASAN_DRIVER = resolve(SM2TOKEN_BUILD, 'sm2token-driver-asan');
export const SM2TOKEN_CONCURRENCY_SCRIPT = resolve(ROOT, 'softhsm/sm2-token/tools/concurrency.mjs');

// softhsm/sm2-token/sm2-vendor.h
export const CKK_VENDOR_SM2 = 0x80001001;
export const CKM_VENDOR_SM2_KEY_PAIR_GEN = 0x80001001;
export const CKM_VENDOR_SM2_SIGN_E = 0x80001002;
export const CKM_VENDOR_SM2_SIGN_E_DER = 0x80001003;
/** CKA_EC_PARAMS of an SM2 key: DER OID 1.2.156.10197.1.301. */
export const SM2_EC_PARAMS = Buffer.from('06082a811ccf5501822d', 'hex');
export const SM2_DEFAULT_ID = '1234567812345678';
// Standard PKCS#11 v2.40 values that pkcs11js does not export.
export const CKA_PUBLIC_KEY_INFO = 0x129;
export const CKS_RW_PUBLIC_SESSION = 2;
export const CKS_RW_USER_FUNCTIONS = 3;
export const CKR_CURVE_NOT_SUPPORTED = 0x140;

/** Runs scripts/build-sm2-token.sh (a no-op when up to date); `sanitize` also builds the ASan variant and driver. */
export function buildSm2Token(options: { sanitize?: boolean } = {}): void {
  execFileSync('bash', [resolve(ROOT, 'scripts/build-sm2-token.sh')], {
    cwd: ROOT,
    env: { ...process.env, SM2TOKEN_SANITIZE: options.sanitize ? '1' : '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

// The SM2 recommended curve (GB/T 32918.5-2017): a, b, xG, yG, and the order n.
const A = 'FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC';
const B = '28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93';
const XG = '32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7';
const YG = 'BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0';
export const SM2_N = BigInt('0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123');
/** The generator G, uncompressed (04 ‖ xG ‖ yG). */
export const SM2_G = Buffer.from(`04${XG}${YG}`, 'hex');

const sm3 = (...parts: Buffer[]): Buffer => {
  const h = createHash('sm3');
  for (const part of parts) h.update(part);
  return h.digest();
};

/** Z_A = SM3(ENTL_A ‖ ID_A ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) (§5.5); `point` is 04 ‖ xA ‖ yA. */
export function za(point: Buffer, id: string = SM2_DEFAULT_ID): Buffer {
  if (point.length !== 65 || point[0] !== 0x04) throw new RangeError('expected an uncompressed SM2 point');
  const idBytes = Buffer.from(id, 'utf8');
  const entl = Buffer.from([(idBytes.length * 8) >> 8, (idBytes.length * 8) & 0xff]);
  return sm3(entl, idBytes, Buffer.from(A + B + XG + YG, 'hex'), point.subarray(1));
}

/** e = SM3(Z_A ‖ M) (§6.1 A1–A2): what CKM_VENDOR_SM2_SIGN_E signs. */
export const eOf = (point: Buffer, message: Buffer, id: string = SM2_DEFAULT_ID): Buffer => sm3(za(point, id), message);

/** The point 04 ‖ x ‖ y inside CKA_EC_POINT (DER OCTET STRING, 04 41 ‖ point). */
export function pointOfEcPoint(ecPoint: Buffer): Buffer {
  if (ecPoint.length !== 67 || ecPoint[0] !== 0x04 || ecPoint[1] !== 65) throw new RangeError('CKA_EC_POINT is not an OCTET STRING of 65 bytes');
  return ecPoint.subarray(2);
}

/**
 * SubjectPublicKeyInfo { AlgorithmIdentifier { id-ecPublicKey 1.2.840.10045.2.1, namedCurve SM2 1.2.156.10197.1.301 },
 * BIT STRING 04 ‖ x ‖ y }: how OpenSSL 3 (and X.509 certificates) carry an SM2 public key.
 */
export function spkiOf(point: Buffer): Buffer {
  const algorithm = Buffer.concat([Buffer.from('06072a8648ce3d0201', 'hex'), SM2_EC_PARAMS]);
  const bitString = Buffer.concat([Buffer.from([0x03, 0x42, 0x00]), point]);
  const body = Buffer.concat([Buffer.from([0x30, algorithm.length]), algorithm, bitString]);
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}

export function pemOf(spki: Buffer): string {
  const lines = spki.toString('base64').match(/.{1,64}/g)!.join('\n');
  return `-----BEGIN PUBLIC KEY-----\n${lines}\n-----END PUBLIC KEY-----\n`;
}

const derInteger = (unsigned: Buffer): Buffer => {
  let v = unsigned;
  while (v.length > 1 && v[0] === 0 && v[1]! < 0x80) v = v.subarray(1);
  if (v[0]! >= 0x80) v = Buffer.concat([Buffer.from([0]), v]);
  return Buffer.concat([Buffer.from([0x02, v.length]), v]);
};

/** r ‖ s (64 bytes) → DER SEQUENCE { r INTEGER, s INTEGER }, as OpenSSL expects an SM2 signature. */
export function rsToDer(rs: Buffer): Buffer {
  if (rs.length !== 64) throw new RangeError('r ‖ s is 64 bytes');
  const body = Buffer.concat([derInteger(rs.subarray(0, 32)), derInteger(rs.subarray(32))]);
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}

/** DER SEQUENCE { r, s } → r ‖ s (64 bytes); strict (short-form lengths, minimal integers). */
export function derToRs(der: Buffer): Buffer {
  const fail = (): never => {
    throw new RangeError(`not a DER SM2 signature: ${der.toString('hex')}`);
  };
  if (der[0] !== 0x30 || der[1] !== der.length - 2) fail();
  const ints: Buffer[] = [];
  let at = 2;
  while (at < der.length) {
    if (der[at] !== 0x02) fail();
    const len = der[at + 1]!;
    const v = der.subarray(at + 2, at + 2 + len);
    if (v.length !== len || len === 0 || len > 33 || (len > 1 && v[0] === 0 && v[1]! < 0x80) || v[0]! >= 0x80) fail();
    ints.push(v.length === 33 ? v.subarray(1) : v);
    at += 2 + len;
  }
  if (ints.length !== 2) fail();
  return Buffer.concat(ints.map((v) => Buffer.concat([Buffer.alloc(32 - v.length), v])));
}
