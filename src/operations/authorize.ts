import { accessOf, type Access, type CertificateRecord, type KeyRecord } from '../keys/registry.js';
import type { OperationContext } from './context.js';

/**
 * May this caller do this request's action on this key or certificate? Another account's are invisible; inside
 * the account the key's ACL and then the access key's RAM policy (on the resource's ARN) decide.
 */
export function accessTo(ctx: OperationContext, resource: KeyRecord | CertificateRecord): Access {
  const access = accessOf(resource, ctx.caller);
  if (access !== 'allowed' || !ctx.caller.policy) return access;
  return ctx.caller.policy.allows(ctx.ramAction, resourceArn(ctx, resource)) ? 'allowed' : 'forbidden';
}

/** `acs:kms:<region>:<account>:key/<KeyId>`, `…:certificate/<CertificateId>`, `acs:yundun-cert:…:cert/<CertificateId>`. */
export function resourceArn(ctx: OperationContext, resource: KeyRecord | CertificateRecord): string {
  if ('keyId' in resource) return `acs:kms:${ctx.regionId}:${resource.account}:key/${resource.keyId}`;
  const service = ctx.ramAction.startsWith('kms:') ? 'kms' : 'yundun-cert';
  return `acs:${service}:${ctx.regionId}:${resource.account}:${service === 'kms' ? 'certificate' : 'cert'}/${resource.certificateId}`;
}
