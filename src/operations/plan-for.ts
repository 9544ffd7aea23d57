import { ApiError, invalid } from '../http/error-catalog.js';
import { algorithmFits, type AlgorithmName } from '../signing/algorithms.js';
import type { KeySpec } from '../signing/key-specs.js';
import type { MessageType, SigningPlan } from '../signing/plan.js';
import type { OperationContext } from './context.js';

/**
 * The signing plan for an algorithm on a key, or the client's error: an algorithm that does not fit the key
 * spec is the caller's mistake (InvalidParameter, named as the caller named it); a token without the
 * mechanism is the service's (503).
 */
export function planFor(
  ctx: OperationContext,
  algorithm: AlgorithmName,
  key: { keySpec: KeySpec; token: string },
  kind: MessageType,
  asked: { param: string; name: string } = { param: 'Algorithm', name: algorithm },
): SigningPlan {
  if (!algorithmFits(algorithm, key.keySpec)) throw invalid(asked.param, `${asked.name} cannot be used with a key of spec ${key.keySpec}.`);
  const plan = ctx.plans.get(key.token)?.get(algorithm, key.keySpec, kind);
  if (!plan) throw new ApiError('ServiceUnavailableTemporary', `The HSM holding this key offers no mechanism for ${asked.name}.`);
  return plan;
}
