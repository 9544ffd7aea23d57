import { randomBytes, randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { type KeyPairParams } from '../hsm/admin.js';
import { mechanismAllows, mechanismName, rsaSizeAllowed, type DeepCapabilities } from '../hsm/capabilities.js';
import { ckrName, ckrOf, classifyCkr } from '../hsm/ckr.js';
import { HsmUnavailableError } from '../hsm/errors.js';
import { generateSigningKeyPair } from '../hsm/key-generation.js';
import { protectionFlaws, readKeyProtection } from '../hsm/key-protection.js';
import { type Token } from '../hsm/token.js';
import { findObjects, objectTemplate, readPublicKey, type KeyRef, type RawPublicKey } from '../hsm/objects.js';
import { LifecycleError } from './errors.js';
import { KEY_SPECS, KEY_SPEC_NAMES, type KeySpec } from '../signing/key-specs.js';
import type { HsmProfile, SigningPlans } from '../signing/plan.js';
import type { RegistrySnapshot, RegistrySource } from './registry-source.js';
import type { SigningGate } from './signing-gate.js';
import { isNewAliasName, type KeyRecord, type KeyVersionRecord } from './registry.js';

/**
 * Key lifecycle: create, rotate, enable/disable, schedule and cancel deletion, aliases, descriptions, bring your own
 * key (the access keys kept on the token: access-keys.ts). One implementation for the KMS API and the admin CLI. Every change
 * runs inside RegistrySource.change: it starts from the token's current records, so two replicas never overwrite
 * each other's changes with stale copies.
 */

/**
 * A token a key can be made on: its plans say what it signs; its profile names vendor key types (SM2); its
 * capabilities, what the deep probe found (key-capabilities.ts), when it ran.
 */
export interface KeyHome {
  name: string;
  token: Token;
  plans: SigningPlans;
  profile: HsmProfile;
  capabilities?: { known(): DeepCapabilities | undefined };
}

/** ScheduleKeyDeletion's PendingWindowInDays, as the cloud bounds it. */
export const PENDING_WINDOW_DAYS = { min: 7, max: 366 } as const;
const DESCRIPTION_MAX = 8192;

/** The algorithm a key of each spec signs with by default (and certificates' signatures use). */
export const DEFAULT_ALGORITHM: Record<KeySpec, 'RSA_PKCS1_SHA_256' | 'ECDSA_SHA_256' | 'SM2DSA'> = {
  RSA_2048: 'RSA_PKCS1_SHA_256',
  RSA_3072: 'RSA_PKCS1_SHA_256',
  EC_P256: 'ECDSA_SHA_256',
  EC_P256K: 'ECDSA_SHA_256',
  EC_SM2: 'SM2DSA',
};

/** The mechanism that generates key pairs of this spec on a token with this profile. */
const keyPairMechanism = (keySpec: KeySpec, profile: HsmProfile): number | undefined =>
  KEY_SPECS[keySpec].kind === 'RSA' ? pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN : keySpec === 'EC_SM2' ? profile.sm2?.keyPairGenMechanism : pkcs11js.CKM_EC_KEY_PAIR_GEN;

/**
 * Why this token cannot make keys of this spec — generate them and sign with them — or undefined when, as far as is
 * known, it can. In order: the SM2 profile, the key-pair mechanism (listed, CKF_GENERATE_KEY_PAIR, RSA sizes), a
 * signing plan, then the deep probe's answer when it ran (curves are known only from it: tpm2-pkcs11 lists ECDSA
 * and refuses secp256k1).
 */
export function cannotMake(home: KeyHome, keySpec: KeySpec): string | undefined {
  const spec = KEY_SPECS[keySpec];
  const mechanism = keyPairMechanism(keySpec, home.profile);
  if (mechanism === undefined) return 'it has no SM2 profile (profile.sm2)';
  const facts = home.token.mechanismFacts;
  if (!home.token.mechanisms.has(mechanism)) return `it does not list ${mechanismName(mechanism)}`;
  if (!mechanismAllows(facts, mechanism, pkcs11js.CKF_GENERATE_KEY_PAIR)) return `its ${mechanismName(mechanism)} lacks CKF_GENERATE_KEY_PAIR`;
  if (spec.kind === 'RSA' && !rsaSizeAllowed(facts, mechanism, spec.modulusBits)) {
    const info = facts.get(mechanism)!;
    return `its ${mechanismName(mechanism)} makes ${info.minKeySize}–${info.maxKeySize}-bit keys, not ${spec.modulusBits}`;
  }
  if (home.plans.get(DEFAULT_ALGORITHM[keySpec], keySpec, 'DIGEST') === undefined) return `it offers no mechanism to sign ${DEFAULT_ALGORITHM[keySpec]} with ${keySpec} keys`;
  const probed = home.capabilities?.known()?.keyPairs[keySpec];
  if (probed && probed.generate !== 'ok') return `generating a ${keySpec} key pair failed in its capability probe (${probed.generate})`;
  if (probed && probed.sign !== 'ok') return `signing with a ${keySpec} key failed in its capability probe (${probed.sign})`;
  return undefined;
}

/** Can this token both generate and sign keys of this spec? */
export function canSign(home: KeyHome, keySpec: KeySpec): boolean {
  return cannotMake(home, keySpec) === undefined;
}

/** The refusal when no token can make a key spec, naming each token's reason. */
function noTokenCanMake(homes: readonly KeyHome[], keySpec: KeySpec): LifecycleError {
  const reasons = homes.map((h) => `token "${h.name}": ${cannotMake(h, keySpec) ?? 'can'}`);
  return new LifecycleError('unsupported', `no configured token can generate and sign ${keySpec} keys (${reasons.join('; ')})`);
}

function checkAlias(alias: string): void {
  if (!isNewAliasName(alias)) {
    throw new LifecycleError('invalid', 'an alias is "alias/" followed by 1–255 letters, digits, "_", "-", "/" or ":" and does not start with "alias/acs/"');
  }
}

/** What generating a key pair of this spec asks of a token with this profile. */
export const keyPairParams = (keySpec: KeySpec, profile: HsmProfile): KeyPairParams => {
  const spec = KEY_SPECS[keySpec];
  if (spec.kind === 'RSA') return { kind: 'RSA', modulusBits: spec.modulusBits };
  const sm2 = keySpec === 'EC_SM2' ? profile.sm2 : undefined;
  return {
    kind: 'EC',
    ecParams: Buffer.from(spec.ecParams, 'hex'),
    ...(sm2 ? { vendor: { mechanism: sm2.keyPairGenMechanism, keyType: sm2.keyType } } : {}),
  };
};

/** The key spec of a key already on the token (bring your own key), from its public attributes. */
export function keySpecOf(raw: RawPublicKey): KeySpec | undefined {
  if (raw.kind === 'RSA') {
    const bits = (raw.modulus[0] === 0 ? raw.modulus.length - 1 : raw.modulus.length) * 8;
    return KEY_SPEC_NAMES.find((name) => KEY_SPECS[name].kind === 'RSA' && (KEY_SPECS[name] as { modulusBits: number }).modulusBits === bits);
  }
  const params = raw.ecParams.toString('hex');
  return KEY_SPEC_NAMES.find((name) => KEY_SPECS[name].kind === 'EC' && (KEY_SPECS[name] as { ecParams: string }).ecParams === params);
}

export class KeyLifecycle {
  private readonly now: () => Date;
  /** CKA_SIGN follows the key's state (signing-gate.ts); absent, the registry alone stops a key (unit tests). */
  private readonly gate: SigningGate | undefined;

  constructor(
    private readonly source: RegistrySource,
    private readonly homes: readonly KeyHome[],
    options: { now?: () => Date; gate?: SigningGate } = {},
  ) {
    this.now = options.now ?? (() => new Date());
    this.gate = options.gate;
  }

  /** The first configured token that can both generate and sign this key spec. */
  private homeFor(keySpec: KeySpec): KeyHome {
    const home = this.homes.find((h) => canSign(h, keySpec));
    if (!home) throw noTokenCanMake(this.homes, keySpec);
    return home;
  }

  private tokenNamed(name: string): Token {
    const home = this.homes.find((h) => h.name === name);
    if (!home) throw new LifecycleError('unsupported', `the key lives on token "${name}", which is not configured`);
    return home.token;
  }

  /** Generates a key pair on its token (off the event loop) and returns the version that names it. */
  private async generate(home: KeyHome, keySpec: KeySpec): Promise<KeyVersionRecord> {
    const keyVersionId = randomUUID();
    const label = `key/${keyVersionId}`;
    const id = randomBytes(16);
    let made: Awaited<ReturnType<typeof generateSigningKeyPair>>;
    try {
      made = await home.token.admin((p11, session) => generateSigningKeyPair(p11, session, keyPairParams(keySpec, home.profile), label, id));
    } catch (err) {
      // The token answered and stays up (Token.admin probed it after a device-class answer, which generation had
      // already tried twice: key-generation.ts): it refuses this spec.
      const ckr = ckrOf(err);
      if (ckr === undefined || err instanceof HsmUnavailableError || classifyCkr(ckr) === 'login' || classifyCkr(ckr) === 'session') throw err;
      throw new LifecycleError('unsupported', `token "${home.name}" refused to generate a ${keySpec} key pair (${ckrName(ckr)})`);
    }
    return { keyVersionId, label, id: id.toString('hex'), createdAt: this.now().toISOString(), template: made.template };
  }

  /** Destroys the private and public key objects of these versions (after a failed change, or a deletion). */
  private async destroy(tokenName: string, versions: readonly KeyRef[]): Promise<void> {
    const token = this.tokenNamed(tokenName);
    await token.admin((p11, session) => {
      for (const ref of versions) {
        for (const cls of [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY]) {
          for (const handle of findObjects(p11, session, objectTemplate(cls, ref))) p11.C_DestroyObject(session, handle);
        }
        token.forget(ref);
      }
    });
  }

  /** The key as this account names it (GUID or one of its aliases), if it is kept on the token. */
  private managed(snapshot: RegistrySnapshot, account: string, keyIdOrAlias: string): KeyRecord {
    const key = snapshot.registry.find(keyIdOrAlias, account);
    if (!key) {
      throw keyIdOrAlias.startsWith('alias/')
        ? new LifecycleError('alias-not-found', `alias ${keyIdOrAlias} does not exist`)
        : new LifecycleError('key-not-found', `key ${keyIdOrAlias} does not exist`);
    }
    if (!snapshot.onToken.keys.has(key.keyId)) {
      throw new LifecycleError('not-on-token', `key ${key.keyId} is declared in the registry file; change it there (and SIGHUP), or import it to the token`);
    }
    return structuredClone(key);
  }

  /** A new key, generated on the first token that can sign its spec; `alias`, when given, is bound in the same change. */
  async createKey(input: { account: string; keySpec: KeySpec; description?: string; creator?: string; alias?: string; fileEntry?: boolean }): Promise<KeyRecord> {
    this.source.assertWritable(input.fileEntry);
    if (input.description !== undefined && input.description.length > DESCRIPTION_MAX) throw new LifecycleError('invalid', `a description is at most ${DESCRIPTION_MAX} characters`);
    if (input.alias !== undefined) checkAlias(input.alias);
    const home = this.homeFor(input.keySpec);
    const version = await this.generate(home, input.keySpec);
    try {
      return await this.source.change((snapshot, writer) => {
        if (input.alias !== undefined && snapshot.registry.alias(input.account, input.alias)) throw new LifecycleError('alias-exists', `alias ${input.alias} already exists`);
        const key: KeyRecord = {
          keyId: randomUUID(),
          account: input.account,
          keySpec: input.keySpec,
          usage: 'SIGN/VERIFY',
          state: 'Enabled',
          aliases: input.alias !== undefined ? [input.alias] : [],
          token: home.name,
          versions: [version],
          primaryKeyVersion: version.keyVersionId,
          createdAt: version.createdAt,
          creator: input.creator ?? input.account,
          ...(input.description ? { description: input.description } : {}),
        };
        writer.putKey(key);
        return key;
      }, { entry: input.fileEntry });
    } catch (err) {
      await this.destroy(home.name, [version]).catch(() => undefined);
      throw err;
    }
  }

  /** Rotation: a new version, generated on the key's token, becomes the primary; older versions still sign when named. */
  async createKeyVersion(account: string, keyIdOrAlias: string): Promise<{ key: KeyRecord; version: KeyVersionRecord }> {
    this.source.assertWritable();
    const before = this.managed(this.source.current(), account, keyIdOrAlias);
    if (before.state !== 'Enabled') throw new LifecycleError('invalid-state', `key ${before.keyId} is ${before.state}; only an Enabled key gets new versions`);
    const home = this.homes.find((h) => h.name === before.token) ?? this.homeFor(before.keySpec);
    const version = await this.generate(home, before.keySpec);
    try {
      return await this.source.change((snapshot, writer) => {
        const key = this.managed(snapshot, account, keyIdOrAlias);
        if (key.state !== 'Enabled') throw new LifecycleError('invalid-state', `key ${key.keyId} is ${key.state}; only an Enabled key gets new versions`);
        key.versions.push(version);
        key.primaryKeyVersion = version.keyVersionId;
        writer.putKey(key);
        return { key, version };
      });
    } catch (err) {
      await this.destroy(home.name, [version]).catch(() => undefined);
      throw err;
    }
  }

  private update(account: string, keyIdOrAlias: string, edit: (key: KeyRecord) => void): Promise<KeyRecord> {
    return this.source.change((snapshot, writer) => {
      const key = this.managed(snapshot, account, keyIdOrAlias);
      edit(key);
      writer.putKey(key);
      return key;
    });
  }

  /**
   * A change that lets the key sign again: the record first, then CKA_SIGN true on its objects (signing-gate.ts), then
   * the acknowledgement.
   */
  private async allowing(change: Promise<KeyRecord>): Promise<KeyRecord> {
    const key = await change;
    await this.gate?.allow(key.keyId);
    return key;
  }

  /**
   * A change that stops the key signing: the record first, then CKA_SIGN false on its objects — or, where the token
   * cannot, a wait of the registry's propagation bound (signing-gate.ts) — then the acknowledgement: from then on no
   * replica signs with it.
   */
  private async stopping(change: Promise<KeyRecord>): Promise<KeyRecord> {
    const key = await change;
    await this.gate?.stop(key, this.source.current());
    return key;
  }

  enableKey(account: string, keyIdOrAlias: string): Promise<KeyRecord> {
    return this.allowing(
      this.update(account, keyIdOrAlias, (key) => {
        if (key.state === 'PendingDeletion') throw new LifecycleError('invalid-state', `key ${key.keyId} is pending deletion; cancel the deletion first`);
        key.state = 'Enabled';
      }),
    );
  }

  disableKey(account: string, keyIdOrAlias: string): Promise<KeyRecord> {
    return this.stopping(
      this.update(account, keyIdOrAlias, (key) => {
        if (key.state === 'PendingDeletion') throw new LifecycleError('invalid-state', `key ${key.keyId} is pending deletion`);
        key.state = 'Disabled';
      }),
    );
  }

  scheduleKeyDeletion(account: string, keyIdOrAlias: string, pendingWindowInDays: number): Promise<KeyRecord> {
    if (!Number.isInteger(pendingWindowInDays) || pendingWindowInDays < PENDING_WINDOW_DAYS.min || pendingWindowInDays > PENDING_WINDOW_DAYS.max) {
      throw new LifecycleError('invalid', `PendingWindowInDays is a whole number of days from ${PENDING_WINDOW_DAYS.min} to ${PENDING_WINDOW_DAYS.max}`);
    }
    return this.stopping(
      this.update(account, keyIdOrAlias, (key) => {
        if (key.state === 'PendingDeletion') throw new LifecycleError('invalid-state', `key ${key.keyId} is already pending deletion`);
        key.state = 'PendingDeletion';
        key.deleteDate = new Date(this.now().getTime() + pendingWindowInDays * 86_400_000).toISOString();
      }),
    );
  }

  cancelKeyDeletion(account: string, keyIdOrAlias: string): Promise<KeyRecord> {
    return this.allowing(
      this.update(account, keyIdOrAlias, (key) => {
        if (key.state !== 'PendingDeletion') throw new LifecycleError('invalid-state', `key ${key.keyId} is not pending deletion`);
        key.state = 'Enabled';
        delete key.deleteDate;
      }),
    );
  }

  updateKeyDescription(account: string, keyIdOrAlias: string, description: string): Promise<KeyRecord> {
    if (description.length > DESCRIPTION_MAX) throw new LifecycleError('invalid', `a description is at most ${DESCRIPTION_MAX} characters`);
    return this.update(account, keyIdOrAlias, (key) => {
      key.description = description;
    });
  }

  /**
   * Binds a new alias of this account to one of its keys. Aliases are per account (registry.ts): a name another
   * account uses is free here, and which names other accounts use is never consulted, so no answer reveals them.
   */
  createAlias(account: string, alias: string, keyIdOrAlias: string): Promise<KeyRecord> {
    checkAlias(alias);
    return this.source.change((snapshot, writer) => {
      if (snapshot.registry.alias(account, alias)) throw new LifecycleError('alias-exists', `alias ${alias} already exists`);
      const key = this.managed(snapshot, account, keyIdOrAlias);
      key.aliases.push(alias);
      writer.putKey(key);
      return key;
    });
  }

  /** Moves an existing alias of this account to another of its keys. */
  updateAlias(account: string, alias: string, keyIdOrAlias: string): Promise<KeyRecord> {
    return this.source.change((snapshot, writer) => {
      if (!snapshot.registry.alias(account, alias)) throw new LifecycleError('alias-not-found', `alias ${alias} does not exist`);
      const from = this.managed(snapshot, account, alias);
      const to = this.managed(snapshot, account, keyIdOrAlias);
      if (from.keyId === to.keyId) return to;
      from.aliases = from.aliases.filter((a) => a !== alias);
      to.aliases.push(alias);
      writer.putKey(from);
      writer.putKey(to);
      return to;
    });
  }

  deleteAlias(account: string, alias: string): Promise<KeyRecord> {
    return this.source.change((snapshot, writer) => {
      if (!snapshot.registry.alias(account, alias)) throw new LifecycleError('alias-not-found', `alias ${alias} does not exist`);
      const key = this.managed(snapshot, account, alias);
      key.aliases = key.aliases.filter((a) => a !== alias);
      writer.putKey(key);
      return key;
    });
  }

  /**
   * Bring your own key: registers a key pair already on a token (found by CKA_LABEL and/or CKA_ID) without
   * regenerating it. Its key spec is read from the public key object, which must be there (verify and GetPublicKey
   * need it). A private key that is extractable or not sensitive is refused; one that existed outside the HSM
   * (CKA_NEVER_EXTRACTABLE false: every key imported into an HSM) only when the operator accepts it
   * (`acceptImported`), which the version's record then says (`importOverride`).
   */
  async importKey(input: ImportKeyInput): Promise<KeyRecord> {
    this.source.assertWritable(input.fileEntry);
    if (!input.label && !input.id) throw new LifecycleError('invalid', 'name the key by its CKA_LABEL, its CKA_ID, or both');
    if (input.alias) checkAlias(input.alias);
    const tokenName = input.tokenName ?? this.homes[0]!.name;
    const found = await this.tokenNamed(tokenName).admin((p11, session) => findKeyPair(p11, session, tokenName, input));
    const importOverride = acceptedFlaws(found.flaws, input.acceptImported === true, this.now());
    const keySpec = keySpecOf(found.raw);
    if (!keySpec) throw new LifecycleError('unsupported', 'the key is not one of the supported key specs (RSA 2048/3072, P-256, secp256k1, SM2)');
    return this.source.change((snapshot, writer) => {
      if (input.alias && snapshot.registry.alias(input.account, input.alias)) throw new LifecycleError('alias-exists', `alias ${input.alias} already exists`);
      const taken = snapshot.registry
        .all()
        .some((k) => k.token === tokenName && k.versions.some((v) => v.label === found.label && (v.id ?? '') === (found.id || (v.id ?? ''))));
      if (taken) throw new LifecycleError('key-exists', `the key labelled "${found.label}" is already registered`);
      const keyVersionId = randomUUID();
      const createdAt = this.now().toISOString();
      const key: KeyRecord = {
        keyId: randomUUID(),
        account: input.account,
        keySpec,
        usage: 'SIGN/VERIFY',
        state: 'Enabled',
        aliases: input.alias ? [input.alias] : [],
        token: tokenName,
        versions: [{ keyVersionId, label: found.label, ...(found.id ? { id: found.id } : {}), createdAt, ...(importOverride ? { importOverride } : {}) }],
        primaryKeyVersion: keyVersionId,
        createdAt,
        creator: input.account,
        ...(input.description ? { description: input.description } : {}),
      };
      writer.putKey(key);
      return key;
    }, { entry: input.fileEntry });
  }

  /**
   * Destroys keys whose deletion window has passed: their record, then their token objects. Any replica may do it.
   * The record goes first: a change that loses (a CancelKeyDeletion through another replica at that moment) must
   * leave the key whole. Objects left behind by a destroy that fails are named in the error, for an operator.
   */
  async purgeExpired(): Promise<string[]> {
    const now = this.now().getTime();
    const due = (snapshot: RegistrySnapshot): KeyRecord[] =>
      snapshot.registry
        .all()
        .filter((k) => snapshot.onToken.keys.has(k.keyId) && k.state === 'PendingDeletion' && k.deleteDate !== undefined && Date.parse(k.deleteDate) <= now);
    if (due(this.source.current()).length === 0) return [];
    const removed = await this.source.change((snapshot, writer) => {
      const keys = due(snapshot);
      for (const key of keys) writer.removeKey(key.keyId);
      return keys;
    });
    const left: string[] = [];
    for (const key of removed) {
      try {
        await this.destroy(key.token, key.versions);
      } catch (err) {
        left.push(`${key.keyId} (token "${key.token}", labels ${key.versions.map((v) => v.label).join(', ')}: ${(err as Error).message})`);
      }
    }
    if (left.length > 0) throw new Error(`deleted keys whose token objects could not be destroyed: ${left.join('; ')}`);
    return removed.map((key) => key.keyId);
  }
}

interface ImportKeyInput {
  account: string;
  tokenName?: string;
  label?: string;
  id?: string;
  alias?: string;
  description?: string;
  /** The operator accepts a key that existed outside the HSM (CKA_NEVER_EXTRACTABLE / CKA_ALWAYS_SENSITIVE false). */
  acceptImported?: boolean;
  /** registry.store: file — check and return the entry for the operator's file instead of writing a record. */
  fileEntry?: boolean;
}

/**
 * Whether a key with these protection flaws may be registered: never with an `always` flaw; with `imported` ones
 * only when the operator accepted them, and then the record of what was accepted. The refusal says why and what to do.
 */
export function acceptedFlaws(flaws: { always: string[]; imported: string[] }, accept: boolean, now: Date): { accepted: string[]; at: string } | undefined {
  if (flaws.always.length > 0) {
    throw new LifecycleError('invalid', `the private key is refused: ${flaws.always.join('; ')}. A signing key must be sensitive and not extractable`);
  }
  if (flaws.imported.length === 0) return undefined;
  if (!accept) {
    throw new LifecycleError(
      'invalid',
      `the private key is refused: ${flaws.imported.join('; ')}. If it is a key you brought into the HSM on purpose (bring your own key), accept it explicitly with --accept-imported-key; it is recorded on the key`,
    );
  }
  return { accepted: flaws.imported, at: now.toISOString() };
}

/**
 * The one key pair on the token that CKA_LABEL and/or CKA_ID name (bring your own key): its label and id as the token
 * has them, its public key, and its protection flaws. The private key must allow signing; the public key object must
 * be there.
 */
export function findKeyPair(
  p11: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  tokenName: string,
  named: { label?: string; id?: string },
): { label: string; id: string; raw: RawPublicKey; flaws: { always: string[]; imported: string[] } } {
  const template = (cls: number): pkcs11js.Template => [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_TOKEN, value: true },
    ...(named.label ? [{ type: pkcs11js.CKA_LABEL, value: named.label }] : []),
    ...(named.id ? [{ type: pkcs11js.CKA_ID, value: Buffer.from(named.id, 'hex') }] : []),
  ];
  const privates = findObjects(p11, session, template(pkcs11js.CKO_PRIVATE_KEY));
  const publics = findObjects(p11, session, template(pkcs11js.CKO_PUBLIC_KEY));
  if (privates.length !== 1) throw new LifecycleError('invalid', `${privates.length} private keys on token "${tokenName}" match; exactly one must`);
  if (publics.length !== 1) throw new LifecycleError('invalid', `${publics.length} public keys on token "${tokenName}" match; exactly one must (verify needs it)`);
  const [label, id] = p11.C_GetAttributeValue(session, privates[0]!, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_ID }]);
  const flaws = protectionFlaws(readKeyProtection(p11, session, privates[0]!));
  return { label: (label!.value as Buffer).toString('utf8'), id: (id!.value as Buffer).toString('hex'), raw: readPublicKey(p11, session, publics[0]!), flaws };
}
