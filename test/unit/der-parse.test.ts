import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { derToP1363, p1363ToDer } from '../../src/signing/der.js';

describe('derToP1363 (DER ECDSA signatures from clients → r‖s for C_Verify)', () => {
  it('when any r‖s is encoded to DER and parsed back, then the same r‖s comes out', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), (bytes) => {
        const rs = Buffer.from(bytes);
        expect(derToP1363(p1363ToDer(rs), 32)).toEqual(rs);
      }),
    );
  });

  const cases: Array<[string, string]> = [
    ['not a SEQUENCE', '310602010102010'],
    ['a length running past the end', '3007020101020101'],
    ['trailing bytes after the SEQUENCE', '30060201010201010000'],
    ['a negative r', '3006020181020101'],
    ['a non-minimal r (needless leading zero)', '300702020001020101'],
    ['an empty INTEGER', '30050200020101'],
    ['a third INTEGER', '3009020101020101020101'],
    ['a non-minimal long length', '30810602010102010100'],
    ['an r wider than the curve', `30260221${'7f'.repeat(33)}020101`],
  ];
  for (const [what, hex] of cases) {
    it(`when the DER has ${what}, then it is not a signature (undefined)`, () => {
      expect(derToP1363(Buffer.from(hex.length % 2 ? hex + '0' : hex, 'hex'), 32)).toBeUndefined();
    });
  }

  it('when r has its top bit set and a 0x00 prefix, then the prefix is dropped and the value padded', () => {
    const der = Buffer.from(`3026022100${'80'.repeat(32)}020101`, 'hex');
    expect(derToP1363(der, 32)).toEqual(Buffer.concat([Buffer.alloc(32, 0x80), Buffer.alloc(31), Buffer.from([1])]));
  });
});
