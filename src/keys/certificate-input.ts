import { createPrivateKey, createPublicKey, verify, X509Certificate, type KeyObject } from 'node:crypto';
import * as pkijs from 'pkijs';
import type { KeySpec } from '../signing/key-specs.js';
import { OID } from '../signing/x509.js';
import { LifecycleError } from './errors.js';

/**
 * What an operator hands the certificate lifecycle, read and checked before anything reaches a token: PEM
 * certificates and chains, private keys (possibly encrypted), and CSRs with their proof of possession.
 */

/** Signature algorithms accepted on a CSR (its proof of possession), with the hash Node verifies them with. */
const CSR_ALGORITHMS: Readonly<Record<string, string>> = {
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  [OID.ecdsaWithSHA256]: 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
};
const EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const SUBJECT_ALT_NAME = '2.5.29.17';

const toAb = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
export const invalid = (message: string): LifecycleError => new LifecycleError('invalid', message);

/** The PEM blocks of one kind in a text, as DER. */
function pemBlocks(text: string, labels: readonly string[]): Buffer[] {
  const blocks: Buffer[] = [];
  const pattern = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;
  for (const match of text.matchAll(pattern)) {
    if (labels.includes(match[1]!)) blocks.push(Buffer.from(match[2]!.replace(/\s+/g, ''), 'base64'));
  }
  return blocks;
}

function certificatesIn(text: string, what: string): X509Certificate[] {
  return pemBlocks(text, ['CERTIFICATE']).map((der, i) => {
    try {
      return new X509Certificate(der);
    } catch {
      throw invalid(`certificate ${i + 1} in ${what} is not a readable X.509 certificate`);
    }
  });
}

/** A private key in PEM (PKCS#8, or PKCS#1 / SEC1), decrypted with `passphrase` when it is encrypted. */
export function readPrivateKey(pem: string, passphrase: string | undefined): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem', ...(passphrase !== undefined ? { passphrase } : {}) });
  } catch (err) {
    const message = (err as Error).message;
    if (/passphrase|decrypt|bad decrypt/i.test(message)) throw invalid('the private key is encrypted and the passphrase is missing or wrong');
    throw invalid('the private key is not a readable PEM private key (PKCS#8, PKCS#1 or SEC1)');
  }
  if (key.type !== 'private') throw invalid('the key file does not hold a private key');
  return key;
}

/** The key spec of a private key given to import; only specs the gateway signs with (not SM2: see below). */
export function keySpecOfPrivateKey(key: KeyObject): KeySpec {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'rsa') {
    if (details?.modulusLength === 2048) return 'RSA_2048';
    if (details?.modulusLength === 3072) return 'RSA_3072';
    throw new LifecycleError('unsupported', `an RSA key of ${details?.modulusLength} bits is not a supported key spec (RSA_2048, RSA_3072)`);
  }
  if (key.asymmetricKeyType === 'ec') {
    if (details?.namedCurve === 'prime256v1') return 'EC_P256';
    if (details?.namedCurve === 'secp256k1') return 'EC_P256K';
    throw new LifecycleError('unsupported', `an EC key on curve ${details?.namedCurve} is not a supported key spec (EC_P256, EC_P256K)`);
  }
  // Node cannot export an SM2 key's components (no JWK curve), and vendor SM2 tokens differ in how they take one.
  throw new LifecycleError('unsupported', `a ${key.asymmetricKeyType ?? 'unknown'} key cannot be imported; RSA 2048/3072, P-256 and secp256k1 keys can`);
}

/** Orders `candidates` into the leaf's issuer chain, nearest first; anything that is not an issuer is refused. */
function orderChain(leaf: X509Certificate, candidates: X509Certificate[]): X509Certificate[] {
  const remaining = [...candidates];
  const chain: X509Certificate[] = [];
  let current = leaf;
  for (;;) {
    const i = remaining.findIndex((c) => current.checkIssued(c) && current.verify(c.publicKey));
    if (i < 0) break;
    current = remaining.splice(i, 1)[0]!;
    chain.push(current);
  }
  const stray = remaining.find((c) => c.fingerprint256 !== leaf.fingerprint256 && !chain.some((x) => x.fingerprint256 === c.fingerprint256));
  if (stray) throw invalid(`the chain holds a certificate that does not issue the certificate or its issuers: ${stray.subject.replace(/\n/g, ', ')}`);
  return chain;
}

/**
 * The certificate of `key` (the first in the certificate file) and its issuers, nearest first: those the certificate
 * file carries after it and those of the chain file.
 */
export function readCertificateChain(certificatePem: string, chainPem: string | undefined, key: KeyObject): { leaf: X509Certificate; chain: X509Certificate[] } {
  const [leaf, ...bundled] = certificatesIn(certificatePem, 'the certificate file');
  if (!leaf) throw invalid('the certificate file holds no PEM certificate');
  // A private key (certs import) proves itself; a public key (certs register: the key stays on the token) must be the certificate's.
  const spki = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });
  if (key.type === 'private' ? !leaf.checkPrivateKey(key) : !spki(leaf.publicKey).equals(spki(key))) {
    throw invalid(`the certificate's public key does not match the ${key.type === 'private' ? 'private key' : "key's public key on the token"}`);
  }
  return { leaf, chain: orderChain(leaf, [...bundled, ...(chainPem === undefined ? [] : certificatesIn(chainPem, 'the chain file'))]) };
}

/** A CSR: its subject and key (as it asked), its subjectAltName request, and a checked proof of possession. */
export function parseCsr(pem: string): { subject: Buffer; spki: Buffer; extensions: pkijs.Extension[] } {
  const [der] = pemBlocks(pem, ['CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST']);
  if (!der) throw invalid('the CSR is not a PEM "CERTIFICATE REQUEST"');
  let csr: pkijs.CertificationRequest;
  try {
    csr = pkijs.CertificationRequest.fromBER(toAb(der));
  } catch {
    throw invalid('the CSR is not a readable PKCS#10 request');
  }
  const spki = Buffer.from(csr.subjectPublicKeyInfo.toSchema().toBER(false));
  const hash = CSR_ALGORITHMS[csr.signatureAlgorithm.algorithmId];
  if (!hash) throw new LifecycleError('unsupported', `the CSR is signed with ${csr.signatureAlgorithm.algorithmId}; RSA PKCS#1 v1.5 and ECDSA with SHA-2 CSRs are accepted`);
  let valid = false;
  try {
    const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    valid = verify(hash, Buffer.from(csr.tbsView), key, Buffer.from(csr.signatureValue.valueBlock.valueHexView));
  } catch {
    valid = false;
  }
  if (!valid) throw invalid('the CSR signature does not verify with its own public key');
  const extensions: pkijs.Extension[] = [];
  for (const attribute of csr.attributes ?? []) {
    if (attribute.type !== EXTENSION_REQUEST || attribute.values[0] === undefined) continue;
    const requested = new pkijs.Extensions({ schema: attribute.values[0] });
    // Only the names are taken from the request; key usage and constraints are the CA's to decide.
    extensions.push(...requested.extensions.filter((e) => e.extnID === SUBJECT_ALT_NAME));
  }
  return { subject: Buffer.from(csr.subject.toSchema().toBER(false)), spki, extensions };
}
