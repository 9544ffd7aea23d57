import type { KeyRecord, KeyVersionRecord } from '../keys/registry.js';
import type { Token } from '../hsm/token.js';
import { HsmUnavailableError } from '../hsm/errors.js';
import { encodeSignature, tokenInput, type SigningPlan } from './plan.js';

/** Signs with a registry key version on the token that holds it: plan → token input → C_Sign → encoding. */
export class Signer {
  constructor(private readonly tokens: ReadonlyMap<string, Token>) {}

  async sign(key: KeyRecord, version: KeyVersionRecord, plan: SigningPlan, data: Buffer): Promise<Buffer> {
    const token = this.tokens.get(key.token);
    if (!token) throw new HsmUnavailableError(`key ${key.keyId} names token "${key.token}", which is not configured`);
    const output = await token.sign({ label: version.label, id: version.id }, plan.mechanism, tokenInput(plan, data), plan.signatureBytes);
    return encodeSignature(plan, output);
  }
}
