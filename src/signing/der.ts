/**
 * ECDSA signature encodings: PKCS#11 tokens return r‖s (IEEE P1363), clients expect DER
 * `SEQUENCE { INTEGER r, INTEGER s }`. Integers are minimal, with a 0x00 prefix when the top bit is set.
 */
function derInteger(bytes: Buffer): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  let v = bytes.subarray(i);
  if (v.length === 0) v = Buffer.from([0]);
  if (v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
  return Buffer.concat([Buffer.from([0x02]), derLength(v.length), v]);
}

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  if (n < 0x100) return Buffer.from([0x81, n]);
  return Buffer.from([0x82, n >> 8, n & 0xff]);
}

export function p1363ToDer(signature: Buffer): Buffer {
  if (signature.length === 0 || signature.length % 2 !== 0) {
    throw new RangeError(`an r||s signature has an even, non-zero length (got ${signature.length})`);
  }
  const half = signature.length / 2;
  const body = Buffer.concat([derInteger(signature.subarray(0, half)), derInteger(signature.subarray(half))]);
  return Buffer.concat([Buffer.from([0x30]), derLength(body.length), body]);
}

/** Reads a DER length at `at`; undefined when it is not a minimal definite length inside `buf`. */
function readLength(buf: Buffer, at: number): { length: number; next: number } | undefined {
  const first = buf[at];
  if (first === undefined) return undefined;
  if (first < 0x80) return { length: first, next: at + 1 };
  const count = first & 0x7f;
  if (count === 0 || count > 2 || at + 1 + count > buf.length) return undefined;
  let length = 0;
  for (let i = 0; i < count; i++) length = (length << 8) | buf[at + 1 + i]!;
  if (length < 0x80 || (count === 2 && length < 0x100)) return undefined;
  return { length, next: at + 1 + count };
}

/**
 * DER `SEQUENCE { INTEGER r, INTEGER s }` → r‖s, each left-padded to `half` bytes, for C_Verify.
 * Undefined for anything that is not a well-formed, positive pair that fits: a malformed signature is simply
 * not a valid one.
 */
export function derToP1363(der: Buffer, half: number): Buffer | undefined {
  if (der[0] !== 0x30) return undefined;
  const seq = readLength(der, 1);
  if (!seq || seq.next + seq.length !== der.length) return undefined;
  const parts: Buffer[] = [];
  let at = seq.next;
  for (let i = 0; i < 2; i++) {
    if (der[at] !== 0x02) return undefined;
    const int = readLength(der, at + 1);
    if (!int || int.length === 0 || int.next + int.length > der.length) return undefined;
    let value = der.subarray(int.next, int.next + int.length);
    if (value[0]! & 0x80) return undefined; // negative
    if (value.length > 1 && value[0] === 0 && !(value[1]! & 0x80)) return undefined; // not minimal
    if (value[0] === 0 && value.length > 1) value = value.subarray(1);
    if (value.length > half) return undefined;
    parts.push(Buffer.concat([Buffer.alloc(half - value.length), value]));
    at = int.next + int.length;
  }
  return at === der.length ? Buffer.concat(parts) : undefined;
}
