import { execFile, execFileSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { toPem } from '../../src/signing/x509.js';
import { certificatePublicKey, openssl, opensslCmsVerify, opensslVerifyDigest, opensslVerifyMessage } from '../helpers/openssl.js';
import { casClient, kmsAction, kmsClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { SOFTHSM_MODULE, startTestGateway, type TestGateway } from '../helpers/test-gateway.js';
import { testPki } from '../helpers/test-pki.js';

// The admin CLI as an operator runs it (node bin/hsm-gateway.cjs …, over dist/ built by the set-up script), against
// the token of a gateway that keeps running: every change the CLI makes must reach the gateway through the registry
// on the token, checked with the official SDKs and OpenSSL.

const ROOT = resolve(import.meta.dirname, '../..');
const BIN = join(ROOT, 'bin/hsm-gateway.cjs');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

let gw: TestGateway;
let owner: Credentials;
let work: string;

/** Runs the CLI (async: the gateway in this process keeps serving meanwhile). */
function run(args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT): Promise<Run> {
  return new Promise((done) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { cwd, env: { ...process.env, HSM_GATEWAY_CONFIG: gw?.demo.configFile, ...env }, timeout: 60_000 },
      (err, stdout, stderr) => done({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
    );
  });
}

/** Runs a command that must succeed with --json and returns its document. */
async function json<T = any>(args: string[], env: NodeJS.ProcessEnv = {}): Promise<T> {
  const r = await run([...args, '--json'], env);
  expect(r.stderr.split('\n').filter((l) => l && !l.startsWith('hsm-gateway: note: '))).toEqual([]);
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as T;
}

/** A failure: the exit code, and one line on stderr, `hsm-gateway: …`, no stack trace. */
async function fails(args: string[], code: number, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await run(args, env);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
  expect(r.stdout).toBe('');
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^hsm-gateway: \S/);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  return lines[0]!;
}

/** Retries until the gateway (polling the token's registry) sees the change. */
async function eventually<T>(attempt: () => Promise<T>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const codeOf = (p: Promise<unknown>): Promise<string | undefined> =>
  p.then(
    () => 'ok',
    (e: { code?: string; data?: { Code?: string } }) => e.data?.Code ?? e.code,
  );
const digest = createHash('sha256').update('cli').digest();
/** AsymmetricSign (KMS asks for the KeyVersionId). */
const sign = (creds: Credentials, keyId: string, keyVersionId: string, algorithm = 'ECDSA_SHA_256') =>
  kmsClient(creds).asymmetricSign({ keyId, keyVersionId, algorithm, digest: digest.toString('base64') });
/** A demo key the access keys made here sign with. */
const demoSign = (creds: Credentials) => {
  const demo = gw.demo.keys.find((k) => k.alias === 'alias/demo-ec-p256')!;
  return sign(creds, demo.alias, demo.keyVersionId);
};

async function signsAndVerifies(creds: Credentials, keyId: string, keyVersionId: string, publicKeyPem: string, algorithm = 'ECDSA_SHA_256'): Promise<void> {
  const r = await sign(creds, keyId, keyVersionId, algorithm);
  expect(opensslVerifyDigest({ publicKeyPem, digest, signature: Buffer.from(r.value, 'base64') })).toMatch(/Verified Successfully/);
}

/** A file in this run's work directory. */
const files = (name: string, content: string | Buffer): string => {
  const path = join(work, name);
  writeFileSync(path, content);
  return path;
};

/** OpenSC's pkcs11-tool on the gateway's token (a key made "the module's own way"). */
const pkcs11Tool = (args: string[]): string =>
  execFileSync('pkcs11-tool', ['--module', SOFTHSM_MODULE, '--token-label', 'hsm-gateway-demo', '--login', '--pin', gw.pin, ...args], {
    env: { ...process.env, SOFTHSM2_CONF: join(gw.home, 'softhsm', 'softhsm2.conf') },
    encoding: 'utf8',
    stdio: 'pipe',
  });

beforeAll(async () => {
  gw = await startTestGateway({ editConfig: (c) => void (c.registry.refreshIntervalMs = 100) });
  owner = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
  work = mkdtempSync(join(tmpdir(), 'hsm-gateway-cli-'));
});
afterAll(async () => {
  await gw?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('help and dispatch', () => {
  it('when --help is asked, then the commands, the PIN rule and the exit codes are printed, exit 0', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    for (const command of ['token init', 'keys create', 'keys import', 'aliases set', 'certs issue', 'accounts rotate-secret']) expect(r.stdout).toContain(command);
    expect(r.stdout).toMatch(/PINs are never taken on the command line/);
    expect(r.stdout).toMatch(/Exit codes:\n {2}0 {2}done\n {2}1 {2}refused.*\n {2}2 {2}usage error.*\n {2}3 {2}HSM or config unavailable/);
  });

  it('when a command is asked for --help, then its options are explained', async () => {
    const r = await run(['keys', 'create', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^usage: hsm-gateway keys create --spec <spec>/);
    expect(r.stdout).toContain('EC_P256K');
  });

  it('when run as `npx hsm-gateway keys list` in the checkout, then it lists the demo keys', async () => {
    const r = await new Promise<Run>((done) =>
      execFile('npx', ['--no-install', 'hsm-gateway', 'keys', 'list'], { cwd: ROOT, env: { ...process.env, HSM_GATEWAY_CONFIG: gw.demo.configFile } }, (err, stdout, stderr) =>
        done({ code: err ? Number(err.code) : 0, stdout, stderr }),
      ),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^KEY ID +SPEC +STATE/);
    expect(r.stdout).toContain('alias/demo-ec-p256');
  });
});

describe('token info, keys list', () => {
  it('when token info runs, then it describes the token and the registry on it, without the PIN', async () => {
    const info = await json<{ tokens: any[] }>(['token', 'info']);
    const token = info.tokens.find((t) => t.name === 'default');
    expect(token).toMatchObject({ label: 'hsm-gateway-demo', model: 'SoftHSM v2', module: SOFTHSM_MODULE });
    expect(token.mechanisms).toBeGreaterThan(10);
    expect(token.slot).toMatch(/^\d+$/);
    expect(token.serialNumber).toMatch(/\S/);
    expect(token.registry.onToken.keys).toBeGreaterThanOrEqual(4);
    expect(token.registry.generation).toMatch(/^[0-9a-f]{24}$/);
    const human = await run(['token', 'info']);
    expect(human.stdout).toMatch(/Label +hsm-gateway-demo/);
    expect(human.stdout + human.stderr + JSON.stringify(info)).not.toContain(gw.pin);
  });

  it('when keys list runs, then it shows the demo keys as a table and as JSON, and no secret', async () => {
    const keys = await json<any[]>(['keys', 'list']);
    const aliases = keys.flatMap((k) => k.aliases);
    for (const k of gw.demo.keys) expect(aliases).toContain(k.alias);
    expect(keys.every((k) => k.source === 'token')).toBe(true);
    const table = await run(['keys', 'list', '--account', 'default']);
    expect(table.stdout.split('\n')[0]).toMatch(/^KEY ID +SPEC +STATE +ACCOUNT +VERSIONS +TOKEN +KEPT IN +ALIASES$/);
    for (const output of [JSON.stringify(keys), table.stdout]) {
      expect(output).not.toContain(gw.secret);
      expect(output).not.toContain(gw.pin);
    }
  });
});

describe('keys and aliases, seen by the running gateway', () => {
  let key: any;

  it('when keys create makes an EC_P256 key with an alias, then the gateway signs with it and openssl verifies', async () => {
    key = await json(['keys', 'create', '--spec', 'EC_P256', '--alias', 'alias/cli-p256', '--description', 'made by the CLI']);
    expect(key).toMatchObject({ keySpec: 'EC_P256', state: 'Enabled', aliases: ['alias/cli-p256'], description: 'made by the CLI', account: 'default', source: 'token' });
    expect(key.keyId).toMatch(/^[0-9a-f-]{36}$/);
    expect(key.publicKeyPem).toContain('BEGIN PUBLIC KEY');
    await eventually(() => signsAndVerifies(owner, 'alias/cli-p256', key.primaryKeyVersion, key.publicKeyPem));
    const { publicKey } = await kmsClient(owner).getPublicKey({ keyId: key.keyId, keyVersionId: key.primaryKeyVersion });
    expect(publicKey.replace(/\s/g, '')).toBe(key.publicKeyPem.replace(/\s/g, ''));
  });

  it('when keys describe names the key by id or alias, then both show the same key, its versions and labels', async () => {
    const byAlias = await json(['keys', 'describe', 'alias/cli-p256']);
    const byId = await json(['keys', 'describe', key.keyId]);
    expect(byAlias).toEqual(byId);
    expect(byId.versions).toHaveLength(1);
    expect(byId.versions[0].label).toBe(`key/${byId.primaryKeyVersion}`);
    const human = await run(['keys', 'describe', key.keyId]);
    expect(human.stdout).toMatch(/KeyId +[0-9a-f-]{36}/);
    expect(human.stdout).toContain('BEGIN PUBLIC KEY');
  });

  it('when keys rotate runs, then the new version is primary and signs, and the first one still signs when named', async () => {
    const rotated = await json(['keys', 'rotate', 'alias/cli-p256']);
    expect(rotated.versions).toHaveLength(2);
    expect(rotated.primaryKeyVersion).toBe(rotated.keyVersionId);
    const described = await json(['keys', 'describe', key.keyId]);
    expect(described.publicKeyPem).not.toBe(key.publicKeyPem);
    await eventually(() => signsAndVerifies(owner, key.keyId, rotated.keyVersionId, described.publicKeyPem));
    await signsAndVerifies(owner, key.keyId, key.primaryKeyVersion, key.publicKeyPem);
  });

  it('when keys disable runs, then AsymmetricSign answers Rejected.Disabled within a couple of seconds; enable brings it back', async () => {
    expect((await json(['keys', 'disable', key.keyId])).state).toBe('Disabled');
    await eventually(async () => expect(await codeOf(sign(owner, key.keyId, key.primaryKeyVersion))).toBe('Rejected.Disabled'), 2000);
    expect((await json(['keys', 'enable', 'alias/cli-p256'])).state).toBe('Enabled');
    await eventually(async () => expect(await codeOf(sign(owner, key.keyId, key.primaryKeyVersion))).toBe('ok'), 2000);
  });

  it('when keys schedule-deletion runs, then the key is PendingDeletion for that window; cancel-deletion enables it', async () => {
    const pending = await json(['keys', 'schedule-deletion', key.keyId, '--days', '7']);
    expect(pending.state).toBe('PendingDeletion');
    expect(Date.parse(pending.deleteDate) - Date.now()).toBeGreaterThan(6.9 * 86_400_000);
    await eventually(async () => expect(await codeOf(sign(owner, key.keyId, key.primaryKeyVersion))).toBe('Rejected.PendingDeletion'), 2000);
    expect((await json(['keys', 'cancel-deletion', key.keyId])).state).toBe('Enabled');
    await eventually(async () => expect(await codeOf(sign(owner, key.keyId, key.primaryKeyVersion))).toBe('ok'), 2000);
  });

  it('when aliases set creates, then moves an alias, and aliases delete removes it, then DescribeKey follows', async () => {
    const other = await json(['keys', 'create', '--spec', 'RSA_2048']);
    const describeAlias = async () => (await kmsAction(owner).call('DescribeKey', { keyId: 'alias/cli-moving' })).keyMetadata.keyId;
    expect(await json(['aliases', 'set', 'alias/cli-moving', key.keyId])).toEqual({ alias: 'alias/cli-moving', keyId: key.keyId, account: 'default', moved: false });
    await eventually(async () => expect(await describeAlias()).toBe(key.keyId));
    expect(await json(['aliases', 'set', 'alias/cli-moving', other.keyId])).toEqual({ alias: 'alias/cli-moving', keyId: other.keyId, account: 'default', moved: true });
    await eventually(async () => expect(await describeAlias()).toBe(other.keyId));
    const listed = await json<any[]>(['aliases', 'list']);
    expect(listed).toContainEqual({ alias: 'alias/cli-moving', keyId: other.keyId, account: 'default' });
    expect(await json(['aliases', 'delete', 'alias/cli-moving'])).toEqual({ alias: 'alias/cli-moving', keyId: other.keyId, account: 'default' });
    await eventually(async () => expect(await codeOf(describeAlias())).toBe('Forbidden.AliasNotFound'));
    expect(await fails(['aliases', 'delete', 'alias/cli-moving'], 1)).toContain('does not exist');
  });

  it('when two accounts get an alias of one name, then the CLI keeps them apart: the account comes from the key or --account', async () => {
    const theirs = await json(['keys', 'create', '--spec', 'EC_P256', '--account', 'tenant-cli']);
    // The alias belongs to the key's account unless --account says otherwise: two aliases, not a move.
    expect(await json(['aliases', 'set', 'alias/cli-shared', theirs.keyId])).toEqual({ alias: 'alias/cli-shared', keyId: theirs.keyId, account: 'tenant-cli', moved: false });
    expect(await json(['aliases', 'set', 'alias/cli-shared', key.keyId])).toEqual({ alias: 'alias/cli-shared', keyId: key.keyId, account: 'default', moved: false });
    expect(await fails(['aliases', 'set', 'alias/cli-shared', key.keyId, '--account', 'tenant-cli'], 1)).toContain(`key ${key.keyId} does not exist in account tenant-cli`);
    await eventually(async () => expect((await kmsAction(owner).call('DescribeKey', { keyId: 'alias/cli-shared' })).keyMetadata.keyId).toBe(key.keyId));
    expect(await json(['aliases', 'list', '--account', 'tenant-cli'])).toEqual([{ alias: 'alias/cli-shared', keyId: theirs.keyId, account: 'tenant-cli' }]);

    // Named by that alias alone, the key is ambiguous: the operator says which account (exit 2 until then).
    expect(await fails(['keys', 'describe', 'alias/cli-shared'], 2)).toContain('exists in accounts default, tenant-cli');
    expect((await json(['keys', 'describe', 'alias/cli-shared', '--account', 'tenant-cli'])).keyId).toBe(theirs.keyId);
    expect(await json(['aliases', 'delete', 'alias/cli-shared', '--account', 'tenant-cli'])).toEqual({ alias: 'alias/cli-shared', keyId: theirs.keyId, account: 'tenant-cli' });
    // Default's alias is untouched, and the name is unambiguous again.
    expect((await json(['keys', 'describe', 'alias/cli-shared'])).keyId).toBe(key.keyId);
    expect(await fails(['keys', 'describe', 'alias/cli-shared', '--account', 'tenant-cli'], 1)).toContain('does not exist in account tenant-cli');
  });

  it('when keys import registers key pairs already on the token by label or by CKA_ID, then they sign without being regenerated', async () => {
    const keygen = (label: string, id: string, type: string) =>
      execFileSync(
        'pkcs11-tool',
        ['--module', SOFTHSM_MODULE, '--token-label', 'hsm-gateway-demo', '--login', '--pin', gw.pin, '--keypairgen', '--key-type', type, '--label', label, '--id', id, '--usage-sign'],
        { env: { ...process.env, SOFTHSM2_CONF: join(gw.home, 'softhsm', 'softhsm2.conf') }, stdio: 'pipe' },
      );
    keygen('byok-p256', 'b0b0', 'EC:prime256v1');
    keygen('byok-rsa', 'cafe01', 'rsa:2048');
    const byLabel = await json(['keys', 'import', '--label', 'byok-p256', '--alias', 'alias/cli-byok']);
    expect(byLabel).toMatchObject({ keySpec: 'EC_P256', aliases: ['alias/cli-byok'], versions: [{ label: 'byok-p256', id: 'b0b0' }] });
    await eventually(() => signsAndVerifies(owner, 'alias/cli-byok', byLabel.primaryKeyVersion, byLabel.publicKeyPem));
    const byId = await json(['keys', 'import', '--id', 'CAFE01']);
    expect(byId).toMatchObject({ keySpec: 'RSA_2048', versions: [{ label: 'byok-rsa', id: 'cafe01' }] });
    await eventually(() => signsAndVerifies(owner, byId.keyId, byId.primaryKeyVersion, byId.publicKeyPem, 'RSA_PKCS1_SHA_256'));
    expect(await fails(['keys', 'import', '--label', 'byok-p256'], 1)).toContain('already registered');
    expect(await fails(['keys', 'import', '--label', 'no-such-key'], 1)).toContain('0 private keys');
  });

  it('when keys import is given an extractable key, then it is refused saying why, even with --accept-imported-key (#15 item 4)', async () => {
    pkcs11Tool(['--keypairgen', '--key-type', 'rsa:2048', '--label', 'byok-extractable', '--id', 'e0e0', '--usage-sign', '--usage-decrypt', '--extractable', '--sensitive']);
    expect(await fails(['keys', 'import', '--label', 'byok-extractable'], 1)).toContain('it is extractable (CKA_EXTRACTABLE is true)');
    expect(await fails(['keys', 'import', '--label', 'byok-extractable', '--accept-imported-key'], 1)).toContain('must be sensitive and not extractable');
    // Nothing else here is extractable (the certs import case checks its key that way): the refused key goes again.
    for (const type of ['privkey', 'pubkey']) pkcs11Tool(['--delete-object', '--type', type, '--label', 'byok-extractable']);
  });

  it('when keys import is given a key written into the HSM (CKA_NEVER_EXTRACTABLE false), then it is refused naming --accept-imported-key; with it the key is registered, the override warned about and shown by keys describe (#15 item 4)', async () => {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const der = files('byok-written.der', key.privateKey.export({ type: 'pkcs8', format: 'der' }));
    pkcs11Tool(['--write-object', der, '--type', 'privkey', '--label', 'byok-written', '--id', 'd0d0', '--usage-sign', '--sensitive']);
    pkcs11Tool(['--write-object', files('byok-written.pub', key.publicKey.export({ type: 'spki', format: 'der' })), '--type', 'pubkey', '--label', 'byok-written', '--id', 'd0d0']);
    expect(await fails(['keys', 'import', '--label', 'byok-written'], 1)).toMatch(/CKA_NEVER_EXTRACTABLE is false.*--accept-imported-key/);
    const accepted = await run(['keys', 'import', '--label', 'byok-written', '--accept-imported-key', '--json']);
    expect(accepted.code, accepted.stderr).toBe(0);
    expect(accepted.stderr).toMatch(/warning: operator override: key registered although it existed outside the HSM/);
    const record = JSON.parse(accepted.stdout);
    expect(record.versions[0].importOverride.accepted).toContain('it was extractable or made outside the HSM once (CKA_NEVER_EXTRACTABLE is false)');
    expect(record.versions[0].protection).toMatchObject({ sign: true, sensitive: true, extractable: false, neverExtractable: false });
    const described = await run(['keys', 'describe', record.keyId]);
    expect(described.stdout).toMatch(/accepted +it was extractable or made outside the HSM once .*\(operator override, /);
    await eventually(() => signsAndVerifies(owner, record.keyId, record.primaryKeyVersion, key.publicKey.export({ type: 'spki', format: 'pem' }) as string));
  });

  it('when keys create makes a key, then keys describe shows the strict template and the protection read back from the token (#15 item 4)', async () => {
    const made = await json(['keys', 'create', '--spec', 'EC_P256']);
    expect(made.versions[0]).toMatchObject({ template: 'strict', protection: { sign: true, decrypt: false, unwrap: false, derive: false, sensitive: true, extractable: false, neverExtractable: true, alwaysSensitive: true } });
    const described = await run(['keys', 'describe', made.keyId]);
    expect(described.stdout).toMatch(/made with +strict/);
    expect(described.stdout).toContain('on the token sensitive, not extractable, never extractable, always sensitive; private key may SIGN; public key may VERIFY');
  });
});

describe('accounts, seen by the running gateway', () => {
  let created: any;
  const secretsShown: string[] = [];
  const as = (accessKeyId: string, accessKeySecret: string): Credentials => ({ endpoint: gw.endpoint, accessKeyId, accessKeySecret });

  it('when accounts create makes an access key, then the secret is printed once and the new key signs through the SDK', async () => {
    const r = await run(['accounts', 'create', '--account', 'default', '--description', 'ci', '--json']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^hsm-gateway: note: store this AccessKeySecret now/);
    created = JSON.parse(r.stdout);
    expect(created).toMatchObject({ account: 'default', enabled: true, liveSecrets: 1, source: 'token', description: 'ci' });
    expect(created.accessKeyId).toMatch(/^LTAI[A-Za-z0-9]{20}$/);
    expect(created.accessKeySecret).toMatch(/^[A-Za-z0-9]{30}$/);
    secretsShown.push(created.accessKeySecret);
    await eventually(() => demoSign(as(created.accessKeyId, created.accessKeySecret)));
  });

  it('when accounts create gets a policy file, then the key may do only what it allows', async () => {
    const policy = join(work, 'policy.json');
    writeFileSync(policy, JSON.stringify({ Version: '1', Statement: [{ Effect: 'Allow', Action: 'kms:GetPublicKey', Resource: '*' }] }));
    const limited = await json(['accounts', 'create', '--account', 'default', '--policy', policy]);
    secretsShown.push(limited.accessKeySecret);
    const creds = as(limited.accessKeyId, limited.accessKeySecret);
    const demoKey = gw.demo.keys.find((k) => k.alias === 'alias/demo-ec-p256')!;
    await eventually(() => kmsClient(creds).getPublicKey({ keyId: demoKey.keyId, keyVersionId: demoKey.keyVersionId }));
    expect(await codeOf(demoSign(creds))).toBe('Forbidden.NoPermission');
    writeFileSync(policy, '{"Statement": "everything"}');
    expect(await fails(['accounts', 'create', '--account', 'default', '--policy', policy], 2)).toContain('not a RAM policy');
  });

  it('when accounts rotate-secret runs, then the new secret signs, the previous one still does, and the one before that no longer', async () => {
    const first = created.accessKeySecret as string;
    const second = (await json(['accounts', 'rotate-secret', created.accessKeyId])).accessKeySecret as string;
    secretsShown.push(second);
    await eventually(() => demoSign(as(created.accessKeyId, second)));
    await demoSign(as(created.accessKeyId, first));
    const third = (await json(['accounts', 'rotate-secret', created.accessKeyId])).accessKeySecret as string;
    secretsShown.push(third);
    await eventually(() => demoSign(as(created.accessKeyId, third)));
    await demoSign(as(created.accessKeyId, second));
    expect(await codeOf(demoSign(as(created.accessKeyId, first)))).toBe('SignatureDoesNotMatch');
    created.accessKeySecret = third;
  });

  it('when accounts disable runs, then the key is refused; enable lets it sign again', async () => {
    const creds = as(created.accessKeyId, created.accessKeySecret);
    expect((await json(['accounts', 'disable', created.accessKeyId])).enabled).toBe(false);
    await eventually(async () => expect(await codeOf(demoSign(creds))).toBe('Forbidden.AccessKey'), 2000);
    expect((await json(['accounts', 'enable', created.accessKeyId])).enabled).toBe(true);
    await eventually(() => demoSign(creds), 2000);
  });

  it('when accounts list runs, then it shows every access key and never a secret', async () => {
    const listed = await json<any[]>(['accounts', 'list']);
    expect(listed.find((k) => k.accessKeyId === created.accessKeyId)).toMatchObject({ account: 'default', enabled: true, liveSecrets: 2, source: 'token' });
    expect(listed.find((k) => k.accessKeyId === gw.demo.accessKeyId)).toMatchObject({ source: 'config', liveSecrets: 1 });
    const table = await run(['accounts', 'list']);
    expect(table.stdout).toContain(created.accessKeyId);
    const keys = await run(['keys', 'list', '--json']);
    for (const output of [JSON.stringify(listed), table.stdout, table.stderr, keys.stdout]) {
      for (const secret of [...secretsShown, gw.secret, gw.pin]) expect(output).not.toContain(secret);
    }
  });

  it('when an access key of the config file is named, then the CLI says to change it there (exit 1)', async () => {
    expect(await fails(['accounts', 'disable', gw.demo.accessKeyId], 1)).toContain('change it there');
  });
});

describe('certificates, seen by the running gateway', () => {
  const pki = testPki('CLI test');
  const rootPem = toPem(pki.root);
  const certificates = async (): Promise<any[]> => json<any[]>(['certs', 'list']);
  let caId = '';

  it('when certs import takes an RSA key (PKCS#8), its certificate and chain, then CAS P7 and KMS CertificatePrivateKeySign verify with openssl', async () => {
    const key = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const leaf = pki.leaf('imported-rsa.cli.example', key.publicKey);
    const imported = await json([
      'certs', 'import',
      '--key', files('rsa.key', key.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string),
      '--cert', files('rsa.pem', toPem(leaf)),
      '--chain', files('chain.pem', rootPem + toPem(pki.intermediate)), // out of order on purpose
      '--warehouse-id', '7',
    ]);
    expect(imported).toMatchObject({ keySpec: 'RSA_2048', state: 'Enabled', account: 'default', warehouseId: 7, source: 'token', subject: 'O=CLI test Org, CN=imported-rsa.cli.example' });
    expect(imported.sslIdentifier).toMatch(/^\d{8}-cn-hangzhou$/);
    expect(imported.chainLabels).toHaveLength(2);
    expect(new X509Certificate(imported.certificatePem).fingerprint256).toBe(new X509Certificate(leaf).fingerprint256);

    const creds = owner;
    const text = `p7 ${randomBytes(4).toString('hex')}`;
    const p7 = await eventually(() => casClient(creds).sign({ certIdentifier: imported.casIdentifier, message: text, messageType: 'RAW', signingAlgorithm: 'SHA256withRSA/P7' }));
    expect(opensslCmsVerify({ cms: Buffer.from(p7.body.signature, 'base64'), content: Buffer.from(text), rootPem })).toContain('CMS Verification successful');

    const message = randomBytes(100);
    const kms = await openApiCall(creds, 'CertificatePrivateKeySign', '2016-01-20', {
      CertificateId: imported.certificateId,
      Algorithm: 'RSA_PSS_SHA_256',
      Message: message.toString('base64'),
      MessageType: 'RAW',
    });
    expect(opensslVerifyMessage({ publicKeyPem: certificatePublicKey(imported.certificatePem), message, signature: Buffer.from(kms.body.SignatureValue, 'base64'), pss: true })).toBe('Verified OK');

    // The key went onto the token sensitive and not extractable.
    const listing = execFileSync(
      'pkcs11-tool',
      ['--module', SOFTHSM_MODULE, '--token-label', 'hsm-gateway-demo', '--login', '--pin', gw.pin, '--list-objects', '--type', 'privkey', '--label', imported.label],
      { env: { ...process.env, SOFTHSM2_CONF: join(gw.home, 'softhsm', 'softhsm2.conf') }, encoding: 'utf8' },
    );
    expect(listing).toMatch(/Access: +sensitive/);
    expect(listing).not.toMatch(/(?<!never )extractable/);
  });

  it('when certs import takes an EC key with a custom identifier, then CAS Sign by CustomIdentifier + WarehouseId verifies', async () => {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const leaf = pki.leaf('imported-ec.cli.example', key.publicKey);
    // The chain may follow the leaf in the certificate file (a "full chain" PEM).
    const imported = await json([
      'certs', 'import',
      '--key', files('ec.key', key.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string),
      '--cert', files('ec-full.pem', toPem(leaf) + toPem(pki.intermediate)),
      '--custom-identifier', 'cli-ec-custom',
      '--warehouse-id', '3',
    ]);
    expect(imported).toMatchObject({ keySpec: 'EC_P256', customIdentifier: 'cli-ec-custom', warehouseId: 3 });
    expect(imported.chainLabels).toHaveLength(1);
    const r = await eventually(() =>
      openApiCall(owner, 'Sign', '2020-04-07', { CustomIdentifier: 'cli-ec-custom', WarehouseId: '3', Message: 'custom', MessageType: 'RAW', SigningAlgorithm: 'SHA256withECDSA' }),
    );
    expect(opensslVerifyMessage({ publicKeyPem: certificatePublicKey(imported.certificatePem), message: Buffer.from('custom'), signature: Buffer.from(r.body.Signature, 'base64') })).toBe('Verified OK');
    expect(await fails(['certs', 'import', '--key', join(work, 'ec.key'), '--cert', join(work, 'ec-full.pem')], 1)).toContain('already registered');
    expect(await fails(['certs', 'import', '--key', join(work, 'rsa.key'), '--cert', join(work, 'ec-full.pem')], 1)).toContain('does not match');
    expect(await fails(['certs', 'import', '--key', join(work, 'none.key'), '--cert', join(work, 'ec-full.pem')], 2)).toContain('cannot read the key file');
  });

  it('when a CA certificate is imported and certs issue makes a leaf with it, then P7 signatures by the new key verify up to the root', async () => {
    const ca = await json([
      'certs', 'import',
      '--key', files('root.key', pki.rootKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string),
      '--cert', files('root.pem', rootPem),
      '--description', 'CLI test root CA',
    ]);
    caId = ca.certificateId;
    const issued = await json(['certs', 'issue', '--ca', caId, '--subject', 'CN=issued.cli.example,O=CLI Org,C=CN', '--spec', 'RSA_2048', '--days', '30', '--out', join(work, 'issued.pem')]);
    expect(issued).toMatchObject({ keySpec: 'RSA_2048', account: 'default', subject: 'C=CN, O=CLI Org, CN=issued.cli.example', issuer: 'O=CLI test Org, CN=CLI test Root' });
    expect(issued.chainLabels).toEqual([ca.label]);
    expect(Date.parse(issued.notAfter) - Date.now()).toBeLessThan(30 * 86_400_000 + 60_000);
    expect(readFileSync(join(work, 'issued.pem'), 'utf8')).toBe(issued.certificatePem);
    expect(openssl({ 'root.pem': rootPem, 'leaf.pem': issued.certificatePem }, (p) => ['verify', '-CAfile', p('root.pem'), p('leaf.pem')])).toMatch(/OK$/);
    const text = 'issued on the token';
    const p7 = await eventually(() => casClient(owner).sign({ certIdentifier: issued.sslIdentifier, message: text, messageType: 'RAW', signingAlgorithm: 'SHA256withRSA/P7' }));
    expect(opensslCmsVerify({ cms: Buffer.from(p7.body.signature, 'base64'), content: Buffer.from(text), rootPem })).toContain('CMS Verification successful');

    const ec = await json(['certs', 'issue', '--ca', caId, '--subject', '/CN=issued-ec.cli.example', '--spec', 'EC_P256']);
    const r = await eventually(() => casClient(owner).sign({ certIdentifier: ec.casIdentifier, message: 'ec', messageType: 'RAW', signingAlgorithm: 'SHA256withECDSA' }));
    expect(opensslVerifyMessage({ publicKeyPem: certificatePublicKey(ec.certificatePem), message: Buffer.from('ec'), signature: Buffer.from(r.body.signature, 'base64') })).toBe('Verified OK');
  });

  it('when certs issue signs a CSR, then the certificate keeps its subject and SAN, verifies with the CA, and nothing is registered', async () => {
    const before = (await certificates()).length;
    const keyFile = join(work, 'csr.key');
    const csrFile = join(work, 'req.csr');
    execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-subj', '/C=CN/O=Requester/CN=csr.cli.example', '-addext', 'subjectAltName=DNS:csr.cli.example,DNS:www.csr.cli.example', '-out', csrFile], { stdio: 'pipe' });
    const out = join(work, 'csr-cert.pem');
    const issued = await json(['certs', 'issue', '--ca', caId, '--csr', csrFile, '--days', '10', '--out', out]);
    expect(issued).toMatchObject({ caCertificateId: caId, subject: 'C=CN, O=Requester, CN=csr.cli.example', out });
    const x509 = new X509Certificate(readFileSync(out));
    expect(x509.subjectAltName).toBe('DNS:csr.cli.example, DNS:www.csr.cli.example');
    expect(x509.ca).toBe(false);
    expect(x509.checkPrivateKey(createPrivateKey(readFileSync(keyFile)))).toBe(true);
    expect(openssl({ 'root.pem': rootPem, 'leaf.pem': readFileSync(out) }, (p) => ['verify', '-CAfile', p('root.pem'), p('leaf.pem')])).toMatch(/OK$/);
    expect((await certificates()).length).toBe(before);
    // Without --out, the PEM goes to stdout.
    const printed = await run(['certs', 'issue', '--ca', caId, '--csr', csrFile]);
    expect(printed.code).toBe(0);
    expect(printed.stdout).toMatch(/^-----BEGIN CERTIFICATE-----\n[\s\S]+-----END CERTIFICATE-----\n$/);
  });

  it('when certs issue is asked of a certificate that is not a CA, or with mixed options, then it is refused', async () => {
    const leaf = gw.demo.certificates[0]!.certificateId;
    expect(await fails(['certs', 'issue', '--ca', leaf, '--subject', 'CN=x', '--spec', 'EC_P256'], 1)).toContain('not a CA certificate');
    expect(await fails(['certs', 'issue', '--ca', '00000000-0000-0000-0000-000000000000', '--subject', 'CN=x', '--spec', 'EC_P256'], 1)).toContain('does not exist');
    expect(await fails(['certs', 'issue', '--ca', caId, '--subject', 'XX=x', '--spec', 'EC_P256'], 2)).toContain('--subject');
    expect(await fails(['certs', 'issue', '--ca', caId, '--csr', join(work, 'req.csr'), '--spec', 'EC_P256'], 2)).toContain('does not go with --csr');
    expect(await fails(['certs', 'issue', '--ca', caId, '--subject', 'CN=x', '--spec', 'EC_P256', '--days', '100000'], 2)).toContain('--days');
  });

  it('when certs register names a key already on the token and gives its certificate and chain, then no private key is created and CAS Sign verifies up to the root (#15 item 7)', async () => {
    const made = await json(['keys', 'create', '--spec', 'EC_P256', '--description', 'certificate registered later']);
    const privateKeys = (): number => (pkcs11Tool(['--list-objects', '--type', 'privkey']).match(/^Private Key Object/gm) ?? []).length;
    const before = privateKeys();
    const leaf = pki.leaf('registered.cli.example', createPublicKey(made.publicKeyPem));
    const registered = await json([
      'certs', 'register',
      '--label', made.versions[0].label,
      '--id', made.versions[0].id,
      '--cert', files('registered.pem', toPem(leaf)),
      '--chain', files('registered-chain.pem', toPem(pki.intermediate)),
      '--warehouse-id', '9',
    ]);
    expect(registered).toMatchObject({ keySpec: 'EC_P256', label: made.versions[0].label, id: made.versions[0].id, warehouseId: 9, subject: 'O=CLI test Org, CN=registered.cli.example' });
    expect(registered.chainLabels).toHaveLength(1);
    expect(privateKeys()).toBe(before);
    const r = await eventually(() => casClient(owner).sign({ certIdentifier: registered.casIdentifier, message: 'registered', messageType: 'RAW', signingAlgorithm: 'SHA256withECDSA' }));
    expect(opensslVerifyMessage({ publicKeyPem: certificatePublicKey(registered.certificatePem), message: Buffer.from('registered'), signature: Buffer.from(r.body.signature, 'base64') })).toBe('Verified OK');
    expect(await fails(['certs', 'register', '--label', made.versions[0].label, '--cert', join(work, 'registered.pem')], 1)).toContain('already registered');
    const other = await json(['keys', 'create', '--spec', 'EC_P256']);
    expect(await fails(['certs', 'register', '--label', other.versions[0].label, '--cert', join(work, 'registered.pem')], 1)).toContain("does not match the key's public key on the token");
    expect(await fails(['certs', 'register', '--cert', join(work, 'registered.pem')], 2)).toContain('--label, --id, or both');
  });

  it('when certs list runs, then the demo, imported and issued certificates are there, with their identifiers and PEM', async () => {
    const listed = await certificates();
    expect(listed.map((c) => c.certificateId)).toEqual(expect.arrayContaining([...gw.demo.certificates.map((c) => c.certificateId), caId]));
    for (const c of listed) {
      expect(c.casIdentifier).toMatch(/^[0-9a-f]{26}$/);
      if (c.token === 'default') expect(c.certificatePem).toContain('BEGIN CERTIFICATE');
    }
    const table = await run(['certs', 'list']);
    expect(table.stdout.split('\n')[0]).toMatch(/^CERTIFICATE ID +SPEC +STATE +ACCOUNT +CAS IDENTIFIER +SSL IDENTIFIER +WAREHOUSE +NOT AFTER +SUBJECT$/);
    expect(table.stdout).toContain('CN=issued.cli.example');
  });
});

describe('failures and their exit codes', () => {
  it('when the key or alias does not exist, then exit 1', async () => {
    expect(await fails(['keys', 'describe', '00000000-0000-0000-0000-000000000000'], 1)).toBe('hsm-gateway: key 00000000-0000-0000-0000-000000000000 does not exist');
    expect(await fails(['keys', 'disable', 'alias/no-such'], 1)).toBe('hsm-gateway: alias alias/no-such does not exist');
    expect(await fails(['accounts', 'rotate-secret', 'LTAInothere'], 1)).toContain('not on the token');
  });

  it('when the command line is wrong, then exit 2 with one line that says what', async () => {
    expect(await fails(['keys', 'frobnicate'], 2)).toContain('unknown command "keys frobnicate"');
    expect(await fails(['widgets', 'list'], 2)).toContain('unknown command "widgets"');
    expect(await fails(['keys'], 2)).toContain('"keys" needs a command');
    expect(await fails(['keys', 'create'], 2)).toContain('--spec is required');
    expect(await fails(['keys', 'create', '--spec', 'RSA_1024'], 2)).toContain('--spec is one of');
    expect(await fails(['keys', 'create', '--spec', 'EC_P256', '--pin', '1234'], 2)).toContain('unknown option --pin');
    expect(await fails(['keys', 'create', '--spec', 'EC_P256', '--alias', 'no-prefix'], 2)).toContain('--alias');
    expect(await fails(['keys', 'describe'], 2)).toContain('needs <key>');
    expect(await fails(['keys', 'describe', 'a', 'b'], 2)).toContain('unexpected argument "b"');
    expect(await fails(['keys', 'schedule-deletion', 'alias/demo-rsa-2048', '--days', '3'], 2)).toContain('--days');
    expect(await fails(['keys', 'import', '--id', 'xyz'], 2)).toContain('--id');
    expect(await fails(['accounts', 'create'], 2)).toContain('--account is required');
  });

  it('when the config is missing or invalid, then exit 3', async () => {
    expect(await fails(['keys', 'list'], 3, { HSM_GATEWAY_CONFIG: join(work, 'nope.yaml') })).toContain('cannot read config');
    expect(await fails(['keys', 'list', '--config', join(work, 'nope.yaml')], 3)).toContain('cannot read config');
    expect(await fails(['keys', 'list'], 3, { HSM_GATEWAY_CONFIG: '', HSM_GATEWAY_HOME: join(work, 'empty-home') })).toContain('no config at');
    const broken = join(work, 'broken.yaml');
    writeFileSync(broken, 'hsm: { module: x }\nbogus: 1\n');
    expect(await fails(['keys', 'list', '--config', broken], 3)).toContain('is invalid');
  });
});

describe('token init on a fresh SoftHSM token directory', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  const pin = `user-${randomBytes(6).toString('hex')}`;
  const config = (pinFile: string): string => {
    const path = join(dir, `gateway-${randomBytes(3).toString('hex')}.yaml`);
    writeFileSync(path, stringify({ hsm: { module: SOFTHSM_MODULE, tokenLabel: 'cli-fresh', pin: { file: pinFile }, softhsmConf: join(dir, 'softhsm2.conf') } }));
    return path;
  };

  beforeAll(() => {
    dir = join(work, 'fresh');
    mkdirSync(join(dir, 'tokens'), { recursive: true });
    writeFileSync(join(dir, 'softhsm2.conf'), `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    writeFileSync(join(dir, 'so-pin'), `so-${randomBytes(6).toString('hex')}\n`, { mode: 0o600 });
    writeFileSync(join(dir, 'user-pin'), `${pin}\n`, { mode: 0o600 });
    // No config: the module is the default one, the token directory comes from SOFTHSM2_CONF.
    env = { SOFTHSM2_CONF: join(dir, 'softhsm2.conf'), HSM_GATEWAY_CONFIG: '', HSM_GATEWAY_HOME: join(dir, 'home') };
  });

  it('when token init runs with PIN files, then the token exists, and a second init of that label is refused', async () => {
    const made = await json(['token', 'init', '--label', 'cli-fresh', '--so-pin-file', join(dir, 'so-pin'), '--pin-file', join(dir, 'user-pin')], env);
    expect(made).toMatchObject({ label: 'cli-fresh', module: SOFTHSM_MODULE });
    expect(made.slot).toMatch(/^\d+$/);
    const slots = execFileSync('softhsm2-util', ['--show-slots'], { env: { ...process.env, ...env }, encoding: 'utf8' });
    expect(slots).toMatch(/Label:\s+cli-fresh/);
    expect(await fails(['token', 'init', '--label', 'cli-fresh', '--so-pin-file', join(dir, 'so-pin'), '--pin-file', join(dir, 'user-pin')], 1, env)).toContain('already exists');
  });

  it('when the PINs come from the environment, then it initializes; without any PIN it is a usage error', async () => {
    const made = await json(['token', 'init', '--label', 'cli-env-pins'], { ...env, HSM_GATEWAY_SO_PIN: 'so-pin-from-env', HSM_GATEWAY_PIN: 'pin-from-env' });
    expect(made.label).toBe('cli-env-pins');
    expect(await fails(['token', 'init', '--label', 'cli-no-pin'], 2, env)).toContain('never on the command line');
  });

  it('when a config names the new token, then token info shows an empty registry, and keys create fills it', async () => {
    const path = config(join(dir, 'user-pin'));
    const before = (await json<{ tokens: any[] }>(['token', 'info', '--config', path])).tokens[0];
    expect(before).toMatchObject({ name: 'default', label: 'cli-fresh', registry: { onToken: { keys: 0, certificates: 0, accessKeys: 0 }, generation: '' } });
    // The capability probe (issue #15 item 2): what SoftHSMv2 makes; EC_SM2 needs a vendor profile, and keys create says so.
    expect(before.capabilities).toMatchObject({
      keySpecs: { RSA_2048: 'yes', RSA_3072: 'yes', EC_P256: 'yes', EC_P256K: 'yes', EC_SM2: 'it has no SM2 profile (profile.sm2)' },
      keyPairs: { EC_P256K: { generate: 'ok', sign: 'ok' } },
      privateData: 'ok',
      certificate: 'ok',
      sharedObjects: 'seen',
      fromCache: false,
    });
    expect(before.capabilities.mechanisms).toContainEqual(expect.objectContaining({ mechanism: 'CKM_ECDSA', flags: expect.arrayContaining(['SIGN', 'VERIFY']) }));
    expect(await fails(['keys', 'create', '--spec', 'EC_SM2', '--config', path], 1)).toContain(
      'no configured token can generate and sign EC_SM2 keys (token "default": it has no SM2 profile (profile.sm2))',
    );
    const key = await json(['keys', 'create', '--spec', 'EC_P256K', '--alias', 'alias/fresh', '--account', 'tenant-1', '--config', path]);
    expect(key).toMatchObject({ keySpec: 'EC_P256K', account: 'tenant-1', aliases: ['alias/fresh'] });
    const keys = await json<any[]>(['keys', 'list', '--config', path]);
    expect(keys.map((k) => k.keyId)).toEqual([key.keyId]);
    const after = (await json<{ tokens: any[] }>(['token', 'info', '--config', path])).tokens[0];
    expect(after.registry.onToken.keys).toBe(1);
    expect(after.registry.generation).toMatch(/^[0-9a-f]{24}$/);
  });

  it('when capabilities.cacheFile is configured, then the probe runs once per token, later runs read it, and --probe runs it again; nothing is left on the token', async () => {
    const cacheFile = join(dir, 'capabilities.json');
    const path = join(dir, 'gateway-cached.yaml');
    writeFileSync(path, stringify({ hsm: { module: SOFTHSM_MODULE, tokenLabel: 'cli-fresh', pin: { file: join(dir, 'user-pin') }, softhsmConf: join(dir, 'softhsm2.conf') }, capabilities: { cacheFile } }));
    const first = (await json<{ tokens: any[] }>(['token', 'info', '--config', path])).tokens[0].capabilities;
    expect(first.fromCache).toBe(false);
    expect(JSON.parse(readFileSync(cacheFile, 'utf8')).version).toBe(1);
    const second = (await json<{ tokens: any[] }>(['token', 'info', '--config', path])).tokens[0].capabilities;
    expect(second).toMatchObject({ fromCache: true, probedAt: first.probedAt });
    const human = await run(['token', 'info', '--config', path]);
    expect(human.stdout).toMatch(/Makes keys +RSA_2048 RSA_3072 EC_P256 EC_P256K/);
    expect(human.stdout).toMatch(/Probed +\S+ \(from capabilities.cacheFile\)/);
    const again = (await json<{ tokens: any[] }>(['token', 'info', '--probe', '--config', path])).tokens[0].capabilities;
    expect(again.fromCache).toBe(false);
    // The probes' objects (session key pairs, the data object, the certificate, the other process's object) are gone.
    const objects = execFileSync('pkcs11-tool', ['--module', SOFTHSM_MODULE, '--token-label', 'cli-fresh', '--login', '--pin', pin, '--list-objects'], {
      env: { ...process.env, SOFTHSM2_CONF: join(dir, 'softhsm2.conf') },
      encoding: 'utf8',
    });
    expect(objects).not.toContain('capability-probe');
  });

  it('when the PIN is wrong, then exit 3, naming the failure but never the PIN', async () => {
    const wrong = join(dir, 'wrong-pin');
    writeFileSync(wrong, 'not-the-pin-4711\n');
    const line = await fails(['keys', 'list', '--config', config(wrong)], 3);
    expect(line).toContain('CKR_PIN_INCORRECT');
    expect(line).not.toContain('not-the-pin-4711');
    expect(line).not.toContain(pin);
  });

  it('when the token label is not on the module, then exit 3', async () => {
    const path = join(dir, 'absent.yaml');
    writeFileSync(path, stringify({ hsm: { module: SOFTHSM_MODULE, tokenLabel: 'no-such-token', pin: { file: join(dir, 'user-pin') }, softhsmConf: join(dir, 'softhsm2.conf') } }));
    expect(await fails(['token', 'info', '--config', path], 3)).toContain('no token labelled "no-such-token"');
  });
});
