import { ApiError } from '../http/error-catalog.js';
import { type CertificateRecord } from '../keys/registry.js';
import { accessTo } from './authorize.js';
import type { OperationContext } from './context.js';

/** The cloud's words, without the identifier: a catalog message marked verbatim takes no detail. */
const notFound = (): ApiError => new ApiError('Certificate.NotFound');

/**
 * A found certificate, as this caller may see it: certificates of other accounts are reported exactly like
 * certificates that do not exist; an access key outside the certificate's ACL is refused.
 */
function visibleCertificate(ctx: OperationContext, cert: CertificateRecord | undefined, asked: string): CertificateRecord {
  const access = cert ? accessTo(ctx, cert) : 'invisible';
  if (!cert || access === 'invisible') throw notFound();
  if (access === 'forbidden') {
    throw new ApiError('Forbidden.NoPermission', `The AccessKey ${ctx.caller.accessKeyId} is not allowed to use the certificate ${asked}.`);
  }
  if (cert.state === 'Disabled') throw new ApiError('Rejected.Disabled', `The certificate ${asked} is disabled.`);
  if (cert.state === 'PendingDeletion') throw new ApiError('Rejected.PendingDeletion', `The certificate ${asked} is pending deletion.`);
  ctx.audit.certificateId = cert.certificateId;
  return cert;
}

/** KMS CertificateId (GUID). */
export function certificateById(ctx: OperationContext, certificateId: string): CertificateRecord {
  return visibleCertificate(ctx, ctx.registry.certificate(certificateId), certificateId);
}

/**
 * CAS: CertIdentifier (private certificate Identifier or SSL `{id}-cn-hangzhou`) and/or CustomIdentifier,
 * optionally narrowed to a WarehouseId. When both identifiers are given they must name the same certificate.
 */
export function certificateByCasIdentifiers(
  ctx: OperationContext,
  ids: { certIdentifier?: string; customIdentifier?: string; warehouseId?: number },
): CertificateRecord {
  const byCert = ids.certIdentifier === undefined ? undefined : ctx.registry.certificateByCertIdentifier(ids.certIdentifier);
  const byCustom = ids.customIdentifier === undefined ? undefined : ctx.registry.certificateByCustomIdentifier(ids.customIdentifier);
  const asked = [ids.certIdentifier, ids.customIdentifier].filter((x) => x !== undefined).join(' / ');
  let cert: CertificateRecord | undefined;
  if (ids.certIdentifier !== undefined && ids.customIdentifier !== undefined) {
    cert = byCert && byCert === byCustom ? byCert : undefined;
  } else {
    cert = byCert ?? byCustom;
  }
  if (cert && ids.warehouseId !== undefined && cert.warehouseId !== ids.warehouseId) cert = undefined;
  return visibleCertificate(ctx, cert, ids.warehouseId === undefined ? asked : `${asked} in warehouse ${ids.warehouseId}`);
}
