import { createHash, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.js';
import { PolicyDocumentSchema, type PolicyDocument } from '../../src/keys/policy.js';
import { casClient, kmsClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Who may do what on which key: account × key ACL × key state × RAM-style policy, through the official clients.
const secret = 'access-control-secret-0001';
const idOf = (name: string) => `LTAI${name.padEnd(18, 'x')}`;

let gw: TestGateway;
const DISABLED = { keyId: randomUUID(), keyVersionId: randomUUID() };
const arnOf = (keyId: string) => `acs:kms:cn-hangzhou:default:key/${keyId}`;
const key = (spec: string) => gw.demo.keys.find((k) => k.keySpec === spec)!;

/** The callers: the demo access key (no policy) and six more, each with its account and policies. */
const CALLERS = ['owner', 'other', 'aclOut', 'reader', 'ecSigner', 'denyEc', 'casOnly'] as const;
type CallerName = (typeof CALLERS)[number];
function accessKeysOf(ecKeyArn: string): Array<{ name: CallerName; account: string; policies?: PolicyDocument[] }> {
  return [
    { name: 'other', account: 'elsewhere' },
    { name: 'aclOut', account: 'default' },
    { name: 'reader', account: 'default', policies: [{ Statement: [{ Effect: 'Allow', Action: ['kms:Describe*', 'kms:List*', 'kms:GetPublicKey'], Resource: '*' }] }] },
    { name: 'ecSigner', account: 'default', policies: [{ Statement: [{ Effect: 'Allow', Action: ['kms:AsymmetricSign', 'kms:ListKeys'], Resource: ecKeyArn }] }] },
    {
      name: 'denyEc',
      account: 'default',
      policies: [
        { Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] },
        { Statement: [{ Effect: 'Deny', Action: 'kms:AsymmetricSign', Resource: ecKeyArn }] },
      ],
    },
    { name: 'casOnly', account: 'default', policies: [{ Statement: [{ Effect: 'Allow', Action: 'yundun-cert:Sign', Resource: '*' }] }] },
  ];
}

beforeAll(async () => {
  gw = await startTestGateway({
    editRegistry(registry, demo) {
      // The RSA-2048 key's ACL names only the demo access key; a disabled copy of the EC key exists.
      registry.keys.find((k) => k.keySpec === 'RSA_2048')!.accessKeyIds = [demo.accessKeyId];
      const ec = registry.keys.find((k) => k.keySpec === 'EC_P256')!;
      registry.keys.push({ ...ec, keyId: DISABLED.keyId, aliases: [], state: 'Disabled', versions: [{ ...ec.versions[0]!, keyVersionId: DISABLED.keyVersionId }] });
    },
  });
  // The policies name the EC key's ARN, known only now: add the access keys and apply them as SIGHUP would.
  const config = loadConfig(gw.demo.configFile, {});
  for (const a of accessKeysOf(arnOf(key('EC_P256').keyId))) {
    const file = join(gw.home, 'secrets', `${idOf(a.name)}.secret`);
    writeFileSync(file, secret, { mode: 0o600 });
    config.auth.accessKeys.push({
      accessKeyId: idOf(a.name),
      secret: { file },
      account: a.account,
      enabled: true,
      ...(a.policies ? { policies: a.policies.map((p) => PolicyDocumentSchema.parse(p)) } : {}),
    });
  }
  await gw.gateway.reload(config);
});
afterAll(async () => {
  await gw?.close();
});

const creds = (who: CallerName): Credentials =>
  who === 'owner'
    ? { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret }
    : { endpoint: gw.endpoint, accessKeyId: idOf(who), accessKeySecret: secret };
async function signAs(who: CallerName, keyIdOrAlias: string, keyVersionId: string, algorithm: string): Promise<string> {
  try {
    await kmsClient(creds(who)).asymmetricSign({ keyId: keyIdOrAlias, keyVersionId, algorithm, digest: createHash('sha256').update(who).digest('base64') });
    return 'OK';
  } catch (err) {
    return (err as { data?: { Code?: string } }).data?.Code ?? String(err);
  }
}

describe('AsymmetricSign: caller × key (ACL, state, policy)', () => {
  const matrix: Array<[CallerName, string, string]> = [
    // caller, key, expected
    ['owner', 'EC_P256', 'OK'],
    ['owner', 'RSA_2048', 'OK'],
    ['owner', 'DISABLED', 'Rejected.Disabled'],
    ['other', 'EC_P256', 'Forbidden.KeyNotFound'],
    ['other', 'DISABLED', 'Forbidden.KeyNotFound'],
    ['aclOut', 'EC_P256', 'OK'],
    ['aclOut', 'RSA_2048', 'Forbidden.NoPermission'],
    ['reader', 'EC_P256', 'Forbidden.NoPermission'],
    ['ecSigner', 'EC_P256', 'OK'],
    ['ecSigner', 'EC_P256K', 'Forbidden.NoPermission'],
    ['ecSigner', 'DISABLED', 'Forbidden.NoPermission'],
    ['denyEc', 'EC_P256', 'Forbidden.NoPermission'],
    ['denyEc', 'EC_P256K', 'OK'],
    ['casOnly', 'EC_P256', 'Forbidden.NoPermission'],
  ];
  for (const [who, spec, expected] of matrix) {
    it(`when ${who} signs with the ${spec} key, then ${expected}`, async () => {
      const k = spec === 'DISABLED' ? DISABLED : key(spec);
      const algorithm = spec.startsWith('RSA') ? 'RSA_PKCS1_SHA_256' : 'ECDSA_SHA_256';
      expect(await signAs(who, k.keyId, k.keyVersionId, algorithm)).toBe(expected);
    });
  }

  it('when an alias points at a key the policy does not allow, then the alias does not reach it', async () => {
    expect(await signAs('ecSigner', 'alias/demo-ec-p256k', key('EC_P256K').keyVersionId, 'ECDSA_SHA_256')).toBe('Forbidden.NoPermission');
    expect(await signAs('ecSigner', 'alias/demo-ec-p256', key('EC_P256').keyVersionId, 'ECDSA_SHA_256')).toBe('OK');
  });
});

describe('reads and CAS under policies', () => {
  it('when the reader lists keys, then it sees them; when the EC signer lists, then only the key its policy names', async () => {
    const reader = await openApiCall(creds('reader'), 'ListKeys', '2016-01-20', { PageSize: '100' });
    expect(reader.body.TotalCount).toBeGreaterThanOrEqual(gw.demo.keys.length);
    const ec = await openApiCall(creds('ecSigner'), 'ListKeys', '2016-01-20', { PageSize: '100' });
    expect(ec.body.Keys.Key.map((k: { KeyId: string }) => k.KeyId)).toEqual([key('EC_P256').keyId]);
  });

  it('when a CAS-only key signs with CAS, then it works; KMS certificate signing is refused', async () => {
    const cert = gw.demo.certificates.find((c) => c.keySpec === 'EC_P256')!;
    const r = await casClient(creds('casOnly')).sign({ certIdentifier: cert.casIdentifier, message: 'm', messageType: 'RAW', signingAlgorithm: 'SHA256withECDSA' });
    expect(r.statusCode).toBe(200);
    await expect(
      openApiCall(creds('casOnly'), 'CertificatePrivateKeySign', '2016-01-20', { CertificateId: cert.certificateId, Algorithm: 'ECDSA_SHA_256', Message: 'bQ==' }),
    ).rejects.toMatchObject({ code: 'Forbidden.NoPermission', statusCode: 403 });
  });
});
