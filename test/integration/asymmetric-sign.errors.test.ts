import { createHash, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aliTimestamp, send, signV1, toQuery, v1Params, type RawResponse } from '../helpers/raw-client.js';
import { kmsClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

const LIMITED = { accessKeyId: 'LTAIlimitedlimited01', secret: 'limited-secret-value', account: 'default' };
const OUTSIDER = { accessKeyId: 'LTAIoutsideroutsid01', secret: 'outsider-secret-value', account: 'other-account' };
const SWITCHED_OFF = { accessKeyId: 'LTAIdisableddisabl01', secret: 'disabled-secret-value', account: 'default', enabled: false };
const DISABLED_KEY = { keyId: randomUUID(), keyVersionId: randomUUID() };
const ENCRYPT_KEY = { keyId: randomUUID(), keyVersionId: randomUUID() };

let gw: TestGateway;
let creds: Credentials;
const key = (alias: string) => gw.demo.keys.find((k) => k.alias === alias)!;
const digest = (s = 'x') => createHash('sha256').update(s).digest('base64');

beforeAll(async () => {
  gw = await startTestGateway({
    extraAccessKeys: [LIMITED, OUTSIDER, SWITCHED_OFF],
    editRegistry(registry, demo) {
      const rsa = registry.keys.find((k) => (k.aliases ?? []).includes('alias/demo-rsa-2048'))!;
      rsa.accessKeyIds = [demo.accessKeyId];
      const ec = registry.keys.find((k) => (k.aliases ?? []).includes('alias/demo-ec-p256'))!;
      const version = { ...ec.versions[0]! };
      registry.keys.push({ ...ec, keyId: DISABLED_KEY.keyId, aliases: [], state: 'Disabled', versions: [{ ...version, keyVersionId: DISABLED_KEY.keyVersionId }] });
      registry.keys.push({ ...ec, keyId: ENCRYPT_KEY.keyId, aliases: [], usage: 'ENCRYPT/DECRYPT', versions: [{ ...version, keyVersionId: ENCRYPT_KEY.keyVersionId }] });
    },
  });
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

/** Every error is an Alibaba error body, and nothing secret or internal leaks into it. */
function expectAlibabaError(r: RawResponse, status: number, code: string): void {
  expect(r.status).toBe(status);
  expect(r.json).toBeDefined();
  expect(r.json!.Code).toBe(code);
  expect(typeof r.json!.Message).toBe('string');
  expect(r.json!.RequestId).toBe(r.headers.get('x-acs-request-id'));
  expect(typeof r.json!.HostId).toBe('string');
  expect(r.json!.Recommend).toBe(`docs/errors.md#${code.toLowerCase().replace(/\./g, '')}`);
  expectNoLeak(r.text);
}

function expectNoLeak(text: string): void {
  expect(text).not.toMatch(/\n\s+at\s/);
  expect(text).not.toMatch(/CKR_|pkcs11|\.ts:|\.js:\d/i);
  expect(text).not.toContain(gw.pin);
  expect(text).not.toContain(gw.secret);
}

/** Calls the KMS SDK and returns the error it raised (the test fails when it succeeds). */
async function sdkError(c: Credentials, req: Record<string, string>): Promise<{ code: string; message: string; data: Record<string, unknown> }> {
  try {
    await kmsClient(c).asymmetricSign(req);
  } catch (err) {
    const e = err as { code: string; message: string; data: Record<string, unknown> };
    expectNoLeak(e.message);
    return e;
  }
  throw new Error('the call succeeded but should have failed');
}

const signRequest = (alias: string, overrides: Record<string, string> = {}) => ({
  keyId: key(alias).alias,
  keyVersionId: key(alias).keyVersionId,
  algorithm: alias.includes('rsa') ? 'RSA_PKCS1_SHA_256' : 'ECDSA_SHA_256',
  digest: digest(),
  ...overrides,
});

describe('AsymmetricSign refusals seen through @alicloud/kms20160120', () => {
  const cases: Array<{ when: string; creds?: () => Credentials; req: () => Record<string, string>; code: string; status: number }> = [
    { when: 'the secret is wrong', creds: () => ({ ...creds, accessKeySecret: 'not-the-secret' }), req: () => signRequest('alias/demo-ec-p256'), code: 'SignatureDoesNotMatch', status: 400 },
    { when: 'the AccessKeyId is unknown', creds: () => ({ ...creds, accessKeyId: 'LTAInobodynobodynob' }), req: () => signRequest('alias/demo-ec-p256'), code: 'InvalidAccessKeyId.NotFound', status: 404 },
    { when: 'the access key is disabled', creds: () => ({ ...creds, ...SWITCHED_OFF, accessKeySecret: SWITCHED_OFF.secret }), req: () => signRequest('alias/demo-ec-p256'), code: 'Forbidden.AccessKey', status: 403 },
    { when: 'the key GUID is unknown', req: () => signRequest('alias/demo-ec-p256', { keyId: randomUUID() }), code: 'Forbidden.KeyNotFound', status: 404 },
    { when: 'the alias is unknown', req: () => signRequest('alias/demo-ec-p256', { keyId: 'alias/nope' }), code: 'Forbidden.AliasNotFound', status: 404 },
    { when: 'the key version belongs to another key', req: () => signRequest('alias/demo-ec-p256', { keyVersionId: key('alias/demo-ec-p256k').keyVersionId }), code: 'InvalidParameter', status: 400 },
    { when: 'the algorithm does not fit the key spec', req: () => signRequest('alias/demo-rsa-3072', { algorithm: 'ECDSA_SHA_256' }), code: 'InvalidParameter', status: 400 },
    { when: 'the algorithm is unknown', req: () => signRequest('alias/demo-rsa-3072', { algorithm: 'RSA_PSS_SHA_512' }), code: 'InvalidParameter', status: 400 },
    { when: 'the digest is not 32 bytes', req: () => signRequest('alias/demo-ec-p256', { digest: Buffer.alloc(31, 1).toString('base64') }), code: 'InvalidParameter', status: 400 },
    { when: 'the digest is not Base64', req: () => signRequest('alias/demo-ec-p256', { digest: 'not*base64!' }), code: 'InvalidParameter', status: 400 },
    { when: 'this access key may not use the key', creds: () => ({ ...creds, accessKeyId: LIMITED.accessKeyId, accessKeySecret: LIMITED.secret }), req: () => signRequest('alias/demo-rsa-2048'), code: 'Forbidden.NoPermission', status: 403 },
    { when: 'the key belongs to another account', creds: () => ({ ...creds, accessKeyId: OUTSIDER.accessKeyId, accessKeySecret: OUTSIDER.secret }), req: () => signRequest('alias/demo-ec-p256', { keyId: key('alias/demo-ec-p256').keyId }), code: 'Forbidden.KeyNotFound', status: 404 },
    { when: 'the key is disabled', req: () => signRequest('alias/demo-ec-p256', { keyId: DISABLED_KEY.keyId, keyVersionId: DISABLED_KEY.keyVersionId }), code: 'Rejected.Disabled', status: 409 },
    { when: 'the key is not a SIGN/VERIFY key', req: () => signRequest('alias/demo-ec-p256', { keyId: ENCRYPT_KEY.keyId, keyVersionId: ENCRYPT_KEY.keyVersionId }), code: 'InvalidParameter', status: 400 },
  ];
  for (const c of cases) {
    it(`when ${c.when}, then the SDK raises ${c.code} (${c.status})`, async () => {
      const e = await sdkError(c.creds?.() ?? creds, c.req());
      expect(e.code).toBe(`${c.code}Error`);
      expect(e.message).toContain(`code: ${c.status}`);
      expect(e.data.Code).toBe(c.code);
    });
  }

  it('when a limited access key uses a key its account allows it, then it signs', async () => {
    const r = await kmsClient({ ...creds, accessKeyId: LIMITED.accessKeyId, accessKeySecret: LIMITED.secret }).asymmetricSign(signRequest('alias/demo-ec-p256'));
    expect(r.keyId).toBe(key('alias/demo-ec-p256').keyId);
  });
});

describe('AsymmetricSign refusals seen through @alicloud/openapi-client (V3)', () => {
  it('when the V3 secret is wrong, then it is SignatureDoesNotMatch (400)', async () => {
    const k = key('alias/demo-ec-p256');
    await expect(
      openApiCall({ ...creds, accessKeySecret: 'wrong' }, 'AsymmetricSign', '2016-01-20', { KeyId: k.keyId, KeyVersionId: k.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: digest() }),
    ).rejects.toMatchObject({ code: 'SignatureDoesNotMatch', data: { statusCode: 400 } });
  });
});

describe('AsymmetricSign refusals over raw HTTP', () => {
  const business = () => {
    const k = key('alias/demo-ec-p256');
    return { KeyId: k.keyId, KeyVersionId: k.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: digest() };
  };
  const get = (params: Record<string, string>) => send(`${gw.url}/?${toQuery(signV1(params, gw.secret))}`);

  it('when a correctly signed GET arrives, then it signs (the raw client is sound)', async () => {
    const r = await get(v1Params(gw.demo.accessKeyId, business()));
    expect(r.status).toBe(200);
    expect(r.json!.KeyId).toBe(key('alias/demo-ec-p256').keyId);
  });

  it('when a request is replayed with the same nonce, then the second is SignatureNonceUsed (400)', async () => {
    const url = `${gw.url}/?${toQuery(signV1(v1Params(gw.demo.accessKeyId, business()), gw.secret))}`;
    expect((await send(url)).status).toBe(200);
    expectAlibabaError(await send(url), 400, 'SignatureNonceUsed');
  });

  it('when a request is refused for its signature, then its nonce is not remembered and the genuine request with it still passes', async () => {
    const params = v1Params(gw.demo.accessKeyId, business(), { SignatureNonce: `refused-then-genuine-${Date.now()}` });
    expectAlibabaError(await send(`${gw.url}/?${toQuery(signV1(params, 'not-the-secret'))}`), 400, 'SignatureDoesNotMatch');
    expect((await send(`${gw.url}/?${toQuery(signV1(params, gw.secret))}`)).status).toBe(200);
  });

  it('when the timestamp is 20 minutes old, then it is InvalidTimeStamp.Expired (400)', async () => {
    const stale = aliTimestamp(new Date(Date.now() - 20 * 60 * 1000));
    expectAlibabaError(await get(v1Params(gw.demo.accessKeyId, business(), { Timestamp: stale })), 400, 'InvalidTimeStamp.Expired');
  });

  it('when the timestamp is not a timestamp, then it is IllegalTimestamp (400)', async () => {
    expectAlibabaError(await get(v1Params(gw.demo.accessKeyId, business(), { Timestamp: 'yesterday' })), 400, 'IllegalTimestamp');
  });

  for (const name of ['KeyId', 'KeyVersionId', 'Algorithm', 'Digest']) {
    it(`when ${name} is missing, then it is MissingParameter (400) naming it`, async () => {
      const params = business() as Record<string, string>;
      delete params[name];
      const r = await get(v1Params(gw.demo.accessKeyId, params));
      expectAlibabaError(r, 400, 'MissingParameter');
      expect(r.json!.Message).toContain(name);
    });
  }

  it('when the Signature is missing, then it is IncompleteSignature (400)', async () => {
    expectAlibabaError(await send(`${gw.url}/?${toQuery(v1Params(gw.demo.accessKeyId, business()))}`), 400, 'IncompleteSignature');
  });

  it('when SignatureMethod is not HMAC-SHA1, then it is IncompleteSignature (400)', async () => {
    expectAlibabaError(await get(v1Params(gw.demo.accessKeyId, business(), { SignatureMethod: 'HMAC-MD5' })), 400, 'IncompleteSignature');
  });

  it('when the Action is unknown, then it is InvalidAction.NotFound (404)', async () => {
    expectAlibabaError(await get(v1Params(gw.demo.accessKeyId, business(), { Action: 'DeleteEverything' })), 404, 'InvalidAction.NotFound');
  });

  it('when the Version is unknown, then it is InvalidVersion (400)', async () => {
    expectAlibabaError(await get(v1Params(gw.demo.accessKeyId, business(), { Version: '2099-01-01' })), 400, 'InvalidVersion');
  });

  it('when there is no Action at all, then it is MissingParameter (400)', async () => {
    expectAlibabaError(await send(`${gw.url}/?Foo=bar`), 400, 'MissingParameter');
  });

  it('when DryRun is true, then nothing is signed and it is DryRunOperation (400)', async () => {
    expectAlibabaError(await get(v1Params(gw.demo.accessKeyId, { ...business(), DryRun: 'true' })), 400, 'DryRunOperation');
  });

  it('when a parameter is given twice, then it is InvalidParameter (400)', async () => {
    const signed = signV1(v1Params(gw.demo.accessKeyId, business()), gw.secret);
    expectAlibabaError(await send(`${gw.url}/?${toQuery(signed)}&KeyId=other`), 400, 'InvalidParameter');
  });

  it('when the query has broken percent-encoding, then it is InvalidParameter (400)', async () => {
    expectAlibabaError(await send(`${gw.url}/?Action=AsymmetricSign&KeyId=%E0%A4%A`), 400, 'InvalidParameter');
  });

  it('when the body is larger than allowed, then it is RequestEntityTooLarge (413)', async () => {
    const r = await send(`${gw.url}/`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `Action=AsymmetricSign&Pad=${'A'.repeat(200 * 1024)}`,
    });
    expectAlibabaError(r, 413, 'RequestEntityTooLarge');
  });

  it('when the method is PUT, then it is UnsupportedHTTPMethod (405)', async () => {
    expectAlibabaError(await send(`${gw.url}/?Action=AsymmetricSign`, { method: 'PUT' }), 405, 'UnsupportedHTTPMethod');
  });

  it('when the path is not /, then it is InvalidAction.NotFound (404)', async () => {
    expectAlibabaError(await send(`${gw.url}/admin`), 404, 'InvalidAction.NotFound');
  });

  it('when Format=XML and the request fails, then the error is XML with an Error root', async () => {
    const r = await get(v1Params(gw.demo.accessKeyId, { ...business(), KeyId: 'alias/nope' }, { Format: 'XML' }));
    expect(r.status).toBe(404);
    expect(r.headers.get('content-type')).toMatch(/^text\/xml/);
    expect(r.text).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?><Error><RequestId>[0-9a-f-]{36}<\/RequestId><HostId>[^<]+<\/HostId><Code>Forbidden\.AliasNotFound<\/Code><Message>[^<]+<\/Message><Recommend>docs\/errors\.md#forbiddenaliasnotfound<\/Recommend><\/Error>$/);
  });
});

describe('health endpoints', () => {
  it('when /healthz is asked, then the process answers 200', async () => {
    const r = await send(`${gw.url}/healthz`);
    expect(r.status).toBe(200);
  });

  it('when /readyz is asked, then the token is reachable and it answers 200', async () => {
    const r = await send(`${gw.url}/readyz`);
    expect(r.status).toBe(200);
    expect(r.json!.status).toBe('ready');
  });
});
