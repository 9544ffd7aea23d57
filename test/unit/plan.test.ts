import { spawnSync } from 'node:child_process';
import { constants, createHash, generateKeyPairSync, privateEncrypt, sign, verify, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, describe, expect, it } from 'vitest';
import { planFor } from '../../src/operations/plan-for.js';
import type { OperationContext } from '../../src/operations/context.js';
import { ALGORITHMS, ALGORITHM_NAMES, type AlgorithmName } from '../../src/signing/algorithms.js';
import { KEY_SPECS, KEY_SPEC_NAMES, type KeySpec } from '../../src/signing/key-specs.js';
import { encodeSignature, SigningPlans, tokenInput, type HsmProfile, type MessageType, type SigningPlan } from '../../src/signing/plan.js';
import { sm2Za } from '../../src/signing/sm2.js';
import { opensslVerifySm2 } from '../helpers/openssl.js';

// The plans are checked by what they are for: for every plan a token gets, a software key signs the token input the
// plan produces the way its PKCS#11 mechanism would (Node crypto, or openssl for what Node cannot do: ECDSA, PSS and
// SM2 over a ready digest), the gateway encodes the token's answer as the plan says, and the client verifies it the
// way the algorithm is defined, knowing nothing of the plan. A wrong DigestInfo, PSS parameter, hash, or output
// encoding in the catalog makes the client's verification fail.

const smCrypto = createRequire(import.meta.url)('sm-crypto-v2') as { sm2: { getHash(messageHex: string, publicKeyHex: string): string } };

const SM2_SIGN = 0x80001002;
const sm2Profile = (signOutput: 'raw' | 'der'): HsmProfile => ({ sm2: { keyType: 0x80001001, keyPairGenMechanism: 0x80001001, signMechanism: SM2_SIGN, signOutput } });

/** What SoftHSMv2 2.6 offers for signing with the key types the gateway uses (it has no CKM_ECDSA_SHA256). */
const SOFTHSM_2_6 = [pkcs11js.CKM_RSA_PKCS, pkcs11js.CKM_SHA256_RSA_PKCS, pkcs11js.CKM_RSA_PKCS_PSS, pkcs11js.CKM_SHA256_RSA_PKCS_PSS, pkcs11js.CKM_ECDSA];

interface TokenKind {
  name: string;
  mechanisms: number[];
  profile?: HsmProfile;
}
const TOKENS: TokenKind[] = [
  { name: 'SoftHSMv2 2.6', mechanisms: SOFTHSM_2_6 },
  { name: 'a token with every mechanism (SM2 answering r‖s)', mechanisms: [...SOFTHSM_2_6, pkcs11js.CKM_ECDSA_SHA256, SM2_SIGN], profile: sm2Profile('raw') },
  { name: 'a token with only CKM_RSA_PKCS and CKM_ECDSA', mechanisms: [pkcs11js.CKM_RSA_PKCS, pkcs11js.CKM_ECDSA] },
  { name: 'an SM2 token answering DER', mechanisms: [SM2_SIGN], profile: sm2Profile('der') },
];
const plansOf = (t: TokenKind): SigningPlans => new SigningPlans(new Set(t.mechanisms), t.profile);
const FULL = TOKENS[1]!;

const allPlans = (plans: SigningPlans): SigningPlan[] =>
  ALGORITHM_NAMES.flatMap((a) => KEY_SPEC_NAMES.flatMap((s) => (['DIGEST', 'RAW'] as const).flatMap((t) => plans.get(a, s, t) ?? [])));

// ---------------------------------------------------------------- software keys, one per key spec

interface SoftKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** The private key in a file, for openssl. */
  pemPath: string;
}
const keyDir = mkdtempSync(join(tmpdir(), 'hsm-gateway-plan-test-'));
afterAll(() => rmSync(keyDir, { recursive: true, force: true }));
const keys = new Map<KeySpec, SoftKey>();

/** A key of the spec, made from the catalog's own description (modulus size; curve, checked against its CKA_EC_PARAMS). */
function keyOf(spec: KeySpec): SoftKey {
  let key = keys.get(spec);
  if (key) return key;
  const desc = KEY_SPECS[spec];
  const pair =
    desc.kind === 'RSA'
      ? generateKeyPairSync('rsa', { modulusLength: desc.modulusBits })
      : generateKeyPairSync('ec', { namedCurve: desc.curve === 'P-256' ? 'prime256v1' : desc.curve });
  if (desc.kind === 'EC') expect(pair.publicKey.export({ format: 'der', type: 'spki' }).toString('hex'), spec).toContain(desc.ecParams);
  const pemPath = join(keyDir, `${spec}.pem`);
  writeFileSync(pemPath, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }));
  key = { ...pair, pemPath };
  keys.set(spec, key);
  return key;
}
const publicPoint = (key: SoftKey): Buffer => key.publicKey.export({ format: 'der', type: 'spki' }).subarray(-65);

/** openssl pkeyutl -sign over `input` as a ready digest (no hashing of its own): DER for EC/SM2, raw for RSA. */
function opensslSign(key: SoftKey, input: Buffer, options: string[] = []): Buffer {
  const r = spawnSync('openssl', ['pkeyutl', '-sign', '-inkey', key.pemPath, ...options.flatMap((o) => ['-pkeyopt', o])], { input });
  if (r.status !== 0) throw new Error(`openssl pkeyutl -sign failed: ${r.stderr.toString()}`);
  return r.stdout;
}

/** DER SEQUENCE { INTEGER r, INTEGER s } → r‖s, each left-padded to `half` bytes: what a PKCS#11 EC mechanism answers. */
function derToRaw(der: Buffer, half: number): Buffer {
  expect(der[0]).toBe(0x30);
  const ints: Buffer[] = [];
  for (let i = 2; i < der.length; ) {
    expect(der[i]).toBe(0x02);
    const len = der[i + 1]!;
    ints.push(der.subarray(i + 2, i + 2 + len));
    i += 2 + len;
  }
  return Buffer.concat(ints.map((n) => Buffer.concat([Buffer.alloc(half), n.subarray(n[0] === 0 ? 1 : 0)]).subarray(-half)));
}

// ---------------------------------------------------------------- the software token: one mechanism each

const HASHES = new Map<number, string>([
  [pkcs11js.CKM_SHA_1, 'sha1'],
  [pkcs11js.CKM_SHA256, 'sha256'],
  [pkcs11js.CKM_SHA384, 'sha384'],
  [pkcs11js.CKM_SHA512, 'sha512'],
]);
const MGFS = new Map<number, string>([
  [pkcs11js.CKG_MGF1_SHA1, 'sha1'],
  [pkcs11js.CKG_MGF1_SHA256, 'sha256'],
  [pkcs11js.CKG_MGF1_SHA384, 'sha384'],
  [pkcs11js.CKG_MGF1_SHA512, 'sha512'],
]);

/** CK_RSA_PKCS_PSS_PARAMS as openssl options; a PSS mechanism without them fails as on a token (CKR_MECHANISM_PARAM_INVALID). */
function pssOptions(mechanism: pkcs11js.Mechanism): { hash: string; options: string[] } {
  const p = mechanism.parameter as pkcs11js.RsaPSS | undefined;
  if (p?.type !== pkcs11js.CK_PARAMS_RSA_PSS) throw new Error('CKR_MECHANISM_PARAM_INVALID: a PSS mechanism needs CK_RSA_PKCS_PSS_PARAMS');
  const hash = HASHES.get(p.hashAlg);
  const mgf = MGFS.get(p.mgf);
  if (!hash || !mgf) throw new Error('CKR_MECHANISM_PARAM_INVALID: unknown PSS hash or MGF');
  return { hash, options: [`digest:${hash}`, 'rsa_padding_mode:pss', `rsa_pss_saltlen:${p.saltLen}`, `rsa_mgf1_md:${mgf}`] };
}

function noParameter(mechanism: pkcs11js.Mechanism): void {
  if (mechanism.parameter !== undefined) throw new Error('CKR_MECHANISM_PARAM_INVALID: this mechanism takes no parameter');
}

/** What a token answers to C_Sign with the plan's mechanism on `input`. */
function tokenSign(plan: SigningPlan, key: SoftKey, input: Buffer, profile?: HsmProfile): Buffer {
  const m = plan.mechanism;
  switch (m.mechanism) {
    case pkcs11js.CKM_RSA_PKCS: // PKCS#1 v1.5 padding around the input as it is (a DigestInfo, if the caller wants a standard signature)
      noParameter(m);
      return privateEncrypt({ key: key.privateKey, padding: constants.RSA_PKCS1_PADDING }, input);
    case pkcs11js.CKM_SHA256_RSA_PKCS:
      noParameter(m);
      return sign('sha256', input, key.privateKey);
    case pkcs11js.CKM_RSA_PKCS_PSS: {
      const { hash, options } = pssOptions(m);
      if (input.length !== createHash(hash).digest().length) throw new Error('CKR_DATA_LEN_RANGE: CKM_RSA_PKCS_PSS signs a digest of hashAlg');
      return opensslSign(key, input, options);
    }
    case pkcs11js.CKM_SHA256_RSA_PKCS_PSS: {
      const { hash, options } = pssOptions(m);
      if (hash !== 'sha256') throw new Error('CKR_MECHANISM_PARAM_INVALID: hashAlg must be the mechanism’s SHA-256');
      return opensslSign(key, createHash('sha256').update(input).digest(), options);
    }
    case pkcs11js.CKM_ECDSA: // signs the input as the digest (truncated to the order's length, as ECDSA does)
      noParameter(m);
      return derToRaw(opensslSign(key, input), 32);
    case pkcs11js.CKM_ECDSA_SHA256:
      noParameter(m);
      return sign('sha256', input, { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
    case profile?.sm2?.signMechanism: {
      // The vendor's SM2 mechanism signs e (32 bytes); it answers r‖s or DER, as its profile says.
      if (input.length !== 32) throw new Error('CKR_DATA_LEN_RANGE: the SM2 mechanism signs e');
      const der = opensslSign(key, input);
      return profile!.sm2!.signOutput === 'der' ? der : derToRaw(der, 32);
    }
    default:
      throw new Error(`CKR_MECHANISM_INVALID: 0x${m.mechanism.toString(16)}`);
  }
}

// ---------------------------------------------------------------- the client: the algorithm as published

/** The DIGEST a client sends for a message: SHA-256, or for SM2DSA e = SM3(Z_A ‖ M) (sm-crypto-v2, not the gateway's code). */
function clientDigest(algorithm: AlgorithmName, message: Buffer, key: SoftKey): Buffer {
  if (algorithm === 'SM2DSA') return Buffer.from(smCrypto.sm2.getHash(message.toString('hex'), publicPoint(key).toString('hex')), 'hex');
  return createHash('sha256').update(message).digest();
}

/** Does the signature verify over the message, as the algorithm is defined (KMS: ECDSA and SM2 signatures are DER)? */
function clientVerifies(algorithm: AlgorithmName, message: Buffer, signature: Buffer, key: SoftKey): boolean {
  switch (algorithm) {
    case 'RSA_PKCS1_SHA_256':
      return verify('sha256', message, { key: key.publicKey, padding: constants.RSA_PKCS1_PADDING }, signature);
    case 'RSA_PSS_SHA_256':
      return verify('sha256', message, { key: key.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
    case 'ECDSA_SHA_256':
      return verify('sha256', message, { key: key.publicKey, dsaEncoding: 'der' }, signature);
    case 'SM2DSA':
      try {
        opensslVerifySm2({ publicKeyPem: key.publicKey.export({ format: 'pem', type: 'spki' }).toString(), message, signature });
        return true;
      } catch {
        return false;
      }
  }
}

/**
 * One sign through the plan: what the caller sends (the message's digest, or the message), what the token gets and
 * answers, what the client receives. Returns whether the client verifies it, after checking the answer's length.
 */
function roundTrip(plan: SigningPlan, profile: HsmProfile | undefined, message: Buffer): boolean {
  const key = keyOf(plan.keySpec);
  let data = message;
  if (plan.messageType === 'DIGEST') {
    data = clientDigest(plan.algorithm, message, key);
    expect(data.length, 'the digest the plan asks of the caller').toBe(plan.digestBytes);
  }
  const za = plan.algorithm === 'SM2DSA' ? sm2Za(publicPoint(key)) : undefined;
  const answer = tokenSign(plan, key, tokenInput(plan, data, za), profile);
  if (plan.fixedLength) expect(answer.length, 'the token answer has the announced length').toBe(plan.signatureBytes);
  else expect(answer.length).toBeLessThanOrEqual(plan.signatureBytes);
  return clientVerifies(plan.algorithm, message, encodeSignature(plan, answer), key);
}

const MESSAGE = Buffer.from('a payment order: 1,000.00 EUR to account 42');

// ---------------------------------------------------------------- the tests

const cases = TOKENS.flatMap((t) => allPlans(plansOf(t)).map((p) => [`${p.algorithm} ${p.keySpec} ${p.messageType}`, t.name, p, t.profile] as const));

describe('every plan signs what the client verifies', () => {
  it.each(cases)('when %s is signed on %s, then the client verifies the signature over the message', (_what, _token, plan, profile) => {
    expect(roundTrip(plan, profile, MESSAGE)).toBe(true);
  });

  it('when the plans of all the token kinds are put together, then every catalog row × key spec it allows × message type is covered', () => {
    const covered = new Set<string>(cases.map(([what]) => what));
    const wanted = ALGORITHM_NAMES.flatMap((a) => (ALGORITHMS[a].keySpecs as readonly KeySpec[]).flatMap((s) => [`${a} ${s} DIGEST`, `${a} ${s} RAW`]));
    expect(wanted.length).toBeGreaterThan(0);
    expect(wanted.filter((w) => !covered.has(w))).toEqual([]);
  });

  // The round trip can fail: each field a catalog row sets, got wrong, breaks the client's verification.
  it.each([
    ['RSA_PKCS1 without its DigestInfo', 'RSA_PKCS1_SHA_256', 'RSA_2048', 'DIGEST', (p: SigningPlan) => ({ ...p, wrapDigestInfo: false })],
    ['PSS with salt 20 instead of 32', 'RSA_PSS_SHA_256', 'RSA_2048', 'DIGEST', (p: SigningPlan) => ({ ...p, mechanism: { ...p.mechanism, parameter: { ...(p.mechanism.parameter as pkcs11js.RsaPSS), saltLen: 20 } } })],
    ['PSS with MGF1-SHA1', 'RSA_PSS_SHA_256', 'RSA_3072', 'RAW', (p: SigningPlan) => ({ ...p, mechanism: { ...p.mechanism, parameter: { ...(p.mechanism.parameter as pkcs11js.RsaPSS), mgf: pkcs11js.CKG_MGF1_SHA1 } } })],
    ['ECDSA answered as r‖s instead of DER', 'ECDSA_SHA_256', 'EC_P256', 'DIGEST', (p: SigningPlan) => ({ ...p, encoding: 'as-is' as const })],
    ['ECDSA RAW without the gateway’s hash', 'ECDSA_SHA_256', 'EC_P256K', 'RAW', (p: SigningPlan) => ({ ...p, gatewayHash: null })],
    ['SM2 RAW signed over SHA-256 instead of e', 'SM2DSA', 'EC_SM2', 'RAW', (p: SigningPlan) => ({ ...p, gatewayHash: 'sha256' as const })],
  ] as const)('when a plan has %s, then the client does not verify (or the token refuses)', (_what, algorithm, spec, type, spoil) => {
    const token = algorithm === 'ECDSA_SHA_256' && type === 'RAW' ? TOKENS[0]! : FULL;
    const plan = plansOf(token).get(algorithm, spec, type)!;
    expect(roundTrip(plan, token.profile, MESSAGE)).toBe(true);
    let verified: boolean;
    try {
      verified = roundTrip(spoil(plan), token.profile, MESSAGE);
    } catch {
      verified = false;
    }
    expect(verified).toBe(false);
  });

  it('when a PSS plan loses its parameters, then the token refuses the mechanism', () => {
    const plan = plansOf(FULL).get('RSA_PSS_SHA_256', 'RSA_2048', 'DIGEST')!;
    expect(() => roundTrip({ ...plan, mechanism: { mechanism: plan.mechanism.mechanism } }, undefined, MESSAGE)).toThrow(/CK_RSA_PKCS_PSS_PARAMS/);
  });
});

describe('a key spec the algorithm does not fit is refused', () => {
  /** Independent of the catalog: RSA algorithms need an RSA key, ECDSA an EC key on a NIST/SEC curve, SM2DSA an SM2 key. */
  const family = (a: AlgorithmName, s: KeySpec): boolean => {
    const spec = KEY_SPECS[s];
    if (a.startsWith('RSA_')) return spec.kind === 'RSA';
    if (a === 'SM2DSA') return spec.kind === 'EC' && spec.curve === 'SM2';
    return spec.kind === 'EC' && spec.curve !== 'SM2';
  };
  const pairs = ALGORITHM_NAMES.flatMap((a) => KEY_SPEC_NAMES.map((s) => [a, s] as const));

  it('when a token offers every mechanism, then it has a plan for a pair exactly when the key fits the algorithm', () => {
    const plans = plansOf(FULL);
    const planned = pairs.map(([a, s]) => [a, s, plans.get(a, s, 'DIGEST') !== undefined, plans.get(a, s, 'RAW') !== undefined]);
    expect(planned).toEqual(pairs.map(([a, s]) => [a, s, family(a, s), family(a, s)]));
  });

  it('when a caller asks for an algorithm the key does not fit, then planFor answers InvalidParameter naming it; a fitting one the token lacks is 503', () => {
    const ctx = { plans: new Map([['default', plansOf(TOKENS[2]!)]]) } as unknown as OperationContext;
    for (const [a, s] of pairs.filter(([a, s]) => !family(a, s))) {
      expect(() => planFor(ctx, a, { keySpec: s, token: 'default' }, 'DIGEST'), `${a} ${s}`).toThrow(
        expect.objectContaining({ code: 'InvalidParameter', message: expect.stringContaining(a) }),
      );
    }
    // That token has no PSS mechanism: a fitting request is the service's failure, not the caller's.
    expect(() => planFor(ctx, 'RSA_PSS_SHA_256', { keySpec: 'RSA_2048', token: 'default' }, 'RAW')).toThrow(
      expect.objectContaining({ code: 'ServiceUnavailableTemporary' }),
    );
    expect(planFor(ctx, 'RSA_PKCS1_SHA_256', { keySpec: 'RSA_2048', token: 'default' }, 'RAW').mechanismName).toBe('CKM_RSA_PKCS');
  });
});

describe('which mechanism a token gets', () => {
  it("when a RAW message is signed, then the token hashes it when it offers the row's hash-and-sign mechanism, the gateway otherwise", () => {
    for (const t of TOKENS) {
      const offered = new Set(t.mechanisms);
      for (const plan of allPlans(plansOf(t)).filter((p) => p.messageType === 'RAW')) {
        const combined = ALGORITHMS[plan.algorithm].messageMechanism;
        const tokenHashes = combined !== null && offered.has((pkcs11js as unknown as Record<string, number>)[combined]!);
        expect(plan.gatewayHash === null, `${t.name}: ${plan.algorithm} ${plan.keySpec}`).toBe(tokenHashes);
      }
    }
  });

  it('when the token lacks CKM_RSA_PKCS_PSS, then there is no PSS plan at all, even with CKM_SHA256_RSA_PKCS_PSS', () => {
    const plans = new SigningPlans(new Set(SOFTHSM_2_6.filter((m) => m !== pkcs11js.CKM_RSA_PKCS_PSS)));
    expect(allPlans(plans).filter((p) => p.algorithm === 'RSA_PSS_SHA_256')).toEqual([]);
    expect(plans.get('RSA_PKCS1_SHA_256', 'RSA_2048', 'DIGEST')).toBeDefined();
  });

  it('when the token offers no mechanism, then there is no plan', () => {
    const plans = new SigningPlans(new Set());
    expect(allPlans(plans)).toEqual([]);
    expect(plans.describe()).toEqual([]);
  });

  it('when there is no SM2 profile, or the token lacks its mechanism, then there is no SM2 plan', () => {
    expect(new SigningPlans(new Set([SM2_SIGN])).get('SM2DSA', 'EC_SM2', 'DIGEST')).toBeUndefined();
    expect(new SigningPlans(new Set(SOFTHSM_2_6), sm2Profile('raw')).get('SM2DSA', 'EC_SM2', 'DIGEST')).toBeUndefined();
  });

  it('when an SM2 RAW message comes without the key’s Z_A, then tokenInput refuses it', () => {
    const plan = plansOf(FULL).get('SM2DSA', 'EC_SM2', 'RAW')!;
    expect(() => tokenInput(plan, MESSAGE)).toThrow(/Z_A/);
  });

  it('when the plans are described for the start-up log, then there is one line per plan, naming its mechanism', () => {
    const plans = plansOf(TOKENS[0]!);
    expect(plans.describe()).toHaveLength(allPlans(plans).length);
    expect(plans.describe()).toContain('ECDSA_SHA_256 EC_P256 RAW: sha256 in gateway, CKM_ECDSA, answer r-s-to-der');
    expect(plans.describe()).toContain('RSA_PKCS1_SHA_256 RSA_2048 DIGEST: CKM_RSA_PKCS over DigestInfo, answer as-is');
  });
});
