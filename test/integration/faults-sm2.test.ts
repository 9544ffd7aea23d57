import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { freePort, startGatewayProcess } from '../helpers/processes.js';
import { kmsClient, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Faults SoftHSM cannot produce, made by the SM2 test token's fault emulation (softhsm/sm2-token/README.md):
// a slow HSM (SM2TOKEN_SIGN_DELAY_MS) and a locked user PIN (SM2TOKEN_USER_PIN_LOCKED).
let gw: TestGateway;
let creds: Credentials;

beforeAll(async () => {
  gw = await startTestGateway({
    editConfig(config) {
      const sm2 = config.tokens.sm2!;
      sm2.environment = { ...sm2.environment, SM2TOKEN_SIGN_DELAY_MS: '1200' };
      sm2.operationTimeoutMs = 300;
      sm2.sessions = 1;
      sm2.acquireTimeoutMs = 200;
    },
  });
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

const signWith = async (spec: string): Promise<{ code: string; ms: number }> => {
  const key = gw.demo.keys.find((k) => k.keySpec === spec)!;
  const algorithm = spec === 'EC_SM2' ? 'SM2DSA' : 'RSA_PKCS1_SHA_256';
  const started = Date.now();
  const code = await kmsClient(creds)
    .asymmetricSign({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm, digest: randomBytes(32).toString('base64') })
    .then(
      () => 'OK',
      (e: { data?: { Code?: string } }) => e.data?.Code ?? 'no code',
    );
  return { code, ms: Date.now() - started };
};

describe('a slow HSM', () => {
  it('when a sign outlives the operation deadline, then the client gets 503 at the deadline, the busy session is not lent again, and other tokens are unaffected', async () => {
    const [slow, queued, rsa] = await Promise.all([signWith('EC_SM2'), signWith('EC_SM2'), signWith('RSA_2048')]);
    expect(slow.code).toBe('ServiceUnavailableTemporary');
    expect(slow.ms).toBeLessThan(1000);
    // The only session is still inside the first C_Sign: the second request waits for it, then gives up — it is
    // never handed the same session (which would answer CKR_OPERATION_ACTIVE, a 5xx).
    expect(queued.code).toBe('ServiceUnavailableTemporary');
    expect(rsa.code).toBe('OK');
    // Once the slow call returns, the session is back in the pool.
    await new Promise((r) => setTimeout(r, 1500));
    const stats = await fetch(`${gw.url}/metrics`).then((r) => r.text());
    expect(stats).toMatch(/hsm_gateway_hsm_sessions\{token="sm2",state="idle"\} 1/);
  });
});

describe('a locked PIN', () => {
  it('when the SM2 token reports its user PIN locked, then the gateway refuses to start, says CKR_PIN_LOCKED, and does not loop on logins', async () => {
    const config = parse(readFileSync(gw.demo.configFile, 'utf8'));
    config.tokens.sm2.environment = { ...config.tokens.sm2.environment, SM2TOKEN_USER_PIN_LOCKED: '1' };
    const file = join(gw.home, 'locked.yaml');
    writeFileSync(file, stringify(config));
    const port = await freePort();
    const started = Date.now();
    await expect(startGatewayProcess({ HSM_GATEWAY_CONFIG: file, HSM_GATEWAY_PORT: String(port) })).rejects.toThrow(/exited early[\s\S]*CKR_PIN_LOCKED/);
    expect(Date.now() - started).toBeLessThan(30_000);
  });
});
