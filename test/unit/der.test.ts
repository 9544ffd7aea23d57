import { generateKeyPairSync, sign, verify } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { p1363ToDer } from '../../src/signing/der.js';

/** Reads `SEQUENCE { INTEGER r, INTEGER s }` back, checking every DER rule p1363ToDer must follow. */
function decodeDerSignature(der: Buffer): { r: bigint; s: bigint } {
  let at = 0;
  const byte = (): number => {
    if (at >= der.length) throw new Error('truncated DER');
    return der[at++]!;
  };
  const length = (): number => {
    const first = byte();
    if (first < 0x80) return first;
    const n = first & 0x7f;
    let len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | byte();
    if (len < 0x80) throw new Error('non-minimal DER length');
    return len;
  };
  const integer = (): bigint => {
    if (byte() !== 0x02) throw new Error('expected INTEGER');
    const len = length();
    const v = der.subarray(at, at + len);
    at += len;
    if (v.length !== len || len === 0) throw new Error('bad INTEGER length');
    if (v[0]! & 0x80) throw new Error('negative INTEGER');
    if (len > 1 && v[0] === 0 && !(v[1]! & 0x80)) throw new Error('non-minimal INTEGER');
    return BigInt(`0x${v.toString('hex')}`);
  };
  if (byte() !== 0x30) throw new Error('expected SEQUENCE');
  const seqLen = length();
  if (seqLen !== der.length - at) throw new Error('SEQUENCE length does not cover the rest');
  const r = integer();
  const s = integer();
  if (at !== der.length) throw new Error('trailing bytes');
  return { r, s };
}

const big = (b: Buffer): bigint => (b.length === 0 ? 0n : BigInt(`0x${b.toString('hex')}`));
const hex = (b: Buffer): string => b.toString('hex');

describe('p1363ToDer with real signatures', () => {
  describe.each(['P-256', 'secp256k1'])('curve %s', (namedCurve) => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve });

    it('when a random message is signed as r||s and converted, then the DER signature verifies and decodes to the same r and s', () => {
      fc.assert(
        fc.property(fc.uint8Array({ minLength: 0, maxLength: 512 }), (bytes) => {
          const msg = Buffer.from(bytes);
          const p1363 = sign('sha256', msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
          expect(p1363).toHaveLength(64);
          const der = p1363ToDer(p1363);
          expect(verify('sha256', msg, { key: publicKey, dsaEncoding: 'der' }, der)).toBe(true);
          const { r, s } = decodeDerSignature(der);
          expect(r).toBe(big(p1363.subarray(0, 32)));
          expect(s).toBe(big(p1363.subarray(32)));
        }),
        { numRuns: 200 },
      );
    });

    it('when Node signs in DER directly, then that signature decodes with the same rules the converter follows', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
          const der = sign('sha256', Buffer.from(bytes), { key: privateKey, dsaEncoding: 'der' });
          const { r, s } = decodeDerSignature(der);
          const p1363 = Buffer.from(r.toString(16).padStart(64, '0') + s.toString(16).padStart(64, '0'), 'hex');
          expect(p1363ToDer(p1363).equals(der)).toBe(true);
        }),
        { numRuns: 100 },
      );
    });
  });
});

describe('p1363ToDer with arbitrary r||s', () => {
  it('when any even-length r||s is converted, then the DER decodes back to the same integers', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 80 }), fc.uint8Array({ minLength: 160, maxLength: 160 }), (half, pool) => {
        const input = Buffer.from(pool.subarray(0, 2 * half));
        const { r, s } = decodeDerSignature(p1363ToDer(input));
        expect(r).toBe(big(input.subarray(0, half)));
        expect(s).toBe(big(input.subarray(half)));
      }),
    );
  });
});

describe('p1363ToDer edge cases', () => {
  const s32 = Buffer.alloc(32, 0x11);
  const S_DER = `0220${hex(s32)}`;

  it('when r has its top bit set, then r gets a 0x00 prefix', () => {
    const r = Buffer.alloc(32, 0xff);
    expect(hex(p1363ToDer(Buffer.concat([r, s32])))).toBe(`3045022100${hex(r)}${S_DER}`);
  });

  it('when r starts with zero bytes, then they are dropped', () => {
    const r = Buffer.concat([Buffer.from([0, 0]), Buffer.alloc(30, 0x22)]);
    expect(hex(p1363ToDer(Buffer.concat([r, s32])))).toBe(`3042021e${'22'.repeat(30)}${S_DER}`);
  });

  it('when r starts with a zero byte followed by a byte with the top bit set, then one 0x00 remains', () => {
    const r = Buffer.concat([Buffer.from([0]), Buffer.alloc(31, 0x80)]);
    expect(hex(p1363ToDer(Buffer.concat([r, s32])))).toBe(`30440220${hex(r)}${S_DER}`);
  });

  it('when r is zero, then it encodes as 02 01 00', () => {
    expect(hex(p1363ToDer(Buffer.concat([Buffer.alloc(32), s32])))).toBe(`3025020100${S_DER}`);
  });

  it('when r and s are both zero, then both encode as 02 01 00', () => {
    expect(hex(p1363ToDer(Buffer.alloc(64)))).toBe('3006020100020100');
  });

  it('when the body reaches 128 bytes (P-521 sized halves), then the SEQUENCE uses the long length form 81 xx', () => {
    const half = Buffer.alloc(66, 0x01);
    const der = p1363ToDer(Buffer.concat([half, half]));
    expect(hex(der.subarray(0, 3))).toBe('308188');
    expect(der).toHaveLength(3 + 2 * (2 + 66));
  });

  it('when the input has an odd length, then it throws RangeError', () => {
    expect(() => p1363ToDer(Buffer.alloc(63))).toThrow(RangeError);
  });

  it('when the input is empty, then it throws RangeError', () => {
    expect(() => p1363ToDer(Buffer.alloc(0))).toThrow(RangeError);
  });
});
