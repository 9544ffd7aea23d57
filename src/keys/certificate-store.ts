import { X509Certificate } from 'node:crypto';
import { KEY_SPECS } from '../signing/key-specs.js';
import type { CertificateRecord } from './registry.js';

/** A registered certificate as read from its token: its DER and its issuers' DER, nearest first. */
export interface CertificateMaterial {
  der: Buffer;
  chain: Buffer[];
}

export class CertificateStoreError extends Error {}

/** What the certificate's public key must look like for its registered key spec. */
function fitsKeySpec(cert: X509Certificate, record: CertificateRecord): boolean {
  const spec = KEY_SPECS[record.keySpec];
  const key = cert.publicKey;
  if (spec.kind === 'RSA') return key.asymmetricKeyType === 'rsa' && key.asymmetricKeyDetails?.modulusLength === spec.modulusBits;
  if (record.keySpec === 'EC_SM2') {
    // Node reports no key type for SM2 keys: look for the SM2 curve OID in the SubjectPublicKeyInfo.
    return key.export({ type: 'spki', format: 'der' }).includes(Buffer.from(spec.ecParams, 'hex'));
  }
  const curve = key.asymmetricKeyDetails?.namedCurve;
  return key.asymmetricKeyType === 'ec' && (curve === spec.curve || (spec.curve === 'P-256' && curve === 'prime256v1'));
}

/**
 * Reads every registered certificate and its chain from the token once, at start-up, and checks that each
 * certificate's key fits its key spec. `read` fetches a certificate object's DER by label (and CKA_ID).
 */
export function loadCertificates(
  records: readonly CertificateRecord[],
  read: (record: CertificateRecord, label: string, id?: string) => Buffer,
): Map<string, CertificateMaterial> {
  const store = new Map<string, CertificateMaterial>();
  for (const record of records) {
    const der = read(record, record.label, record.id);
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch {
      throw new CertificateStoreError(`certificate ${record.certificateId} ("${record.label}") on the token is not a readable X.509 certificate`);
    }
    if (!fitsKeySpec(cert, record)) {
      throw new CertificateStoreError(`certificate ${record.certificateId} ("${record.label}") does not hold a ${record.keySpec} key`);
    }
    store.set(record.certificateId, { der, chain: record.chainLabels.map((label) => read(record, label)) });
  }
  return store;
}
