import type { KeyRef } from '../hsm/objects.js';
import type { Token } from '../hsm/token.js';
import { ecPoint } from '../signing/public-key.js';
import type { KeyLocation, Signer } from '../signing/signer.js';
import { sm2Za } from '../signing/sm2.js';
import { CertificateStoreError, loadCertificates, type CertificateMaterial } from './certificate-store.js';
import { loadPublicKeys } from './public-key-store.js';
import type { CertificateRecord, KeyRecord, KeyRegistry, KeyVersionRecord } from './registry.js';

/** A registry snapshot with what requests need of it from the tokens, read once per snapshot. */
interface DerivedRegistry {
  registry: KeyRegistry;
  /** Certificates (and chains) by CertificateId. */
  certificates: Map<string, CertificateMaterial>;
  /** Public keys (PEM) by KeyVersionId. */
  publicKeys: Map<string, string>;
}

interface MaterialLogger {
  info(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
  error(message: string, meta?: Record<string, unknown>): void;
}

const absentKey = (token: string, label: string): string => `${token}\u0000${label}`;
const certificateKey = (c: CertificateRecord): string => [c.certificateId, c.token, c.label, c.id ?? '', c.keySpec, ...c.chainLabels].join('\u0000');
const versionKey = (key: KeyRecord, version: KeyVersionRecord): string => [version.keyVersionId, key.token, version.label, version.id ?? '', key.keySpec].join('\u0000');

/**
 * What the registry needs from the tokens: handles found, certificates and public keys read, SM2 Z_A computed. At
 * start-up, and again on every change; what was read for earlier snapshots is kept, so a refresh reads only what is
 * new (10,000 keys, one change).
 */
export class RegistryMaterial {
  private certificateCache = new Map<string, CertificateMaterial>();
  private publicKeyCache = new Map<string, string>();
  /** Per token, the registry's keys whose private key object the last derive() did not find. */
  private missing = new Map<string, KeyRef[]>();

  constructor(
    private readonly tokens: ReadonlyMap<string, Token>,
    private readonly signer: Signer,
    private readonly log: MaterialLogger,
  ) {}

  /** `lenient` (a refresh): one broken entry is logged and left out rather than holding back every other change. */
  derive(registry: KeyRegistry, lenient = false): DerivedRegistry {
    for (const entry of [...registry.all(), ...registry.certificates()]) this.tokenOf(entry.token, `registry entry (${entry.keySpec})`);
    const { absent, missingPrivate, missingPublic } = this.preload(registry);
    const certificates = this.readCertificates(registry, lenient);
    const publicKeys = this.readPublicKeys(registry, absent);
    this.keepForNextTime(registry, certificates, publicKeys);
    this.rememberSm2Za(registry, absent);
    this.log.info('key registry loaded', { keys: registry.all().length, certificates: certificates.size, missingPrivate, missingPublic });
    return { registry, certificates, publicKeys };
  }

  /** Per token, the keys whose private key object the last derive() did not find (unseen-keys.ts acts on them). */
  get missingPrivateKeys(): ReadonlyMap<string, readonly KeyRef[]> {
    return this.missing;
  }

  private tokenOf(name: string, what: string): Token {
    const token = this.tokens.get(name);
    if (!token) throw new CertificateStoreError(`${what} names token "${name}", which is not configured`);
    return token;
  }

  /** Finds every key's handles on its token; `absent`: the keys without a public key object (they cannot verify). */
  private preload(registry: KeyRegistry): { absent: Set<string>; missingPrivate: number; missingPublic: number } {
    let missingPrivate = 0;
    let missingPublic = 0;
    const absent = new Set<string>();
    this.missing = new Map();
    for (const [name, token] of this.tokens) {
      const refs = [
        ...registry.all().filter((k) => k.token === name).flatMap((k) => k.versions.map((v) => ({ label: v.label, id: v.id }))),
        ...registry.certificates().filter((c) => c.token === name).map((c) => ({ label: c.label, id: c.id })),
      ];
      const { missing } = token.preload(refs, 'private');
      if (missing.length > 0) this.missing.set(name, missing);
      for (const ref of missing) this.log.warn('registry entry has no private key on the token', { token: name, label: ref.label });
      const { missing: noPublic } = token.preload(refs, 'public');
      for (const ref of noPublic) {
        absent.add(absentKey(name, ref.label));
        this.log.warn('registry entry has no public key object on the token: it cannot verify', { token: name, label: ref.label });
      }
      missingPrivate += missing.length;
      missingPublic += noPublic.length;
    }
    return { absent, missingPrivate, missingPublic };
  }

  private readCertificates(registry: KeyRegistry, lenient: boolean): Map<string, CertificateMaterial> {
    const certificates = new Map<string, CertificateMaterial>();
    for (const record of registry.certificates()) {
      const cached = this.certificateCache.get(certificateKey(record));
      if (cached) {
        certificates.set(record.certificateId, cached);
        continue;
      }
      try {
        const [material] = loadCertificates([record], (r, label, id) => this.tokenOf(r.token, `certificate ${r.certificateId}`).certificate({ label, id })).values();
        certificates.set(record.certificateId, material!);
      } catch (err) {
        if (!lenient) throw err;
        this.log.error('certificate left out: it cannot be read from the token', { certificateId: record.certificateId, error: (err as Error).message });
      }
    }
    return certificates;
  }

  private readPublicKeys(registry: KeyRegistry, absent: ReadonlySet<string>): Map<string, string> {
    const publicKeys = loadPublicKeys(
      registry.all(),
      (key, version) => {
        if (absent.has(absentKey(key.token, version.label))) return undefined;
        return this.tokenOf(key.token, `key ${key.keyId}`).publicKey({ label: version.label, id: version.id });
      },
      (key, version) => this.publicKeyCache.get(versionKey(key, version)),
    );
    return publicKeys;
  }

  /** What this snapshot read, for the next one: entries are keyed by everything that locates them on the token. */
  private keepForNextTime(registry: KeyRegistry, certificates: ReadonlyMap<string, CertificateMaterial>, publicKeys: ReadonlyMap<string, string>): void {
    this.certificateCache = new Map(registry.certificates().filter((c) => certificates.has(c.certificateId)).map((c) => [certificateKey(c), certificates.get(c.certificateId)!]));
    this.publicKeyCache = new Map(
      registry.all().flatMap((k) => k.versions.filter((v) => publicKeys.has(v.keyVersionId)).map((v) => [versionKey(k, v), publicKeys.get(v.keyVersionId)!] as const)),
    );
  }

  /** SM2 signs e = SM3(Z_A ‖ M): Z_A depends on the signer's public key, so it is computed once, here. */
  private rememberSm2Za(registry: KeyRegistry, absent: ReadonlySet<string>): void {
    const sm2: KeyLocation[] = [
      ...registry.all().filter((k) => k.keySpec === 'EC_SM2').flatMap((k) => k.versions.map((v) => ({ token: k.token, label: v.label, id: v.id }))),
      ...registry.certificates().filter((c) => c.keySpec === 'EC_SM2').map((c) => ({ token: c.token, label: c.label, id: c.id })),
    ];
    for (const location of sm2) {
      const token = this.tokens.get(location.token);
      if (!token || absent.has(absentKey(location.token, location.label))) continue;
      this.signer.rememberZa(location, sm2Za(ecPoint(token.publicKey({ label: location.label, id: location.id }), 'EC_SM2')));
    }
  }
}
