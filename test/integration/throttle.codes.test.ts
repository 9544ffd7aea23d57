import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { casClient, kmsClient, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Each API answers throttling with the code its own SDK knows (in-memory limiter, one replica).
let gw: TestGateway;
let creds: Credentials;

beforeAll(async () => {
  gw = await startTestGateway({
    editConfig(config) {
      config.throttle.defaultLimit = 2; // the third request within 1,010 ms is refused
    },
  });
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

async function firstFailure(call: () => Promise<unknown>): Promise<{ code?: string; statusCode?: number; message?: string }> {
  for (let i = 0; i < 5; i++) {
    try {
      await call();
    } catch (err) {
      return err as { code?: string; statusCode?: number; message?: string };
    }
  }
  throw new Error('never throttled');
}

describe('throttling codes per API', () => {
  it('when a KMS caller goes over its limit, then @alicloud/kms20160120 raises Rejected.Throttling (429)', async () => {
    const key = gw.demo.keys[2]!;
    const e = await firstFailure(() =>
      kmsClient(creds).asymmetricSign({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: createHash('sha256').update('t').digest('base64') }),
    );
    expect(e.code).toBe('Rejected.ThrottlingError');
    expect(e.message).toContain('code: 429');
  });

  it('when a CAS caller goes over its limit, then @alicloud/cas20200407 raises Throttling.User (429)', async () => {
    const cert = gw.demo.certificates.find((c) => c.keySpec === 'EC_P256')!;
    const e = await firstFailure(() => casClient(creds).sign({ certIdentifier: cert.casIdentifier, message: 'm', messageType: 'RAW', signingAlgorithm: 'SHA256withECDSA' }));
    expect(e.code).toBe('Throttling.User');
    expect(e.statusCode).toBe(429);
  });
});
