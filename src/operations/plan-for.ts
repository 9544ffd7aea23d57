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
  keySpec: KeySpec,
  kind: MessageType,
  asked: { param: string; name: string } = { param: 'Algorithm', name: algorithm },
): SigningPlan {
  if (!algorithmFits(algorithm, keySpec)) throw invalid(asked.param, `${asked.name} cannot be used with a key of spec ${keySpec}.`);
  const plan = ctx.plans.get(algorithm, keySpec, kind);
  if (!plan) throw new ApiError('ServiceUnavailableTemporary', `The HSM offers no mechanism for ${asked.name}.`);
  return plan;
}
