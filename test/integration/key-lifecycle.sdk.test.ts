import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findSlotByLabel, initializeModule } from '../../src/hsm/module.js';
import { RegistryObjects } from '../../src/keys/registry-objects.js';
import { opensslVerifyDigest } from '../helpers/openssl.js';
import { kmsAction, kmsClient, type Credentials } from '../helpers/sdk.js';
import { SOFTHSM_MODULE, startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Key lifecycle through the official KMS client (@alicloud/kms20160120), on a real SoftHSMv2 token; signatures
// checked by OpenSSL with the public key the gateway hands out.

let gw: TestGateway;
let owner: Credentials;
const OTHER = { accessKeyId: 'LTAIotherAccount00000001', secret: 'other-account-secret-000000001', account: 'other' };

beforeAll(async () => {
  gw = await startTestGateway({ extraAccessKeys: [OTHER], editConfig: (c) => void (c.registry.refreshIntervalMs = 100) });
  owner = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

const kms = () => kmsAction(owner);
const digest = createHash('sha256').update('lifecycle').digest();

async function signAndVerify(keyId: string, keyVersionId: string, algorithm = 'ECDSA_SHA_256'): Promise<void> {
  const signed = await kmsClient(owner).asymmetricSign({ keyId, keyVersionId, algorithm, digest: digest.toString('base64') });
  expect(signed.keyVersionId).toBe(keyVersionId);
  const { publicKey } = await kmsClient(owner).getPublicKey({ keyId, keyVersionId });
  expect(opensslVerifyDigest({ publicKeyPem: publicKey, digest, signature: Buffer.from(signed.value, 'base64') })).toMatch(/Verified Successfully/);
}

const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string; data?: { Code?: string } }) => e.data?.Code ?? e.code);

describe('KMS key lifecycle through @alicloud/kms20160120', () => {
  let keyId = '';
  let firstVersion = '';

  it('when CreateKey asks for an EC_P256 signing key, then it is generated on the token, non-extractable, and signs', async () => {
    const meta = (await kms().call('CreateKey', { keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY', protectionLevel: 'HSM', description: 'made by a test' })).keyMetadata;
    expect(meta).toMatchObject({ keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY', keyState: 'Enabled', protectionLevel: 'HSM', description: 'made by a test' });
    expect(meta.keyId).toMatch(/^[0-9a-f-]{36}$/);
    expect(meta.arn).toBe(`acs:kms:cn-hangzhou:default:key/${meta.keyId}`);
    keyId = meta.keyId;
    firstVersion = meta.primaryKeyVersion;
    await signAndVerify(keyId, firstVersion);

    // The private key object: sensitive, never extractable (pkcs11-tool, logged in, reads its attributes).
    const listing = execFileSync(
      'pkcs11-tool',
      ['--module', SOFTHSM_MODULE, '--token-label', 'hsm-gateway-demo', '--login', '--pin', gw.pin, '--list-objects', '--type', 'privkey', '--label', `key/${firstVersion}`],
      { env: { ...process.env, SOFTHSM2_CONF: join(gw.home, 'softhsm', 'softhsm2.conf') }, encoding: 'utf8' },
    );
    expect(listing).toMatch(/sensitive/);
    expect(listing).toMatch(/never extractable/);
  });

  it('when the key is rotated, then the new version is primary and both versions still sign when named', async () => {
    const body = await kms().call('CreateKeyVersion', { keyId });
    const second = body.keyVersion.keyVersionId;
    expect(second).not.toBe(firstVersion);
    expect(body.keyVersion.keyId).toBe(keyId);
    const described = await kms().call('DescribeKey', { keyId });
    expect(described.keyMetadata.primaryKeyVersion).toBe(second);
    expect(described.keyMetadata.lastRotationDate).toMatch(/Z$/);
    await signAndVerify(keyId, second);
    await signAndVerify(keyId, firstVersion);
    const versions = await kms().call('ListKeyVersions', { keyId });
    expect(versions.keyVersions.keyVersion.map((v: { keyVersionId: string }) => v.keyVersionId).sort()).toEqual([firstVersion, second].sort());
  });

  it('when an alias is created, moved and deleted, then signing and DescribeKey follow it', async () => {
    const other = (await kms().call('CreateKey', { keySpec: 'RSA_2048', keyUsage: 'SIGN/VERIFY' })).keyMetadata;
    await kms().call('CreateAlias', { aliasName: 'alias/lifecycle-a', keyId });
    expect((await kms().call('DescribeKey', { keyId: 'alias/lifecycle-a' })).keyMetadata.keyId).toBe(keyId);
    await signAndVerify('alias/lifecycle-a', firstVersion);
    expect(await codeOf(kms().call('CreateAlias', { aliasName: 'alias/lifecycle-a', keyId: other.keyId }))).toBe('Rejected.AlreadyExists');

    await kms().call('UpdateAlias', { aliasName: 'alias/lifecycle-a', keyId: other.keyId });
    expect((await kms().call('DescribeKey', { keyId: 'alias/lifecycle-a' })).keyMetadata.keyId).toBe(other.keyId);
    await signAndVerify('alias/lifecycle-a', other.primaryKeyVersion, 'RSA_PKCS1_SHA_256');

    await kms().call('DeleteAlias', { aliasName: 'alias/lifecycle-a' });
    expect(await codeOf(kms().call('DescribeKey', { keyId: 'alias/lifecycle-a' }))).toBe('Forbidden.AliasNotFound');
    expect(await codeOf(kms().call('DeleteAlias', { aliasName: 'alias/lifecycle-a' }))).toBe('Forbidden.AliasNotFound');
    expect(await codeOf(kms().call('CreateAlias', { aliasName: 'alias/acs/reserved', keyId }))).toBe('InvalidParameter');
  });

  it('when the key is disabled and enabled, then signing is refused with Rejected.Disabled in between', async () => {
    await kms().call('DisableKey', { keyId });
    expect((await kms().call('DescribeKey', { keyId })).keyMetadata.keyState).toBe('Disabled');
    expect(await codeOf(kmsClient(owner).asymmetricSign({ keyId, keyVersionId: firstVersion, algorithm: 'ECDSA_SHA_256', digest: digest.toString('base64') }))).toBe(
      'Rejected.Disabled',
    );
    await kms().call('EnableKey', { keyId });
    await signAndVerify(keyId, firstVersion);
  });

  it('when deletion is scheduled and cancelled, then the key is PendingDeletion with a DeleteDate in between, and signs again after', async () => {
    expect(await codeOf(kms().call('ScheduleKeyDeletion', { keyId, pendingWindowInDays: 3 }))).toBe('InvalidParameter');
    await kms().call('ScheduleKeyDeletion', { keyId, pendingWindowInDays: 7 });
    const meta = (await kms().call('DescribeKey', { keyId })).keyMetadata;
    expect(meta.keyState).toBe('PendingDeletion');
    const days = (Date.parse(meta.deleteDate) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(6.99);
    expect(days).toBeLessThan(7.01);
    expect(await codeOf(kmsClient(owner).asymmetricSign({ keyId, keyVersionId: firstVersion, algorithm: 'ECDSA_SHA_256', digest: digest.toString('base64') }))).toBe(
      'Rejected.PendingDeletion',
    );
    expect(await codeOf(kms().call('DisableKey', { keyId }))).toBe('Rejected.UnexpectedState');
    expect(await codeOf(kms().call('ScheduleKeyDeletion', { keyId, pendingWindowInDays: 7 }))).toBe('Rejected.UnexpectedState');
    await kms().call('CancelKeyDeletion', { keyId });
    expect((await kms().call('DescribeKey', { keyId })).keyMetadata.keyState).toBe('Enabled');
    await signAndVerify(keyId, firstVersion);
    expect(await codeOf(kms().call('CancelKeyDeletion', { keyId }))).toBe('Rejected.UnexpectedState');
  });

  it('when the description is updated, then DescribeKey shows it', async () => {
    await kms().call('UpdateKeyDescription', { keyId, description: 'renamed' });
    expect((await kms().call('DescribeKey', { keyId })).keyMetadata.description).toBe('renamed');
  });

  it('when the deletion window has passed, then the key and its token objects are destroyed', async () => {
    const doomed = (await kms().call('CreateKey', { keySpec: 'EC_P256K', keyUsage: 'SIGN/VERIFY' })).keyMetadata;
    await kms().call('ScheduleKeyDeletion', { keyId: doomed.keyId, pendingWindowInDays: 7 });
    // Seven days later, on the token: rewrite the record's DeleteDate into the past, as time would have.
    const p11 = new pkcs11js.PKCS11();
    initializeModule(p11, SOFTHSM_MODULE);
    const session = p11.C_OpenSession(findSlotByLabel(p11, 'hsm-gateway-demo')!, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    const objects = new RegistryObjects();
    const stored = objects.readAll(p11, session).records.find((r) => r.kind === 'key' && r.id === doomed.keyId)!;
    objects.put(p11, session, 'key', doomed.keyId, { ...(stored.record as object), deleteDate: new Date(Date.now() - 1000).toISOString() });
    p11.C_CloseSession(session);
    // A session of its own each time: the gateway in this process shares the module and re-initializes it after
    // another writer's registry change (SoftHSMv2, RegistrySource.revealHidden), which closes every session.
    const privateKeys = (): number => {
      for (let attempt = 1; ; attempt++) {
        try {
          const search = p11.C_OpenSession(findSlotByLabel(p11, 'hsm-gateway-demo')!, pkcs11js.CKF_SERIAL_SESSION);
          p11.C_FindObjectsInit(search, [{ type: pkcs11js.CKA_LABEL, value: `key/${doomed.primaryKeyVersion}` }]);
          const found = p11.C_FindObjects(search, 10);
          p11.C_FindObjectsFinal(search);
          p11.C_CloseSession(search);
          return found.length;
        } catch (err) {
          if (attempt === 3) throw err; // a re-initialization came between two calls
        }
      }
    };
    expect(privateKeys()).toBe(2); // private + public
    let code = '';
    for (let i = 0; i < 100 && code !== 'Forbidden.KeyNotFound'; i++) {
      await new Promise((r) => setTimeout(r, 50));
      code = (await codeOf(kms().call('DescribeKey', { keyId: doomed.keyId }))) ?? '';
    }
    expect(code).toBe('Forbidden.KeyNotFound');
    expect(privateKeys()).toBe(0);
  });

  it('when a caller of another account manages the key, then it does not exist for them', async () => {
    const other = kmsAction({ endpoint: gw.endpoint, accessKeyId: OTHER.accessKeyId, accessKeySecret: OTHER.secret });
    expect(await codeOf(other.call('DisableKey', { keyId }))).toBe('Forbidden.KeyNotFound');
    expect(await codeOf(other.call('CreateAlias', { aliasName: 'alias/stolen', keyId }))).toBe('Forbidden.KeyNotFound');
    const theirs = (await other.call('CreateKey', { keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY' })).keyMetadata;
    expect(theirs.arn).toContain(':other:key/');
    expect(await codeOf(kms().call('DescribeKey', { keyId: theirs.keyId }))).toBe('Forbidden.KeyNotFound');
  });

  it('when CreateKey asks for what an HSM signing gateway does not make, then it answers InvalidParameter', async () => {
    expect(await codeOf(kms().call('CreateKey', { keySpec: 'Aliyun_AES_256' }))).toBe('InvalidParameter');
    expect(await codeOf(kms().call('CreateKey', { keySpec: 'RSA_2048', keyUsage: 'ENCRYPT/DECRYPT' }))).toBe('InvalidParameter');
    expect(await codeOf(kms().call('CreateKey', { keySpec: 'RSA_2048', protectionLevel: 'SOFTWARE' }))).toBe('InvalidParameter');
    expect(await codeOf(kms().call('CreateKey', {}))).toBe('MissingParameter');
  });
});
