import { createHash, createPrivateKey, createPublicKey, randomBytes, randomUUID, verify, X509Certificate, type KeyObject } from 'node:crypto';
import * as pkijs from 'pkijs';
import pkcs11js from 'pkcs11js';
import { SIGNING_PRIVATE_KEY_USAGE, SIGNING_PUBLIC_KEY_USAGE, signingKeyPairTemplates, storeCertificate } from '../hsm/admin.js';
import { readPublicKey, type KeyRef } from '../hsm/objects.js';
import { KEY_SPECS, type KeySpec } from '../signing/key-specs.js';
import { encodeSignature, tokenInput } from '../signing/plan.js';
import { ecPoint, publicKeyObject } from '../signing/public-key.js';
import { sm2Za } from '../signing/sm2.js';
import { certificateObjectFields, issueCertificateAsync, OID, toPem, type CertificateSignatureAlgorithm, type SubjectName } from '../signing/x509.js';
import { LifecycleError } from './errors.js';
import { canSign, DEFAULT_ALGORITHM, keyPairParams, type KeyHome } from './lifecycle.js';
import type { RegistrySnapshot, RegistrySource } from './registry-source.js';
import type { CertificateRecord, KeyRegistry } from './registry.js';

/**
 * Certificate lifecycle: import a certificate with its private key (the key goes onto the token, sensitive and
 * never extractable again), issue a certificate for a key generated on the token with a CA whose key is on the
 * token, and sign a CSR with such a CA. One implementation for the admin CLI (and an API later). Records are
 * written through RegistrySource.change, so every replica serves a new certificate after its next poll.
 */

/** The CAS identifiers of a new certificate: a private-certificate Identifier, an SSL-style `{n}-{region}` id, a custom id. */
export function newCertificateIdentifiers(regionId = 'cn-hangzhou'): { casIdentifier: string; sslIdentifier: string; customIdentifier: string } {
  return {
    casIdentifier: randomBytes(13).toString('hex'),
    sslIdentifier: `${10_000_000 + (randomBytes(4).readUInt32BE(0) % 90_000_000)}-${regionId}`,
    customIdentifier: randomBytes(16).toString('hex'),
  };
}

/** Common fields of a new certificate's record. */
export interface CertificateRecordInput {
  account: string;
  warehouseId?: number;
  /** CAS CustomIdentifier; a random one when absent. */
  customIdentifier?: string;
  description?: string;
}

/** The certificate algorithm and KMS algorithm an issuer key of this spec signs certificates with. */
const CERTIFICATE_ALGORITHM: Record<KeySpec, CertificateSignatureAlgorithm> = {
  RSA_2048: 'sha256WithRSAEncryption',
  RSA_3072: 'sha256WithRSAEncryption',
  EC_P256: 'ecdsaWithSHA256',
  EC_P256K: 'ecdsaWithSHA256',
  EC_SM2: 'sm2WithSM3',
};

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
const invalid = (message: string): LifecycleError => new LifecycleError('invalid', message);

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

/** The key spec of a private key given to import; only specs the gateway signs with (not SM2: see below). */
function keySpecOfPrivateKey(key: KeyObject): KeySpec {
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

const fromB64url = (value: string | undefined): Buffer => Buffer.from(value ?? '', 'base64url');

/**
 * The templates that put an existing private key on a token, and its public key beside it: the private key is
 * sensitive and not extractable from then on, signs and does nothing else.
 */
function importTemplates(key: KeyObject, keySpec: KeySpec, label: string, id: Buffer, subject: Buffer): { privateTemplate: pkcs11js.Template; publicTemplate: pkcs11js.Template } {
  const jwk = key.export({ format: 'jwk' });
  const common = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
    { type: pkcs11js.CKA_SUBJECT, value: subject },
  ];
  const privateTemplate: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, ...common, ...SIGNING_PRIVATE_KEY_USAGE];
  const publicTemplate: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    ...common,
    { type: pkcs11js.CKA_PRIVATE, value: false },
    ...SIGNING_PUBLIC_KEY_USAGE,
  ];
  const spec = KEY_SPECS[keySpec];
  if (spec.kind === 'RSA') {
    const publicParts = [
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      { type: pkcs11js.CKA_MODULUS, value: fromB64url(jwk.n) },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: fromB64url(jwk.e) },
    ];
    privateTemplate.push(
      ...publicParts,
      { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: fromB64url(jwk.d) },
      { type: pkcs11js.CKA_PRIME_1, value: fromB64url(jwk.p) },
      { type: pkcs11js.CKA_PRIME_2, value: fromB64url(jwk.q) },
      { type: pkcs11js.CKA_EXPONENT_1, value: fromB64url(jwk.dp) },
      { type: pkcs11js.CKA_EXPONENT_2, value: fromB64url(jwk.dq) },
      { type: pkcs11js.CKA_COEFFICIENT, value: fromB64url(jwk.qi) },
    );
    publicTemplate.push(...publicParts);
  } else {
    const ecParams = Buffer.from(spec.ecParams, 'hex');
    const point = Buffer.concat([Buffer.from([0x04]), fromB64url(jwk.x), fromB64url(jwk.y)]);
    privateTemplate.push(
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
      { type: pkcs11js.CKA_EC_PARAMS, value: ecParams },
      { type: pkcs11js.CKA_VALUE, value: fromB64url(jwk.d) },
    );
    publicTemplate.push(
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
      { type: pkcs11js.CKA_EC_PARAMS, value: ecParams },
      // CKA_EC_POINT is the DER OCTET STRING around the uncompressed point (PKCS#11 2.40 §2.3.3).
      { type: pkcs11js.CKA_EC_POINT, value: Buffer.concat([Buffer.from([0x04, point.length]), point]) },
    );
  }
  return { privateTemplate, publicTemplate };
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

type P11 = pkcs11js.PKCS11;
type Handle = pkcs11js.Handle;

function findAll(p11: P11, session: Handle, template: pkcs11js.Template): Handle[] {
  p11.C_FindObjectsInit(session, template);
  try {
    const found: Handle[] = [];
    for (;;) {
      const batch = p11.C_FindObjects(session, 256);
      found.push(...batch);
      if (batch.length < 256) return found;
    }
  } finally {
    p11.C_FindObjectsFinal(session);
  }
}

const certificateTemplate = (extra: pkcs11js.Template): pkcs11js.Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
  { type: pkcs11js.CKA_TOKEN, value: true },
  ...extra,
];

const labelOf = (p11: P11, session: Handle, handle: Handle): string =>
  (p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }])[0]!.value as Buffer).toString('utf8');

/**
 * The label of a certificate object holding this DER on the token, reusing one that is already there (and is the
 * only certificate with its label, so a chain entry names it alone), else storing it under `chain/<fingerprint>`.
 */
function chainCertificateLabel(p11: P11, session: Handle, der: Buffer, created: Handle[]): string {
  for (const handle of findAll(p11, session, certificateTemplate([{ type: pkcs11js.CKA_VALUE, value: der }]))) {
    const label = labelOf(p11, session, handle);
    if (label !== '' && findAll(p11, session, certificateTemplate([{ type: pkcs11js.CKA_LABEL, value: label }])).length === 1) return label;
  }
  const label = `chain/${createHash('sha256').update(der).digest('hex').slice(0, 32)}`;
  if (findAll(p11, session, certificateTemplate([{ type: pkcs11js.CKA_LABEL, value: label }])).length > 0) {
    throw invalid(`a different certificate object on the token is already labelled "${label}"`);
  }
  created.push(storeCertificate(p11, session, certificateObjectFields(der), label, createHash('sha256').update(der).digest().subarray(0, 16)));
  return label;
}

/** A CSR: its subject and key (as it asked), its subjectAltName request, and a checked proof of possession. */
function parseCsr(pem: string): { subject: Buffer; spki: Buffer; extensions: pkijs.Extension[] } {
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

export class CertificateLifecycle {
  constructor(
    private readonly source: RegistrySource,
    private readonly homes: readonly KeyHome[],
    private readonly options: { regionId?: string; now?: () => Date } = {},
  ) {}

  private now(): Date {
    return this.options.now?.() ?? new Date();
  }

  private home(name: string): KeyHome {
    const home = this.homes.find((h) => h.name === name);
    if (!home) throw new LifecycleError('unsupported', `token "${name}" is not configured`);
    return home;
  }

  /** The record to write, with CAS identifiers unique in the registry (the random ones drawn again on a clash). */
  private record(registry: KeyRegistry, base: Omit<CertificateRecord, 'casIdentifier' | 'sslIdentifier' | 'customIdentifier'>, input: CertificateRecordInput): CertificateRecord {
    if (input.customIdentifier !== undefined && registry.certificateByCustomIdentifier(input.customIdentifier)) {
      throw new LifecycleError('certificate-exists', `custom identifier ${input.customIdentifier} already names a certificate`);
    }
    for (;;) {
      const ids = newCertificateIdentifiers(this.options.regionId);
      const taken =
        registry.certificateByCertIdentifier(ids.casIdentifier) ||
        registry.certificateByCertIdentifier(ids.sslIdentifier) ||
        (input.customIdentifier === undefined && registry.certificateByCustomIdentifier(ids.customIdentifier));
      if (taken) continue;
      return { ...base, casIdentifier: ids.casIdentifier, sslIdentifier: ids.sslIdentifier, customIdentifier: input.customIdentifier ?? ids.customIdentifier };
    }
  }

  /** Destroys objects made for a certificate whose registration failed. */
  private async discard(home: KeyHome, handles: readonly Handle[], refs: readonly KeyRef[] = []): Promise<void> {
    await home.token.admin((p11, session) => {
      for (const handle of handles) {
        try {
          p11.C_DestroyObject(session, handle);
        } catch {
          // Gone already.
        }
      }
    });
    for (const ref of refs) home.token.forget(ref);
  }

  /**
   * Imports a certificate and its private key (PEM: PKCS#8, or PKCS#1 / SEC1; encrypted with `passphrase`) onto a
   * token, with its issuer chain (nearest first once ordered; a certificate file may carry the chain after the
   * leaf), and registers it.
   */
  async importCertificate(
    input: CertificateRecordInput & { privateKeyPem: string; passphrase?: string; certificatePem: string; chainPem?: string; tokenName?: string },
  ): Promise<{ record: CertificateRecord; certificatePem: string }> {
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: input.privateKeyPem, format: 'pem', ...(input.passphrase !== undefined ? { passphrase: input.passphrase } : {}) });
    } catch (err) {
      const message = (err as Error).message;
      if (/passphrase|decrypt|bad decrypt/i.test(message)) throw invalid('the private key is encrypted and the passphrase is missing or wrong');
      throw invalid('the private key is not a readable PEM private key (PKCS#8, PKCS#1 or SEC1)');
    }
    if (key.type !== 'private') throw invalid('the key file does not hold a private key');
    const keySpec = keySpecOfPrivateKey(key);
    const [leaf, ...bundled] = certificatesIn(input.certificatePem, 'the certificate file');
    if (!leaf) throw invalid('the certificate file holds no PEM certificate');
    if (!leaf.checkPrivateKey(key)) throw invalid("the certificate's public key does not match the private key");
    const chain = orderChain(leaf, [...bundled, ...(input.chainPem === undefined ? [] : certificatesIn(input.chainPem, 'the chain file'))]);

    const home = input.tokenName === undefined ? this.homes.find((h) => canSign(h, keySpec)) : this.home(input.tokenName);
    if (!home || !canSign(home, keySpec)) {
      throw new LifecycleError('unsupported', `${input.tokenName === undefined ? 'no configured token' : `token "${input.tokenName}"`} can sign with ${keySpec} keys`);
    }
    const certificateId = randomUUID();
    const label = `cert/${certificateId}`;
    const id = randomBytes(16);
    const leafDer = Buffer.from(leaf.raw);
    const fields = certificateObjectFields(leafDer);
    const created: Handle[] = [];
    const chainLabels = await home.token.admin((p11, session) => {
      try {
        for (const handle of findAll(p11, session, certificateTemplate([{ type: pkcs11js.CKA_VALUE, value: leafDer }]))) {
          const existing = labelOf(p11, session, handle);
          if (this.source.current().registry.certificates().some((c) => c.token === home.name && c.label === existing)) {
            throw new LifecycleError('certificate-exists', `this certificate is already registered (token object "${existing}")`);
          }
        }
        const { privateTemplate, publicTemplate } = importTemplates(key, keySpec, label, id, fields.subject);
        created.push(p11.C_CreateObject(session, privateTemplate));
        created.push(p11.C_CreateObject(session, publicTemplate));
        created.push(storeCertificate(p11, session, fields, label, id));
        return chain.map((c) => chainCertificateLabel(p11, session, Buffer.from(c.raw), created));
      } catch (err) {
        for (const handle of created.reverse()) {
          try {
            p11.C_DestroyObject(session, handle);
          } catch {
            // Best effort: the error that matters is the one thrown below.
          }
        }
        throw err;
      }
    });
    const ref = { label, id: id.toString('hex') };
    try {
      const record = await this.source.change((snapshot, writer) => {
        const record = this.record(
          snapshot.registry,
          {
            certificateId,
            account: input.account,
            keySpec,
            state: 'Enabled',
            token: home.name,
            label,
            id: ref.id,
            chainLabels,
            ...(input.warehouseId !== undefined ? { warehouseId: input.warehouseId } : {}),
            ...(input.description ? { description: input.description } : {}),
          },
          input,
        );
        writer.putCertificate(record);
        return record;
      });
      return { record, certificatePem: toPem(leafDer) };
    } catch (err) {
      await this.discard(home, created, [ref]).catch(() => undefined);
      throw err;
    }
  }

  /** A registered certificate that may issue: its key on a configured token, Enabled, a CA, and valid for `validDays` more. */
  private async issuer(snapshot: RegistrySnapshot, caCertificateId: string, validDays: number): Promise<{ ca: CertificateRecord; home: KeyHome; der: Buffer; sign: (tbs: Buffer) => Promise<Buffer>; algorithm: CertificateSignatureAlgorithm }> {
    const ca = snapshot.registry.certificate(caCertificateId);
    if (!ca) throw new LifecycleError('certificate-not-found', `certificate ${caCertificateId} does not exist`);
    if (ca.state !== 'Enabled') throw new LifecycleError('invalid-state', `certificate ${ca.certificateId} is ${ca.state}; only an Enabled CA issues`);
    const home = this.home(ca.token);
    const ref = { label: ca.label, id: ca.id };
    const der = home.token.certificate(ref);
    const x509 = new X509Certificate(der);
    if (!x509.ca) throw invalid(`certificate ${ca.certificateId} is not a CA certificate (its basicConstraints do not say cA)`);
    const until = this.now().getTime() + validDays * 86_400_000;
    if (Date.parse(x509.validTo) < until) throw invalid(`the CA certificate ${ca.certificateId} expires on ${new Date(x509.validTo).toISOString()}, before the ${validDays} days asked for`);
    const plan = home.plans.get(DEFAULT_ALGORITHM[ca.keySpec], ca.keySpec, 'RAW');
    if (!plan) throw new LifecycleError('unsupported', `token "${home.name}" cannot sign with the CA's ${ca.keySpec} key`);
    // SM2 signs e = SM3(Z_A ‖ TBS) with the issuer's Z_A (default user id), as certificates expect.
    const za = ca.keySpec === 'EC_SM2' ? sm2Za(ecPoint(home.token.publicKey(ref), 'EC_SM2')) : undefined;
    const sign = async (tbs: Buffer): Promise<Buffer> =>
      encodeSignature(plan, await home.token.sign(ref, plan.mechanism, tokenInput(plan, tbs, za), plan.signatureBytes));
    return { ca, home, der, sign, algorithm: CERTIFICATE_ALGORITHM[ca.keySpec] };
  }

  /**
   * Issues a certificate for a key pair generated on the CA's token (sensitive, never extractable), signed by the CA's
   * key on the token, and registers it with the CA's chain.
   */
  async issueCertificate(
    input: Omit<CertificateRecordInput, 'account'> & { caCertificateId: string; subject: SubjectName; keySpec: KeySpec; validDays: number; account?: string },
  ): Promise<{ record: CertificateRecord; certificatePem: string }> {
    const { ca, home, der: caDer, sign, algorithm } = await this.issuer(this.source.current(), input.caCertificateId, input.validDays);
    if (!canSign(home, input.keySpec)) throw new LifecycleError('unsupported', `token "${home.name}", which holds the CA's key, cannot make and sign with ${input.keySpec} keys`);
    const certificateId = randomUUID();
    const label = `cert/${certificateId}`;
    const id = randomBytes(16);
    const ref = { label, id: id.toString('hex') };
    const { mechanism, publicTemplate, privateTemplate } = signingKeyPairTemplates(keyPairParams(input.keySpec, home.profile), label, id);
    const pair = await home.token.admin((p11, session) => p11.C_GenerateKeyPairAsync(session, { mechanism }, publicTemplate, privateTemplate));
    const created: Handle[] = [pair.privateKey, pair.publicKey];
    try {
      const spki = await home.token.admin((p11, session) => publicKeyObject(readPublicKey(p11, session, pair.publicKey), input.keySpec).export({ type: 'spki', format: 'der' }));
      const der = await issueCertificateAsync({ subject: input.subject, subjectPublicKeyInfo: spki, issuerCertificate: caDer, validDays: input.validDays, signatureAlgorithm: algorithm, sign });
      created.push(await home.token.admin((p11, session) => storeCertificate(p11, session, certificateObjectFields(der), label, id)));
      const record = await this.source.change((snapshot, writer) => {
        const record = this.record(
          snapshot.registry,
          {
            certificateId,
            account: input.account ?? ca.account,
            keySpec: input.keySpec,
            state: 'Enabled',
            token: home.name,
            label,
            id: ref.id,
            chainLabels: [ca.label, ...ca.chainLabels],
            ...(input.warehouseId !== undefined ? { warehouseId: input.warehouseId } : {}),
            ...(input.description ? { description: input.description } : {}),
          },
          { ...input, account: input.account ?? ca.account },
        );
        writer.putCertificate(record);
        return record;
      });
      return { record, certificatePem: toPem(der) };
    } catch (err) {
      await this.discard(home, created, [ref]).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Signs a CSR with a CA whose key is on the token: the subject and subjectAltName are the CSR's, the rest (leaf key
   * usage, validity) the CA's. Nothing is registered: the requester holds the key.
   */
  async signCsr(input: { caCertificateId: string; csrPem: string; validDays: number }): Promise<{ certificatePem: string; caCertificateId: string }> {
    const csr = parseCsr(input.csrPem);
    const { ca, der: caDer, sign, algorithm } = await this.issuer(this.source.current(), input.caCertificateId, input.validDays);
    const der = await issueCertificateAsync({
      subject: { der: csr.subject },
      subjectPublicKeyInfo: csr.spki,
      issuerCertificate: caDer,
      validDays: input.validDays,
      signatureAlgorithm: algorithm,
      extensions: csr.extensions,
      sign,
    });
    return { certificatePem: toPem(der), caCertificateId: ca.certificateId };
  }
}
