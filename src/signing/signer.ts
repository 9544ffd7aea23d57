import type { Token } from '../hsm/token.js';
import { HsmUnavailableError } from '../hsm/errors.js';
import { encodeSignature, tokenInput, type SigningPlan } from './plan.js';

/** A private key as the registry names it: which token, which label (and CKA_ID). */
export interface KeyLocation {
  token: string;
  label: string;
  id?: string;
}

/** Signs with a registered private key on the token that holds it: plan → token input → C_Sign → encoding. */
export class Signer {
  constructor(private readonly tokens: ReadonlyMap<string, Token>) {}

  async sign(key: KeyLocation, plan: SigningPlan, data: Buffer): Promise<Buffer> {
    const token = this.tokens.get(key.token);
    if (!token) throw new HsmUnavailableError(`a key names token "${key.token}", which is not configured`);
    const output = await token.sign({ label: key.label, id: key.id }, plan.mechanism, tokenInput(plan, data), plan.signatureBytes);
    return encodeSignature(plan, output);
  }
}
