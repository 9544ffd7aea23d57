import { createHash } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { mechanismAllows, rsaSizeAllowed, type MechanismFacts } from '../hsm/capabilities.js';
import { ALGORITHMS, ALGORITHM_NAMES, algorithmFits, type Algorithm, type AlgorithmName } from './algorithms.js';
import { p1363ToDer } from './der.js';
import { digestInfo } from './digest-info.js';
import { KEY_SPECS, KEY_SPEC_NAMES, type KeySpec } from './key-specs.js';
import { sm2E } from './sm2.js';

export type MessageType = 'DIGEST' | 'RAW';

/**
 * What a token's vendor adds to PKCS#11 for SM2 (HSM profile, from config): the sign mechanism over e and the
 * shape of its answer. Key type and key-generation mechanism are for admin tooling.
 */
export interface Sm2Profile {
  keyType: number;
  keyPairGenMechanism: number;
  signMechanism: number;
  /** 'raw': r‖s (64 bytes, re-encoded as DER for clients); 'der': SEQUENCE { r, s } already. */
  signOutput: 'raw' | 'der';
}

export interface HsmProfile {
  sm2?: Sm2Profile;
}

/** How one (algorithm, key spec, message type) is signed on this token; decided once at start-up. */
export interface SigningPlan {
  algorithm: AlgorithmName;
  keySpec: KeySpec;
  messageType: MessageType;
  /** Hash applied by the gateway to a RAW message before the token sees it (null: the token hashes). */
  gatewayHash: 'sha256' | 'sm3-za' | null;
  /** Bytes the caller's DIGEST must have. */
  digestBytes: number;
  mechanismName: string;
  mechanism: pkcs11js.Mechanism;
  wrapDigestInfo: boolean;
  /** What the gateway does with the token's answer: pass it on, or turn r‖s into DER (what clients expect). */
  encoding: 'as-is' | 'r-s-to-der';
  /** Size of the token's output buffer; for DER-answering tokens the signature may be shorter. */
  signatureBytes: number;
  /** True when the token's answer has exactly `signatureBytes` (r‖s, RSA); false for DER answers. */
  fixedLength: boolean;
}

function mechanismNumber(name: string, profile: HsmProfile): number | undefined {
  if (name === 'profile:sm2') return profile.sm2?.signMechanism;
  const n = (pkcs11js as unknown as Record<string, unknown>)[name];
  if (typeof n !== 'number') throw new Error(`unknown PKCS#11 mechanism ${name}`);
  return n;
}

const PSS_SHA256: pkcs11js.RsaPSS = {
  type: pkcs11js.CK_PARAMS_RSA_PSS,
  hashAlg: pkcs11js.CKM_SHA256,
  mgf: pkcs11js.CKG_MGF1_SHA256,
  saltLen: 32,
};

const key = (a: string, s: string, t: string): string => `${a}|${s}|${t}`;

/**
 * The plan table for one token, built from the mechanisms it offers, what C_GetMechanismInfo says of them (a
 * mechanism whose reported flags lack CKF_SIGN, or an RSA size outside its reported key sizes, is not planned) and
 * its HSM profile.
 */
export class SigningPlans {
  private readonly plans = new Map<string, SigningPlan>();

  constructor(available: ReadonlySet<number>, profile: HsmProfile = {}, facts: ReadonlyMap<number, MechanismFacts> = new Map()) {
    /** Can this mechanism sign with a key of this spec, as far as the module's own description says? */
    const signs = (mechanism: number, keySpec: KeySpec): boolean => {
      const spec = KEY_SPECS[keySpec];
      return (
        available.has(mechanism) &&
        mechanismAllows(facts, mechanism, pkcs11js.CKF_SIGN) &&
        (spec.kind !== 'RSA' || rsaSizeAllowed(facts, mechanism, spec.modulusBits))
      );
    };
    for (const algorithm of ALGORITHM_NAMES) {
      const row: Algorithm = ALGORITHMS[algorithm];
      const digestMechanism = mechanismNumber(row.digestMechanism, profile);
      if (digestMechanism === undefined) continue;
      // A vendor mechanism that answers DER needs no re-encoding, and its length varies.
      const answersDer = row.tokenAnswer === 'profile' && profile.sm2?.signOutput === 'der';
      const encoding = row.tokenAnswer === 'signature' || answersDer ? 'as-is' : 'r-s-to-der';
      const fixedLength = !answersDer;
      for (const keySpec of KEY_SPEC_NAMES.filter((s) => algorithmFits(algorithm, s) && signs(digestMechanism, s))) {
        const signatureBytes = KEY_SPECS[keySpec].signatureBytes;
        const onDigest: SigningPlan = {
          algorithm,
          keySpec,
          digestBytes: row.digestBytes,
          encoding,
          signatureBytes: fixedLength ? signatureBytes : signatureBytes + 8,
          fixedLength,
          messageType: 'DIGEST',
          gatewayHash: null,
          mechanismName: row.digestMechanism === 'profile:sm2' ? `vendor SM2 0x${digestMechanism.toString(16)}` : row.digestMechanism,
          mechanism: { mechanism: digestMechanism, parameter: row.pss ? PSS_SHA256 : undefined },
          wrapDigestInfo: row.digestInput === 'digest-info',
        };
        this.plans.set(key(algorithm, keySpec, 'DIGEST'), onDigest);
        // RAW: prefer the token's hash-and-sign mechanism; else hash here and sign the digest.
        const combined = row.messageMechanism === null ? undefined : mechanismNumber(row.messageMechanism, profile);
        const onMessage: SigningPlan =
          combined !== undefined && row.messageMechanism !== null && signs(combined, keySpec)
            ? {
                ...onDigest,
                messageType: 'RAW',
                mechanismName: row.messageMechanism,
                mechanism: { mechanism: combined, parameter: row.pss ? PSS_SHA256 : undefined },
                wrapDigestInfo: false,
              }
            : { ...onDigest, messageType: 'RAW', gatewayHash: row.hash };
        this.plans.set(key(algorithm, keySpec, 'RAW'), onMessage);
      }
    }
  }

  get(algorithm: AlgorithmName, keySpec: KeySpec, messageType: MessageType): SigningPlan | undefined {
    return this.plans.get(key(algorithm, keySpec, messageType));
  }

  /** One line per plan, for the start-up log. */
  describe(): string[] {
    return [...this.plans.values()].map(
      (p) =>
        `${p.algorithm} ${p.keySpec} ${p.messageType}: ${p.gatewayHash ? `${p.gatewayHash} in gateway, ` : ''}${p.mechanismName}` +
        `${p.wrapDigestInfo ? ' over DigestInfo' : ''}, answer ${p.encoding}`,
    );
  }
}

/**
 * What the token signs for this plan: the digest (maybe in its DigestInfo), or the raw message. SM2 RAW
 * messages need the signer's Z_A (from its public key): e = SM3(Z_A ‖ M).
 */
export function tokenInput(plan: SigningPlan, data: Buffer, za?: Buffer): Buffer {
  let digest: Buffer;
  if (plan.gatewayHash === 'sm3-za') {
    if (!za) throw new Error(`no Z_A known for the ${plan.keySpec} key: its public key was not read at start-up`);
    digest = sm2E(za, data);
  } else {
    digest = plan.gatewayHash ? createHash(plan.gatewayHash).update(data).digest() : data;
  }
  return plan.wrapDigestInfo ? digestInfo('sha256', digest) : digest;
}

/** What the client receives for the token's output. */
export function encodeSignature(plan: SigningPlan, tokenOutput: Buffer): Buffer {
  return plan.encoding === 'r-s-to-der' ? p1363ToDer(tokenOutput) : tokenOutput;
}
