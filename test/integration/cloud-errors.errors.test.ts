import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { XMLParser } from 'fast-xml-parser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aliTimestamp, send, signV1, signV3, toQuery, v1Params, v1StringToSign, type RawResponse } from '../helpers/raw-client.js';
import { casClient, kmsClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Issue #19 (1, 2, 3, 5) and #18 (10): the error bodies the cloud sends, through the official clients and as raw V1 and
// V3 requests in JSON and XML. The cloud's texts are from its KMS error table and the bodies users quoted (API.md).

const RECOMMEND_BASE = 'https://docs.example.com/hsm-gateway/errors.md';
const WRONG_SECRET = 'not-the-secret-at-all';
const MISMATCH = 'Specified signature is not matched with our calculation. server string to sign is:';
const CLOUD_TEXT = {
  IllegalTimestamp: 'The input parameter "Timestamp" that is mandatory for processing this request is not supplied.',
  'InvalidTimeStamp.Expired': 'Specified time stamp or date value is expired.',
  SignatureNonceUsed: 'Specified signature nonce was used already.',
  'InvalidAccessKeyId.NotFound': 'Specified access key is not found.',
} as const;
const REQUEST_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let gw: TestGateway;
let creds: Credentials;

beforeAll(async () => {
  gw = await startTestGateway({
    editConfig: (config) => {
      config.errors.recommendBaseUrl = RECOMMEND_BASE;
    },
  });
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

const ecKey = () => gw.demo.keys.find((k) => k.alias === 'alias/demo-ec-p256')!;
const business = (keyId = ecKey().keyId): Record<string, string> => ({
  KeyId: keyId,
  KeyVersionId: ecKey().keyVersionId,
  Algorithm: 'ECDSA_SHA_256',
  Digest: createHash('sha256').update('x').digest('base64'),
});
const minutesFromNow = (m: number): string => aliTimestamp(new Date(Date.now() + m * 60_000));

interface ErrorFields {
  RequestId: string;
  HostId: string;
  Code: string;
  Message: string;
  Recommend: string;
}

/** Strict XML 1.0, as Python reads it (expat): the complaint was that it refused control characters. */
function pythonParsesXml(text: string): boolean {
  try {
    execFileSync('python3', ['-c', 'import sys, xml.dom.minidom; xml.dom.minidom.parseString(sys.stdin.buffer.read())'], { input: text, stdio: ['pipe', 'ignore', 'ignore'] });
    return true;
  } catch {
    return false;
  }
}

/** The error fields of a raw answer, JSON or XML (the XML one must be a document a strict parser reads). */
function fieldsOf(r: RawResponse, format: 'JSON' | 'XML'): ErrorFields {
  if (format === 'JSON') {
    expect(r.headers.get('content-type')).toMatch(/^application\/json/);
    return r.json as unknown as ErrorFields;
  }
  expect(r.headers.get('content-type')).toMatch(/^text\/xml/);
  expect(r.text).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?><Error><RequestId>.*<\/RequestId><HostId>.*<\/HostId><Code>.*<\/Code><Message>.*<\/Message><Recommend>.*<\/Recommend><\/Error>$/s);
  expect(pythonParsesXml(r.text), r.text).toBe(true);
  return new XMLParser({ parseTagValue: false, trimValues: false }).parse(r.text).Error as ErrorFields;
}

/** Status, Code, Message, Recommend, RequestId (body and header), HostId; never a secret. */
function expectCloudError(r: RawResponse, format: 'JSON' | 'XML', status: number, code: string, message: string | RegExp): ErrorFields {
  expect(r.status).toBe(status);
  const body = fieldsOf(r, format);
  expect(body.Code).toBe(code);
  if (typeof message === 'string') expect(body.Message).toBe(message);
  else expect(body.Message).toMatch(message);
  expect(body.Recommend).toBe(`${RECOMMEND_BASE}#${code.toLowerCase().replace(/\./g, '')}`);
  expect(body.RequestId).toMatch(REQUEST_ID);
  expect(body.RequestId).toBe(r.headers.get('x-acs-request-id'));
  expect(body.HostId).toBe(gw.endpoint);
  expect(r.text).not.toContain(gw.secret);
  expect(r.text).not.toContain(WRONG_SECRET);
  return body;
}

/** What a raw request varies: the time it claims (null: none), its nonce, secret, access key, parameters. */
interface Variant {
  timestamp?: string | null;
  nonce?: string;
  secret?: string;
  accessKeyId?: string;
  params?: Record<string, string>;
}

/** A hand-signed AsymmetricSign in either scheme; `stringToSign` is what this client signed. */
function rawRequest(scheme: 'V1' | 'V3', format: 'JSON' | 'XML', v: Variant = {}): { url: string; init: RequestInit; go: () => Promise<RawResponse>; stringToSign: string } {
  const accessKeyId = v.accessKeyId ?? gw.demo.accessKeyId;
  const secret = v.secret ?? gw.secret;
  const params = { ...(v.params ?? business()), Format: format };
  if (scheme === 'V1') {
    const p = v1Params(accessKeyId, params, { ...(v.nonce ? { SignatureNonce: v.nonce } : {}), ...(typeof v.timestamp === 'string' ? { Timestamp: v.timestamp } : {}) });
    if (v.timestamp === null) delete p.Timestamp;
    const url = `${gw.url}/?${toQuery(signV1(p, secret))}`;
    return { url, init: {}, go: () => send(url), stringToSign: v1StringToSign(p) };
  }
  const overrides = { ...(v.nonce ? { 'x-acs-signature-nonce': v.nonce } : {}), ...(v.timestamp !== undefined ? { 'x-acs-date': v.timestamp ?? undefined } : {}) };
  const req = signV3({ url: gw.url, host: gw.endpoint }, accessKeyId, secret, 'AsymmetricSign', '2016-01-20', params, overrides);
  const init = { method: 'POST', headers: req.headers };
  return { url: req.url, init, go: () => send(req.url, init), stringToSign: req.stringToSign };
}

describe.each([
  ['V1', 'JSON'],
  ['V1', 'XML'],
  ['V3', 'JSON'],
  ['V3', 'XML'],
] as const)('raw %s requests, %s answers', (scheme, format) => {
  it('when the request is signed right, then it signs (the raw client is sound)', async () => {
    const r = await rawRequest(scheme, format).go();
    expect(r.status, r.text).toBe(200);
  });

  it('when the secret is wrong, then it is 400 SignatureDoesNotMatch ending in exactly the string the client signed (what the Python core SDK compares)', async () => {
    const { go, stringToSign } = rawRequest(scheme, format, { secret: WRONG_SECRET });
    const body = expectCloudError(await go(), format, 400, 'SignatureDoesNotMatch', `${MISMATCH}${stringToSign}`);
    // aliyunsdkcore/client.py: `if string_to_sign == server_error_message.split(':')[1]` → InvalidAccessKeySecret.
    expect(body.Message.split(':')[1]).toBe(stringToSign);
  });

  it('when a parameter is changed after signing, then the string to sign is the changed request’s, not the client’s (not a wrong-secret case)', async () => {
    const nonce = randomBytes(16).toString('hex');
    const timestamp = aliTimestamp();
    const signed = rawRequest(scheme, format, { nonce, timestamp });
    const changed = rawRequest(scheme, format, { nonce, timestamp, params: business('alias/demo-ec-p256') });
    // The first request's signature on the second one's parameters: what a re-encoding proxy does.
    const [url, query] = [signed.url.slice(0, signed.url.indexOf('?')), changed.url.slice(changed.url.indexOf('?'))];
    const r = await send(`${url}${scheme === 'V1' ? query.replace(/Signature=[^&]*/, signed.url.match(/Signature=[^&]*/)![0]) : query}`, signed.init);
    const body = expectCloudError(r, format, 400, 'SignatureDoesNotMatch', `${MISMATCH}${changed.stringToSign}`);
    expect(body.Message.split(':')[1]).not.toBe(signed.stringToSign);
  });

  it('when the timestamp is 20 minutes old, then it is 400 InvalidTimeStamp.Expired in the cloud’s words', async () => {
    const r = await rawRequest(scheme, format, { timestamp: minutesFromNow(-20) }).go();
    expectCloudError(r, format, 400, 'InvalidTimeStamp.Expired', CLOUD_TEXT['InvalidTimeStamp.Expired']);
  });

  it('when the timestamp is 20 minutes ahead, then it is 400 InvalidTimeStamp.Expired too', async () => {
    const r = await rawRequest(scheme, format, { timestamp: minutesFromNow(20) }).go();
    expectCloudError(r, format, 400, 'InvalidTimeStamp.Expired', CLOUD_TEXT['InvalidTimeStamp.Expired']);
  });

  it('when the timestamp is not a timestamp, then it is 400 IllegalTimestamp in the cloud’s words', async () => {
    const r = await rawRequest(scheme, format, { timestamp: 'yesterday' }).go();
    expectCloudError(r, format, 400, 'IllegalTimestamp', CLOUD_TEXT.IllegalTimestamp);
  });

  it('when the timestamp is missing, then it is 400 IllegalTimestamp', async () => {
    const r = await rawRequest(scheme, format, { timestamp: null }).go();
    expectCloudError(r, format, 400, 'IllegalTimestamp', CLOUD_TEXT.IllegalTimestamp);
  });

  it('when the nonce is replayed, then the second is 400 SignatureNonceUsed in the cloud’s words', async () => {
    const nonce = randomBytes(16).toString('hex');
    expect((await rawRequest(scheme, format, { nonce }).go()).status).toBe(200);
    expectCloudError(await rawRequest(scheme, format, { nonce }).go(), format, 400, 'SignatureNonceUsed', CLOUD_TEXT.SignatureNonceUsed);
  });

  it('when the AccessKeyId is unknown, then it is 404 InvalidAccessKeyId.NotFound in the cloud’s words', async () => {
    const r = await rawRequest(scheme, format, { accessKeyId: 'LTAInobodynobodynob' }).go();
    expectCloudError(r, format, 404, 'InvalidAccessKeyId.NotFound', CLOUD_TEXT['InvalidAccessKeyId.NotFound']);
  });

  it('when the alias is unknown and holds control characters, then the answer names it and stays well-formed', async () => {
    const alias = 'alias/no\u0001pe\u001f\u0000';
    const r = await rawRequest(scheme, format, { params: business(alias) }).go();
    const body = expectCloudError(r, format, 404, 'Forbidden.AliasNotFound', /^The specified Alias is not found: /);
    expect(body.Message).toContain(format === 'XML' ? 'alias/no\\u0001pe\\u001F\\u0000' : alias);
  });
});

describe('XML success bodies that echo client text', () => {
  it('when CreateKey (XML) gets a Description holding control characters, then its answer echoes it and is still a document Python reads', async () => {
    const key = rawRequest('V1', 'XML', { params: { Action: 'CreateKey', KeySpec: 'EC_P256', KeyUsage: 'SIGN/VERIFY', Description: 'ctl\u0002char' } });
    const created = await key.go();
    expect(created.status, created.text).toBe(200);
    expect(pythonParsesXml(created.text), created.text).toBe(true);
    expect(created.text).toContain('ctl\\u0002char');
  });
});

describe('through the official clients', () => {
  const wrong = (): Credentials => ({ ...creds, accessKeySecret: WRONG_SECRET });
  const k = () => ecKey();
  const kmsQuery = () => ({ KeyId: k().keyId, KeyVersionId: k().keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: createHash('sha256').update('x').digest('base64') });

  /** The error a call raised, in the clients' common shape (code, statusCode or message, data = the body). */
  async function raised(call: () => Promise<unknown>): Promise<{ code: string; message: string; statusCode?: number; data: ErrorFields & { statusCode?: number } }> {
    try {
      await call();
    } catch (err) {
      const e = err as { code: string; message: string; statusCode?: number; data: ErrorFields };
      expect(JSON.stringify(e.data)).not.toContain(gw.secret);
      expect(JSON.stringify(e.data)).not.toContain(WRONG_SECRET);
      return e;
    }
    throw new Error('the call succeeded but should have failed');
  }

  function expectBody(data: ErrorFields, code: string, message: string | RegExp): void {
    expect(data.Code).toBe(code);
    if (typeof message === 'string') expect(data.Message).toBe(message);
    else expect(data.Message).toMatch(message);
    expect(data.Recommend).toBe(`${RECOMMEND_BASE}#${code.toLowerCase().replace(/\./g, '')}`);
    expect(data.RequestId).toMatch(REQUEST_ID);
  }

  /** V1: the string to sign holds the client's parameters (AccessKeyId included), never its secret. */
  const V1_MISMATCH = new RegExp(`^${MISMATCH.replace(/[.]/g, '\\.')}(GET|POST)&%2F&[^:]*AccessKeyId%3D${'LTAI'}`);
  const V3_MISMATCH = new RegExp(`^${MISMATCH.replace(/[.]/g, '\\.')}ACS3-HMAC-SHA256\\n[0-9a-f]{64}$`);

  it('when @alicloud/kms20160120 (V1) signs with a wrong secret, then it raises SignatureDoesNotMatch, HTTP 400, with the string to sign', async () => {
    const e = await raised(() => kmsClient(wrong()).asymmetricSign({ keyId: k().keyId, keyVersionId: k().keyVersionId, algorithm: 'ECDSA_SHA_256', digest: kmsQuery().Digest }));
    expect(e.code).toBe('SignatureDoesNotMatchError');
    expect(e.message).toContain('code: 400');
    expectBody(e.data, 'SignatureDoesNotMatch', V1_MISMATCH);
    expect(decodeURIComponent(decodeURIComponent(e.data.Message.split(':')[1]!))).toContain('Action=AsymmetricSign');
  });

  it('when @alicloud/openapi-client signs V3 with a wrong secret, then SignatureDoesNotMatch, HTTP 400, ends in the ACS3 string to sign', async () => {
    const e = await raised(() => openApiCall(wrong(), 'AsymmetricSign', '2016-01-20', kmsQuery()));
    expect(e.code).toBe('SignatureDoesNotMatch');
    expect(e.data.statusCode ?? e.statusCode).toBe(400);
    expectBody(e.data, 'SignatureDoesNotMatch', V3_MISMATCH);
  });

  it('when @alicloud/cas20200407 signs (V3, and V1) with a wrong secret, then SignatureDoesNotMatch, HTTP 400', async () => {
    const cert = gw.demo.certificates.find((c) => c.keySpec === 'EC_P256')!;
    const req = { certIdentifier: cert.casIdentifier, message: 'hello', messageType: 'RAW', signingAlgorithm: 'SHA256withECDSA' };
    const v3 = await raised(() => casClient(wrong()).sign(req));
    expect(v3.statusCode).toBe(400);
    expectBody(v3.data, 'SignatureDoesNotMatch', V3_MISMATCH);
    const v1 = await raised(() => casClient(wrong(), { v1: true }).sign(req));
    expect(v1.statusCode).toBe(400);
    expectBody(v1.data, 'SignatureDoesNotMatch', V1_MISMATCH);
  });

  describe.each([
    ['V1', true],
    ['V3', false],
  ] as const)('@alicloud/openapi-client, %s, with the request time set through globalParameters', (_scheme, v1) => {
    const at = (timestamp: string) => (v1 ? { queries: { Timestamp: timestamp } } : { headers: { 'x-acs-date': timestamp } });
    const call = (globalParameters: { queries?: Record<string, string>; headers?: Record<string, string> }) =>
      raised(() => openApiCall(creds, 'AsymmetricSign', '2016-01-20', kmsQuery(), { v1, globalParameters }));

    it.each([
      ['20 minutes old', -20],
      ['20 minutes ahead', 20],
    ])('when the time is %s, then InvalidTimeStamp.Expired, HTTP 400', async (_when, minutes) => {
      const e = await call(at(minutesFromNow(minutes)));
      expect(e.data.statusCode ?? e.statusCode).toBe(400);
      expectBody(e.data, 'InvalidTimeStamp.Expired', CLOUD_TEXT['InvalidTimeStamp.Expired']);
    });

    it('when the time is malformed, then IllegalTimestamp, HTTP 400', async () => {
      const e = await call(at('2026-13-45 25:61'));
      expect(e.data.statusCode ?? e.statusCode).toBe(400);
      expectBody(e.data, 'IllegalTimestamp', CLOUD_TEXT.IllegalTimestamp);
    });

    it('when the same nonce is sent twice, then the second is SignatureNonceUsed, HTTP 400', async () => {
      const nonce = randomBytes(16).toString('hex');
      const fixed = v1 ? { queries: { SignatureNonce: nonce } } : { headers: { 'x-acs-signature-nonce': nonce } };
      await openApiCall(creds, 'AsymmetricSign', '2016-01-20', kmsQuery(), { v1, globalParameters: fixed });
      const e = await call(fixed);
      expect(e.data.statusCode ?? e.statusCode).toBe(400);
      expectBody(e.data, 'SignatureNonceUsed', CLOUD_TEXT.SignatureNonceUsed);
    });
  });
});
