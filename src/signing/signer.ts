import type { Token } from '../hsm/token.js';
import { HsmUnavailableError } from '../hsm/errors.js';
import { derToP1363 } from './der.js';
import { encodeSignature, tokenInput, type SigningPlan } from './plan.js';

/** A private key as the registry names it: which token, which label (and CKA_ID). */
export interface KeyLocation {
  token: string;
  label: string;
  id?: string;
}

const locationKey = (k: KeyLocation): string => `${k.token}\u0000${k.label}\u0000${k.id ?? ''}`;

/**
 * Signs and verifies with registered keys on the token that holds them: plan → token input → C_Sign / C_Verify
 * → encoding. Verification runs on the token too (with the public key object), async like signing.
 */
export class Signer {
  /** SM2 Z_A of each SM2 key, computed at start-up from its public key (see `rememberZa`). */
  private readonly za = new Map<string, Buffer>();

  constructor(
    private readonly tokens: ReadonlyMap<string, Token>,
    /** Told how long each token operation took (session wait included), for metrics. */
    private readonly observe: (operation: 'sign' | 'verify', mechanism: string, seconds: number) => void = () => {},
  ) {}

  rememberZa(key: KeyLocation, za: Buffer): void {
    this.za.set(locationKey(key), za);
  }

  async sign(key: KeyLocation, plan: SigningPlan, data: Buffer): Promise<Buffer> {
    const input = tokenInput(plan, data, this.za.get(locationKey(key)));
    const started = process.hrtime.bigint();
    const output = await this.token(key).sign({ label: key.label, id: key.id }, plan.mechanism, input, plan.signatureBytes);
    this.observe('sign', plan.mechanismName, Number(process.hrtime.bigint() - started) / 1e9);
    return encodeSignature(plan, output);
  }

  /** True when `signature` (as clients send it: DER for ECDSA) is valid for `data` under the plan. */
  async verify(key: KeyLocation, plan: SigningPlan, data: Buffer, signature: Buffer): Promise<boolean> {
    const tokenSignature = plan.encoding === 'r-s-to-der' ? derToP1363(signature, plan.signatureBytes / 2) : signature;
    if (!tokenSignature || (plan.fixedLength && tokenSignature.length !== plan.signatureBytes)) return false;
    const input = tokenInput(plan, data, this.za.get(locationKey(key)));
    const started = process.hrtime.bigint();
    const valid = await this.token(key).verify({ label: key.label, id: key.id }, plan.mechanism, input, tokenSignature);
    this.observe('verify', plan.mechanismName, Number(process.hrtime.bigint() - started) / 1e9);
    return valid;
  }

  private token(key: KeyLocation): Token {
    const token = this.tokens.get(key.token);
    if (!token) throw new HsmUnavailableError(`a key names token "${key.token}", which is not configured`);
    return token;
  }
}
