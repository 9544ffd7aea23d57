import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { issueCertificate } from '../../src/signing/x509.js';

/** A throwaway RSA PKI made in Node (root → intermediate) for the unit tests of X.509 and CMS consumers. */
interface TestPki {
  rootKey: { publicKey: KeyObject; privateKey: KeyObject };
  root: Buffer;
  intermediateKey: { publicKey: KeyObject; privateKey: KeyObject };
  intermediate: Buffer;
  /** A leaf for `publicKey`, issued by the intermediate (or by the root). */
  leaf(commonName: string, publicKey: KeyObject, issuer?: 'intermediate' | 'root'): Buffer;
}

const spkiOf = (key: KeyObject): Buffer => key.export({ type: 'spki', format: 'der' });

export function testPki(name: string): TestPki {
  const rootKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const intermediateKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const organization = `${name} Org`;
  const root = issueCertificate({
    subject: { commonName: `${name} Root`, organization },
    subjectPublicKeyInfo: spkiOf(rootKey.publicKey),
    ca: { pathLength: 1 },
    validDays: 3650,
    signatureAlgorithm: 'sha256WithRSAEncryption',
    sign: (tbs) => sign('sha256', tbs, rootKey.privateKey),
  });
  const intermediate = issueCertificate({
    subject: { commonName: `${name} Intermediate`, organization },
    subjectPublicKeyInfo: spkiOf(intermediateKey.publicKey),
    issuerCertificate: root,
    ca: { pathLength: 0 },
    validDays: 1825,
    signatureAlgorithm: 'sha256WithRSAEncryption',
    sign: (tbs) => sign('sha256', tbs, rootKey.privateKey),
  });
  const leaf = (commonName: string, publicKey: KeyObject, issuer: 'intermediate' | 'root' = 'intermediate'): Buffer =>
    issueCertificate({
      subject: { commonName, organization },
      subjectPublicKeyInfo: spkiOf(publicKey),
      issuerCertificate: issuer === 'root' ? root : intermediate,
      validDays: 825,
      signatureAlgorithm: 'sha256WithRSAEncryption',
      sign: (tbs) => sign('sha256', tbs, (issuer === 'root' ? rootKey : intermediateKey).privateKey),
    });
  return { rootKey, root, intermediateKey, intermediate, leaf };
}
