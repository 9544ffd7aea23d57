import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { opensslVerifyDigest, opensslVerifyMessage } from '../helpers/openssl.js';
import { DEMO_SIGN_PAIRS, kmsClient, openApiCall, popCore, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

const PAIRS = DEMO_SIGN_PAIRS;

let gw: TestGateway;
let creds: Credentials;
const keyOf = (alias: string) => gw.demo.keys.find((k) => k.alias === alias)!;

beforeAll(async () => {
  gw = await startTestGateway();
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

describe('AsymmetricSign through @alicloud/kms20160120 (V1)', () => {
  for (const pair of PAIRS) {
    it(`when ${pair.alias} signs with ${pair.algorithm} by alias, then openssl verifies it and KeyId is the GUID`, async () => {
      const key = keyOf(pair.alias);
      const message = randomBytes(100);
      const digest = createHash('sha256').update(message).digest();
      const r = await kmsClient(creds).asymmetricSign({
        keyId: key.alias,
        keyVersionId: key.keyVersionId,
        algorithm: pair.algorithm,
        digest: digest.toString('base64'),
      });
      expect(r.keyId).toBe(key.keyId);
      expect(r.keyVersionId).toBe(key.keyVersionId);
      expect(r.requestId).toMatch(/^[0-9a-f-]{36}$/);
      const signature = Buffer.from(r.value, 'base64');
      expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature, pss: pair.pss })).toContain('Signature Verified Successfully');
      expect(opensslVerifyMessage({ publicKeyPem: key.publicKeyPem, message, signature, pss: pair.pss })).toBe('Verified OK');
    });

    it(`when ${pair.alias} signs with ${pair.algorithm} by GUID, then openssl verifies it`, async () => {
      const key = keyOf(pair.alias);
      const digest = createHash('sha256').update(randomBytes(10)).digest();
      const r = await kmsClient(creds).asymmetricSign({
        keyId: key.keyId,
        keyVersionId: key.keyVersionId,
        algorithm: pair.algorithm,
        digest: digest.toString('base64'),
      });
      expect(r.keyId).toBe(key.keyId);
      const signature = Buffer.from(r.value, 'base64');
      expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature, pss: pair.pss })).toContain('Signature Verified Successfully');
    });
  }

  it('when 32 signs run at once on one key, then every signature verifies', async () => {
    const key = keyOf('alias/demo-ec-p256');
    const digests = Array.from({ length: 32 }, () => createHash('sha256').update(randomBytes(8)).digest());
    const results = await Promise.all(
      digests.map((d) =>
        kmsClient(creds).asymmetricSign({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: d.toString('base64') }),
      ),
    );
    results.forEach((r, i) => {
      expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest: digests[i]!, signature: Buffer.from(r.value, 'base64') })).toContain(
        'Signature Verified Successfully',
      );
    });
  });
});

describe('AsymmetricSign through @alicloud/openapi-client callApi (V3)', () => {
  for (const pair of PAIRS) {
    it(`when ${pair.alias} signs with ${pair.algorithm}, then openssl verifies it`, async () => {
      const key = keyOf(pair.alias);
      const digest = createHash('sha256').update(randomBytes(20)).digest();
      const r = await openApiCall(creds, 'AsymmetricSign', '2016-01-20', {
        KeyId: key.alias,
        KeyVersionId: key.keyVersionId,
        Algorithm: pair.algorithm,
        Digest: digest.toString('base64'),
      });
      expect(r.body.KeyId).toBe(key.keyId);
      expect(typeof r.body.RequestId).toBe('string');
      const signature = Buffer.from(r.body.Value, 'base64');
      expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature, pss: pair.pss })).toContain('Signature Verified Successfully');
    });
  }

  it('when the parameters travel in a form body, then the signature covers them and it signs', async () => {
    const key = keyOf('alias/demo-rsa-2048');
    const digest = createHash('sha256').update('form body').digest();
    const r = await openApiCall(
      creds,
      'AsymmetricSign',
      '2016-01-20',
      { KeyId: key.keyId },
      { body: { KeyVersionId: key.keyVersionId, Algorithm: 'RSA_PSS_SHA_256', Digest: digest.toString('base64') } },
    );
    expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature: Buffer.from(r.body.Value, 'base64'), pss: true })).toContain(
      'Signature Verified Successfully',
    );
  });

  it('when Format=XML is asked, then the answer is XML under a KMS root with the same fields', async () => {
    const key = keyOf('alias/demo-ec-p256');
    const digest = createHash('sha256').update('xml').digest();
    const r = await openApiCall(
      creds,
      'AsymmetricSign',
      '2016-01-20',
      { KeyId: key.alias, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: digest.toString('base64'), Format: 'XML' },
      { bodyType: 'string' },
    );
    const xml = String(r.body);
    expect(xml.startsWith('<?xml version="1.0" encoding="UTF-8"?><KMS>')).toBe(true);
    expect(xml).toContain(`<KeyId>${key.keyId}</KeyId>`);
    expect(xml).toContain(`<KeyVersionId>${key.keyVersionId}</KeyVersionId>`);
    expect(xml).toMatch(/<RequestId>[0-9a-f-]{36}<\/RequestId>/);
    const value = /<Value>([^<]+)<\/Value>/.exec(xml)![1]!;
    expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature: Buffer.from(value, 'base64') })).toContain('Signature Verified Successfully');
  });
});

describe('AsymmetricSign through @alicloud/pop-core (V1)', () => {
  for (const method of ['GET', 'POST'] as const) {
    it(`when pop-core sends ${method}, then the gateway verifies its signature and signs`, async () => {
      const key = keyOf('alias/demo-rsa-3072');
      const digest = createHash('sha256').update(method).digest();
      const r = await popCore(creds, '2016-01-20').request(
        'AsymmetricSign',
        { KeyId: key.alias, KeyVersionId: key.keyVersionId, Algorithm: 'RSA_PKCS1_SHA_256', Digest: digest.toString('base64') },
        { method },
      );
      expect(r.KeyId).toBe(key.keyId);
      expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature: Buffer.from(r.Value, 'base64') })).toContain(
        'Signature Verified Successfully',
      );
    });
  }
});
