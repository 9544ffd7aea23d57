import pkcs11js from 'pkcs11js';
import { HsmObjectNotFoundError } from './errors.js';

type Handle = pkcs11js.Handle;

/** A private key (or its public key, or its certificate) on the token, named the way the registry names it. */
export interface KeyRef {
  label: string;
  /** CKA_ID (hex); when given it must match too. */
  id?: string;
}

export type RawPublicKey =
  | { kind: 'RSA'; modulus: Buffer; publicExponent: Buffer }
  | { kind: 'EC'; ecParams: Buffer; ecPoint: Buffer };

/** The template that finds the token object of class `cls` (key or certificate) named by `ref`. */
export function objectTemplate(cls: number, ref: KeyRef): pkcs11js.Template {
  const t: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: ref.label },
  ];
  if (ref.id) t.push({ type: pkcs11js.CKA_ID, value: Buffer.from(ref.id, 'hex') });
  return t;
}

/**
 * The one object search: every object matching the template, in batches, or the first `atMost` (a caller that
 * only needs to tell "none / one / several" stops at 2). The search is always finalized.
 */
export function findObjects(p11: pkcs11js.PKCS11, session: Handle, template: pkcs11js.Template, atMost = Number.POSITIVE_INFINITY): Handle[] {
  p11.C_FindObjectsInit(session, template);
  try {
    const found: Handle[] = [];
    while (found.length < atMost) {
      const batch = p11.C_FindObjects(session, Math.min(1024, atMost - found.length));
      if (batch.length === 0) break;
      found.push(...batch);
    }
    return found;
  } finally {
    p11.C_FindObjectsFinal(session);
  }
}

const CLASS_NAMES = new Map<number, string>([
  [pkcs11js.CKO_PRIVATE_KEY, 'private key'],
  [pkcs11js.CKO_PUBLIC_KEY, 'public key'],
  [pkcs11js.CKO_CERTIFICATE, 'certificate'],
]);

/** The single object of class `cls` named by `ref`; none or several is a registry/token mismatch. */
export function findOne(p11: pkcs11js.PKCS11, session: Handle, cls: number, ref: KeyRef): Handle {
  const found = findObjects(p11, session, objectTemplate(cls, ref), 2);
  if (found.length === 1) return found[0]!;
  const what = CLASS_NAMES.get(cls) ?? 'object';
  throw new HsmObjectNotFoundError(found.length === 0 ? `no ${what} labelled "${ref.label}" on the token` : `several ${what}s labelled "${ref.label}"`);
}

/**
 * Every token object of class `cls`, indexed by CKA_LABEL (with its CKA_ID in hex): one listing instead of one
 * search per key. A search by label scans every object on the token (SoftHSMv2: ~12 µs per object, measured), so
 * one search per key is quadratic: 300 keys took 5.6 s to start, 10,000 would take hours.
 */
export function indexByLabel(p11: pkcs11js.PKCS11, session: Handle, cls: number): Map<string, Array<{ handle: Handle; id: string }>> {
  const byLabel = new Map<string, Array<{ handle: Handle; id: string }>>();
  for (const handle of findObjects(p11, session, [{ type: pkcs11js.CKA_CLASS, value: cls }, { type: pkcs11js.CKA_TOKEN, value: true }])) {
    const [label, id] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_ID }]);
    const name = (label!.value as Buffer).toString('utf8');
    const entries = byLabel.get(name) ?? [];
    entries.push({ handle, id: (id!.value as Buffer).toString('hex') });
    byLabel.set(name, entries);
  }
  return byLabel;
}

/** The same rule as a search by template, applied to an index: the label, and the CKA_ID when named; exactly one. */
export function pickFromIndex(index: ReadonlyMap<string, ReadonlyArray<{ handle: Handle; id: string }>>, ref: KeyRef): Handle | undefined {
  const id = ref.id === undefined ? undefined : Buffer.from(ref.id, 'hex').toString('hex');
  const found = (index.get(ref.label) ?? []).filter((o) => !id || o.id === id);
  return found.length === 1 ? found[0]!.handle : undefined;
}

export function readPublicKey(p11: pkcs11js.PKCS11, session: Handle, handle: Handle): RawPublicKey {
  const [keyType] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_KEY_TYPE }]);
  const type = (keyType!.value as Buffer).readUInt32LE(0);
  if (type === pkcs11js.CKK_RSA) {
    const [n, e] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]);
    return { kind: 'RSA', modulus: n!.value as Buffer, publicExponent: e!.value as Buffer };
  }
  const [params, point] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_EC_POINT }]);
  return { kind: 'EC', ecParams: params!.value as Buffer, ecPoint: point!.value as Buffer };
}

/**
 * Destroys objects on a best-effort basis (clean-up after a failed or refused operation, or after a probe): an object
 * already gone, or one the token will not destroy, is skipped — the error that matters is the caller's.
 */
export function destroyQuietly(p11: pkcs11js.PKCS11, session: Handle, handles: Iterable<Handle | undefined>): void {
  for (const handle of handles) {
    if (handle === undefined) continue;
    try {
      p11.C_DestroyObject(session, handle);
    } catch {
      // Best effort, by design.
    }
  }
}
