import { constants, createHash, generateKeyPairSync, privateEncrypt, sign } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import { ALGORITHM_NAMES, algorithmFits, type AlgorithmName } from '../../src/signing/algorithms.js';
import { KEY_SPECS, KEY_SPEC_NAMES, type KeySpec } from '../../src/signing/key-specs.js';
import { encodeSignature, SigningPlans, tokenInput, type SigningPlan } from '../../src/signing/plan.js';

/** What SoftHSMv2 2.6 offers for signing with the key types the gateway uses (it has no CKM_ECDSA_SHA256). */
const SOFTHSM_2_6 = new Set([
  pkcs11js.CKM_RSA_PKCS,
  pkcs11js.CKM_SHA256_RSA_PKCS,
  pkcs11js.CKM_RSA_PKCS_PSS,
  pkcs11js.CKM_SHA256_RSA_PKCS_PSS,
  pkcs11js.CKM_ECDSA,
]);

const PSS_SHA256 = { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 };
const DIGEST_INFO_SHA256_PREFIX = '3031300d060960864801650304020105000420';

const RSA_SPECS: KeySpec[] = ['RSA_2048', 'RSA_3072'];
const EC_SPECS: KeySpec[] = ['EC_P256', 'EC_P256K'];
const FITTING: Record<AlgorithmName, KeySpec[]> = {
  RSA_PKCS1_SHA_256: RSA_SPECS,
  RSA_PSS_SHA_256: RSA_SPECS,
  ECDSA_SHA_256: EC_SPECS,
  SM2DSA: ['EC_SM2'],
};
const pairs = ALGORITHM_NAMES.flatMap((a) => KEY_SPEC_NAMES.map((s) => [a, s] as const));
const fittingPairs = pairs.filter(([a, s]) => FITTING[a].includes(s));
const unfitPairs = pairs.filter(([a, s]) => !FITTING[a].includes(s));

function planOf(plans: SigningPlans, a: AlgorithmName, s: KeySpec, t: 'DIGEST' | 'RAW'): SigningPlan {
  const plan = plans.get(a, s, t);
  if (!plan) throw new Error(`no ${t} plan for ${a} ${s}`);
  return plan;
}

describe('algorithmFits', () => {
  it.each(pairs)('when asked about %s with %s, then it answers as the algorithm table says', (a, s) => {
    expect(algorithmFits(a, s)).toBe(FITTING[a].includes(s));
  });

  it('when the catalogs are read, then every algorithm fits at least one key spec and the sets are the expected ones', () => {
    expect([...ALGORITHM_NAMES].sort()).toEqual(['ECDSA_SHA_256', 'RSA_PKCS1_SHA_256', 'RSA_PSS_SHA_256', 'SM2DSA']);
    expect([...KEY_SPEC_NAMES].sort()).toEqual(['EC_P256', 'EC_P256K', 'EC_SM2', 'RSA_2048', 'RSA_3072']);
  });
});

describe('SigningPlans on the SoftHSMv2 2.6 mechanism set', () => {
  const plans = new SigningPlans(SOFTHSM_2_6);

  describe.each(RSA_SPECS)('RSA_PKCS1_SHA_256 with %s', (spec) => {
    it('when the caller sends a DIGEST, then the plan is CKM_RSA_PKCS over the DigestInfo, raw output', () => {
      expect(planOf(plans, 'RSA_PKCS1_SHA_256', spec, 'DIGEST')).toEqual({
        algorithm: 'RSA_PKCS1_SHA_256',
        keySpec: spec,
        messageType: 'DIGEST',
        gatewayHash: null,
        digestBytes: 32,
        mechanismName: 'CKM_RSA_PKCS',
        mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS, parameter: undefined },
        wrapDigestInfo: true,
        output: 'raw',
        signatureBytes: KEY_SPECS[spec].signatureBytes,
        fixedLength: true,
      });
    });

    it('when the caller sends a RAW message, then the plan is the token-hashing CKM_SHA256_RSA_PKCS without DigestInfo', () => {
      const plan = planOf(plans, 'RSA_PKCS1_SHA_256', spec, 'RAW');
      expect(plan).toMatchObject({
        messageType: 'RAW',
        gatewayHash: null,
        mechanismName: 'CKM_SHA256_RSA_PKCS',
        mechanism: { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS, parameter: undefined },
        wrapDigestInfo: false,
        output: 'raw',
      });
    });
  });

  describe.each(RSA_SPECS)('RSA_PSS_SHA_256 with %s', (spec) => {
    it('when the caller sends a DIGEST, then the plan is CKM_RSA_PKCS_PSS with SHA-256 / MGF1-SHA256 / salt 32', () => {
      expect(planOf(plans, 'RSA_PSS_SHA_256', spec, 'DIGEST')).toEqual({
        algorithm: 'RSA_PSS_SHA_256',
        keySpec: spec,
        messageType: 'DIGEST',
        gatewayHash: null,
        digestBytes: 32,
        mechanismName: 'CKM_RSA_PKCS_PSS',
        mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: PSS_SHA256 },
        wrapDigestInfo: false,
        output: 'raw',
        signatureBytes: KEY_SPECS[spec].signatureBytes,
        fixedLength: true,
      });
    });

    it('when the caller sends a RAW message, then the plan is CKM_SHA256_RSA_PKCS_PSS with the same PSS parameters', () => {
      expect(planOf(plans, 'RSA_PSS_SHA_256', spec, 'RAW')).toMatchObject({
        messageType: 'RAW',
        gatewayHash: null,
        mechanismName: 'CKM_SHA256_RSA_PKCS_PSS',
        mechanism: { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS_PSS, parameter: PSS_SHA256 },
        wrapDigestInfo: false,
      });
    });
  });

  describe.each(EC_SPECS)('ECDSA_SHA_256 with %s', (spec) => {
    it('when the caller sends a DIGEST, then the plan is CKM_ECDSA with DER output', () => {
      expect(planOf(plans, 'ECDSA_SHA_256', spec, 'DIGEST')).toEqual({
        algorithm: 'ECDSA_SHA_256',
        keySpec: spec,
        messageType: 'DIGEST',
        gatewayHash: null,
        digestBytes: 32,
        mechanismName: 'CKM_ECDSA',
        mechanism: { mechanism: pkcs11js.CKM_ECDSA, parameter: undefined },
        wrapDigestInfo: false,
        output: 'der',
        signatureBytes: 64,
        fixedLength: true,
      });
    });

    it('when the caller sends a RAW message, then the gateway hashes with sha256 and the token signs with CKM_ECDSA', () => {
      expect(planOf(plans, 'ECDSA_SHA_256', spec, 'RAW')).toMatchObject({
        messageType: 'RAW',
        gatewayHash: 'sha256',
        mechanismName: 'CKM_ECDSA',
        mechanism: { mechanism: pkcs11js.CKM_ECDSA },
        wrapDigestInfo: false,
        output: 'der',
      });
    });
  });

  it.each(unfitPairs)('when %s is asked for with the unfit key spec %s, then there is no plan', (a, s) => {
    expect(plans.get(a, s, 'DIGEST')).toBeUndefined();
    expect(plans.get(a, s, 'RAW')).toBeUndefined();
  });

  it('when the plans are described, then there is one line per fitting pair and message type', () => {
    // SoftHSM has no SM2: its SM2DSA pair has no plan.
    expect(plans.describe()).toHaveLength(2 * fittingPairs.filter(([a]) => a !== 'SM2DSA').length);
    expect(plans.describe()).toContain('ECDSA_SHA_256 EC_P256 RAW: sha256 in gateway, CKM_ECDSA, output der');
    expect(plans.describe()).toContain('RSA_PKCS1_SHA_256 RSA_2048 DIGEST: CKM_RSA_PKCS over DigestInfo, output raw');
  });
});

describe('SigningPlans on other mechanism sets', () => {
  it.each(EC_SPECS)('when the token offers CKM_ECDSA_SHA256, then the ECDSA RAW plan with %s uses it and the gateway does not hash', (spec) => {
    const plans = new SigningPlans(new Set([...SOFTHSM_2_6, pkcs11js.CKM_ECDSA_SHA256]));
    expect(planOf(plans, 'ECDSA_SHA_256', spec, 'RAW')).toMatchObject({
      gatewayHash: null,
      mechanismName: 'CKM_ECDSA_SHA256',
      mechanism: { mechanism: pkcs11js.CKM_ECDSA_SHA256 },
      output: 'der',
    });
    expect(planOf(plans, 'ECDSA_SHA_256', spec, 'DIGEST').mechanismName).toBe('CKM_ECDSA');
  });

  it('when the token lacks CKM_RSA_PKCS_PSS, then there is no PSS plan at all, even with CKM_SHA256_RSA_PKCS_PSS', () => {
    const plans = new SigningPlans(new Set([...SOFTHSM_2_6].filter((m) => m !== pkcs11js.CKM_RSA_PKCS_PSS)));
    for (const spec of KEY_SPEC_NAMES) {
      expect(plans.get('RSA_PSS_SHA_256', spec, 'DIGEST')).toBeUndefined();
      expect(plans.get('RSA_PSS_SHA_256', spec, 'RAW')).toBeUndefined();
    }
    expect(plans.get('RSA_PKCS1_SHA_256', 'RSA_2048', 'DIGEST')).toBeDefined();
  });

  it('when the token lacks CKM_SHA256_RSA_PKCS, then the PKCS1 RAW plan hashes in the gateway and signs the DigestInfo with CKM_RSA_PKCS', () => {
    const plans = new SigningPlans(new Set([pkcs11js.CKM_RSA_PKCS]));
    expect(planOf(plans, 'RSA_PKCS1_SHA_256', 'RSA_2048', 'RAW')).toMatchObject({
      gatewayHash: 'sha256',
      mechanismName: 'CKM_RSA_PKCS',
      wrapDigestInfo: true,
    });
  });

  it('when the token offers no mechanism, then there is no plan', () => {
    const plans = new SigningPlans(new Set());
    expect(plans.describe()).toEqual([]);
    for (const [a, s] of pairs) expect(plans.get(a, s, 'DIGEST')).toBeUndefined();
  });
});

describe('tokenInput and encodeSignature', () => {
  const plans = new SigningPlans(SOFTHSM_2_6);
  const digest = createHash('sha256').update('hello').digest();

  it('when a 32-byte digest goes to an RSA_PKCS1 DIGEST plan, then the token gets the 51-byte SHA-256 DigestInfo', () => {
    const input = tokenInput(planOf(plans, 'RSA_PKCS1_SHA_256', 'RSA_2048', 'DIGEST'), digest);
    expect(input).toHaveLength(51);
    expect(input.toString('hex')).toBe(DIGEST_INFO_SHA256_PREFIX + digest.toString('hex'));
  });

  it('when the RSA_PKCS1 token input is signed with raw PKCS#1 v1.5 padding, then it equals a standard RSA-SHA256 signature', () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const input = tokenInput(planOf(plans, 'RSA_PKCS1_SHA_256', 'RSA_2048', 'DIGEST'), digest);
    const viaToken = privateEncrypt({ key: privateKey, padding: constants.RSA_PKCS1_PADDING }, input);
    expect(viaToken.equals(sign('sha256', Buffer.from('hello'), privateKey))).toBe(true);
  });

  it('when a digest goes to a PSS or ECDSA DIGEST plan, then the token gets it unchanged', () => {
    expect(tokenInput(planOf(plans, 'RSA_PSS_SHA_256', 'RSA_3072', 'DIGEST'), digest).equals(digest)).toBe(true);
    expect(tokenInput(planOf(plans, 'ECDSA_SHA_256', 'EC_P256', 'DIGEST'), digest).equals(digest)).toBe(true);
  });

  it('when a RAW message goes to the ECDSA fallback plan, then the token gets its SHA-256', () => {
    const message = Buffer.from('a raw message, not a digest');
    const input = tokenInput(planOf(plans, 'ECDSA_SHA_256', 'EC_P256K', 'RAW'), message);
    expect(input.equals(createHash('sha256').update(message).digest())).toBe(true);
  });

  it('when a RAW message goes to a combined RSA plan, then the token gets the message itself', () => {
    const message = Buffer.from('a raw message, not a digest');
    expect(tokenInput(planOf(plans, 'RSA_PKCS1_SHA_256', 'RSA_2048', 'RAW'), message).equals(message)).toBe(true);
    expect(tokenInput(planOf(plans, 'RSA_PSS_SHA_256', 'RSA_2048', 'RAW'), message).equals(message)).toBe(true);
  });

  it('when the PKCS1 fallback plan gets a RAW message, then the token gets the DigestInfo of its SHA-256', () => {
    const fallback = new SigningPlans(new Set([pkcs11js.CKM_RSA_PKCS]));
    const input = tokenInput(planOf(fallback, 'RSA_PKCS1_SHA_256', 'RSA_2048', 'RAW'), Buffer.from('hello'));
    expect(input.toString('hex')).toBe(DIGEST_INFO_SHA256_PREFIX + digest.toString('hex'));
  });

  it('when an ECDSA token output r||s is encoded, then the client gets DER SEQUENCE { r, s }', () => {
    const r = Buffer.alloc(32, 0x01);
    const s = Buffer.alloc(32, 0x02);
    const out = encodeSignature(planOf(plans, 'ECDSA_SHA_256', 'EC_P256', 'DIGEST'), Buffer.concat([r, s]));
    expect(out.toString('hex')).toBe(`30440220${r.toString('hex')}0220${s.toString('hex')}`);
  });

  it('when an RSA token output is encoded, then the client gets the same bytes', () => {
    const output = Buffer.alloc(256, 0xab);
    expect(encodeSignature(planOf(plans, 'RSA_PKCS1_SHA_256', 'RSA_2048', 'DIGEST'), output)).toBe(output);
    expect(encodeSignature(planOf(plans, 'RSA_PSS_SHA_256', 'RSA_2048', 'RAW'), output)).toBe(output);
  });
});

describe('SigningPlans with an SM2 HSM profile', () => {
  const SIGN_E = 0x80001002;
  const profile = (signOutput: 'raw' | 'der') => ({ sm2: { keyType: 0x80001001, keyPairGenMechanism: 0x80001001, signMechanism: SIGN_E, signOutput } });

  it('when the profile names an SM2 mechanism the token offers, then SM2DSA signs e with it, and RAW messages get Z_A and SM3 in the gateway', () => {
    const plans = new SigningPlans(new Set([SIGN_E]), profile('raw'));
    expect(plans.get('SM2DSA', 'EC_SM2', 'DIGEST')).toMatchObject({ gatewayHash: null, mechanism: { mechanism: SIGN_E }, output: 'der', fixedLength: true, signatureBytes: 64 });
    expect(plans.get('SM2DSA', 'EC_SM2', 'RAW')).toMatchObject({ gatewayHash: 'sm3-za', mechanism: { mechanism: SIGN_E } });
  });

  it('when the vendor mechanism answers DER, then the answer passes through and its length may vary', () => {
    const plans = new SigningPlans(new Set([SIGN_E]), profile('der'));
    expect(plans.get('SM2DSA', 'EC_SM2', 'DIGEST')).toMatchObject({ output: 'raw', fixedLength: false });
  });

  it('when there is no profile, or the token lacks its mechanism, then there is no SM2 plan', () => {
    expect(new SigningPlans(new Set([SIGN_E])).get('SM2DSA', 'EC_SM2', 'DIGEST')).toBeUndefined();
    expect(new SigningPlans(SOFTHSM_2_6, profile('raw')).get('SM2DSA', 'EC_SM2', 'DIGEST')).toBeUndefined();
  });
});
