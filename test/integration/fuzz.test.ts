import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { send, signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Random and mutated requests against the real gateway: never a 5xx, never a crash, always an Alibaba error body.
// FUZZ_RUNS raises the number of cases (npm run fuzz runs a longer campaign).
const RUNS = Number(process.env.FUZZ_RUNS ?? 500);
let gw: TestGateway;

beforeAll(async () => {
  // Thousands of requests that fail authentication from one address: lift that limit too (it answers 429 by design).
  gw = await startTestGateway({
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
      { numRuns: RUNS },
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
      { numRuns: RUNS },
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
      { numRuns: RUNS },
    );
  });

  it('when a request has more parameters than any action takes, then it is InvalidParameter (400)', async () => {
    const many = Object.fromEntries(Array.from({ length: 80 }, (_, i) => [`P${i}`, 'x']));
    const r = await send(`${gw.url}/?${toQuery(signV1(v1Params(gw.demo.accessKeyId, many), gw.secret))}`);
    expect(r.status).toBe(400);
    expect(r.json!.Code).toBe('InvalidParameter');
  });
});
