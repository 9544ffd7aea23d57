import { randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import { storeCertificate } from '../hsm/admin.js';
import { generateSigningKeyPair } from '../hsm/key-generation.js';
import pkcs11js from 'pkcs11js';
import { destroyQuietly, findObjects, readPublicKey, type KeyRef } from '../hsm/objects.js';
import type { KeySpec } from '../signing/key-specs.js';
import { ecPoint, publicKeyObject } from '../signing/public-key.js';
import type { Signer } from '../signing/signer.js';
import { sm2Za } from '../signing/sm2.js';
import { certificateObjectFields, issueCertificate, toPem, type CertificateSignatureAlgorithm, type SubjectName } from '../signing/x509.js';
import { invalid, keySpecOfPrivateKey, parseCsr, readCertificateChain, readPrivateKey } from './certificate-input.js';
import { chainCertificateLabel, labelsHolding, putImportedCertificate, type Handle } from './certificate-objects.js';
import { LifecycleError } from './errors.js';
import { acceptedFlaws, canSign, DEFAULT_ALGORITHM, findKeyPair, keyPairParams, keySpecOf, type KeyHome } from './lifecycle.js';
import type { RegistrySnapshot, RegistrySource } from './registry-source.js';
import type { CertificateRecord, KeyRegistry } from './registry.js';

/**
 * Certificate lifecycle: import a certificate with its private key (the key goes onto the token, sensitive and
 * never extractable again), issue a certificate for a key generated on the token with a CA whose key is on the
 * token, and sign a CSR with such a CA. One implementation for the admin CLI (and an API later). Records are
 * written through RegistrySource.change, so every replica serves a new certificate after its next poll. A CA signs
 * through the Signer, as requests do (plan → token → encoding, timed for metrics).
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
interface CertificateRecordInput {
  account: string;
  warehouseId?: number;
  /** CAS CustomIdentifier; a random one when absent. */
  customIdentifier?: string;
  description?: string;
  /** registry.store: file (certs register) — check and return the entry for the operator's file instead of writing it. */
  fileEntry?: boolean;
}

/** A new certificate's record without its CAS identifiers (drawn when it is written). */
type BaseRecord = Omit<CertificateRecord, 'casIdentifier' | 'sslIdentifier' | 'customIdentifier'>;

/** The certificate algorithm an issuer key of this spec signs certificates with. */
const CERTIFICATE_ALGORITHM: Record<KeySpec, CertificateSignatureAlgorithm> = {
  RSA_2048: 'sha256WithRSAEncryption',
  RSA_3072: 'sha256WithRSAEncryption',
  EC_P256: 'ecdsaWithSHA256',
  EC_P256K: 'ecdsaWithSHA256',
  EC_SM2: 'sm2WithSM3',
};

/** A CA that may issue: its record, its token, its certificate (DER), how it signs, and with which algorithm. */
interface Issuer {
  ca: CertificateRecord;
  home: KeyHome;
  der: Buffer;
  sign: (tbs: Buffer) => Promise<Buffer>;
  algorithm: CertificateSignatureAlgorithm;
}

export class CertificateLifecycle {
  constructor(
    private readonly source: RegistrySource,
    private readonly homes: readonly KeyHome[],
    /** Signs with the CAs' keys (its tokens are the homes' tokens). */
    private readonly signer: Signer,
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
  private record(registry: KeyRegistry, base: BaseRecord, input: CertificateRecordInput): CertificateRecord {
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

  /**
   * Registers a certificate whose objects are on the token (`created`), and answers with its record and PEM; when it
   * cannot be registered, the objects are destroyed again.
   */
  private async register(home: KeyHome, created: readonly Handle[], ref: KeyRef, base: BaseRecord, input: CertificateRecordInput, der: Buffer): Promise<{ record: CertificateRecord; certificatePem: string }> {
    try {
      const record = await this.source.change(
        (snapshot, writer) => {
          const record = this.record(snapshot.registry, base, input);
          writer.putCertificate(record);
          return record;
        },
        { entry: input.fileEntry },
      );
      return { record, certificatePem: toPem(der) };
    } catch (err) {
      await this.discard(home, created, [ref]).catch(() => undefined);
      throw err;
    }
  }

  /** Destroys objects made for a certificate whose registration failed. */
  private async discard(home: KeyHome, handles: readonly Handle[], refs: readonly KeyRef[] = []): Promise<void> {
    await home.token.admin((p11, session) => destroyQuietly(p11, session, handles));
    for (const ref of refs) home.token.forget(ref);
  }

  /** The token an imported key of this spec goes to: the one named, else the first that can sign with it. */
  private importHome(keySpec: KeySpec, tokenName: string | undefined): KeyHome {
    const home = tokenName === undefined ? this.homes.find((h) => canSign(h, keySpec)) : this.home(tokenName);
    if (!home || !canSign(home, keySpec)) {
      throw new LifecycleError('unsupported', `${tokenName === undefined ? 'no configured token' : `token "${tokenName}"`} can sign with ${keySpec} keys`);
    }
    return home;
  }

  /**
   * Imports a certificate and its private key (PEM: PKCS#8, or PKCS#1 / SEC1; encrypted with `passphrase`) onto a
   * token, with its issuer chain (nearest first once ordered; a certificate file may carry the chain after the
   * leaf), and registers it.
   */
  async importCertificate(
    input: CertificateRecordInput & { privateKeyPem: string; passphrase?: string; certificatePem: string; chainPem?: string; tokenName?: string },
  ): Promise<{ record: CertificateRecord; certificatePem: string }> {
    this.source.assertWritable();
    const key = readPrivateKey(input.privateKeyPem, input.passphrase);
    const keySpec = keySpecOfPrivateKey(key);
    const { leaf, chain } = readCertificateChain(input.certificatePem, input.chainPem, key);
    const home = this.importHome(keySpec, input.tokenName);
    const certificateId = randomUUID();
    const label = `cert/${certificateId}`;
    const id = randomBytes(16);
    const created: Handle[] = [];
    const registered = (existing: string): boolean => this.source.current().registry.certificates().some((c) => c.token === home.name && c.label === existing);
    const chainLabels = await home.token.admin((p11, session) => putImportedCertificate(p11, session, { key, keySpec, label, id, leaf, chain }, registered, created));
    const ref = { label, id: id.toString('hex') };
    const base = baseRecord(certificateId, input, keySpec, home, ref, chainLabels);
    return this.register(home, created, ref, base, input, Buffer.from(leaf.raw));
  }

  /**
   * Registers a certificate (and its chain) for a key pair already on the token, named by CKA_LABEL and/or CKA_ID:
   * no private material is created (tpm2-pkcs11 refuses C_CreateObject of private keys; a key made on an HSM never
   * leaves it). The key must pass the checks of keys import (sensitive, not extractable; an imported key only with
   * `acceptImported`); the certificate must be for its public key. The certificate object takes the key's label and
   * CKA_ID, unless the token holds it already (tpm2_ptool addcert).
   */
  async registerCertificate(
    input: CertificateRecordInput & { label?: string; id?: string; tokenName?: string; certificatePem: string; chainPem?: string; acceptImported?: boolean },
  ): Promise<{ record: CertificateRecord; certificatePem: string }> {
    this.source.assertWritable(input.fileEntry);
    if (!input.label && !input.id) throw new LifecycleError('invalid', "name the certificate's key by its CKA_LABEL, its CKA_ID, or both");
    const home = this.home(input.tokenName ?? this.homes[0]!.name);
    const found = await home.token.admin((p11, session) => findKeyPair(p11, session, home.name, input));
    const importOverride = acceptedFlaws(found.flaws, input.acceptImported === true, this.now());
    const keySpec = keySpecOf(found.raw);
    if (!keySpec) throw new LifecycleError('unsupported', 'the key is not one of the supported key specs (RSA 2048/3072, P-256, secp256k1, SM2)');
    if (!canSign(home, keySpec)) throw new LifecycleError('unsupported', `token "${home.name}" cannot sign with ${keySpec} keys`);
    const { leaf, chain } = readCertificateChain(input.certificatePem, input.chainPem, publicKeyObject(found.raw, keySpec));
    const ref = { label: found.label, id: found.id };
    const sameKey = (c: CertificateRecord): boolean => c.token === home.name && c.label === ref.label && (c.id ?? '') === ref.id;
    if (this.source.current().registry.certificates().some(sameKey)) throw new LifecycleError('certificate-exists', `a certificate is already registered for the key labelled "${ref.label}"`);
    const leafDer = Buffer.from(leaf.raw);
    const id = Buffer.from(found.id, 'hex');
    const created: Handle[] = [];
    const chainLabels = await home.token.admin((p11, session) => {
      try {
        // The certificate may be on the token already under the key's label (a module's own tool put it there).
        const sameObject = (label: string): boolean =>
          label === ref.label &&
          findObjects(p11, session, [
            { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
            { type: pkcs11js.CKA_TOKEN, value: true },
            { type: pkcs11js.CKA_LABEL, value: label },
            { type: pkcs11js.CKA_ID, value: id },
            { type: pkcs11js.CKA_VALUE, value: leafDer },
          ]).length === 1;
        if (!labelsHolding(p11, session, leafDer).some(sameObject)) created.push(storeCertificate(p11, session, certificateObjectFields(leafDer), ref.label, id));
        return chain.map((c) => chainCertificateLabel(p11, session, Buffer.from(c.raw), created));
      } catch (err) {
        destroyQuietly(p11, session, created.reverse()); // the error that matters is thrown below
        throw err;
      }
    });
    const base = { ...baseRecord(randomUUID(), input, keySpec, home, ref, chainLabels), ...(importOverride ? { importOverride } : {}) };
    return this.register(home, created, ref, base, input, leafDer);
  }

  /** A registered certificate that may issue: its key on a configured token, Enabled, a CA, and valid for `validDays` more. */
  private issuer(snapshot: RegistrySnapshot, caCertificateId: string, validDays: number): Issuer {
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
    const location = { token: home.name, ...ref };
    // SM2 signs e = SM3(Z_A ‖ TBS) with the issuer's Z_A (default user id), as certificates expect.
    if (ca.keySpec === 'EC_SM2') this.signer.rememberZa(location, sm2Za(ecPoint(home.token.publicKey(ref), 'EC_SM2')));
    const sign = (tbs: Buffer): Promise<Buffer> => this.signer.sign(location, plan, tbs);
    return { ca, home, der, sign, algorithm: CERTIFICATE_ALGORITHM[ca.keySpec] };
  }

  /**
   * Issues a certificate for a key pair generated on the CA's token (sensitive, never extractable), signed by the CA's
   * key on the token, and registers it with the CA's chain.
   */
  async issueCertificate(
    input: Omit<CertificateRecordInput, 'account'> & { caCertificateId: string; subject: SubjectName; keySpec: KeySpec; validDays: number; account?: string },
  ): Promise<{ record: CertificateRecord; certificatePem: string }> {
    this.source.assertWritable();
    const issuer = this.issuer(this.source.current(), input.caCertificateId, input.validDays);
    const { ca, home } = issuer;
    if (!canSign(home, input.keySpec)) throw new LifecycleError('unsupported', `token "${home.name}", which holds the CA's key, cannot make and sign with ${input.keySpec} keys`);
    const certificateId = randomUUID();
    const label = `cert/${certificateId}`;
    const id = randomBytes(16);
    const ref = { label, id: id.toString('hex') };
    const pair = await home.token.admin((p11, session) => generateSigningKeyPair(p11, session, keyPairParams(input.keySpec, home.profile), label, id));
    const created: Handle[] = [pair.privateKey, pair.publicKey];
    let der: Buffer;
    try {
      const spki = await home.token.admin((p11, session) => publicKeyObject(readPublicKey(p11, session, pair.publicKey), input.keySpec).export({ type: 'spki', format: 'der' }));
      der = await issueCertificate({ subject: input.subject, subjectPublicKeyInfo: spki, issuerCertificate: issuer.der, validDays: input.validDays, signatureAlgorithm: issuer.algorithm, sign: issuer.sign });
      created.push(await home.token.admin((p11, session) => storeCertificate(p11, session, certificateObjectFields(der), label, id)));
    } catch (err) {
      await this.discard(home, created, [ref]).catch(() => undefined);
      throw err;
    }
    const owned = { ...input, account: input.account ?? ca.account };
    return this.register(home, created, ref, baseRecord(certificateId, owned, input.keySpec, home, ref, [ca.label, ...ca.chainLabels]), owned, der);
  }

  /**
   * Signs a CSR with a CA whose key is on the token: the subject and subjectAltName are the CSR's, the rest (leaf key
   * usage, validity) the CA's. Nothing is registered: the requester holds the key.
   */
  async signCsr(input: { caCertificateId: string; csrPem: string; validDays: number }): Promise<{ certificatePem: string; caCertificateId: string }> {
    const csr = parseCsr(input.csrPem);
    const { ca, der: caDer, sign, algorithm } = this.issuer(this.source.current(), input.caCertificateId, input.validDays);
    const der = await issueCertificate({
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

/** The record of a new Enabled certificate on `home`, without its CAS identifiers. */
function baseRecord(certificateId: string, input: CertificateRecordInput, keySpec: KeySpec, home: KeyHome, ref: Required<KeyRef>, chainLabels: string[]): BaseRecord {
  return {
    certificateId,
    account: input.account,
    keySpec,
    state: 'Enabled',
    token: home.name,
    label: ref.label,
    id: ref.id,
    chainLabels,
    ...(input.warehouseId !== undefined ? { warehouseId: input.warehouseId } : {}),
    ...(input.description ? { description: input.description } : {}),
  };
}
