import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterEach, describe, expect, it } from 'vitest';
import {
  CapabilityCache,
  mechanismAllows,
  mechanismFlagNames,
  mechanismName,
  probeKeyPair,
  probeTokenObject,
  rsaSizeAllowed,
  type DeepCapabilities,
  type MechanismFacts,
} from '../../src/hsm/capabilities.js';
import { ckrOf } from '../../src/hsm/ckr.js';
import { HsmUnavailableError } from '../../src/hsm/errors.js';
import { Token } from '../../src/hsm/token.js';
import { LifecycleError } from '../../src/keys/errors.js';
import { cannotMake, KeyLifecycle, type KeyHome } from '../../src/keys/lifecycle.js';
import type { RegistrySource } from '../../src/keys/registry-source.js';
import { SigningPlans } from '../../src/signing/plan.js';
import { FAKE_LABEL, FAKE_PIN, FakePkcs11 } from '../helpers/fake-pkcs11.js';

// Issue #15 item 2: what the capability probe concludes from what a module answers, over a scripted module.
const quiet = { info: () => {}, warn: () => {}, error: () => {} };
const SIGN_VERIFY = pkcs11js.CKF_SIGN | pkcs11js.CKF_VERIFY;
const EC_FLAGS = 0x100000 | 0x800000; // CKF_EC_F_P | CKF_EC_NAMEDCURVE

let token: Token | undefined;
afterEach(async () => {
  await token?.close();
  token = undefined;
});

function open(fake: FakePkcs11): Token {
  token = new Token(
    { name: 'default', modulePath: '/fake.so', tokenLabel: FAKE_LABEL, pin: FAKE_PIN, sessions: 1, acquireTimeoutMs: 1000, healthIntervalMs: 0 },
    quiet,
    fake.asModule(),
    () => fake.asAsync(),
  );
  token.open();
  return token;
}

/** A module that lists RSA and EC generation and signing, with the flags and sizes given. */
function module(info: Partial<Record<number, { minKeySize: number; maxKeySize: number; flags: number }>> = {}): FakePkcs11 {
  const fake = new FakePkcs11();
  const defaults: Record<number, { minKeySize: number; maxKeySize: number; flags: number }> = {
    [pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN]: { minKeySize: 1024, maxKeySize: 4096, flags: pkcs11js.CKF_GENERATE_KEY_PAIR },
    [pkcs11js.CKM_RSA_PKCS]: { minKeySize: 1024, maxKeySize: 4096, flags: SIGN_VERIFY },
    [pkcs11js.CKM_RSA_PKCS_PSS]: { minKeySize: 1024, maxKeySize: 4096, flags: SIGN_VERIFY },
    [pkcs11js.CKM_EC_KEY_PAIR_GEN]: { minKeySize: 256, maxKeySize: 521, flags: pkcs11js.CKF_GENERATE_KEY_PAIR | EC_FLAGS },
    [pkcs11js.CKM_ECDSA]: { minKeySize: 256, maxKeySize: 521, flags: SIGN_VERIFY | EC_FLAGS },
  };
  for (const [m, i] of Object.entries({ ...defaults, ...info })) if (i) fake.mechanismInfo.set(Number(m), i);
  fake.mechanismList = [...fake.mechanismInfo.keys()];
  return fake;
}

function homeOn(t: Token, deep?: DeepCapabilities): KeyHome {
  return { name: 'default', token: t, plans: new SigningPlans(t.mechanisms, {}, t.mechanismFacts), profile: {}, capabilities: { known: () => deep } };
}

const deepWith = (keyPairs: DeepCapabilities['keyPairs']): DeepCapabilities => ({
  probedAt: '2026-12-02T00:00:00.000Z',
  keyPairs,
  privateData: 'ok',
  certificate: 'ok',
  sharedObjects: 'seen',
});

describe('mechanism facts (C_GetMechanismInfo)', () => {
  const facts = (entries: Array<[number, MechanismFacts]>): Map<number, MechanismFacts> => new Map(entries);

  it('when a module reports flags without CKF_SIGN, then the mechanism does not sign; when it reports no flags at all, it is not taken at its word', () => {
    expect(mechanismAllows(facts([[pkcs11js.CKM_ECDSA, { minKeySize: 0, maxKeySize: 0, flags: pkcs11js.CKF_VERIFY }]]), pkcs11js.CKM_ECDSA, pkcs11js.CKF_SIGN)).toBe(false);
    expect(mechanismAllows(facts([[pkcs11js.CKM_ECDSA, { minKeySize: 0, maxKeySize: 0, flags: 0 }]]), pkcs11js.CKM_ECDSA, pkcs11js.CKF_SIGN)).toBe(true);
    expect(mechanismAllows(facts([]), pkcs11js.CKM_ECDSA, pkcs11js.CKF_SIGN)).toBe(true);
  });

  it('when an RSA mechanism reports 1024–2048 bits, then 3072 is out; a range under 1024 (bytes, or nothing) excludes nothing', () => {
    const f = facts([[pkcs11js.CKM_RSA_PKCS, { minKeySize: 1024, maxKeySize: 2048, flags: SIGN_VERIFY }]]);
    expect(rsaSizeAllowed(f, pkcs11js.CKM_RSA_PKCS, 2048)).toBe(true);
    expect(rsaSizeAllowed(f, pkcs11js.CKM_RSA_PKCS, 3072)).toBe(false);
    expect(rsaSizeAllowed(facts([[pkcs11js.CKM_RSA_PKCS, { minKeySize: 128, maxKeySize: 512, flags: SIGN_VERIFY }]]), pkcs11js.CKM_RSA_PKCS, 3072)).toBe(true);
  });

  it('when flags and names are shown, then they are the standard names (0x1040 is CKM_EC_KEY_PAIR_GEN, not its deprecated alias)', () => {
    expect(mechanismFlagNames(pkcs11js.CKF_SIGN | pkcs11js.CKF_HW | 0x800000)).toEqual(['HW', 'SIGN', 'EC_NAMEDCURVE']);
    expect(mechanismName(pkcs11js.CKM_EC_KEY_PAIR_GEN)).toBe('CKM_EC_KEY_PAIR_GEN');
    expect(mechanismName(0x80001002)).toBe('0x80001002');
  });

  it('when the token is opened, then it reads C_GetMechanismInfo of each listed mechanism', () => {
    const t = open(module());
    expect(t.mechanismFacts.get(pkcs11js.CKM_ECDSA)).toEqual({ minKeySize: 256, maxKeySize: 521, flags: SIGN_VERIFY | EC_FLAGS });
  });
});

describe('signing plans use the facts', () => {
  it('when CKM_ECDSA lacks CKF_SIGN, then no ECDSA plan; when RSA mechanisms stop at 2048 bits, then RSA_3072 gets no plan and RSA_2048 does', () => {
    const t = open(
      module({
        [pkcs11js.CKM_ECDSA]: { minKeySize: 256, maxKeySize: 521, flags: pkcs11js.CKF_VERIFY },
        [pkcs11js.CKM_RSA_PKCS]: { minKeySize: 1024, maxKeySize: 2048, flags: SIGN_VERIFY },
        [pkcs11js.CKM_RSA_PKCS_PSS]: { minKeySize: 1024, maxKeySize: 2048, flags: SIGN_VERIFY },
      }),
    );
    const plans = new SigningPlans(t.mechanisms, {}, t.mechanismFacts);
    expect(plans.get('ECDSA_SHA_256', 'EC_P256', 'DIGEST')).toBeUndefined();
    expect(plans.get('RSA_PKCS1_SHA_256', 'RSA_2048', 'DIGEST')).toBeDefined();
    expect(plans.get('RSA_PKCS1_SHA_256', 'RSA_3072', 'DIGEST')).toBeUndefined();
  });
});

describe('the key-pair probe', () => {
  const candidate = (t: Token) => ({
    name: 'EC_P256K',
    mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN,
    publicTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: 'probe' },
    ],
    privateTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: 'probe' },
    ],
    sign: { mechanism: pkcs11js.CKM_ECDSA },
    input: Buffer.alloc(32, 1),
    maxSignatureBytes: 64 + 0 * t.initializations,
  });

  it('when the module generates and signs, then ok/ok, the pair was asked for as session objects and is gone afterwards', async () => {
    const fake = module();
    const t = open(fake);
    expect(await probeKeyPair(t, candidate(t))).toEqual({ generate: 'ok', sign: 'ok', stopSigning: 'ok' });
    const asked = fake.generated[0]!;
    for (const template of [asked.publicTemplate, asked.privateTemplate]) {
      expect(template.filter((a) => a.type === pkcs11js.CKA_TOKEN)).toEqual([{ type: pkcs11js.CKA_TOKEN, value: false }]);
    }
    expect(fake.destroyed).toEqual(['probe', 'probe']);
    expect(fake.labels()).not.toContain('probe');
  });

  it('when generation is refused with CKR_CURVE_NOT_SUPPORTED (tpm2-pkcs11, secp256k1), then that is the answer, signing is not tried, and the token stays up', async () => {
    const fake = module();
    const t = open(fake);
    fake.failNext('C_GenerateKeyPair', 0x140);
    expect(await probeKeyPair(t, candidate(t))).toEqual({ generate: 'CKR_CURVE_NOT_SUPPORTED', sign: 'not tried' });
    expect(fake.count('C_SignInit')).toBe(0);
    expect(t.status().ok).toBe(true);
  });

  it('when the module refuses session key pairs (tpm2-pkcs11: CKR_ATTRIBUTE_VALUE_INVALID), then the pair is made as token objects with the real templates, used, and destroyed', async () => {
    const fake = module();
    const t = open(fake);
    fake.failNext('C_GenerateKeyPair', pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID);
    expect(await probeKeyPair(t, candidate(t))).toEqual({ generate: 'ok', sign: 'ok', tokenObjects: true, stopSigning: 'ok' });
    expect(fake.generated[0]!.privateTemplate).toContainEqual({ type: pkcs11js.CKA_TOKEN, value: true });
    expect(fake.labels()).not.toContain('probe');
  });

  it('when the module does not let CKA_SIGN change (CKR_ATTRIBUTE_READ_ONLY), then stopSigning says so, and the pair is still destroyed', async () => {
    const fake = module();
    const t = open(fake);
    fake.setAttributeRefuses = pkcs11js.CKR_ATTRIBUTE_READ_ONLY;
    expect(await probeKeyPair(t, candidate(t))).toEqual({ generate: 'ok', sign: 'ok', stopSigning: 'refused: CKR_ATTRIBUTE_READ_ONLY' });
    expect(fake.labels()).not.toContain('probe');
  });

  it('when signing with the new key is refused, then generate ok and the sign refusal, and the pair is still destroyed', async () => {
    const fake = module();
    const t = open(fake);
    fake.failNext('C_SignInit', pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED);
    expect(await probeKeyPair(t, candidate(t))).toEqual({ generate: 'ok', sign: 'CKR_KEY_FUNCTION_NOT_PERMITTED' });
    expect(fake.labels()).not.toContain('probe');
  });

  it('when generation answers CKR_GENERAL_ERROR and the token then passes its health check (tpm2-pkcs11 and a template it dislikes), then the refusal is the answer', async () => {
    const fake = module();
    const t = open(fake);
    fake.failNext('C_GenerateKeyPair', pkcs11js.CKR_GENERAL_ERROR);
    expect(await probeKeyPair(t, candidate(t))).toEqual({ generate: 'CKR_GENERAL_ERROR', sign: 'not tried' });
    expect(t.status().ok).toBe(true);
  });

  it('when generation answers CKR_DEVICE_ERROR and the health check fails too, then the probe is inconclusive (503-class error), not an answer', async () => {
    const fake = module();
    const t = open(fake);
    fake.failNext('C_GenerateKeyPair', pkcs11js.CKR_DEVICE_ERROR);
    fake.failNext('C_GetTokenInfo', pkcs11js.CKR_DEVICE_ERROR);
    await expect(probeKeyPair(t, candidate(t))).rejects.toBeInstanceOf(HsmUnavailableError);
  });
});

describe('the object probe', () => {
  const template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: 'probe-data' },
  ];

  it('when the module stores the object, then ok and it is destroyed at once', async () => {
    const fake = module();
    const t = open(fake);
    expect(await probeTokenObject(t, template)).toBe('ok');
    expect(fake.destroyed).toEqual(['probe-data']);
    expect(fake.labels()).not.toContain('probe-data');
  });

  it('when C_CreateObject is refused the way pkcs11js throws it (no code, "CKR_X:n"), then the CKR is named (NSS: token CKO_DATA)', async () => {
    const fake = module();
    const t = open(fake);
    fake.createObjectRefuses = pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID;
    expect(await probeTokenObject(t, template)).toBe('CKR_ATTRIBUTE_VALUE_INVALID');
    expect(ckrOf(new Error('CKR_ATTRIBUTE_VALUE_INVALID:19'))).toBe(0x13);
    expect(ckrOf(new Error('something else: 19'))).toBeUndefined();
  });
});

describe('what CreateKey concludes from the probe', () => {
  // Writable (a token registry); nothing else of it is reached before the refusal.
  const noSource = { assertWritable: () => undefined } as unknown as RegistrySource;

  it('when the probe found secp256k1 refused, then cannotMake names it and CreateKey is refused as unsupported before any token call', async () => {
    const fake = module();
    const t = open(fake);
    const home = homeOn(t, deepWith({ EC_P256: { generate: 'ok', sign: 'ok' }, EC_P256K: { generate: 'CKR_CURVE_NOT_SUPPORTED', sign: 'not tried' } }));
    expect(cannotMake(home, 'EC_P256')).toBeUndefined();
    expect(cannotMake(home, 'EC_P256K')).toBe('generating a EC_P256K key pair failed in its capability probe (CKR_CURVE_NOT_SUPPORTED)');
    const before = fake.calls.length;
    const refused = await new KeyLifecycle(noSource, [home]).createKey({ account: 'a', keySpec: 'EC_P256K' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LifecycleError);
    expect((refused as LifecycleError).kind).toBe('unsupported');
    expect((refused as LifecycleError).message).toContain('token "default": generating a EC_P256K key pair failed in its capability probe (CKR_CURVE_NOT_SUPPORTED)');
    expect(fake.calls.slice(before)).toEqual([]);
  });

  it('when the module has no EC mechanisms (openCryptoki 3.8), then EC specs are refused for that reason, without a probe', () => {
    const fake = module({ [pkcs11js.CKM_EC_KEY_PAIR_GEN]: undefined, [pkcs11js.CKM_ECDSA]: undefined });
    const home = homeOn(open(fake));
    expect(cannotMake(home, 'EC_P256')).toBe('it does not list CKM_EC_KEY_PAIR_GEN');
    expect(cannotMake(home, 'RSA_2048')).toBeUndefined();
  });

  it('when key-pair generation stops at 2048 bits, then RSA_3072 is refused naming the range; without an SM2 profile, EC_SM2 is refused', () => {
    const fake = module({ [pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN]: { minKeySize: 1024, maxKeySize: 2048, flags: pkcs11js.CKF_GENERATE_KEY_PAIR } });
    const home = homeOn(open(fake));
    expect(cannotMake(home, 'RSA_3072')).toBe('its CKM_RSA_PKCS_KEY_PAIR_GEN makes 1024–2048-bit keys, not 3072');
    expect(cannotMake(home, 'EC_SM2')).toBe('it has no SM2 profile (profile.sm2)');
  });

  it('when no probe ran and the token refuses the generation itself with a data-class CKR, then CreateKey is refused as unsupported naming the CKR (never an internal failure)', async () => {
    const fake = module();
    const home = homeOn(open(fake));
    fake.failNext('C_GenerateKeyPair', pkcs11js.CKR_DOMAIN_PARAMS_INVALID);
    const refused = await new KeyLifecycle(noSource, [home]).createKey({ account: 'a', keySpec: 'EC_P256K' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LifecycleError);
    expect((refused as LifecycleError).message).toBe('token "default" refused to generate a EC_P256K key pair (CKR_DOMAIN_PARAMS_INVALID)');
  });
});

describe('the capability cache', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });
  const identity = { library: 'lib 1.0', manufacturer: 'm', model: 'x', serialNumber: '42', firmwareVersion: '1.0' };

  it('when an answer is put, then another reader of the file gets it for the same identity only (new firmware: probed again)', () => {
    dir = mkdtempSync(join(tmpdir(), 'caps-'));
    const file = join(dir, 'sub', 'capabilities.json');
    const deep = deepWith({ EC_P256: { generate: 'ok', sign: 'ok' } });
    new CapabilityCache(file).put(identity, deep);
    expect(new CapabilityCache(file).get(identity)).toMatchObject(deep);
    expect(new CapabilityCache(file).get({ ...identity, firmwareVersion: '1.1' })).toBeUndefined();
    expect(JSON.parse(readFileSync(file, 'utf8')).version).toBe(1);
  });

  it('when the file is damaged, then it is an empty cache (probed again), not a start-up failure', () => {
    dir = mkdtempSync(join(tmpdir(), 'caps-'));
    const file = join(dir, 'capabilities.json');
    writeFileSync(file, '{ not json');
    expect(new CapabilityCache(file).get(identity)).toBeUndefined();
    expect(new CapabilityCache(undefined).get(identity)).toBeUndefined();
  });
});
