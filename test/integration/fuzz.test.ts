import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error -- plain JavaScript shared with the benchmark-style campaign (npm run fuzz, bench/fuzz.mjs)
import * as campaign from '../../bench/lib/fuzz-cases.mjs';
import { apiActions } from '../../src/operations/index.js';
import { send, signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Random and mutated requests against the real gateway: never a 5xx, never a crash, always an Alibaba error body.
// A small seeded set of the campaign `npm run fuzz` runs at scale (≥ 100,000 requests, bench/fuzz.mjs): fixed seeds,
// so every run sends the same cases.
const RUNS = 500;
const SEED = 20261202;
const CAMPAIGN_CASES = 600;
const CAMPAIGN = { accessKeyId: 'LTAIfuzzCampaign00000001', secret: 'fuzz-campaign-secret-000000001', account: 'fuzz-campaign' };
let gw: TestGateway;

beforeAll(async () => {
  // Thousands of requests that fail authentication from one address: lift that limit too (it answers 429 by design).
  gw = await startTestGateway({
    extraAccessKeys: [CAMPAIGN],
    editConfig: (c) => {
      c.throttle.defaultLimit = 1_000_000;
      c.auth.failedAuth.burst = 1_000_000;
    },
  });
});
afterAll(async () => {
  await gw?.close();
});

const NAMES = ['Action', 'Version', 'KeyId', 'KeyVersionId', 'Algorithm', 'Digest', 'Message', 'MessageType', 'CertificateId', 'CertIdentifier', 'SigningAlgorithm', 'Value', 'Format', 'DryRun', 'WarehouseId', 'PageSize'];
const ACTIONS = ['AsymmetricSign', 'AsymmetricVerify', 'GetPublicKey', 'CertificatePrivateKeySign', 'Sign', 'Verify', 'ListKeys', 'DescribeKey', 'ListCert', 'Nope'];
const value = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary' }),
  fc.constantFrom('', 'alias/demo-ec-p256', 'RSA_PSS_SHA_256', 'ECDSA_SHA_256', 'SHA256withRSA/P7', 'RAW', 'DIGEST', 'BASE64', 'XML', 'true', '-1', '0', '99999999999'),
  fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b).toString('base64')),
);

async function expectCleanAnswer(url: string, init?: RequestInit): Promise<void> {
  const r = await send(url, init);
  expect(r.status, r.text).toBeLessThan(500);
  if (r.status >= 400) {
    const body = r.json ?? {};
    // XML errors are fine too; JSON ones carry the Alibaba fields.
    if (r.json) expect(Object.keys(body)).toEqual(expect.arrayContaining(['RequestId', 'HostId', 'Code', 'Message']));
    expect(r.text).not.toMatch(/\n\s+at\s|CKR_|pkcs11/i);
  }
}

describe('fuzzing the RPC parser and the signature verifier', () => {
  it('when correctly signed requests carry random parameters, then every answer is < 500 and clean', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ACTIONS), fc.dictionary(fc.constantFrom(...NAMES), value, { maxKeys: 8 }), async (action, params) => {
        const signed = signV1(v1Params(gw.demo.accessKeyId, { ...params, Action: params.Action ?? action }), gw.secret);
        await expectCleanAnswer(`${gw.url}/?${toQuery(signed)}`);
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it('when a valid signed request is mutated byte by byte, then every answer is < 500 and clean', async () => {
    const key = gw.demo.keys[2]!;
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.boolean(), async (position, byte, inBody) => {
        const query = toQuery(
          signV1(
            v1Params(gw.demo.accessKeyId, { KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: createHash('sha256').update(String(position)).digest('base64') }),
            gw.secret,
            inBody ? 'POST' : 'GET',
          ),
        );
        const bytes = Buffer.from(query);
        bytes[position % bytes.length] = byte;
        if (inBody) {
          await expectCleanAnswer(`${gw.url}/`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: bytes });
        } else {
          // Bytes that are not legal in a URL at all are refused by the HTTP layer itself; percent-encode those.
          const url = [...bytes].map((b) => (b > 0x20 && b < 0x7f && b !== 0x23 ? String.fromCharCode(b) : `%${b.toString(16).padStart(2, '0')}`)).join('');
          await expectCleanAnswer(`${gw.url}/?${url}`);
        }
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it('when V3 Authorization headers are random, then every answer is < 500 and clean', async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 200 }), fc.string({ maxLength: 40 }), async (authorization, date) => {
        const headers: Record<string, string> = { 'x-acs-action': 'AsymmetricSign', 'x-acs-version': '2016-01-20' };
        // fetch refuses header values with control characters; what it cannot send no client can.
        if (/^[\x20-\x7e]*$/.test(authorization)) headers.authorization = `ACS3-HMAC-SHA256 ${authorization}`;
        if (/^[\x20-\x7e]*$/.test(date)) headers['x-acs-date'] = date;
        await expectCleanAnswer(`${gw.url}/?KeyId=k`, { method: 'POST', headers });
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it('when the campaign\'s seeded cases run (every action, V1 and V3, valid and malformed), then no answer is a 5xx, leaks or is malformed', async () => {
    const ctx = {
      host: gw.endpoint,
      demo: { accessKeyId: gw.demo.accessKeyId, secret: gw.secret },
      campaign: { accessKeyId: CAMPAIGN.accessKeyId, secret: CAMPAIGN.secret },
    };
    const campaignKeys = await campaign.prepareCampaign(gw.url, ctx);
    const cases: Array<{ action: string; kind: string; scheme: string }> = fc.sample(
      campaign.caseArbitrary(apiActions(), campaign.valuePools(gw.demo, { keys: campaignKeys }), campaign.validTemplates(gw.demo, campaignKeys)),
      { seed: SEED, numRuns: CAMPAIGN_CASES },
    );
    const secrets = [gw.secret, CAMPAIGN.secret, gw.pin];
    const problems: unknown[] = [];
    const actionsSent = new Set<string>();
    const schemes = new Set<string>();
    for (const c of cases) {
      const request = campaign.buildRequest(c, ctx);
      const answer = await campaign.send(gw.url, request).catch((err: Error & { cause?: unknown }) => (err.cause === undefined ? undefined : { status: 0, contentType: '', text: `no answer: ${String(err.cause)}` }));
      if (answer === undefined) continue; // a header value fetch refuses to send
      actionsSent.add(c.action);
      if (c.kind === 'signed') schemes.add(c.scheme);
      const found = answer.status === 0 ? [answer.text] : campaign.violationsOf(answer, request, secrets);
      if (found.length > 0) problems.push({ action: c.action, kind: c.kind, status: answer.status, found, body: answer.text.slice(0, 300) });
    }
    expect(problems).toEqual([]);
    expect([...actionsSent].sort()).toEqual(apiActions().map((a) => a.action).sort());
    expect([...schemes].sort()).toEqual(['V1', 'V3']);
  });

  it('when the campaign is built, then it knows the parameters of every action of the dispatch map', () => {
    expect(Object.keys(campaign.ACTION_PARAMS).sort()).toEqual(apiActions().map((a) => a.action).sort());
  });

  // Node's HTTP parser refuses a request line + headers over 16 KB before the gateway sees it; its own answer was a
  // bare "431" without a body (found by npm run fuzz). The listener's clientError handler answers it the Alibaba way.
  it('when the URL is over the HTTP header limit (16 KB), then the answer is still an Alibaba error body', async () => {
    const signed = signV1(v1Params(gw.demo.accessKeyId, { Action: 'DescribeKey', KeyId: 'A'.repeat(20_000) }), gw.secret);
    const r = await send(`${gw.url}/?${toQuery(signed)}`);
    expect(r.status).toBe(431);
    expect(r.json).toMatchObject({ Code: 'RequestHeaderFieldsTooLarge', Recommend: expect.stringContaining('#requestheaderfieldstoolarge') });
    expect(Object.keys(r.json ?? {})).toEqual(expect.arrayContaining(['RequestId', 'HostId', 'Code', 'Message']));
    expect(r.headers.get('x-acs-request-id')).toBe(r.json!.RequestId);
  });

  it('when a request has more parameters than any action takes, then it is InvalidParameter (400)', async () => {
    const many = Object.fromEntries(Array.from({ length: 80 }, (_, i) => [`P${i}`, 'x']));
    const r = await send(`${gw.url}/?${toQuery(signV1(v1Params(gw.demo.accessKeyId, many), gw.secret))}`);
    expect(r.status).toBe(400);
    expect(r.json!.Code).toBe('InvalidParameter');
  });
});
