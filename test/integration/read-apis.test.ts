import { randomBytes, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoCertificate } from '../../src/demo/pki.js';
import { openssl } from '../helpers/openssl.js';
import { openApiCall, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// The read ("discovery") actions — KMS DescribeKey, ListKeys, ListKeyVersions, DescribeKeyVersion, ListAliases,
// ListAliasesByKeyId and CAS ListCert — through the official clients, against a real gateway on a fresh token.

/* eslint-disable @typescript-eslint/no-explicit-any */
const require = createRequire(import.meta.url);
const K = require('@alicloud/kms20160120');
const casModule = require('@alicloud/cas20200407');
const openApiCore = require('@alicloud/openapi-core');

/** `@alicloud/kms20160120` (V1) with the read methods; its answers are flat models (`r.keyMetadata.keySpec`). */
function kms(c: Credentials) {
  const client = new K.default({ ...c, protocol: 'http', regionId: 'cn-hangzhou' });
  return {
    describeKey: (req: Record<string, unknown>): Promise<any> => client.describeKey(new K.DescribeKeyRequest(req)),
    listKeys: (req: Record<string, unknown> = {}): Promise<any> => client.listKeys(new K.ListKeysRequest(req)),
    listKeyVersions: (req: Record<string, unknown>): Promise<any> => client.listKeyVersions(new K.ListKeyVersionsRequest(req)),
    describeKeyVersion: (req: Record<string, unknown>): Promise<any> => client.describeKeyVersion(new K.DescribeKeyVersionRequest(req)),
    listAliases: (req: Record<string, unknown> = {}): Promise<any> => client.listAliases(new K.ListAliasesRequest(req)),
    listAliasesByKeyId: (req: Record<string, unknown>): Promise<any> => client.listAliasesByKeyId(new K.ListAliasesByKeyIdRequest(req)),
  };
}

/** `@alicloud/cas20200407` listCert (V3 signatures); the answer's body is `r.body.certList`, … */
function casListCert(c: Credentials, req: Record<string, unknown> = {}): Promise<any> {
  const client = new casModule.default(new openApiCore.$OpenApiUtil.Config({ ...c, protocol: 'http', regionId: 'cn-hangzhou' }));
  return client.listCert(new casModule.ListCertRequest(req));
}

/** The KMS SDK's error for a failing call: code `<Code>Error`, message `code: <status>, …`. */
async function kmsError(call: Promise<unknown>): Promise<{ code: string; status: number; data: Record<string, unknown> }> {
  try {
    await call;
  } catch (err) {
    const e = err as { code: string; message: string; data: Record<string, unknown> };
    const status = Number(/code: (\d{3})/.exec(e.message)?.[1]);
    return { code: e.code.replace(/Error$/, ''), status, data: e.data };
  }
  throw new Error('the call succeeded but should have failed');
}

const LIMITED = { accessKeyId: 'LTAIreadlimitedread01', secret: 'read-limited-secret', account: 'default' };
const OUTSIDER = { accessKeyId: 'LTAIreadoutsiderrd01', secret: 'read-outsider-secret', account: 'other-account' };
const asLimited = (): Credentials => ({ ...creds, accessKeyId: LIMITED.accessKeyId, accessKeySecret: LIMITED.secret });
const asOutsider = (): Credentials => ({ ...creds, accessKeyId: OUTSIDER.accessKeyId, accessKeySecret: OUTSIDER.secret });

/** Extra registry keys on the demo's token objects, so that lists have more than one page. */
const ROTATED = { keyId: randomUUID(), versions: [randomUUID(), randomUUID()], aliases: ['alias/read-rotated', 'alias/read-rotated-2'] };
const DISABLED = { keyId: randomUUID(), keyVersionId: randomUUID() };
const PENDING = { keyId: randomUUID(), keyVersionId: randomUUID() };
const FOREIGN = { keyId: randomUUID(), keyVersionId: randomUUID(), alias: 'alias/read-foreign' };
const WAREHOUSE_2 = { certificateId: randomUUID(), casIdentifier: randomBytes(13).toString('hex'), warehouseId: 2 };
const FOREIGN_CERT = { certificateId: randomUUID(), casIdentifier: randomBytes(13).toString('hex') };
const ROTATED_CREATED = '2024-03-04T05:06:07.890Z';

let gw: TestGateway;
let creds: Credentials;
const key = (alias: string) => gw.demo.keys.find((k) => k.alias === alias)!;
const cert = (keySpec: string): DemoCertificate => gw.demo.certificates.find((c) => c.keySpec === keySpec)!;
/** Every key the demo access key may use: the four demo keys and three extra ones of its account. */
const ownKeyIds = () => [...gw.demo.keys.map((k) => k.keyId), ROTATED.keyId, DISABLED.keyId, PENDING.keyId].sort();
const ownAliases = () => [...gw.demo.keys.map((k) => k.alias), ...ROTATED.aliases].sort();

beforeAll(async () => {
  gw = await startTestGateway({
    extraAccessKeys: [LIMITED, OUTSIDER],
    editRegistry(registry, demo) {
      const rsa3072 = registry.keys.find((k) => (k.aliases ?? []).includes('alias/demo-rsa-3072'))!;
      rsa3072.accessKeyIds = [demo.accessKeyId];
      const ec = registry.keys.find((k) => (k.aliases ?? []).includes('alias/demo-ec-p256'))!;
      const v = ec.versions[0]!;
      registry.keys.push({
        ...ec,
        keyId: ROTATED.keyId,
        aliases: ROTATED.aliases,
        versions: [
          { ...v, keyVersionId: ROTATED.versions[0]!, createdAt: ROTATED_CREATED },
          { ...v, keyVersionId: ROTATED.versions[1]!, createdAt: '2025-01-02T03:04:05Z' },
        ],
        primaryKeyVersion: ROTATED.versions[1]!,
        createdAt: ROTATED_CREATED,
        creator: 'ops-team',
        description: 'rotated once',
      });
      registry.keys.push({ ...ec, keyId: DISABLED.keyId, aliases: [], state: 'Disabled', versions: [{ ...v, keyVersionId: DISABLED.keyVersionId }] });
      registry.keys.push({ ...ec, keyId: PENDING.keyId, aliases: [], state: 'PendingDeletion', versions: [{ ...v, keyVersionId: PENDING.keyVersionId }] });
      registry.keys.push({ ...ec, keyId: FOREIGN.keyId, account: 'other-account', aliases: [FOREIGN.alias], versions: [{ ...v, keyVersionId: FOREIGN.keyVersionId }] });
      const ecCert = registry.certificates!.find((c) => c.keySpec === 'EC_P256')!;
      const copy = { ...ecCert, sslIdentifier: undefined, customIdentifier: undefined };
      registry.certificates!.push({ ...copy, ...WAREHOUSE_2 });
      registry.certificates!.push({ ...copy, ...FOREIGN_CERT, account: 'other-account' });
    },
  });
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

const KMS_DATE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
const REQUEST_ID = /^[0-9a-f-]{36}$/;

describe('DescribeKey', () => {
  for (const alias of ['alias/demo-rsa-2048', 'alias/demo-rsa-3072', 'alias/demo-ec-p256', 'alias/demo-ec-p256k']) {
    for (const by of ['GUID', 'alias'] as const) {
      it(`when ${alias} is described by ${by}, then its KeyMetadata is the demo key's`, async () => {
        const k = key(alias);
        const r = await kms(creds).describeKey({ keyId: by === 'GUID' ? k.keyId : k.alias });
        expect(r.requestId).toMatch(REQUEST_ID);
        const m = r.keyMetadata;
        expect(m).toMatchObject({
          keyId: k.keyId,
          keySpec: k.keySpec,
          keyUsage: 'SIGN/VERIFY',
          keyState: 'Enabled',
          protectionLevel: 'HSM',
          origin: 'Aliyun_KMS',
          arn: `acs:kms:cn-hangzhou:default:key/${k.keyId}`,
          creator: 'default',
          description: `demo ${k.keySpec} key`,
          primaryKeyVersion: k.keyVersionId,
          automaticRotation: 'Disabled',
        });
        expect(m.creationDate).toMatch(KMS_DATE);
        expect(Math.abs(Date.parse(m.creationDate) - Date.now())).toBeLessThan(3_600_000);
        expect(m.deleteDate).toBeUndefined();
      });
    }
  }

  it('when a key names its creator, creation date and primary version, then DescribeKey reports them', async () => {
    const m = (await kms(creds).describeKey({ keyId: 'alias/read-rotated-2' })).keyMetadata;
    expect(m).toMatchObject({
      keyId: ROTATED.keyId,
      creator: 'ops-team',
      creationDate: '2024-03-04T05:06:07Z',
      primaryKeyVersion: ROTATED.versions[1],
      description: 'rotated once',
    });
  });

  it('when a key is Disabled or PendingDeletion, then it is still described, with its state', async () => {
    expect((await kms(creds).describeKey({ keyId: DISABLED.keyId })).keyMetadata.keyState).toBe('Disabled');
    expect((await kms(creds).describeKey({ keyId: PENDING.keyId })).keyMetadata.keyState).toBe('PendingDeletion');
  });

  it('when the key GUID or alias is unknown, then it is Forbidden.KeyNotFound / Forbidden.AliasNotFound (404)', async () => {
    expect(await kmsError(kms(creds).describeKey({ keyId: randomUUID() }))).toMatchObject({ code: 'Forbidden.KeyNotFound', status: 404 });
    expect(await kmsError(kms(creds).describeKey({ keyId: 'alias/nope' }))).toMatchObject({ code: 'Forbidden.AliasNotFound', status: 404 });
  });

  it('when KeyId is missing, then it is MissingParameter (400)', async () => {
    expect(await kmsError(kms(creds).describeKey({}))).toMatchObject({ code: 'MissingParameter', status: 400 });
  });

  it('when Format=XML is asked, then the answer is XML under a KMS root', async () => {
    const k = key('alias/demo-ec-p256');
    const r = await openApiCall(creds, 'DescribeKey', '2016-01-20', { KeyId: k.alias, Format: 'XML' }, { bodyType: 'string' });
    const xml = String(r.body);
    expect(xml.startsWith('<?xml version="1.0" encoding="UTF-8"?><KMS><KeyMetadata>')).toBe(true);
    expect(xml).toContain(`<KeyId>${k.keyId}</KeyId>`);
    expect(xml).toContain('<KeySpec>EC_P256</KeySpec>');
  });
});

describe('ListKeys', () => {
  it('when no paging is given, then the first 10 keys come, ordered by KeyId, with their ARNs', async () => {
    const r = await kms(creds).listKeys();
    expect(r).toMatchObject({ totalCount: ownKeyIds().length, pageNumber: 1, pageSize: 10 });
    expect(r.requestId).toMatch(REQUEST_ID);
    expect(r.keys.key.map((k: any) => k.keyId)).toEqual(ownKeyIds());
    for (const k of r.keys.key) expect(k.keyArn).toBe(`acs:kms:cn-hangzhou:default:key/${k.keyId}`);
  });

  for (const pageSize of [1, 2]) {
    it(`when every page of PageSize ${pageSize} is walked, then each key comes once and TotalCount is the key count on every page`, async () => {
      const seen: string[] = [];
      const total = ownKeyIds().length;
      const pages = Math.ceil(total / pageSize);
      for (let pageNumber = 1; pageNumber <= pages; pageNumber++) {
        const r = await kms(creds).listKeys({ pageNumber, pageSize });
        expect(r).toMatchObject({ totalCount: total, pageNumber, pageSize });
        expect(r.keys.key.length).toBe(pageNumber < pages ? pageSize : total - (pages - 1) * pageSize);
        seen.push(...r.keys.key.map((k: any) => k.keyId));
      }
      expect(seen).toEqual(ownKeyIds());
      const past = await kms(creds).listKeys({ pageNumber: pages + 1, pageSize });
      expect(past.totalCount).toBe(total);
      expect(past.keys?.key ?? []).toEqual([]);
    });
  }

  for (const [name, request] of [
    ['PageSize', { pageSize: 0 }],
    ['PageSize', { pageSize: 101 }],
    ['PageNumber', { pageNumber: 0 }],
  ] as const) {
    it(`when ${name} is ${Object.values(request)[0]}, then it is InvalidParameter (400) naming ${name}`, async () => {
      const e = await kmsError(kms(creds).listKeys(request));
      expect(e).toMatchObject({ code: 'InvalidParameter', status: 400 });
      expect(String(e.data.Message)).toContain(`"${name}"`);
    });
  }

  it('when Format=XML is asked, then each key is a <Key> inside <Keys>', async () => {
    const r = await openApiCall(creds, 'ListKeys', '2016-01-20', { PageSize: '2', Format: 'XML' }, { bodyType: 'string' });
    const xml = String(r.body);
    expect(xml).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?><KMS><Keys><Key><KeyId>[^<]+<\/KeyId><KeyArn>[^<]+<\/KeyArn><\/Key><Key>/);
    expect(xml).toContain(`<TotalCount>${ownKeyIds().length}</TotalCount><PageNumber>1</PageNumber><PageSize>2</PageSize>`);
  });
});

describe('ListKeyVersions and DescribeKeyVersion', () => {
  it('when a demo key lists its versions, then its one version comes with its creation date', async () => {
    const k = key('alias/demo-rsa-2048');
    const r = await kms(creds).listKeyVersions({ keyId: k.alias });
    expect(r).toMatchObject({ totalCount: 1, pageNumber: 1, pageSize: 10 });
    expect(r.keyVersions.keyVersion).toHaveLength(1);
    expect(r.keyVersions.keyVersion[0]).toMatchObject({ keyId: k.keyId, keyVersionId: k.keyVersionId });
    expect(r.keyVersions.keyVersion[0].creationDate).toMatch(KMS_DATE);
  });

  it('when a key with two versions is listed with PageSize 1, then each page holds one version, oldest first', async () => {
    const first = await kms(creds).listKeyVersions({ keyId: ROTATED.keyId, pageSize: 1 });
    const second = await kms(creds).listKeyVersions({ keyId: ROTATED.keyId, pageSize: 1, pageNumber: 2 });
    expect(first).toMatchObject({ totalCount: 2, pageNumber: 1, pageSize: 1 });
    expect(second).toMatchObject({ totalCount: 2, pageNumber: 2, pageSize: 1 });
    expect(first.keyVersions.keyVersion).toEqual([{ keyId: ROTATED.keyId, keyVersionId: ROTATED.versions[0], creationDate: '2024-03-04T05:06:07Z' }]);
    expect(second.keyVersions.keyVersion).toEqual([{ keyId: ROTATED.keyId, keyVersionId: ROTATED.versions[1], creationDate: '2025-01-02T03:04:05Z' }]);
  });

  it('when ListKeyVersions has an invalid PageSize, then it is InvalidParameter (400)', async () => {
    expect(await kmsError(kms(creds).listKeyVersions({ keyId: ROTATED.keyId, pageSize: 500 }))).toMatchObject({ code: 'InvalidParameter', status: 400 });
  });

  it('when a demo key version is described by alias and by GUID, then it is that version', async () => {
    for (const alias of ['alias/demo-ec-p256k', 'alias/demo-rsa-3072']) {
      const k = key(alias);
      for (const keyId of [k.keyId, k.alias]) {
        const r = await kms(creds).describeKeyVersion({ keyId, keyVersionId: k.keyVersionId });
        expect(r.requestId).toMatch(REQUEST_ID);
        expect(r.keyVersion).toMatchObject({ keyId: k.keyId, keyVersionId: k.keyVersionId });
        expect(r.keyVersion.creationDate).toMatch(KMS_DATE);
      }
    }
  });

  it('when the version is unknown or belongs to another key, then it is InvalidParameter (400)', async () => {
    const k = key('alias/demo-ec-p256');
    expect(await kmsError(kms(creds).describeKeyVersion({ keyId: k.keyId, keyVersionId: randomUUID() }))).toMatchObject({ code: 'InvalidParameter', status: 400 });
    const other = key('alias/demo-rsa-2048');
    expect(await kmsError(kms(creds).describeKeyVersion({ keyId: k.keyId, keyVersionId: other.keyVersionId }))).toMatchObject({ code: 'InvalidParameter', status: 400 });
  });

  it('when a Disabled key version is described, then it is answered', async () => {
    const r = await kms(creds).describeKeyVersion({ keyId: DISABLED.keyId, keyVersionId: DISABLED.keyVersionId });
    expect(r.keyVersion.keyVersionId).toBe(DISABLED.keyVersionId);
  });
});

describe('ListAliases and ListAliasesByKeyId', () => {
  it('when the aliases are listed, then every alias of the caller\'s keys comes, by name, with its key and ARN', async () => {
    const r = await kms(creds).listAliases();
    expect(r).toMatchObject({ totalCount: ownAliases().length, pageNumber: 1, pageSize: 10 });
    expect(r.aliases.alias.map((a: any) => a.aliasName)).toEqual(ownAliases());
    for (const k of gw.demo.keys) {
      expect(r.aliases.alias).toContainEqual({ keyId: k.keyId, aliasName: k.alias, aliasArn: `acs:kms:cn-hangzhou:default:${k.alias}` });
    }
  });

  it('when the aliases are walked with PageSize 2, then each comes once and TotalCount is the alias count on every page', async () => {
    const seen: string[] = [];
    const total = ownAliases().length;
    const pages = Math.ceil(total / 2);
    for (let pageNumber = 1; pageNumber <= pages; pageNumber++) {
      const r = await kms(creds).listAliases({ pageNumber, pageSize: 2 });
      expect(r).toMatchObject({ totalCount: total, pageNumber, pageSize: 2 });
      expect(r.aliases.alias).toHaveLength(pageNumber < pages ? 2 : total - (pages - 1) * 2);
      seen.push(...r.aliases.alias.map((a: any) => a.aliasName));
    }
    expect(seen).toEqual(ownAliases());
    const past = await kms(creds).listAliases({ pageNumber: pages + 1, pageSize: 2 });
    expect(past.totalCount).toBe(total);
    expect(past.aliases?.alias ?? []).toEqual([]);
  });

  it('when ListAliases has PageSize 101, then it is InvalidParameter (400)', async () => {
    expect(await kmsError(kms(creds).listAliases({ pageSize: 101 }))).toMatchObject({ code: 'InvalidParameter', status: 400 });
  });

  it('when each demo key lists its aliases by GUID, then it gets its one alias', async () => {
    for (const k of gw.demo.keys) {
      const r = await kms(creds).listAliasesByKeyId({ keyId: k.keyId });
      expect(r).toMatchObject({ totalCount: 1, pageNumber: 1, pageSize: 10 });
      expect(r.aliases.alias).toEqual([{ keyId: k.keyId, aliasName: k.alias, aliasArn: `acs:kms:cn-hangzhou:default:${k.alias}` }]);
    }
  });

  it('when a key with two aliases is asked by one of them, then both come, by name', async () => {
    const r = await kms(creds).listAliasesByKeyId({ keyId: 'alias/read-rotated-2' });
    expect(r.totalCount).toBe(2);
    expect(r.aliases.alias.map((a: any) => a.aliasName)).toEqual(ROTATED.aliases);
    expect(r.aliases.alias.every((a: any) => a.keyId === ROTATED.keyId)).toBe(true);
  });

  it('when a key has no alias, then the list is empty with TotalCount 0', async () => {
    const r = await kms(creds).listAliasesByKeyId({ keyId: DISABLED.keyId });
    expect(r.totalCount).toBe(0);
    expect(r.aliases?.alias ?? []).toEqual([]);
  });
});

describe('what a caller may see', () => {
  it('when a caller of another account lists keys and aliases, then it sees only its own account\'s', async () => {
    const keys = await kms(asOutsider()).listKeys();
    expect(keys.totalCount).toBe(1);
    expect(keys.keys.key).toEqual([{ keyId: FOREIGN.keyId, keyArn: `acs:kms:cn-hangzhou:other-account:key/${FOREIGN.keyId}` }]);
    const aliases = await kms(asOutsider()).listAliases();
    expect(aliases.totalCount).toBe(1);
    expect(aliases.aliases.alias).toEqual([{ keyId: FOREIGN.keyId, aliasName: FOREIGN.alias, aliasArn: `acs:kms:cn-hangzhou:other-account:${FOREIGN.alias}` }]);
  });

  it('when a caller of another account describes a demo key, then it is Forbidden.KeyNotFound / Forbidden.AliasNotFound (404)', async () => {
    const k = key('alias/demo-rsa-2048');
    expect(await kmsError(kms(asOutsider()).describeKey({ keyId: k.keyId }))).toMatchObject({ code: 'Forbidden.KeyNotFound', status: 404 });
    expect(await kmsError(kms(asOutsider()).describeKey({ keyId: k.alias }))).toMatchObject({ code: 'Forbidden.AliasNotFound', status: 404 });
    expect(await kmsError(kms(asOutsider()).listKeyVersions({ keyId: k.keyId }))).toMatchObject({ code: 'Forbidden.KeyNotFound', status: 404 });
    expect(await kmsError(kms(asOutsider()).describeKeyVersion({ keyId: k.keyId, keyVersionId: k.keyVersionId }))).toMatchObject({ code: 'Forbidden.KeyNotFound', status: 404 });
    expect(await kmsError(kms(asOutsider()).listAliasesByKeyId({ keyId: k.alias }))).toMatchObject({ code: 'Forbidden.AliasNotFound', status: 404 });
  });

  it('when the owner describes the other account\'s key, then it is Forbidden.KeyNotFound (404) too', async () => {
    expect(await kmsError(kms(creds).describeKey({ keyId: FOREIGN.keyId }))).toMatchObject({ code: 'Forbidden.KeyNotFound', status: 404 });
  });

  it('when an ACL-limited access key lists keys and aliases, then the key its ACL excludes is not there', async () => {
    const hidden = key('alias/demo-rsa-3072');
    const keys = await kms(asLimited()).listKeys({ pageSize: 100 });
    expect(keys.totalCount).toBe(ownKeyIds().length - 1);
    expect(keys.keys.key.map((k: any) => k.keyId)).toEqual(ownKeyIds().filter((id) => id !== hidden.keyId));
    const aliases = await kms(asLimited()).listAliases({ pageSize: 100 });
    expect(aliases.totalCount).toBe(ownAliases().length - 1);
    expect(aliases.aliases.alias.map((a: any) => a.aliasName)).not.toContain(hidden.alias);
  });

  it('when an ACL-limited access key describes the key its ACL excludes, then it is Forbidden.NoPermission (403)', async () => {
    const hidden = key('alias/demo-rsa-3072');
    for (const keyId of [hidden.keyId, hidden.alias]) {
      expect(await kmsError(kms(asLimited()).describeKey({ keyId }))).toMatchObject({ code: 'Forbidden.NoPermission', status: 403 });
    }
    expect(await kmsError(kms(asLimited()).listKeyVersions({ keyId: hidden.keyId }))).toMatchObject({ code: 'Forbidden.NoPermission', status: 403 });
    expect(await kmsError(kms(asLimited()).describeKeyVersion({ keyId: hidden.keyId, keyVersionId: hidden.keyVersionId }))).toMatchObject({
      code: 'Forbidden.NoPermission',
      status: 403,
    });
    expect(await kmsError(kms(asLimited()).listAliasesByKeyId({ keyId: hidden.keyId }))).toMatchObject({ code: 'Forbidden.NoPermission', status: 403 });
  });

  it('when an ACL-limited access key describes a key its account allows it, then it is answered', async () => {
    const k = key('alias/demo-ec-p256');
    expect((await kms(asLimited()).describeKey({ keyId: k.alias })).keyMetadata.keyId).toBe(k.keyId);
  });
});

/** What openssl reads from a certificate PEM: subject and issuer CN, and validity in epoch milliseconds. */
function opensslFacts(pem: string): { commonName: string; issuer: string; beforeDate: number; afterDate: number } {
  const out = openssl({ 'cert.pem': pem }, (p) => ['x509', '-in', p('cert.pem'), '-noout', '-subject', '-issuer', '-startdate', '-enddate', '-nameopt', 'multiline']);
  const cns = [...out.matchAll(/commonName\s*=\s*(.+)/g)].map((m) => m[1]!.trim());
  return {
    commonName: cns[0]!,
    issuer: cns[1]!,
    beforeDate: Date.parse(/notBefore=(.+)/.exec(out)![1]!),
    afterDate: Date.parse(/notAfter=(.+)/.exec(out)![1]!),
  };
}

describe('CAS ListCert through @alicloud/cas20200407 (V3)', () => {
  it('when the certificates are listed, then the demo leaves come with their CommonName, Issuer and dates', async () => {
    const r = await casListCert(creds, { warehouseId: 1 });
    const body = r.body;
    expect(body).toMatchObject({ currentPage: 1, showSize: 50, totalCount: gw.demo.certificates.length });
    expect(body.requestId).toMatch(REQUEST_ID);
    expect(body.certList.map((c: any) => c.identifier)).toEqual(gw.demo.certificates.map((c) => c.casIdentifier).sort());
    for (const demo of gw.demo.certificates) {
      const entry = body.certList.find((c: any) => c.identifier === demo.casIdentifier);
      const facts = opensslFacts(demo.certificatePem);
      expect(facts.commonName).toMatch(/\.demo\.hsm-gateway$/);
      expect(facts.issuer).toBe(demo.keySpec === 'EC_SM2' ? 'hsm-gateway Demo SM2 Root CA' : 'hsm-gateway Demo Intermediate CA');
      expect(entry).toMatchObject({
        commonName: facts.commonName,
        issuer: facts.issuer,
        beforeDate: facts.beforeDate,
        afterDate: facts.afterDate,
        certType: 'CERT',
        existPrivateKey: true,
        sourceType: 'upload',
        status: 'ISSUE',
        whId: 1,
      });
      expect(typeof entry.beforeDate).toBe('number');
      expect(typeof entry.whInstanceId).toBe('string');
      expect(typeof entry.sans).toBe('string');
    }
  });

  it('when no WarehouseId is given, then the caller\'s certificates of every warehouse come, not another account\'s', async () => {
    const r = await casListCert(creds);
    expect(r.body.totalCount).toBe(gw.demo.certificates.length + 1);
    const ids = r.body.certList.map((c: any) => c.identifier);
    expect(ids).toContain(WAREHOUSE_2.casIdentifier);
    expect(ids).not.toContain(FOREIGN_CERT.casIdentifier);
  });

  it('when WarehouseId 2 is asked, then only its certificate comes', async () => {
    const r = await casListCert(creds, { warehouseId: 2 });
    expect(r.body.totalCount).toBe(1);
    expect(r.body.certList).toHaveLength(1);
    expect(r.body.certList[0]).toMatchObject({ identifier: WAREHOUSE_2.casIdentifier, whId: 2, commonName: opensslFacts(cert('EC_P256').certificatePem).commonName });
  });

  it('when an unused WarehouseId is asked, then the list is empty with TotalCount 0', async () => {
    const r = await casListCert(creds, { warehouseId: 99 });
    expect(r.body.totalCount).toBe(0);
    expect(r.body.certList ?? []).toEqual([]);
  });

  it('when a KeyWord matches part of a CommonName, then only the matching certificates come', async () => {
    const r = await casListCert(creds, { keyWord: 'CERT-RSA' });
    expect(r.body.totalCount).toBe(1);
    expect(r.body.certList[0].identifier).toBe(cert('RSA_2048').casIdentifier);
    const ec = await casListCert(creds, { keyWord: 'demo-cert-ec', warehouseId: 1 });
    expect(ec.body.certList.map((c: any) => c.identifier)).toEqual([cert('EC_P256').casIdentifier]);
  });

  it('when a KeyWord is part of an Identifier, then that certificate comes', async () => {
    const id = cert('EC_P256').casIdentifier;
    const r = await casListCert(creds, { keyWord: id.slice(3, 15) });
    expect(r.body.certList.map((c: any) => c.identifier)).toEqual([id]);
  });

  it('when a KeyWord matches nothing, then the list is empty', async () => {
    const r = await casListCert(creds, { keyWord: 'no-such-certificate' });
    expect(r.body.totalCount).toBe(0);
  });

  it('when Status, CertType or SourceType filter, then only the matching certificates come', async () => {
    expect((await casListCert(creds, { status: 'ISSUE', certType: 'CERT', sourceType: 'upload' })).body.totalCount).toBe(gw.demo.certificates.length + 1);
    expect((await casListCert(creds, { status: 'REVOKE' })).body.totalCount).toBe(0);
    expect((await casListCert(creds, { certType: 'CA' })).body.totalCount).toBe(0);
    expect((await casListCert(creds, { sourceType: 'aliyun' })).body.totalCount).toBe(0);
  });

  it('when ShowSize is 1, then each page holds one certificate and TotalCount stays the certificate count', async () => {
    const seen: string[] = [];
    for (let currentPage = 1; currentPage <= gw.demo.certificates.length + 2; currentPage++) {
      const r = await casListCert(creds, { currentPage, showSize: 1 });
      expect(r.body).toMatchObject({ totalCount: gw.demo.certificates.length + 1, currentPage, showSize: 1 });
      seen.push(...(r.body.certList ?? []).map((c: any) => c.identifier));
    }
    expect(seen).toEqual([...gw.demo.certificates.map((c) => c.casIdentifier), WAREHOUSE_2.casIdentifier].sort());
  });

  it('when ShowSize is 101, then it is InvalidParameter (400) naming ShowSize', async () => {
    try {
      await casListCert(creds, { showSize: 101 });
    } catch (err) {
      const e = err as { code: string; statusCode: number; message: string };
      expect(e.code).toBe('InvalidParameter');
      expect(e.statusCode).toBe(400);
      expect(e.message).toContain('"ShowSize"');
      return;
    }
    throw new Error('the call succeeded but should have failed');
  });

  it('when a caller of another account lists certificates, then it sees none of the demo certificates', async () => {
    const r = await casListCert(asOutsider());
    expect(r.body.certList.map((c: any) => c.identifier)).toEqual([FOREIGN_CERT.casIdentifier]);
  });
});
