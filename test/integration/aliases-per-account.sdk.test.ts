import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { opensslVerifyDigest } from '../helpers/openssl.js';
import { kmsAction, kmsClient, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Aliases belong to an account, as in the cloud: the same name in two accounts is two aliases, each naming its own
// account's key, and nothing an account is told reveals which names another account uses. Two accounts, the official
// KMS client (@alicloud/kms20160120), a real SoftHSMv2 token; signatures checked by OpenSSL.

let gw: TestGateway;
let a: Credentials; // the demo account ("default"): owns alias/demo-*
let b: Credentials;
const B = { accessKeyId: 'LTAIaliasAccountB0000001', secret: 'alias-account-b-secret-00001', account: 'tenant-b' };

beforeAll(async () => {
  gw = await startTestGateway({ extraAccessKeys: [B] });
  a = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
  b = { endpoint: gw.endpoint, accessKeyId: B.accessKeyId, accessKeySecret: B.secret };
});
afterAll(async () => {
  await gw?.close();
});

const digest = createHash('sha256').update('aliases are per account').digest();
const demoKey = (alias: string) => gw.demo.keys.find((k) => k.alias === alias)!;

/** Signs through `alias` as this caller, checks the answer names `keyId`, and verifies the signature with OpenSSL. */
async function signsWith(c: Credentials, alias: string, key: { keyId: string; keyVersionId: string; algorithm: string }): Promise<void> {
  const signed = await kmsClient(c).asymmetricSign({ keyId: alias, keyVersionId: key.keyVersionId, algorithm: key.algorithm, digest: digest.toString('base64') });
  expect(signed.keyId).toBe(key.keyId);
  const { publicKey } = await kmsClient(c).getPublicKey({ keyId: key.keyId, keyVersionId: key.keyVersionId });
  expect(opensslVerifyDigest({ publicKeyPem: publicKey, digest, signature: Buffer.from(signed.value, 'base64') })).toMatch(/Verified Successfully/);
}

/** What the client was told, as a comparable value: status, Code and Message (with `name` written as <alias>). */
async function answerOf(p: Promise<unknown>, name: string): Promise<unknown> {
  try {
    return { ok: await p };
  } catch (e) {
    const err = e as { message: string; data?: { Code?: string; Message?: string } };
    const status = /code: (\d{3})/.exec(err.message)?.[1];
    return { status, code: err.data?.Code, message: err.data?.Message?.split(name).join('<alias>') };
  }
}

const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: { data?: { Code?: string } }) => e.data?.Code);

async function createEcKey(c: Credentials): Promise<{ keyId: string; keyVersionId: string; algorithm: string }> {
  const meta = (await kmsAction(c).call('CreateKey', { keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY' })).keyMetadata;
  return { keyId: meta.keyId, keyVersionId: meta.primaryKeyVersion, algorithm: 'ECDSA_SHA_256' };
}

describe('aliases are per account', () => {
  it('when account B creates an alias named like one of account A, then it is B\'s own alias and each signs with its own account\'s key', async () => {
    const bKey = await createEcKey(b);
    await kmsAction(b).call('CreateAlias', { aliasName: 'alias/demo-rsa-2048', keyId: bKey.keyId });

    const aKey = demoKey('alias/demo-rsa-2048');
    await signsWith(b, 'alias/demo-rsa-2048', bKey);
    await signsWith(a, 'alias/demo-rsa-2048', { keyId: aKey.keyId, keyVersionId: aKey.keyVersionId, algorithm: 'RSA_PKCS1_SHA_256' });
    expect((await kmsAction(b).call('DescribeKey', { keyId: 'alias/demo-rsa-2048' })).keyMetadata.keyId).toBe(bKey.keyId);
    expect((await kmsAction(a).call('DescribeKey', { keyId: 'alias/demo-rsa-2048' })).keyMetadata.keyId).toBe(aKey.keyId);

    // Each account lists its own alias of that name, with its own ARN, and never the other's.
    const listed = async (c: Credentials) =>
      (await kmsAction(c).call('ListAliases', { pageSize: 100 })).aliases.alias.filter((x: { aliasName: string }) => x.aliasName === 'alias/demo-rsa-2048');
    expect(await listed(b)).toEqual([{ aliasName: 'alias/demo-rsa-2048', keyId: bKey.keyId, aliasArn: 'acs:kms:cn-hangzhou:tenant-b:alias/demo-rsa-2048' }]);
    expect(await listed(a)).toEqual([{ aliasName: 'alias/demo-rsa-2048', keyId: aKey.keyId, aliasArn: 'acs:kms:cn-hangzhou:default:alias/demo-rsa-2048' }]);
    const byKey = await kmsAction(a).call('ListAliasesByKeyId', { keyId: aKey.keyId });
    expect(byKey.aliases.alias.map((x: { aliasName: string }) => x.aliasName)).toEqual(['alias/demo-rsa-2048']);

    // An alias that exists in one's own account is still refused as in the cloud (409 Rejected.AlreadyExists).
    expect(await answerOf(kmsAction(b).call('CreateAlias', { aliasName: 'alias/demo-rsa-2048', keyId: bKey.keyId }), 'alias/demo-rsa-2048')).toEqual({
      status: '409',
      code: 'Rejected.AlreadyExists',
      message: expect.any(String),
    });
  });

  it('when account B names an alias that only account A has, then every answer is the one for a name that exists nowhere, CreateAlias included', async () => {
    const bKey = await createEcKey(b);
    const theirs = 'alias/demo-ec-p256k'; // account A's
    const nowhere = 'alias/nowhere-at-all';
    const requests: Array<[string, (alias: string) => Promise<unknown>]> = [
      ['DescribeKey', (alias) => kmsAction(b).call('DescribeKey', { keyId: alias })],
      ['AsymmetricSign', (alias) => kmsClient(b).asymmetricSign({ keyId: alias, keyVersionId: bKey.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: digest.toString('base64') })],
      ['GetPublicKey', (alias) => kmsClient(b).getPublicKey({ keyId: alias, keyVersionId: bKey.keyVersionId })],
      ['ListAliasesByKeyId', (alias) => kmsAction(b).call('ListAliasesByKeyId', { keyId: alias })],
      ['ListKeyVersions', (alias) => kmsAction(b).call('ListKeyVersions', { keyId: alias })],
      ['CreateKeyVersion', (alias) => kmsAction(b).call('CreateKeyVersion', { keyId: alias })],
      ['DisableKey', (alias) => kmsAction(b).call('DisableKey', { keyId: alias })],
      ['UpdateAlias', (alias) => kmsAction(b).call('UpdateAlias', { aliasName: alias, keyId: bKey.keyId })],
      ['DeleteAlias', (alias) => kmsAction(b).call('DeleteAlias', { aliasName: alias })],
      ['CreateAlias on it', (alias) => kmsAction(b).call('CreateAlias', { aliasName: 'alias/b-other', keyId: alias })],
    ];
    for (const [what, request] of requests) {
      const forTheirs = await answerOf(request(theirs), theirs);
      expect(forTheirs, what).toEqual(await answerOf(request(nowhere), nowhere));
      expect(forTheirs, what).toMatchObject({ status: '404', code: 'Forbidden.AliasNotFound' });
    }
    // Creating an alias of that name answers as creating a free name does (and makes B's own alias of that name).
    const created = await codeOf(kmsAction(b).call('CreateAlias', { aliasName: theirs, keyId: bKey.keyId }));
    expect(created).toBe(await codeOf(kmsAction(b).call('CreateAlias', { aliasName: nowhere, keyId: bKey.keyId })));
    expect(created).toBe('ok');
    await signsWith(b, theirs, bKey);

    // Nothing B did changed A's alias: it still names A's key and signs.
    const aKey = demoKey(theirs);
    await signsWith(a, theirs, { keyId: aKey.keyId, keyVersionId: aKey.keyVersionId, algorithm: 'ECDSA_SHA_256' });
    expect((await kmsAction(a).call('DescribeKey', { keyId: aKey.keyId })).keyMetadata.keyState).toBe('Enabled');
    // And B's list names none of A's keys.
    const bAliases = (await kmsAction(b).call('ListAliases', { pageSize: 100 })).aliases.alias as Array<{ keyId: string }>;
    expect(bAliases.length).toBeGreaterThan(0);
    for (const alias of bAliases) expect(gw.demo.keys.map((k) => k.keyId)).not.toContain(alias.keyId);
  });

  it('when account B takes alias/payments before its owner, then A still creates its own alias/payments, and what B does with its alias never touches A\'s', async () => {
    const bKey = await createEcKey(b);
    const bSecond = await createEcKey(b);
    await kmsAction(b).call('CreateAlias', { aliasName: 'alias/payments', keyId: bKey.keyId });

    const aKey = demoKey('alias/demo-ec-p256');
    await kmsAction(a).call('CreateAlias', { aliasName: 'alias/payments', keyId: aKey.keyId });
    const aSigns = () => signsWith(a, 'alias/payments', { keyId: aKey.keyId, keyVersionId: aKey.keyVersionId, algorithm: 'ECDSA_SHA_256' });
    await aSigns();
    await signsWith(b, 'alias/payments', bKey);

    await kmsAction(b).call('UpdateAlias', { aliasName: 'alias/payments', keyId: bSecond.keyId });
    await signsWith(b, 'alias/payments', bSecond);
    await aSigns();

    await kmsAction(b).call('DeleteAlias', { aliasName: 'alias/payments' });
    expect(await codeOf(kmsAction(b).call('DescribeKey', { keyId: 'alias/payments' }))).toBe('Forbidden.AliasNotFound');
    await aSigns();
    expect(await codeOf(kmsAction(a).call('CreateAlias', { aliasName: 'alias/payments', keyId: aKey.keyId }))).toBe('Rejected.AlreadyExists');
    // A's keys by their demo aliases are unaffected by all of it.
    for (const k of gw.demo.keys.filter((k) => k.keySpec.startsWith('EC_P256'))) {
      await signsWith(a, k.alias, { keyId: k.keyId, keyVersionId: k.keyVersionId, algorithm: 'ECDSA_SHA_256' });
    }
  });
});
