import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kmsClient } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// The SM2 token configured without its SM2 profile: the gateway cannot know the vendor's mechanism.
let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway({
    editConfig(config) {
      config.tokens.sm2!.profile = {};
    },
  });
});
afterAll(async () => {
  await gw?.close();
});

describe('a token profile without SM2', () => {
  it('when an SM2 key is asked to sign, then it is a clean 503 ServiceUnavailableTemporary naming the missing mechanism', async () => {
    const key = gw.demo.keys.find((k) => k.keySpec === 'EC_SM2')!;
    const client = kmsClient({ endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret });
    const e = await client.asymmetricSign({ keyId: key.alias, keyVersionId: key.keyVersionId, algorithm: 'SM2DSA', digest: randomBytes(32).toString('base64') }).catch((err: unknown) => err);
    expect(e).toMatchObject({ code: 'ServiceUnavailableTemporaryError' });
    expect(String((e as Error).message)).toContain('no mechanism for SM2DSA');
  });

  it('when RSA keys on the other token sign meanwhile, then they are unaffected', async () => {
    const key = gw.demo.keys.find((k) => k.keySpec === 'RSA_2048')!;
    const client = kmsClient({ endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret });
    const r = await client.asymmetricSign({ keyId: key.alias, keyVersionId: key.keyVersionId, algorithm: 'RSA_PKCS1_SHA_256', digest: randomBytes(32).toString('base64') });
    expect(r.keyId).toBe(key.keyId);
  });
});
