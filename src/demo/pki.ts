import { randomBytes, randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { storeCertificate } from '../hsm/admin.js';
import { generateSigningKeyPair, signNow } from './token-work.js';
import { readPublicKey } from '../hsm/objects.js';
import { newCertificateIdentifiers } from '../keys/certificate-lifecycle.js';
import { keyPairParams } from '../keys/lifecycle.js';
import type { RegistryFile } from '../keys/registry.js';
import { KEY_SPECS, type KeySpec } from '../signing/key-specs.js';
import type { HsmProfile } from '../signing/plan.js';
import { publicKeyObject } from '../signing/public-key.js';
import { certificateObjectFields, issueCertificate, toPem } from '../signing/x509.js';

/**
 * The demo's key material, made on the token: key pairs generated there (never extractable), and a small
 * private PKI — root CA → intermediate CA → leaf certificates — whose CA signatures the token makes too.
 */
export interface GeneratedKey {
  label: string;
  id: Buffer;
  keySpec: KeySpec;
  privateKey: pkcs11js.Handle;
  /** DER SubjectPublicKeyInfo, read back from the token. */
  spki: Buffer;
}

export function generateKey(
  p11: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  keySpec: KeySpec,
  label: string,
  /** The token's HSM profile: an SM2 key is generated with its vendor mechanism and key type. */
  profile: HsmProfile = {},
): GeneratedKey {
  const id = randomBytes(16);
  const pair = generateSigningKeyPair(p11, session, keyPairParams(keySpec, profile), label, id);
  const spki = publicKeyObject(readPublicKey(p11, session, pair.publicKey), keySpec).export({ type: 'spki', format: 'der' });
  return { label, id, keySpec, privateKey: pair.privateKey, spki };
}

const DEMO_ORG = 'hsm-gateway demo';
const DEMO_LEAVES: ReadonlyArray<{ keySpec: KeySpec; name: string }> = [
  { keySpec: 'RSA_2048', name: 'demo-cert-rsa-2048' },
  { keySpec: 'EC_P256', name: 'demo-cert-ec-p256' },
];
const DEMO_WAREHOUSE_ID = 1;

export interface DemoCertificate {
  certificateId: string;
  casIdentifier: string;
  sslIdentifier: string;
  customIdentifier: string;
  warehouseId: number;
  keySpec: KeySpec;
  certificatePem: string;
}

/** The ids a demo certificate is known by: KMS CertificateId, CAS Identifier, SSL identifier, custom id, warehouse. */
export function demoCertificateIdentifiers(certificateId: string): Omit<DemoCertificate, 'keySpec' | 'certificatePem'> {
  return { certificateId, ...newCertificateIdentifiers(), warehouseId: DEMO_WAREHOUSE_ID };
}

export interface DemoPki {
  rootCertificatePem: string;
  certificates: DemoCertificate[];
  registryEntries: NonNullable<RegistryFile['certificates']>;
}

export function createDemoPki(p11: pkcs11js.PKCS11, session: pkcs11js.Handle): DemoPki {
  // The CAs are RSA keys on the token: their certificate signatures are CKM_SHA256_RSA_PKCS over the TBS.
  const signer = (key: GeneratedKey) => (tbs: Buffer) =>
    signNow(p11, session, key.privateKey, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, tbs, KEY_SPECS[key.keySpec].signatureBytes);
  const store = (der: Buffer, key: GeneratedKey): void => {
    storeCertificate(p11, session, certificateObjectFields(der), key.label, key.id);
  };

  const rootKey = generateKey(p11, session, 'RSA_2048', 'demo-root-ca');
  const root = issueCertificate({
    subject: { commonName: 'hsm-gateway Demo Root CA', organization: DEMO_ORG },
    subjectPublicKeyInfo: rootKey.spki,
    ca: { pathLength: 1 },
    validDays: 3650,
    signatureAlgorithm: 'sha256WithRSAEncryption',
    sign: signer(rootKey),
  });
  store(root, rootKey);

  const intermediateKey = generateKey(p11, session, 'RSA_2048', 'demo-intermediate-ca');
  const intermediate = issueCertificate({
    subject: { commonName: 'hsm-gateway Demo Intermediate CA', organization: DEMO_ORG },
    subjectPublicKeyInfo: intermediateKey.spki,
    issuerCertificate: root,
    ca: { pathLength: 0 },
    validDays: 1825,
    signatureAlgorithm: 'sha256WithRSAEncryption',
    sign: signer(rootKey),
  });
  store(intermediate, intermediateKey);

  const pki: DemoPki = { rootCertificatePem: toPem(root), certificates: [], registryEntries: [] };
  for (const leaf of DEMO_LEAVES) {
    const certificateId = randomUUID();
    const key = generateKey(p11, session, leaf.keySpec, `${leaf.name}/${certificateId}`);
    const der = issueCertificate({
      subject: { commonName: `${leaf.name}.demo.hsm-gateway`, organization: DEMO_ORG },
      subjectPublicKeyInfo: key.spki,
      issuerCertificate: intermediate,
      validDays: 825,
      signatureAlgorithm: 'sha256WithRSAEncryption',
      sign: signer(intermediateKey),
    });
    store(der, key);
    const identifiers = demoCertificateIdentifiers(certificateId);
    pki.certificates.push({ ...identifiers, keySpec: leaf.keySpec, certificatePem: toPem(der) });
    pki.registryEntries.push({
      ...identifiers,
      account: 'default',
      keySpec: leaf.keySpec,
      state: 'Enabled',
      token: 'default',
      label: key.label,
      id: key.id.toString('hex'),
      chainLabels: [intermediateKey.label, rootKey.label],
      description: `demo ${leaf.keySpec} leaf certificate`,
    });
  }
  return pki;
}
