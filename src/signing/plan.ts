import { createHash } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { ALGORITHMS, ALGORITHM_NAMES, algorithmFits, type AlgorithmName } from './algorithms.js';
import { p1363ToDer } from './der.js';
import { digestInfo } from './digest-info.js';
import { KEY_SPECS, KEY_SPEC_NAMES, type KeySpec } from './key-specs.js';

export type MessageType = 'DIGEST' | 'RAW';

/** How one (algorithm, key spec, message type) is signed on this token; decided once at start-up. */
export interface SigningPlan {
  algorithm: AlgorithmName;
  keySpec: KeySpec;
  messageType: MessageType;
  /** Hash applied by the gateway to a RAW message before the token sees it (null: the token hashes). */
  gatewayHash: 'sha256' | null;
  /** Bytes the caller's DIGEST must have. */
  digestBytes: number;
  mechanismName: string;
  mechanism: pkcs11js.Mechanism;
  wrapDigestInfo: boolean;
  output: 'raw' | 'der';
  signatureBytes: number;
}

function mechanismNumber(name: string): number {
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

/** The plan table for one token, built from the mechanisms it offers. */
export class SigningPlans {
  private readonly plans = new Map<string, SigningPlan>();

  constructor(available: ReadonlySet<number>) {
    for (const algorithm of ALGORITHM_NAMES) {
      const row = ALGORITHMS[algorithm];
      if (!available.has(mechanismNumber(row.digestMechanism))) continue;
      for (const keySpec of KEY_SPEC_NAMES.filter((s) => algorithmFits(algorithm, s))) {
        const base = {
          algorithm,
          keySpec,
          digestBytes: row.digestBytes,
          output: row.output,
          signatureBytes: KEY_SPECS[keySpec].signatureBytes,
        };
        const onDigest: SigningPlan = {
          ...base,
          messageType: 'DIGEST',
          gatewayHash: null,
          mechanismName: row.digestMechanism,
          mechanism: { mechanism: mechanismNumber(row.digestMechanism), parameter: row.pss ? PSS_SHA256 : undefined },
          wrapDigestInfo: row.digestInput === 'digest-info',
        };
        this.plans.set(key(algorithm, keySpec, 'DIGEST'), onDigest);
        // RAW: prefer the token's hash-and-sign mechanism; else hash here and sign the digest.
        const combined = mechanismNumber(row.messageMechanism);
        const onMessage: SigningPlan = available.has(combined)
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
        `${p.wrapDigestInfo ? ' over DigestInfo' : ''}, output ${p.output}`,
    );
  }
}

/** What the token signs for this plan: the digest (maybe in its DigestInfo), or the raw message. */
export function tokenInput(plan: SigningPlan, data: Buffer): Buffer {
  const digest = plan.gatewayHash ? createHash(plan.gatewayHash).update(data).digest() : data;
  return plan.wrapDigestInfo ? digestInfo('sha256', digest) : digest;
}

/** What the client receives for the token's output. */
export function encodeSignature(plan: SigningPlan, tokenOutput: Buffer): Buffer {
  return plan.output === 'der' ? p1363ToDer(tokenOutput) : tokenOutput;
}
