import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import type { RegistryFile } from '../../src/keys/registry.js';
import { kmsClient, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Secret rotation and registry changes without a restart (what SIGHUP does in `npm start`).
let gw: TestGateway;
let config: Config;
const NEW_SECRET = 'the-rotated-secret-value-0001';

beforeAll(async () => {
  // The registry as a file: this test changes it by editing the file and sending SIGHUP.
  gw = await startTestGateway({ editRegistry: () => undefined });
  config = loadConfig(gw.demo.configFile, {});
  writeFileSync(join(gw.home, 'secrets', 'rotated.secret'), NEW_SECRET, { mode: 0o600 });
});
afterAll(async () => {
  await gw?.close();
});

const sign = (c: Credentials) => {
  const key = gw.demo.keys.find((k) => k.keySpec === 'EC_P256')!;
  return kmsClient(c).asymmetricSign({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: createHash('sha256').update('r').digest('base64') });
};
const withSecret = (secret: string): Credentials => ({ endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: secret });

describe('reload', () => {
  it('when a second secret is added and then made the only one, then both work in between and the old one stops after', async () => {
    const oldSecret = gw.secret;
    const accessKey = config.auth.accessKeys[0]!;
    accessKey.secondarySecret = { file: join(gw.home, 'secrets', 'rotated.secret') };
    await gw.gateway.reload(config);
    expect((await sign(withSecret(oldSecret))).keyId).toBeDefined();
    expect((await sign(withSecret(NEW_SECRET))).keyId).toBeDefined();

    accessKey.secret = accessKey.secondarySecret;
    delete accessKey.secondarySecret;
    await gw.gateway.reload(config);
    expect((await sign(withSecret(NEW_SECRET))).keyId).toBeDefined();
    await expect(sign(withSecret(oldSecret))).rejects.toMatchObject({ code: 'SignatureDoesNotMatchError' });
  });

  it('when the registry disables a key, then the next request is refused with Rejected.Disabled', async () => {
    const registryFile = config.registry.file!;
    const registry = JSON.parse(readFileSync(registryFile, 'utf8')) as RegistryFile;
    registry.keys.find((k) => k.keySpec === 'EC_P256')!.state = 'Disabled';
    writeFileSync(registryFile, JSON.stringify(registry));
    await gw.gateway.reload(config);
    await expect(sign(withSecret(NEW_SECRET))).rejects.toMatchObject({ code: 'Rejected.DisabledError' });
  });

  it('when the new registry is invalid, then reload throws and the gateway keeps serving with the old one', async () => {
    writeFileSync(config.registry.file!, '{ not json');
    await expect(gw.gateway.reload(config)).rejects.toThrow(/registry/);
    await expect(sign(withSecret(NEW_SECRET))).rejects.toMatchObject({ code: 'Rejected.DisabledError' });
  });
});
