import { createHmac } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { authenticate, type AuthOptions } from '../../src/http/auth/authenticate.js';
import { CredentialStore, type AccessKey } from '../../src/http/auth/credentials.js';
import { ReplayCheck, ReplayGuard } from '../../src/http/auth/replay-guard.js';
import { ApiError, type ErrorCode } from '../../src/http/error-catalog.js';
import { buildRpcRequest, parsePairs, type RpcRequest } from '../../src/http/rpc-request.js';

/**
 * Requests captured from the official Alibaba Cloud SDKs (AccessKeyId `testid`, secret `testsecret`).
 * Each one must authenticate at its own capture time, and any change to what it signs must be refused.
 */
interface Capture {
  name: string;
  method: string;
  url: string;
  headers: Record<string, string>;
  body: string;
}

const CAPTURES_DIR = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/wire-captures');
const captures: Capture[] = readdirSync(CAPTURES_DIR)
  .filter((f) => /^\d\d\.json$/.test(f))
  .sort()
  .map((f) => {
    const c = JSON.parse(readFileSync(join(CAPTURES_DIR, f), 'utf8')) as Omit<Capture, 'name'>;
    return { name: f.replace('.json', ''), method: c.method, url: c.url, headers: c.headers, body: c.body };
  });

const WINDOW_MS = 15 * 60 * 1000;
const TESTID: AccessKey = { accessKeyId: 'testid', secrets: ['testsecret'], account: 'default', enabled: true };
/** Parameters every V1 request carries; the others are the operation's own ("business") parameters. */
const COMMON = new Set(['Action', 'Format', 'Version', 'Timestamp', 'SignatureNonce', 'SignatureMethod', 'SignatureVersion', 'AccessKeyId', 'Signature']);

const isV3 = (c: Capture): boolean => c.headers.authorization !== undefined;

function queryOf(url: string): string {
  const qi = url.indexOf('?');
  return qi < 0 ? '' : url.slice(qi + 1);
}

/** The capture time: the V3 `x-acs-date` header, else the V1 `Timestamp` parameter (query or form body). */
function captureTime(c: Capture): number {
  const text = isV3(c)
    ? c.headers['x-acs-date']
    : [...parsePairs(queryOf(c.url)), ...parsePairs(c.body)].find(([k]) => k === 'Timestamp')?.[1];
  if (!text) throw new Error(`capture ${c.name} has no timestamp`);
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new Error(`capture ${c.name} has an unreadable timestamp ${text}`);
  return t;
}

function requestOf(c: Capture, change: Partial<Pick<Capture, 'url' | 'headers' | 'body'>> = {}): RpcRequest {
  return buildRpcRequest({
    method: c.method,
    url: change.url ?? c.url,
    headers: change.headers ?? c.headers,
    rawBody: Buffer.from(change.body ?? c.body),
  });
}

function options(c: Capture, change: Partial<AuthOptions> & { keys?: AccessKey[] } = {}): AuthOptions {
  return {
    credentials: new CredentialStore(change.keys ?? [TESTID]),
    timestampWindowMs: WINDOW_MS,
    now: change.now ?? (() => captureTime(c)),
  };
}

/** Runs `fn` and returns the ApiError code it throws (fails the test when it throws nothing or something else). */
function codeOf(fn: () => unknown): ErrorCode {
  try {
    fn();
  } catch (err) {
    if (err instanceof ApiError) return err.code;
    throw err;
  }
  throw new Error('expected an ApiError, but the call succeeded');
}

/** The message of the ApiError `fn` throws. */
function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof ApiError) return err.message;
    throw err;
  }
  throw new Error('expected an ApiError, but the call succeeded');
}

/** The signature the SDK sent: V3 in the Authorization header, V1 as the Signature parameter. */
function sentSignature(c: Capture): string {
  if (isV3(c)) return /Signature=([0-9a-f]+)/.exec(c.headers.authorization!)![1]!;
  return [...parsePairs(queryOf(c.url)), ...parsePairs(c.body)].find(([k]) => k === 'Signature')![1];
}

/** The SDK's signature over `stringToSign` with the capture's secret, written by this test (not by the gateway's code). */
function signatureOf(c: Capture, stringToSign: string): string {
  return isV3(c) ? createHmac('sha256', 'testsecret').update(stringToSign).digest('hex') : createHmac('sha1', 'testsecret&').update(stringToSign).digest('base64');
}

/** A different character at the same place: the value keeps its length and shape. */
const otherChar = (ch: string): string => (ch === 'A' ? 'B' : 'A');

function changeOneChar(value: string): string {
  if (value === '') return 'A';
  return otherChar(value[0]!) + value.slice(1);
}

/** Rewrites the value of `name` inside an `a=1&b=2` text, leaving every other pair byte for byte. */
function rewritePair(text: string, name: string, change: (value: string) => string): string {
  let done = false;
  const out = text.split('&').map((part) => {
    const eq = part.indexOf('=');
    if (done || eq < 0) return part;
    const [[key, value]] = parsePairs(part) as [[string, string]];
    if (key !== name) return part;
    done = true;
    return `${part.slice(0, eq)}=${encodeURIComponent(change(value))}`;
  });
  if (!done) throw new Error(`no parameter ${name}`);
  return out.join('&');
}

/** Changes one character of the first business parameter (query first, then form body). */
function tamperBusinessParameter(c: Capture): { url?: string; body?: string; headers?: Record<string, string> } | undefined {
  const query = queryOf(c.url);
  const inQuery = parsePairs(query).find(([k]) => !COMMON.has(k));
  if (inQuery) return { url: `${c.url.slice(0, c.url.indexOf('?') + 1)}${rewritePair(query, inQuery[0], changeOneChar)}` };
  const formBody = (c.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded');
  const inBody = formBody ? parsePairs(c.body).find(([k]) => !COMMON.has(k)) : undefined;
  if (inBody) return { body: rewritePair(c.body, inBody[0], changeOneChar) };
  return undefined;
}

function withExtraParameter(url: string): string {
  return url.includes('?') ? `${url}&Extra=1` : `${url}?Extra=1`;
}

describe('wire captures from the official SDKs', () => {
  it('when the fixtures are loaded, then there are 32 captures of both schemes', () => {
    expect(captures).toHaveLength(32);
    expect(captures.some(isV3)).toBe(true);
    expect(captures.some((c) => !isV3(c))).toBe(true);
  });

  describe.each(captures)('capture $name', (c) => {
    const scheme = isV3(c) ? 'V3' : 'V1';

    it(`when authenticated at its own capture time, then it returns the caller testid with scheme ${scheme}`, () => {
      expect(authenticate(requestOf(c), options(c))).toEqual({ accessKeyId: 'testid', account: 'default', scheme, nonce: expect.stringMatching(/^[0-9a-f]{32,64}$/), nonceKeepMs: expect.any(Number) });
    });

    it('when "&Extra=1" is appended to the url, then it fails with SignatureDoesNotMatch', () => {
      expect(codeOf(() => authenticate(requestOf(c, { url: withExtraParameter(c.url) }), options(c)))).toBe('SignatureDoesNotMatch');
    });

    const tampered = tamperBusinessParameter(c);
    if (tampered) {
      it('when one character of a business parameter value changes, then it fails with SignatureDoesNotMatch', () => {
        expect(codeOf(() => authenticate(requestOf(c, tampered), options(c)))).toBe('SignatureDoesNotMatch');
      });
    } else {
      // Only V3 captures can carry no parameter at all: the operation is then named by the signed headers.
      it('when it has no business parameter and the signed x-acs-action header changes, then it fails with SignatureDoesNotMatch', () => {
        expect(isV3(c)).toBe(true);
        const headers = { ...c.headers, 'x-acs-action': changeOneChar(c.headers['x-acs-action'] ?? '') };
        expect(codeOf(() => authenticate(requestOf(c, { headers }), options(c)))).toBe('SignatureDoesNotMatch');
      });
    }

    if (isV3(c) && c.body.length > 0) {
      it('when the V3 body changes, then it fails with SignatureDoesNotMatch', () => {
        const body = changeOneChar(c.body);
        expect(codeOf(() => authenticate(requestOf(c, { body }), options(c)))).toBe('SignatureDoesNotMatch');
      });
    }

    it('when the same request is authenticated and replay-checked twice with the same guard, then the second check fails with SignatureNonceUsed', async () => {
      const replay = new ReplayCheck(new ReplayGuard(2 * WINDOW_MS));
      await replay.check(authenticate(requestOf(c), options(c)), false).settled;
      const again = authenticate(requestOf(c), options(c));
      expect(codeOf(() => replay.check(again, false))).toBe('SignatureNonceUsed');
    });

    it('when the gateway clock is 16 minutes after the capture, then it fails with InvalidTimeStamp.Expired', () => {
      const now = () => captureTime(c) + 16 * 60 * 1000;
      expect(codeOf(() => authenticate(requestOf(c), options(c, { now })))).toBe('InvalidTimeStamp.Expired');
    });

    it('when the gateway clock is 16 minutes before the capture, then it fails with InvalidTimeStamp.Expired', () => {
      const now = () => captureTime(c) - 16 * 60 * 1000;
      expect(codeOf(() => authenticate(requestOf(c), options(c, { now })))).toBe('InvalidTimeStamp.Expired');
    });

    it('when the gateway holds another secret for testid, then it fails with SignatureDoesNotMatch', () => {
      const keys = [{ ...TESTID, secrets: ['testsecreT'] }];
      expect(codeOf(() => authenticate(requestOf(c), options(c, { keys })))).toBe('SignatureDoesNotMatch');
    });

    it("when the gateway holds another secret, then the message's string to sign is exactly what the SDK signed (its signature with testsecret), and holds no secret", () => {
      const keys = [{ ...TESTID, secrets: ['gateway-only-secret'] }];
      const message = messageOf(() => authenticate(requestOf(c), options(c, { keys })));
      const prefix = 'Specified signature is not matched with our calculation. server string to sign is:';
      expect(message.startsWith(prefix)).toBe(true);
      // What the Python core SDK does with it: split at ':' and compare the second part with its own string to sign.
      const stringToSign = message.split(':')[1]!;
      expect(prefix + stringToSign).toBe(message);
      expect(signatureOf(c, stringToSign)).toBe(sentSignature(c));
      for (const secret of ['testsecret', 'gateway-only-secret']) expect(message).not.toContain(secret);
    });

    it('when the credential store does not know testid, then it fails with InvalidAccessKeyId.NotFound', () => {
      const keys = [{ ...TESTID, accessKeyId: 'otherid' }];
      expect(codeOf(() => authenticate(requestOf(c), options(c, { keys })))).toBe('InvalidAccessKeyId.NotFound');
    });

    it('when the access key testid is disabled, then it fails with Forbidden.AccessKey', () => {
      const keys = [{ ...TESTID, enabled: false }];
      expect(codeOf(() => authenticate(requestOf(c), options(c, { keys })))).toBe('Forbidden.AccessKey');
    });

    if (!isV3(c)) {
      it('when the V1 Signature parameter is removed, then it fails with IncompleteSignature', () => {
        const inQuery = parsePairs(queryOf(c.url)).some(([k]) => k === 'Signature');
        const drop = (text: string): string =>
          text
            .split('&')
            .filter((p) => !p.startsWith('Signature='))
            .join('&');
        const change = inQuery ? { url: `${c.url.slice(0, c.url.indexOf('?') + 1)}${drop(queryOf(c.url))}` } : { body: drop(c.body) };
        expect(codeOf(() => authenticate(requestOf(c, change), options(c)))).toBe('IncompleteSignature');
      });
    } else {
      it('when the V3 Authorization header is malformed, then it fails with IncompleteSignature', () => {
        const headers = { ...c.headers, authorization: c.headers.authorization!.replace('Credential=', 'Credentials=') };
        expect(codeOf(() => authenticate(requestOf(c, { headers }), options(c)))).toBe('IncompleteSignature');
      });

      it('when the V3 Authorization header is not ACS3-HMAC-SHA256, then it fails with IncompleteSignature', () => {
        const headers = { ...c.headers, authorization: c.headers.authorization!.replace('ACS3-HMAC-SHA256', 'ACS3-HMAC-SM3') };
        expect(codeOf(() => authenticate(requestOf(c, { headers }), options(c)))).toBe('IncompleteSignature');
      });

      it('when the V3 SignedHeaders omits x-acs-signature-nonce, then it fails with IncompleteSignature', () => {
        const authorization = c.headers.authorization!.replace(/;x-acs-signature-nonce(?=[;,])/, '');
        expect(authorization).not.toContain('x-acs-signature-nonce');
        const headers = { ...c.headers, authorization };
        expect(codeOf(() => authenticate(requestOf(c, { headers }), options(c)))).toBe('IncompleteSignature');
      });
    }
  });
});

describe('two live secrets per access key (rotation)', () => {
  for (const c of captures) {
    it(`when capture ${c.name} is checked against [old, new] or [new, old] secrets, then it authenticates either way`, () => {
      for (const secrets of [['rotated-away', 'testsecret'], ['testsecret', 'rotated-away']]) {
        expect(authenticate(requestOf(c), options(c, { keys: [{ ...TESTID, secrets }] })).accessKeyId).toBe('testid');
      }
    });
  }
});
