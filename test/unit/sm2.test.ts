import { generateKeyPairSync } from 'node:crypto';
import { createRequire } from 'node:module';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SM2_DEFAULT_USER_ID, sm2E, sm2Za } from '../../src/signing/sm2.js';

// Cross-checked against an independent implementation (sm-crypto-v2).
const smCrypto = createRequire(import.meta.url)('sm-crypto-v2') as {
  sm2: { generateKeyPairHex(): { publicKey: string }; getHash(hashHex: string, publicKey: string, userId?: string): number[] | string; getZ(publicKey: string, userId?: string): Uint8Array };
};

describe('SM2 Z_A and e', () => {
  it('when Z_A is computed for random keys, then it equals sm-crypto-v2’s', () => {
    fc.assert(
      fc.property(fc.integer(), () => {
        const { publicKey } = smCrypto.sm2.generateKeyPairHex();
        const point = Buffer.from(publicKey, 'hex');
        expect(sm2Za(point).toString('hex')).toBe(Buffer.from(smCrypto.sm2.getZ(publicKey)).toString('hex'));
      }),
      { numRuns: 20 },
    );
  });

  it('when a fixed key and message are given, then Z_A and e are the known answers', () => {
    // Public key = the SM2 generator point; answers computed once with sm-crypto-v2 and Node's SM3.
    const g = Buffer.from(
      '0432C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0',
      'hex',
    );
    const za = sm2Za(g);
    expect(za.toString('hex')).toBe('5b32bfe35482899b195d72c09d33ccdb465b2ded883240ff91f120a68bc91de8');
    expect(sm2E(za, Buffer.from('message digest')).toString('hex')).toBe('3f5f058176faaa6f757f5753d338c8e45b3589d4f05277ac8897d287393d795d');
  });

  it('when Node generates an SM2 key, then its point is accepted', () => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'SM2' });
    const spki = publicKey.export({ format: 'der', type: 'spki' });
    const point = spki.subarray(spki.length - 65);
    expect(sm2Za(point, SM2_DEFAULT_USER_ID)).toHaveLength(32);
  });

  it('when the point is not uncompressed, then it is refused', () => {
    expect(() => sm2Za(Buffer.alloc(33, 2))).toThrow(RangeError);
  });
});
