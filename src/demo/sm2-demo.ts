import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pkcs11js from 'pkcs11js';
import { initToken, storeCertificate } from '../hsm/admin.js';
import { openUserSession, signNow } from './token-work.js';
import { initializeModule } from '../hsm/module.js';
import type { RegistryFile } from '../keys/registry.js';
import { p1363ToDer } from '../signing/der.js';
import { sm2E, sm2Za } from '../signing/sm2.js';
import { certificateObjectFields, issueCertificate, toPem } from '../signing/x509.js';
import { demoCertificateIdentifiers, generateKey, type DemoCertificate, type GeneratedKey } from './pki.js';

/**
 * The demo's SM2 part, on the SM2 test token (softhsm/sm2-token, a PKCS#11 module that emulates a vendor SM2 HSM):
 * an SM2 key (alias/demo-sm2), an SM2 root CA and an SM2 leaf certificate, all made on that token.
 */
export const SM2_TOKEN_MODULE = resolve(dirname(fileURLToPath(import.meta.url)), '../../softhsm/sm2-token/build/libsm2token.so');
const SM2_TOKEN_LABEL = 'hsm-gateway-sm2-demo';

/** The SM2 test token's vendor constants (softhsm/sm2-token/sm2-vendor.h), as an HSM profile. */
const SM2_TEST_TOKEN_PROFILE = {
  keyType: 0x80001001,
  keyPairGenMechanism: 0x80001001,
  signMechanism: 0x80001002,
  signOutput: 'raw',
} as const;

interface Sm2Demo {
  tokenConfig: Record<string, unknown>;
  keys: NonNullable<RegistryFile['keys']>;
  certificates: NonNullable<RegistryFile['certificates']>;
  demoKeys: Array<{ keyId: string; alias: string; keyVersionId: string; keySpec: 'EC_SM2'; publicKeyPem: string }>;
  demoCertificates: DemoCertificate[];
  rootCertificatePem: string;
}

export function sm2TokenAvailable(modulePath = SM2_TOKEN_MODULE): boolean {
  return existsSync(modulePath);
}

export function bootstrapSm2Demo(opts: { home: string; pinFile: string; userPin: string; soPin: string; modulePath?: string }): Sm2Demo {
  const modulePath = opts.modulePath ?? SM2_TOKEN_MODULE;
  const storeDir = join(opts.home, 'sm2token');
  mkdirSync(storeDir, { recursive: true, mode: 0o700 });
  process.env.SM2TOKEN_DIR = storeDir;
  const profile = { sm2: SM2_TEST_TOKEN_PROFILE };

  const p11 = new pkcs11js.PKCS11();
  initializeModule(p11, modulePath);
  try {
    const slot = initToken(p11, SM2_TOKEN_LABEL, opts.soPin, opts.userPin);
    const session = openUserSession(p11, slot, opts.userPin);
    // generateKey read the public key back from the token: its SPKI ends with the 65-byte point.
    const point = (key: GeneratedKey) => key.spki.subarray(key.spki.length - 65);
    // An SM2 certificate signature is over e = SM3(Z_A ‖ TBS) with the issuer's Z_A (default user id), as DER.
    const sm2Signer = (issuer: GeneratedKey) => {
      const za = sm2Za(point(issuer));
      return (tbs: Buffer) =>
        p1363ToDer(signNow(p11, session, issuer.privateKey, { mechanism: SM2_TEST_TOKEN_PROFILE.signMechanism }, sm2E(za, tbs), 64));
    };

    const keyId = randomUUID();
    const keyVersionId = randomUUID();
    const key = generateKey(p11, session, 'EC_SM2', `demo-sm2/${keyVersionId}`, profile);

    const caKey = generateKey(p11, session, 'EC_SM2', 'demo-sm2-root-ca', profile);
    const root = issueCertificate({
      subject: { commonName: 'hsm-gateway Demo SM2 Root CA', organization: 'hsm-gateway demo' },
      subjectPublicKeyInfo: caKey.spki,
      ca: { pathLength: 0 },
      validDays: 3650,
      signatureAlgorithm: 'sm2WithSM3',
      sign: sm2Signer(caKey),
    });
    storeCertificate(p11, session, certificateObjectFields(root), caKey.label, caKey.id);

    const certificateId = randomUUID();
    const leafKey = generateKey(p11, session, 'EC_SM2', `demo-cert-sm2/${certificateId}`, profile);
    const leaf = issueCertificate({
      subject: { commonName: 'demo-cert-sm2.demo.hsm-gateway', organization: 'hsm-gateway demo' },
      subjectPublicKeyInfo: leafKey.spki,
      issuerCertificate: root,
      validDays: 825,
      signatureAlgorithm: 'sm2WithSM3',
      sign: sm2Signer(caKey),
    });
    storeCertificate(p11, session, certificateObjectFields(leaf), leafKey.label, leafKey.id);
    p11.C_Logout(session);
    p11.C_CloseSession(session);

    const identifiers = demoCertificateIdentifiers(certificateId);
    const now = new Date().toISOString();
    return {
      tokenConfig: {
        module: modulePath,
        tokenLabel: SM2_TOKEN_LABEL,
        pin: { file: opts.pinFile },
        sessions: 4,
        environment: { SM2TOKEN_DIR: storeDir },
        profile: { sm2: SM2_TEST_TOKEN_PROFILE },
      },
      keys: [
        {
          keyId,
          account: 'default',
          keySpec: 'EC_SM2',
          usage: 'SIGN/VERIFY',
          state: 'Enabled',
          aliases: ['alias/demo-sm2'],
          token: 'sm2',
          versions: [{ keyVersionId, label: key.label, id: key.id.toString('hex'), createdAt: now }],
          description: 'demo EC_SM2 key',
        },
      ],
      certificates: [
        {
          ...identifiers,
          account: 'default',
          keySpec: 'EC_SM2',
          state: 'Enabled',
          token: 'sm2',
          label: leafKey.label,
          id: leafKey.id.toString('hex'),
          chainLabels: [caKey.label],
          description: 'demo EC_SM2 leaf certificate',
        },
      ],
      demoKeys: [{ keyId, alias: 'alias/demo-sm2', keyVersionId, keySpec: 'EC_SM2', publicKeyPem: spkiPem(key.spki) }],
      demoCertificates: [{ ...identifiers, keySpec: 'EC_SM2', certificatePem: toPem(leaf) }],
      rootCertificatePem: toPem(root),
    };
  } finally {
    p11.C_Finalize();
  }
}

const spkiPem = (spki: Buffer): string => toPem(spki, 'PUBLIC KEY');
