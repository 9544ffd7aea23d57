import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { RegistryObjects } from '../../src/keys/registry-objects.js';
import { postgresRecordStore, tokenRecordStore } from '../../src/keys/registry-migration.js';
import { postgresStoreOf } from '../../src/open-registry.js';
import { openToken } from '../../src/open-tokens.js';
import { certificatePublicKey, opensslVerifyDigest, opensslVerifyMessage } from '../helpers/openssl.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { MAIN, freePort, startGatewayProcess, type Running } from '../helpers/processes.js';
import { kmsAction, kmsClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// registry migrate (#17): a token registry with demo-like content → PostgreSQL → a gateway on registry.store: postgres
// signs with what was moved (the official SDK, openssl verifies) → back to the emptied token registry, equal to the
// original record for record (secrets included). Real SoftHSMv2 token, real PostgreSQL, the CLI as an operator runs it.
let home: string;
let demo: DemoInfo;
let db: TestPostgres;
/** registry.store: token, with registry.postgres beside it (the state before the switch). */
let tokenConfig: string;
/** The same with registry.store: postgres (after the switch). */
let pgConfig: string;
let gateway: Running | undefined;
let endpoint: string;

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(config: string, args: string[]): Promise<CliResult> {
  return new Promise((done) => {
    execFile(process.execPath, [MAIN, '--config', config, ...args], { env: { ...process.env, HSM_GATEWAY_CONFIG: '' }, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) =>
      done({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
    );
  });
}

async function json(config: string, args: string[]): Promise<any> {
  const r = await cli(config, [...args, '--json']);
  if (r.code !== 0) throw new Error(`hsm-gateway ${args.join(' ')} → ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Every record of one store, secrets in clear, as sorted canonical JSON: what "lossless" is measured against. */
async function recordsOf(store: 'token' | 'postgres'): Promise<string[]> {
  const loaded = loadConfig(tokenConfig, {});
  const token = openToken('default', loaded.hsm, quiet, { sessions: 1, healthIntervalMs: 0 });
  const postgres = store === 'postgres' ? postgresStoreOf(loaded, 'test', quiet) : undefined;
  try {
    const { records } = await (postgres ? postgresRecordStore(postgres, token) : tokenRecordStore(token)).readAll();
    return records.map((r) => `${r.kind}:${r.id} ${canonical(r.record)}`).sort();
  } finally {
    await postgres?.records.close();
    await token.close();
  }
}

const canonical = (value: unknown): string =>
  JSON.stringify(value, (_k, v: unknown) => (v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v));

/** Removes every registry record from the token (not the keys): the empty token registry a migration back needs. */
async function emptyTokenRegistry(): Promise<void> {
  const token = openToken('default', loadConfig(tokenConfig, {}).hsm, quiet, { sessions: 1, healthIntervalMs: 0 });
  try {
    await token.admin((p11, session) => {
      const objects = new RegistryObjects();
      for (const r of objects.readAll(p11, session).records) objects.remove(p11, session, r.kind, r.id);
    });
  } finally {
    await token.close();
  }
}


const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string; data?: { Code?: string } }) => e.data?.Code ?? e.code);
const digest = createHash('sha256').update('registry migrate').digest();

// What the token registry holds before the migration (made through the CLI, as an operator would).
const made = {
  rsa: undefined as any,
  rotated: undefined as any,
  sharedDefault: undefined as any,
  sharedBilling: undefined as any,
  disabled: undefined as any,
  pending: undefined as any,
  keyDefault: undefined as { accessKeyId: string; secrets: string[] } | undefined,
  keyBilling: undefined as { accessKeyId: string; secrets: string[] } | undefined,
};
let original: string[];
let certsBefore: any[];

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-registry-migrate-'));
  db = await startPostgres();
  demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  const base = parse(readFileSync(demo.configFile, 'utf8'));
  writeFileSync(join(home, 'pg-password'), `${db.password}\n`, { mode: 0o600 });
  const postgres = { url: `postgres://hsm_gateway@127.0.0.1:${db.port}/hsm_gateway`, password: { file: join(home, 'pg-password') } };
  base.logging = { level: 'warn' };
  tokenConfig = join(home, 'token.yaml');
  writeFileSync(tokenConfig, stringify({ ...base, registry: { store: 'token', postgres } }));
  pgConfig = join(home, 'pg.yaml');
  writeFileSync(pgConfig, stringify({ ...base, registry: { store: 'postgres', postgres } }));

  // Demo-like content beyond the demo's own keys and certificates (with their chains): several specs, a rotated key,
  // one alias name in two accounts, a disabled key, a key pending deletion, access keys of two accounts with a policy
  // and a rotated secret (two live secrets).
  made.rsa = await json(tokenConfig, ['keys', 'create', '--spec', 'RSA_2048', '--alias', 'alias/mig-rsa', '--description', 'to be migrated']);
  const p256 = await json(tokenConfig, ['keys', 'create', '--spec', 'EC_P256', '--alias', 'alias/mig-rotated']);
  made.rotated = await json(tokenConfig, ['keys', 'rotate', p256.keyId]);
  made.sharedDefault = await json(tokenConfig, ['keys', 'create', '--spec', 'EC_P256K', '--alias', 'alias/shared']);
  made.sharedBilling = await json(tokenConfig, ['keys', 'create', '--spec', 'EC_P256', '--account', 'billing', '--alias', 'alias/shared']);
  made.disabled = await json(tokenConfig, ['keys', 'create', '--spec', 'EC_P256', '--alias', 'alias/mig-disabled']);
  await json(tokenConfig, ['keys', 'disable', made.disabled.keyId]);
  made.pending = await json(tokenConfig, ['keys', 'create', '--spec', 'RSA_3072', '--account', 'billing']);
  await json(tokenConfig, ['keys', 'schedule-deletion', made.pending.keyId, '--days', '7']);
  const first = await json(tokenConfig, ['accounts', 'create', '--account', 'default', '--description', 'migrated']);
  const second = await json(tokenConfig, ['accounts', 'rotate-secret', first.accessKeyId]);
  made.keyDefault = { accessKeyId: first.accessKeyId, secrets: [second.accessKeySecret, first.accessKeySecret] };
  const policy = join(home, 'billing-policy.json');
  writeFileSync(policy, JSON.stringify({ Version: '1', Statement: [{ Effect: 'Allow', Action: ['kms:*'], Resource: ['acs:kms:*:billing:*'] }] }));
  const billing = await json(tokenConfig, ['accounts', 'create', '--account', 'billing', '--policy', policy]);
  made.keyBilling = { accessKeyId: billing.accessKeyId, secrets: [billing.accessKeySecret] };
  original = await recordsOf('token');
  certsBefore = await json(tokenConfig, ['certs', 'list']);
}, 300_000);

afterAll(async () => {
  await gateway?.stop();
  await db?.close();
  rmSync(home, { recursive: true, force: true });
});

const as = (key: { accessKeyId: string; secrets: string[] }, secret = key.secrets[0]!): Credentials => ({ endpoint, accessKeyId: key.accessKeyId, accessKeySecret: secret });

describe('registry migrate --from token --to postgres, and back', () => {
  it('when the PostgreSQL registry is not prepared, then the migration says to run registry init first (exit 3)', async () => {
    const r = await cli(tokenConfig, ['registry', 'migrate', '--from', 'token', '--to', 'postgres']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/run "hsm-gateway registry init" first/);
  }, 60_000);

  it('when the token registry is moved to PostgreSQL, then every record is there (counts per kind) and no secret is in a dump', async () => {
    expect((await cli(tokenConfig, ['registry', 'init'])).code).toBe(0);
    const r = await cli(tokenConfig, ['registry', 'migrate', '--from', 'token', '--to', 'postgres', '--json']);
    expect(r.stderr).toContain('the token registry was left as it was');
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout);
    const keys = original.filter((l) => l.startsWith('key:'));
    expect(result).toMatchObject({ from: 'token', to: 'postgres', verified: true, skipped: 0 });
    expect(result.counts).toMatchObject({
      keys: keys.length,
      disabledKeys: 1,
      pendingDeletionKeys: 1,
      certificates: original.filter((l) => l.startsWith('certificate:')).length,
      accessKeys: 2,
      accessKeySecrets: 3,
      policies: 1,
      accounts: 2,
    });
    expect(result.counts.keyVersions).toBe(keys.length + 1);
    expect(result.counts.aliases).toBeGreaterThanOrEqual(keys.length - 1);
    expect(result.counts.certificateChainLinks).toBeGreaterThan(0);
    expect(await recordsOf('postgres')).toEqual(original);

    const text = await cli(tokenConfig, ['registry', 'history', '--limit', '1000']);
    expect(text.code).toBe(0);
    const dump = db.dump();
    expect(dump).toContain(made.keyDefault!.accessKeyId);
    expect(dump).toContain(made.rotated.keyId);
    for (const secret of [...made.keyDefault!.secrets, ...made.keyBilling!.secrets]) {
      for (const form of [secret, Buffer.from(secret).toString('hex'), Buffer.from(secret).toString('base64')]) {
        expect(dump).not.toContain(form);
        expect(text.stdout).not.toContain(form);
      }
    }
  }, 120_000);

  it('when it is run again, then the non-empty target is refused (exit 1) and nothing is written', async () => {
    const before = db.dump().length;
    const r = await cli(tokenConfig, ['registry', 'migrate', '--from', 'token', '--to', 'postgres']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the PostgreSQL registry is not empty \(\d+ accessKey records, \d+ certificate records, \d+ key records\).*nothing was written/);
    expect(db.dump().length).toBe(before);
    const same = await cli(tokenConfig, ['registry', 'migrate', '--from', 'token', '--to', 'token']);
    expect(same.code).toBe(2);
  }, 60_000);

  it('when a gateway runs on registry.store: postgres, then the moved access keys sign with the moved keys (SDK) and openssl verifies', async () => {
    const port = await freePort();
    endpoint = `127.0.0.1:${port}`;
    gateway = await startGatewayProcess({ HSM_GATEWAY_CONFIG: pgConfig, HSM_GATEWAY_PORT: String(port) });
    const ec = demo.keys.find((k) => k.alias === 'alias/demo-ec-p256')!;
    // Both live secrets of the rotated access key still sign.
    for (const secret of made.keyDefault!.secrets) {
      const r = await kmsClient(as(made.keyDefault!, secret)).asymmetricSign({ keyId: ec.alias, keyVersionId: ec.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: digest.toString('base64') });
      expect(opensslVerifyDigest({ publicKeyPem: ec.publicKeyPem, digest, signature: Buffer.from(r.value, 'base64') })).toContain('Signature Verified Successfully');
    }
    // The rotated key: its new primary version signs, its first version when named.
    for (const version of made.rotated.versions as Array<{ keyVersionId: string }>) {
      const r = await kmsClient(as(made.keyDefault!)).asymmetricSign({ keyId: 'alias/mig-rotated', keyVersionId: version.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: digest.toString('base64') });
      const pem = (await kmsClient(as(made.keyDefault!)).getPublicKey({ keyId: made.rotated.keyId, keyVersionId: version.keyVersionId })).publicKey;
      expect(opensslVerifyDigest({ publicKeyPem: pem, digest, signature: Buffer.from(r.value, 'base64') })).toContain('Signature Verified Successfully');
    }
    // One alias name, two accounts: each access key's alias/shared is its own account's key.
    const rsa = await kmsClient(as(made.keyDefault!)).asymmetricSign({ keyId: 'alias/mig-rsa', keyVersionId: made.rsa.primaryKeyVersion, algorithm: 'RSA_PSS_SHA_256', digest: digest.toString('base64') });
    expect(opensslVerifyDigest({ publicKeyPem: made.rsa.publicKeyPem, digest, signature: Buffer.from(rsa.value, 'base64'), pss: true })).toContain('Signature Verified Successfully');
    expect((await kmsAction(as(made.keyDefault!)).call('DescribeKey', { keyId: 'alias/shared' })).keyMetadata.keyId).toBe(made.sharedDefault.keyId);
    expect((await kmsAction(as(made.keyBilling!)).call('DescribeKey', { keyId: 'alias/shared' })).keyMetadata.keyId).toBe(made.sharedBilling.keyId);
    const billing = await kmsClient(as(made.keyBilling!)).asymmetricSign({ keyId: 'alias/shared', keyVersionId: made.sharedBilling.primaryKeyVersion, algorithm: 'ECDSA_SHA_256', digest: digest.toString('base64') });
    expect(opensslVerifyDigest({ publicKeyPem: made.sharedBilling.publicKeyPem, digest, signature: Buffer.from(billing.value, 'base64') })).toContain('Signature Verified Successfully');
    // States moved with the keys.
    const sign = (creds: Credentials, key: any) => kmsClient(creds).asymmetricSign({ keyId: key.keyId, keyVersionId: key.primaryKeyVersion, algorithm: key.keySpec.startsWith('RSA') ? 'RSA_PKCS1_SHA_256' : 'ECDSA_SHA_256', digest: digest.toString('base64') });
    expect(await codeOf(sign(as(made.keyDefault!), made.disabled))).toBe('Rejected.Disabled');
    expect(await codeOf(sign(as(made.keyBilling!), made.pending))).toBe('Rejected.PendingDeletion');
    // A certificate and its chain: same ids, DER and chain as before; its key signs through the moved registry.
    const certsAfter = await json(pgConfig, ['certs', 'list']);
    // The same certificates, in either store's listing order (PostgreSQL lists by id).
    const strip = (certs: any[]) => certs.map(({ source: _source, ...rest }) => rest).sort((x, y) => x.certificateId.localeCompare(y.certificateId));
    expect(strip(certsAfter)).toEqual(strip(certsBefore));
    const cert = demo.certificates.find((c) => c.keySpec === 'EC_P256')!;
    const message = randomBytes(64);
    const signed = await openApiCall(as(made.keyDefault!), 'CertificatePrivateKeySign', '2016-01-20', { CertificateId: cert.certificateId, Algorithm: 'ECDSA_SHA_256', Message: message.toString('base64') });
    expect(opensslVerifyMessage({ publicKeyPem: certificatePublicKey(cert.certificatePem), message, signature: Buffer.from(signed.body.SignatureValue, 'base64') })).toBe('Verified OK');
  }, 180_000);

  it('when token info runs on registry.store: postgres, then it says where the registry lives (no password), and warns about a key file', async () => {
    const info = await cli(pgConfig, ['token', 'info']);
    expect(info.code).toBe(0);
    expect(info.stdout).toMatch(new RegExp(`access keys in PostgreSQL at 127\\.0\\.0\\.1:${db.port}/hsm_gateway \\(user hsm_gateway\\)`));
    expect(info.stdout).toMatch(/Secrets sealed by\s+the AES-256 key "hsm-gateway-secrets" on this token/);
    expect(info.stdout + info.stderr).not.toContain(db.password);
    const withKek = join(home, 'kek.yaml');
    writeFileSync(join(home, 'kek'), randomBytes(32), { mode: 0o600 });
    const config = parse(readFileSync(pgConfig, 'utf8'));
    writeFileSync(withKek, stringify({ ...config, registry: { ...config.registry, secretsKey: { kekFile: join(home, 'kek') } } }));
    const kek = await cli(withKek, ['token', 'info', '--json']);
    const registry = JSON.parse(kek.stdout).tokens.find((t: { name: string }) => t.name === 'default').registry;
    expect(registry).toMatchObject({ store: 'postgres', postgres: { host: '127.0.0.1', port: db.port, database: 'hsm_gateway', secretsSealedBy: { kekFile: join(home, 'kek') } } });
    expect(kek.stderr).toMatch(/warning: access-key secrets are sealed with a key-encryption key from a file/);
    expect(JSON.stringify(registry)).not.toContain(db.password);
  }, 60_000);

  it('when the registry is moved back to the emptied token, then it equals the original record for record (secrets included)', async () => {
    await gateway?.stop();
    gateway = undefined;
    // The token still holds the records as they were before the move: the target of the move back must be empty.
    const refused = await cli(pgConfig, ['registry', 'migrate', '--from', 'postgres', '--to', 'token']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/the token registry is not empty/);
    await emptyTokenRegistry();
    const back = await json(pgConfig, ['registry', 'migrate', '--from', 'postgres', '--to', 'token']);
    expect(back).toMatchObject({ from: 'postgres', to: 'token', verified: true });
    expect(await recordsOf('token')).toEqual(original);
    expect(await recordsOf('postgres')).toEqual(original);
  }, 120_000);

  it('when registry history is asked, then it names who changed what, old → new, and never a secret', async () => {
    await json(pgConfig, ['keys', 'disable', 'alias/mig-rsa']);
    await json(pgConfig, ['accounts', 'rotate-secret', made.keyBilling!.accessKeyId]).then((r) => made.keyBilling!.secrets.unshift(r.accessKeySecret));
    const key = await json(pgConfig, ['registry', 'history', '--kind', 'key', '--id', made.rsa.keyId]);
    expect(key).toHaveLength(2);
    expect(key[0]).toMatchObject({ kind: 'key', id: made.rsa.keyId, oldRevision: 1, newRevision: 2, changes: ['state Enabled → Disabled'] });
    expect(key[0].actor).toMatch(/^cli@/);
    expect(key[1]).toMatchObject({ oldRevision: null, newRevision: 1 });
    expect(key[1].changes[0]).toBe('created');
    const shared = await json(pgConfig, ['registry', 'history', '--kind', 'alias', '--id', 'alias/shared']);
    expect(shared.map((e: { id: string }) => e.id).sort()).toEqual([made.sharedDefault.keyId, made.sharedBilling.keyId].sort());
    const accessKey = await cli(pgConfig, ['registry', 'history', '--kind', 'accessKey', '--id', made.keyBilling!.accessKeyId]);
    expect(accessKey.code).toBe(0);
    expect(accessKey.stdout).toMatch(/1 → 2/);
    for (const secret of made.keyBilling!.secrets) expect(accessKey.stdout).not.toContain(secret);
    expect((await cli(pgConfig, ['registry', 'history', '--kind', 'alias'])).code).toBe(2);
  }, 120_000);
});
