import { createPublicKey, randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pkcs11js from 'pkcs11js';
import { stringify } from 'yaml';
import { initToken } from '../hsm/admin.js';
import { openUserSession } from './token-work.js';
import { findSlotByLabel, initializeModule } from '../hsm/module.js';
import { randomSecret } from '../keys/access-keys.js';
import { RegistryObjects } from '../keys/registry-objects.js';
import { CertificateSchema, KeySchema, type RegistryFile } from '../keys/registry.js';
import type { KeySpec } from '../signing/key-specs.js';
import { createDemoPki, generateKey, type DemoCertificate, type DemoPki } from './pki.js';
import { bootstrapSm2Demo, sm2TokenAvailable } from './sm2-demo.js';

/**
 * First-start bootstrap of the embedded default: a SoftHSMv2 token in the data directory holding the demo
 * keys (generated on the token, non-extractable), the key registry, a random demo access key, the gateway
 * config, and demo.json describing it all. Secrets are files with mode 0600 inside the data directory.
 */
const DEMO_KEYS: ReadonlyArray<{ alias: string; keySpec: KeySpec }> = [
  { alias: 'alias/demo-rsa-2048', keySpec: 'RSA_2048' },
  { alias: 'alias/demo-rsa-3072', keySpec: 'RSA_3072' },
  { alias: 'alias/demo-ec-p256', keySpec: 'EC_P256' },
  { alias: 'alias/demo-ec-p256k', keySpec: 'EC_P256K' },
];

const DEMO_TOKEN_LABEL = 'hsm-gateway-demo';

/** softhsm/ at the checkout root, from src/demo (tests) or dist/demo (runtime) alike. */
const SOFTHSM_CONF_TEMPLATE = resolve(dirname(fileURLToPath(import.meta.url)), '../../softhsm/softhsm2.conf.template');

export interface DemoInfo {
  endpoint: string;
  accessKeyId: string;
  accessKeySecretFile: string;
  configFile: string;
  /** `label`/`id`: the key pair's CKA_LABEL and CKA_ID (hex) on its token. */
  keys: Array<{ keyId: string; alias: string; keyVersionId: string; keySpec: KeySpec; publicKeyPem: string; label?: string; id?: string }>;
  rootCertificatePem: string;
  /** The SM2 root CA (when the SM2 test token is built): it issued the EC_SM2 certificate. */
  sm2RootCertificatePem?: string;
  certificates: DemoCertificate[];
}

interface BootstrapOptions {
  home: string;
  modulePath: string;
  host: string;
  port: number;
  /**
   * Where the demo registry goes: on the token (default: what `npm start` does, every lifecycle call works on the
   * demo keys), or a registry.json file (read-only through the API; tests that edit the registry before start).
   */
  registryIn?: 'token' | 'file';
}

function writeSecret(path: string, value: string): void {
  writeFileSync(path, value + '\n', { mode: 0o600 });
  chmodSync(path, 0o600);
}

/** What the first start prints: where the demo is, its access key (the secret, shown once), and how to sign with it. */
export function demoBanner(info: DemoInfo): string {
  const key = info.keys[0]!;
  const secret = readFileSync(info.accessKeySecretFile, 'utf8').trim();
  return [
    '',
    '================ hsm-gateway demo: created on first start ================',
    `Endpoint        ${info.endpoint}`,
    `AccessKeyId     ${info.accessKeyId}`,
    `AccessKeySecret ${secret}   (shown once; kept in ${info.accessKeySecretFile}, mode 0600)`,
    `Demo keys       ${info.keys.map((k) => `${k.alias} (${k.keySpec})`).join(', ')}`,
    `Described in    ${join(dirname(info.configFile), 'demo.json')}`,
    '',
    'Sign a digest with the official KMS SDK and verify it with openssl (from the checkout, in another shell):',
    '  node examples/asymmetric-sign.mjs',
    '',
    'or in your own code:',
    "  const Kms = require('@alicloud/kms20160120').default;",
    `  const kms = new Kms({ endpoint: '${info.endpoint.replace(/^http:\/\//, '')}', protocol: 'http', regionId: 'cn-hangzhou',`,
    `    accessKeyId: '${info.accessKeyId}', accessKeySecret: fs.readFileSync('${info.accessKeySecretFile}', 'utf8').trim() });`,
    `  const r = await kms.asymmetricSign({ keyId: '${key.alias}', keyVersionId: '${key.keyVersionId}',`,
    "    algorithm: 'RSA_PKCS1_SHA_256', digest: crypto.createHash('sha256').update('hello').digest('base64') });",
    '==========================================================================',
    '',
  ].join('\n');
}

export function configPathOf(home: string): string {
  return join(home, 'gateway.yaml');
}

/** True once a bootstrap has completed in this home (the config is written last). */
export function isBootstrapped(home: string): boolean {
  return existsSync(configPathOf(home));
}

/** The demo's registry records, stored on the SoftHSM token where every replica and the CLI read them. */
function writeRegistryToToken(modulePath: string, userPin: string, registry: RegistryFile): void {
  const p11 = new pkcs11js.PKCS11();
  initializeModule(p11, modulePath);
  try {
    const slot = findSlotByLabel(p11, DEMO_TOKEN_LABEL);
    if (slot === undefined) throw new Error(`the demo token ${DEMO_TOKEN_LABEL} vanished during bootstrap`);
    const session = openUserSession(p11, slot, userPin);
    const objects = new RegistryObjects();
    for (const key of registry.keys) objects.put(p11, session, 'key', key.keyId, KeySchema.parse(key));
    for (const certificate of registry.certificates ?? []) objects.put(p11, session, 'certificate', certificate.certificateId, CertificateSchema.parse(certificate));
    p11.C_Logout(session);
    p11.C_CloseSession(session);
  } finally {
    p11.C_Finalize();
  }
}

export function bootstrapDemo(opts: BootstrapOptions): DemoInfo {
  const home = resolve(opts.home);
  const secrets = join(home, 'secrets');
  const tokenDir = join(home, 'softhsm', 'tokens');
  // A bootstrap that died half-way left a token without a config: start over.
  rmSync(join(home, 'softhsm'), { recursive: true, force: true });
  rmSync(join(home, 'sm2token'), { recursive: true, force: true });
  mkdirSync(tokenDir, { recursive: true, mode: 0o700 });
  mkdirSync(secrets, { recursive: true, mode: 0o700 });

  const softhsmConf = join(home, 'softhsm', 'softhsm2.conf');
  writeFileSync(softhsmConf, readFileSync(SOFTHSM_CONF_TEMPLATE, 'utf8').replaceAll('{{TOKEN_DIR}}', tokenDir));
  process.env.SOFTHSM2_CONF = softhsmConf;

  const userPin = randomSecret(16);
  const soPin = randomSecret(16);
  const pinFile = join(secrets, 'user-pin');
  writeSecret(pinFile, userPin);
  writeSecret(join(secrets, 'so-pin'), soPin);

  const p11 = new pkcs11js.PKCS11();
  initializeModule(p11, opts.modulePath);
  const registry: RegistryFile = { keys: [] };
  const keys: DemoInfo['keys'] = [];
  let pki: DemoPki;
  try {
    const slot = initToken(p11, DEMO_TOKEN_LABEL, soPin, userPin);
    const session = openUserSession(p11, slot, userPin);
    for (const demo of DEMO_KEYS) {
      const keyId = randomUUID();
      const keyVersionId = randomUUID();
      const key = generateKey(p11, session, demo.keySpec, `${demo.alias.slice('alias/'.length)}/${keyVersionId}`);
      registry.keys.push({
        keyId,
        account: 'default',
        keySpec: demo.keySpec,
        usage: 'SIGN/VERIFY',
        state: 'Enabled',
        aliases: [demo.alias],
        token: 'default',
        versions: [{ keyVersionId, label: key.label, id: key.id.toString('hex'), createdAt: new Date().toISOString() }],
        description: `demo ${demo.keySpec} key`,
      });
      const publicKeyPem = createPublicKey({ key: key.spki, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }).toString();
      keys.push({ keyId, alias: demo.alias, keyVersionId, keySpec: demo.keySpec, publicKeyPem, label: key.label, id: key.id.toString('hex') });
    }
    pki = createDemoPki(p11, session);
    registry.certificates = pki.registryEntries;
    p11.C_Logout(session);
    p11.C_CloseSession(session);
  } finally {
    p11.C_Finalize();
  }

  // SM2 lives on the SM2 test token (a vendor-style PKCS#11 module built by the set-up script), when present.
  const sm2 = sm2TokenAvailable() ? bootstrapSm2Demo({ home, pinFile, userPin, soPin }) : undefined;
  if (sm2) {
    registry.keys.push(...sm2.keys);
    registry.certificates = [...(registry.certificates ?? []), ...sm2.certificates];
    keys.push(...sm2.demoKeys);
  }

  const registryFile = join(home, 'registry.json');
  if (opts.registryIn === 'file') writeFileSync(registryFile, JSON.stringify(registry, null, 2) + '\n');
  else writeRegistryToToken(opts.modulePath, userPin, registry);

  const accessKeyId = `LTAI${randomSecret(20)}`;
  const accessKeySecretFile = join(secrets, `${accessKeyId}.secret`);
  writeSecret(accessKeySecretFile, randomSecret(30));

  const endpoint = `http://${opts.host}:${opts.port}`;
  const info: DemoInfo = {
    endpoint,
    accessKeyId,
    accessKeySecretFile,
    configFile: configPathOf(home),
    keys,
    rootCertificatePem: pki.rootCertificatePem,
    certificates: [...pki.certificates, ...(sm2?.demoCertificates ?? [])],
    ...(sm2 ? { sm2RootCertificatePem: sm2.rootCertificatePem } : {}),
  };
  writeFileSync(join(home, 'demo.json'), JSON.stringify(info, null, 2) + '\n');

  const config = {
    server: { host: opts.host, port: opts.port },
    hsm: {
      module: opts.modulePath,
      tokenLabel: DEMO_TOKEN_LABEL,
      pin: { file: pinFile },
      softhsmConf,
    },
    ...(sm2 ? { tokens: { sm2: sm2.tokenConfig } } : {}),
    registry: opts.registryIn === 'file' ? { file: registryFile } : {},
    audit: { file: join(home, 'audit', 'audit.log') },
    replay: { journal: join(home, 'replay', 'nonces.journal') },
    auth: { accessKeys: [{ accessKeyId, secret: { file: accessKeySecretFile }, account: 'default' }] },
  };
  // Written last: its presence marks a completed bootstrap.
  writeFileSync(
    configPathOf(home),
    `# Written by the first start of hsm-gateway (demo). Secrets are referenced, never inline.\n${stringify(config)}`,
  );
  return info;
}
