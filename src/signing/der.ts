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
