import { createHash, generateKeyPairSync, randomBytes, sign as nodeSign } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { signingKeyPairTemplates } from '../hsm/admin.js';
import {
  probeKeyPair,
  probeSharedObjects,
  probeTokenObject,
  type CapabilityCache,
  type DeepCapabilities,
  type KeyPairOutcome,
  type ProbeOutcome,
  type TokenIdentity,
} from '../hsm/capabilities.js';
import type { Token } from '../hsm/token.js';
import { KEY_SPEC_NAMES, type KeySpec } from '../signing/key-specs.js';
import { tokenInput } from '../signing/plan.js';
import { certificateObjectFields, issueCertificate } from '../signing/x509.js';
import { cannotMake, DEFAULT_ALGORITHM, keyPairParams, type KeyHome } from './lifecycle.js';

/**
 * The deep capability probe of one token, in the gateway's terms: a session key pair per key spec (generated with the
 * gateway's own templates, then one signature with the spec's default algorithm), the registry's kind of object (a
 * private CKO_DATA) and a certificate created and destroyed, and whether another process's object is seen. Its answer
 * is kept per token identity (CapabilityCache); KeyLifecycle refuses a spec the answer rules out (lifecycle.ts
 * `cannotMake`), without asking the token again on the request path.
 */

/** What objects the probes make are called: recognizable, so a leftover (a crash mid-probe) can be told apart. */
const PROBE_LABEL = 'hsm-gateway/capability-probe';

function identityOf(token: Token): TokenIdentity {
  const d = token.describe();
  return {
    library: `${d.library.manufacturer} ${d.library.description} ${d.library.version}`,
    manufacturer: d.manufacturer,
    model: d.model,
    serialNumber: d.serialNumber,
    firmwareVersion: d.firmwareVersion,
  };
}

/** The registry's kind of object: a private CKO_DATA token object (registry-objects.ts). */
const dataTemplate = (label: string): pkcs11js.Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
  { type: pkcs11js.CKA_TOKEN, value: true },
  { type: pkcs11js.CKA_PRIVATE, value: true },
  { type: pkcs11js.CKA_LABEL, value: label },
  { type: pkcs11js.CKA_APPLICATION, value: PROBE_LABEL },
  { type: pkcs11js.CKA_VALUE, value: Buffer.from('{"probe":true}') },
];

/** A throwaway self-signed certificate as a CKO_CERTIFICATE token object, the way certs import stores one. */
function certificateTemplate(label: string): pkcs11js.Template {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const fields = certificateObjectFields(
    issueCertificate({
      subject: { commonName: 'hsm-gateway capability probe' },
      subjectPublicKeyInfo: key.publicKey.export({ type: 'spki', format: 'der' }),
      validDays: 1,
      signatureAlgorithm: 'ecdsaWithSHA256',
      sign: (tbs) => nodeSign('sha256', tbs, key.privateKey),
    }),
  );
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
    { type: pkcs11js.CKA_CERTIFICATE_TYPE, value: pkcs11js.CKC_X_509 },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: randomBytes(8) },
    { type: pkcs11js.CKA_SUBJECT, value: fields.subject },
    { type: pkcs11js.CKA_ISSUER, value: fields.issuer },
    { type: pkcs11js.CKA_SERIAL_NUMBER, value: fields.serialNumber },
    { type: pkcs11js.CKA_VALUE, value: fields.value },
  ];
}

export class TokenCapabilities {
  private deep: DeepCapabilities | undefined;
  private running: Promise<DeepCapabilities> | undefined;
  /** The one question of otherProcessesObjects(), asked when the deep probe's answer is not known. */
  private sharedOnly: Promise<ProbeOutcome> | undefined;
  /** True when the answer held now came from the cache rather than from a probe by this process. */
  fromCache: boolean;

  constructor(
    private readonly home: Omit<KeyHome, 'capabilities'>,
    private readonly cache: CapabilityCache,
  ) {
    this.deep = cache.get(identityOf(home.token));
    this.fromCache = this.deep !== undefined;
  }

  /** The deep probe's answer if it ran (here or, for this token identity, in the cache); never calls the token. */
  known(): DeepCapabilities | undefined {
    return this.deep;
  }

  /** The deep probe's answer: the known one unless `fresh`; one probe at a time per token. Not for the request path. */
  probe(fresh = false): Promise<DeepCapabilities> {
    if (this.deep && !fresh) return Promise.resolve(this.deep);
    this.running ??= this.run().finally(() => (this.running = undefined));
    return this.running;
  }

  /**
   * Whether this process sees token objects other processes write (the registry on the token relies on it): 'seen',
   * 'not seen' (tpm2-pkcs11, nShield by default: the store is read at C_Initialize), or why it could not be told.
   */
  async sharedObjects(): Promise<ProbeOutcome> {
    return (await this.probe()).sharedObjects;
  }

  /**
   * The same answer without the rest of the deep probe (no key pairs made): the deep probe's if known, else this one
   * question, asked once by this process (kept in memory only: the cache holds whole answers). Not for the request path.
   */
  otherProcessesObjects(): Promise<ProbeOutcome> {
    if (this.deep) return Promise.resolve(this.deep.sharedObjects);
    const { token } = this.home;
    const { modulePath, initArgs, tokenLabel, pin } = token.options;
    this.sharedOnly ??= probeSharedObjects(token, { module: modulePath, initArgs, tokenLabel, pin }, (l) => [dataTemplate(l), certificateTemplate(l)]);
    return this.sharedOnly;
  }

  private async run(): Promise<DeepCapabilities> {
    const { token } = this.home;
    const keyPairs: Record<string, KeyPairOutcome> = {};
    for (const keySpec of KEY_SPEC_NAMES) keyPairs[keySpec] = await this.keyPair(keySpec);
    const label = `${PROBE_LABEL}-${randomBytes(6).toString('hex')}`;
    const privateData = await probeTokenObject(token, dataTemplate(label));
    const certificate = await probeTokenObject(token, certificateTemplate(label));
    const { modulePath, initArgs, tokenLabel, pin } = token.options;
    // NSS refuses token CKO_DATA: the other process then writes a certificate, which answers the question as well.
    const sharedObjects = await probeSharedObjects(token, { module: modulePath, initArgs, tokenLabel, pin }, (l) => [dataTemplate(l), certificateTemplate(l)]);
    const deep: DeepCapabilities = { probedAt: new Date().toISOString(), keyPairs, privateData, certificate, sharedObjects };
    this.cache.put(identityOf(token), deep);
    this.deep = deep;
    this.fromCache = false;
    return deep;
  }

  /** A session key pair of this spec, generated with the gateway's templates, signing once with its default algorithm. */
  private async keyPair(keySpec: KeySpec): Promise<KeyPairOutcome> {
    // What the mechanism list and flags already rule out is not tried (this.home has no capabilities: static reasons).
    const ruledOut = cannotMake(this.home, keySpec);
    if (ruledOut !== undefined) return { generate: `not tried: ${ruledOut}`, sign: 'not tried' };
    const plan = this.home.plans.get(DEFAULT_ALGORITHM[keySpec], keySpec, 'DIGEST')!;
    const { mechanism, publicTemplate, privateTemplate } = signingKeyPairTemplates(keyPairParams(keySpec, this.home.profile), `${PROBE_LABEL}-${keySpec}`, randomBytes(8));
    return probeKeyPair(this.home.token, {
      name: keySpec,
      mechanism,
      publicTemplate,
      privateTemplate,
      sign: plan.mechanism,
      input: tokenInput(plan, createHash('sha256').update('capability probe').digest()),
      maxSignatureBytes: plan.signatureBytes,
    });
  }
}
