import type { KeySpec } from './key-specs.js';

/**
 * The algorithm catalog, keyed by the Alibaba names. One row says everything the signing plan needs:
 * which key specs may use it, the hash and digest length, the token mechanism for a digest the caller
 * already computed, the token's own hash-and-sign mechanism for raw messages (used when the token has it),
 * the PSS parameters, and what the token answers (a signature the client takes as is, or ECDSA's r‖s).
 */
export const ALGORITHMS = {
  RSA_PKCS1_SHA_256: {
    keySpecs: ['RSA_2048', 'RSA_3072'],
    hash: 'sha256',
    digestBytes: 32,
    digestMechanism: 'CKM_RSA_PKCS',
    digestInput: 'digest-info',
    messageMechanism: 'CKM_SHA256_RSA_PKCS',
    pss: false,
    tokenAnswer: 'signature',
  },
  RSA_PSS_SHA_256: {
    keySpecs: ['RSA_2048', 'RSA_3072'],
    hash: 'sha256',
    digestBytes: 32,
    digestMechanism: 'CKM_RSA_PKCS_PSS',
    digestInput: 'digest',
    messageMechanism: 'CKM_SHA256_RSA_PKCS_PSS',
    pss: true,
    tokenAnswer: 'signature',
  },
  ECDSA_SHA_256: {
    keySpecs: ['EC_P256', 'EC_P256K'],
    hash: 'sha256',
    digestBytes: 32,
    digestMechanism: 'CKM_ECDSA',
    digestInput: 'digest',
    // SoftHSMv2 2.6 lacks it; the plan falls back to hashing in the gateway + CKM_ECDSA.
    messageMechanism: 'CKM_ECDSA_SHA256',
    pss: false,
    // PKCS#11 returns r‖s; clients expect DER SEQUENCE { r, s }.
    tokenAnswer: 'r-s',
  },
  SM2DSA: {
    keySpecs: ['EC_SM2'],
    // e = SM3(Z_A ‖ M): for RAW the gateway computes Z_A from the key's public point, then e.
    hash: 'sm3-za',
    digestBytes: 32,
    // Vendor-defined: the mechanism, and whether it answers r‖s or DER, come from the token's HSM profile.
    digestMechanism: 'profile:sm2',
    digestInput: 'digest',
    messageMechanism: null,
    pss: false,
    tokenAnswer: 'profile',
  },
} as const satisfies Record<
  string,
  {
    keySpecs: readonly KeySpec[];
    hash: 'sha256' | 'sm3-za';
    digestBytes: number;
    digestMechanism: string;
    digestInput: 'digest' | 'digest-info';
    messageMechanism: string | null;
    pss: boolean;
    /** 'profile': the vendor's SM2 mechanism answers r‖s or DER, as the token's HSM profile says. */
    tokenAnswer: 'signature' | 'r-s' | 'profile';
  }
>;

export type AlgorithmName = keyof typeof ALGORITHMS;
export type Algorithm = (typeof ALGORITHMS)[AlgorithmName];
export const ALGORITHM_NAMES = Object.keys(ALGORITHMS) as AlgorithmName[];


export function algorithmFits(name: AlgorithmName, spec: KeySpec): boolean {
  return (ALGORITHMS[name].keySpecs as readonly KeySpec[]).includes(spec);
}
