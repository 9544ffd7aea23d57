import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { byCodeUnit, canonicalQuery, percentEncode } from '../../src/http/auth/canonical.js';
import { ApiError } from '../../src/http/error-catalog.js';
import { buildRpcRequest, isFormBody, mergeParams, parsePairs } from '../../src/http/rpc-request.js';

function apiErrorOf(fn: () => unknown): ApiError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ApiError) return err;
    throw err;
  }
  throw new Error('expected an ApiError, but the call succeeded');
}

describe('percentEncode', () => {
  it.each([
    [' ', '%20'],
    ['*', '%2A'],
    ['~', '~'],
    ['!', '%21'],
    ["'", '%27'],
    ['(', '%28'],
    [')', '%29'],
    ['+', '%2B'],
    ['/', '%2F'],
    ['=', '%3D'],
    ['&', '%26'],
    ['%', '%25'],
    [':', '%3A'],
    ['-_.', '-_.'],
    ['AZaz09', 'AZaz09'],
  ])('when %j is encoded, then it becomes %j', (input, encoded) => {
    expect(percentEncode(input)).toBe(encoded);
  });

  it.each([
    ['é', '%C3%A9'],
    ['中文', '%E4%B8%AD%E6%96%87'],
    ['😀', '%F0%9F%98%80'],
  ])('when the multibyte %j is encoded, then its UTF-8 bytes are escaped in upper-case hex', (input, encoded) => {
    expect(percentEncode(input)).toBe(encoded);
  });

  it("when the value the SDK capture used (alias/my key*(x)!'~) is encoded, then it matches the RFC 3986 form", () => {
    expect(percentEncode("alias/my key*(x)!'~")).toBe('alias%2Fmy%20key%2A%28x%29%21%27~');
  });

  it('when any string is encoded, then only unreserved characters and %XX escapes remain, and it decodes back', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme' }), (s) => {
        const encoded = percentEncode(s);
        expect(encoded).toMatch(/^(?:[A-Za-z0-9\-_.~]|%[0-9A-F]{2})*$/);
        expect(decodeURIComponent(encoded)).toBe(s);
      }),
    );
  });

  it('when any string is encoded, then the fast path gives what encodeURIComponent plus the ! \' ( ) * escapes give', () => {
    const reference = (s: string): string => encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
    const ascii = fc.string({ unit: fc.constantFrom(...'Az09-_.~!\'()* %+=&/'.split('')) });
    fc.assert(
      fc.property(fc.oneof(ascii, fc.string({ unit: 'grapheme' })), (s) => {
        expect(percentEncode(s)).toBe(reference(s));
      }),
    );
  });
});

describe('canonicalQuery', () => {
  it('when pairs come in wire order, then they are sorted by key in code-unit order (upper case before lower case)', () => {
    expect(
      canonicalQuery([
        ['b', '1'],
        ['a', '2'],
        ['B', '3'],
        ['A_b', '4'],
        ['Ab', '5'],
      ]),
    ).toBe('A_b=4&Ab=5&B=3&a=2&b=1');
  });

  it('when keys and values need escaping, then both sides are percent-encoded', () => {
    expect(canonicalQuery([['Key Name', 'a b*c']])).toBe('Key%20Name=a%20b%2Ac');
  });

  it('when a value is empty, then the pair keeps its "="', () => {
    expect(canonicalQuery([['Flag', '']])).toBe('Flag=');
  });

  it('when there are no pairs, then it is the empty string', () => {
    expect(canonicalQuery([])).toBe('');
  });

  it('when keys are compared, then byCodeUnit orders like the default Array sort', () => {
    fc.assert(
      fc.property(fc.array(fc.string()), (keys) => {
        expect([...keys].sort(byCodeUnit)).toEqual([...keys].sort());
      }),
    );
  });
});

describe('parsePairs', () => {
  it('when values are percent-encoded, then they are decoded and wire order is kept', () => {
    expect(parsePairs('Z=1&A=%2F%3D&M=%E4%B8%AD')).toEqual([
      ['Z', '1'],
      ['A', '/='],
      ['M', '中'],
    ]);
  });

  it('when a value has "+", then it is a space, while %2B is a plus', () => {
    expect(parsePairs('a=x+y&b=x%2By&c+d=1')).toEqual([
      ['a', 'x y'],
      ['b', 'x+y'],
      ['c d', '1'],
    ]);
  });

  it('when a part has no "=", then it is a key with an empty value', () => {
    expect(parsePairs('Flag&a=1')).toEqual([
      ['Flag', ''],
      ['a', '1'],
    ]);
  });

  it('when a value contains "=", then only the first one splits', () => {
    expect(parsePairs('Digest=AA==')).toEqual([['Digest', 'AA==']]);
  });

  it('when any name and value are parsed, then they are what decodeURIComponent after + → space gives', () => {
    const reference = (s: string): string => decodeURIComponent(s.replace(/\+/g, ' '));
    const unit = fc.constantFrom('a', 'Z', '0', '-', '_', '.', '~', '+', ' ', '%', '%2B', '%20', '%41', '%E4%B8%AD', '%E4', 'zz');
    fc.assert(
      fc.property(fc.string({ unit }), fc.string({ unit }), (k, v) => {
        let expected: Array<[string, string]>;
        try {
          expected = [[reference(`k${k}`), reference(v)]];
        } catch {
          expect(() => parsePairs(`k${k}=${v}`)).toThrow(ApiError);
          return;
        }
        expect(parsePairs(`k${k}=${v}`)).toEqual(expected);
      }),
    );
  });

  it('when the text has empty parts, then they are skipped', () => {
    expect(parsePairs('&&a=1&&')).toEqual([['a', '1']]);
    expect(parsePairs('')).toEqual([]);
  });

  it.each(['a=%', 'a=%zz', 'a=%E4%B8', '%ZZ=1', 'a=%ED%A0%80'])(
    'when %j has malformed percent-encoding, then it throws ApiError InvalidParameter',
    (text) => {
      const err = apiErrorOf(() => parsePairs(text));
      expect(err.code).toBe('InvalidParameter');
      expect(err.status).toBe(400);
    },
  );
});

describe('mergeParams', () => {
  it('when query and body have different names, then their union is returned', () => {
    expect({ ...mergeParams([['a', '1']], [['b', '2']]) }).toEqual({ a: '1', b: '2' });
  });

  it('when a name is given twice in one list, then it throws InvalidParameter naming it', () => {
    const err = apiErrorOf(() => mergeParams([['KeyId', 'k1'], ['KeyId', 'k2']]));
    expect(err.code).toBe('InvalidParameter');
    expect(err.message).toContain('KeyId');
  });

  it('when a name is in both query and body, then it throws InvalidParameter', () => {
    expect(apiErrorOf(() => mergeParams([['Signature', 'x']], [['Signature', 'y']])).code).toBe('InvalidParameter');
  });

  it('when a name is a prototype property such as constructor or __proto__, then it is an ordinary parameter', () => {
    const params = mergeParams([
      ['constructor', 'c'],
      ['__proto__', 'p'],
      ['toString', 't'],
    ]);
    expect(params.constructor).toBe('c');
    expect(params.toString).toBe('t');
    expect(Object.keys(params)).toEqual(['constructor', '__proto__', 'toString']);
  });
});

describe('buildRpcRequest', () => {
  it('when the body is a form, then its pairs join the query pairs in params', () => {
    const req = buildRpcRequest({
      method: 'post',
      url: '/?KeyId=k&Flag',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded; charset=UTF-8', 'X-Acs-Action': ['A', 'B'] },
      rawBody: Buffer.from('Digest=AA%3D%3D'),
    });
    expect(req.method).toBe('POST');
    expect(req.path).toBe('/');
    expect(req.queryPairs).toEqual([
      ['KeyId', 'k'],
      ['Flag', ''],
    ]);
    expect(req.bodyPairs).toEqual([['Digest', 'AA==']]);
    expect({ ...req.params }).toEqual({ KeyId: 'k', Flag: '', Digest: 'AA==' });
    expect(req.headers['content-type']).toBe('application/x-www-form-urlencoded; charset=UTF-8');
    expect(req.headers['x-acs-action']).toBe('A,B');
  });

  it('when the body is not a form, then it gives no parameters', () => {
    const req = buildRpcRequest({ method: 'POST', url: '/', headers: { 'content-type': 'application/json' }, rawBody: Buffer.from('a=1') });
    expect(req.bodyPairs).toEqual([]);
    expect(req.rawBody.toString()).toBe('a=1');
  });

  it('when the same name is in the query and the form body, then it throws InvalidParameter', () => {
    const build = () =>
      buildRpcRequest({
        method: 'POST',
        url: '/?KeyId=a',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        rawBody: Buffer.from('KeyId=b'),
      });
    expect(apiErrorOf(build).code).toBe('InvalidParameter');
  });

  it.each([
    ['application/x-www-form-urlencoded', true],
    ['Application/X-WWW-Form-Urlencoded;charset=utf-8', true],
    ['application/json', false],
    [undefined, false],
  ])('when the content type is %j, then isFormBody is %s', (type, form) => {
    expect(isFormBody(type)).toBe(form);
  });
});
