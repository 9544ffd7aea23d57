import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { ckrOf } from '../hsm/ckr.js';
import type { AsyncOperations } from '../hsm/async-pkcs11.js';
import { findObjects } from '../hsm/objects.js';

/**
 * The registry's records stored ON the token, as private CKO_DATA objects, so every gateway that logs in to the
 * token (every replica, the admin CLI) reads the same ids, versions, aliases, states and access keys, and an HSM
 * backup carries them with the key material they describe.
 *
 * - A record is one object: CKA_APPLICATION `hsm-gateway/registry`, CKA_LABEL `<kind>:<id>`, CKA_VALUE the JSON
 *   `{ revision, record }`. Tokens make CKA_VALUE of data objects read-only (SoftHSMv2: CKR_ATTRIBUTE_READ_ONLY,
 *   measured), so a record is never modified: a change creates the next revision, then destroys the older one.
 *   A reader that sees both (a writer died in between) keeps the highest revision.
 * - The generation marker is one object (CKA_APPLICATION `hsm-gateway/registry-generation`) whose CKA_LABEL, which
 *   tokens do let change, gets a fresh random value after every write. Replicas poll that one attribute (0.2 ms at 1,000
 *   records on SoftHSMv2) and re-read the records only when it changed. A random value rather than a counter: two writers
 *   racing on a counter could both write n+1 and a reader would miss the second change.
 * - CKA_PRIVATE: only a logged-in user (the gateway, the admin CLI) sees the records; access-key secrets are among them.
 */
const RECORD_APPLICATION = 'hsm-gateway/registry';
const MARKER_APPLICATION = 'hsm-gateway/registry-generation';

export type RecordKind = 'key' | 'certificate' | 'accessKey';
const RECORD_KINDS: readonly RecordKind[] = ['key', 'certificate', 'accessKey'];

export interface StoredRecord {
  kind: RecordKind;
  id: string;
  revision: number;
  record: unknown;
}

type Handle = pkcs11js.Handle;
type P11 = pkcs11js.PKCS11;

const labelOf = (kind: RecordKind, id: string): string => `${kind}:${id}`;

const dataTemplate = (application: string, label?: string): pkcs11js.Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
  { type: pkcs11js.CKA_TOKEN, value: true },
  { type: pkcs11js.CKA_APPLICATION, value: application },
  ...(label === undefined ? [] : [{ type: pkcs11js.CKA_LABEL, value: label }]),
];

function parse(label: string, value: Buffer): StoredRecord | undefined {
  const colon = label.indexOf(':');
  const kind = label.slice(0, colon) as RecordKind;
  if (colon < 1 || !RECORD_KINDS.includes(kind)) return undefined;
  try {
    const body = JSON.parse(value.toString('utf8')) as { revision?: unknown; record?: unknown };
    if (typeof body.revision !== 'number' || typeof body.record !== 'object' || body.record === null) return undefined;
    return { kind, id: label.slice(colon + 1), revision: body.revision, record: body.record };
  } catch {
    return undefined;
  }
}

const isGone = (err: unknown): boolean => ckrOf(err) === pkcs11js.CKR_OBJECT_HANDLE_INVALID;

/**
 * Reads and writes the records on one token, through a logged-in read/write session the caller provides. Records are
 * immutable objects, so a reader caches them by handle and reads only the handles it has not seen.
 *
 * Costs (SoftHSMv2 scans every object of the token on each C_FindObjects, ~30 µs per object): the marker is read
 * through its cached handle (no search); `readAll` searches once; `put` and `remove` after a `readAll` search no
 * more (they know the handles), so a change costs one search however many records it writes.
 */
export class RegistryObjects {
  private readonly cache = new Map<Handle, StoredRecord | undefined>();
  private marker: Handle | undefined;
  /** True once readAll filled the cache: until then writes search for the records they replace. */
  private synced = false;

  /** The current generation marker ('' when nothing was ever written). */
  generation(p11: P11, session: Handle): string {
    if (this.marker !== undefined) {
      try {
        const [label] = p11.C_GetAttributeValue(session, this.marker, [{ type: pkcs11js.CKA_LABEL }]);
        return (label!.value as Buffer).toString('utf8');
      } catch (err) {
        if (!isGone(err)) throw err;
        this.marker = undefined;
      }
    }
    const [marker] = findObjects(p11, session, dataTemplate(MARKER_APPLICATION));
    if (marker === undefined) return '';
    this.marker = marker;
    return this.generation(p11, session);
  }

  /** generation(), each call one job off the event loop (the poll's path: it runs every second on every replica). */
  async generationOffThread(ops: Pick<AsyncOperations, 'findObjects' | 'getAttributeValue'>, session: Handle): Promise<string> {
    if (this.marker !== undefined) {
      try {
        const [label] = await ops.getAttributeValue(session, this.marker, [pkcs11js.CKA_LABEL]);
        return label?.toString('utf8') ?? '';
      } catch (err) {
        if (!isGone(err)) throw err;
        this.marker = undefined;
      }
    }
    const [marker] = await ops.findObjects(session, dataTemplate(MARKER_APPLICATION), 1);
    if (marker === undefined) return '';
    this.marker = marker;
    return this.generationOffThread(ops, session);
  }

  /** Every record, the highest revision of each; unreadable objects are skipped (and counted). One search. */
  readAll(p11: P11, session: Handle): { records: StoredRecord[]; unreadable: number } {
    const handles = findObjects(p11, session, dataTemplate(RECORD_APPLICATION));
    const present = new Set(handles);
    for (const cached of this.cache.keys()) if (!present.has(cached)) this.cache.delete(cached);
    for (const handle of handles) {
      if (this.cache.has(handle)) continue;
      try {
        const [label, value] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_VALUE }]);
        this.cache.set(handle, parse((label!.value as Buffer).toString('utf8'), value!.value as Buffer));
      } catch (err) {
        if (!isGone(err)) throw err; // destroyed by another writer since the search
      }
    }
    this.synced = true;
    return this.current();
  }

  /** What the last readAll and this process's own writes left in the cache (no token call). */
  current(): { records: StoredRecord[]; unreadable: number } {
    let unreadable = 0;
    const latest = new Map<string, StoredRecord>();
    for (const stored of this.cache.values()) {
      if (!stored) {
        unreadable++;
        continue;
      }
      const key = labelOf(stored.kind, stored.id);
      const seen = latest.get(key);
      if (!seen || seen.revision < stored.revision) latest.set(key, stored);
    }
    return { records: [...latest.values()], unreadable };
  }

  /** Forgets cached handles (after the token was re-initialized, handles mean nothing any more). */
  forget(): void {
    this.cache.clear();
    this.marker = undefined;
    this.synced = false;
  }

  /** The objects holding a record: from the cache after a readAll, else by a search. */
  private handlesOf(p11: P11, session: Handle, kind: RecordKind, id: string): Array<{ handle: Handle; revision: number }> {
    const label = labelOf(kind, id);
    if (this.synced) {
      return [...this.cache]
        .filter(([, stored]) => stored !== undefined && stored.kind === kind && stored.id === id)
        .map(([handle, stored]) => ({ handle, revision: stored!.revision }));
    }
    return findObjects(p11, session, dataTemplate(RECORD_APPLICATION, label)).map((handle) => {
      const [value] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_VALUE }]);
      return { handle, revision: parse(label, value!.value as Buffer)?.revision ?? 0 };
    });
  }

  /** Writes the next revision of a record, removes the older ones, and bumps the generation marker. */
  put(p11: P11, session: Handle, kind: RecordKind, id: string, record: unknown): number {
    const older = this.handlesOf(p11, session, kind, id);
    const revision = Math.max(0, ...older.map((o) => o.revision)) + 1;
    const handle = p11.C_CreateObject(session, [
      ...dataTemplate(RECORD_APPLICATION, labelOf(kind, id)),
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from(JSON.stringify({ revision, record }), 'utf8') },
    ]);
    this.cache.set(handle, { kind, id, revision, record });
    for (const { handle: old } of older) this.destroy(p11, session, old);
    this.bump(p11, session);
    return revision;
  }

  /**
   * Writes many new records (registry migrate into an empty token registry) and bumps the marker once. A failure
   * destroys the records this call made, so a half-copied registry is not left behind.
   */
  putAll(p11: P11, session: Handle, records: ReadonlyArray<{ kind: RecordKind; id: string; record: unknown }>): void {
    const made: Handle[] = [];
    try {
      for (const { kind, id, record } of records) {
        const handle = p11.C_CreateObject(session, [
          ...dataTemplate(RECORD_APPLICATION, labelOf(kind, id)),
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_VALUE, value: Buffer.from(JSON.stringify({ revision: 1, record }), 'utf8') },
        ]);
        made.push(handle);
        this.cache.set(handle, { kind, id, revision: 1, record });
      }
    } catch (err) {
      for (const handle of made) {
        try {
          this.destroy(p11, session, handle);
        } catch {
          // Best effort: the original failure is the one to report.
        }
      }
      throw err;
    }
    if (made.length > 0) this.bump(p11, session);
  }

  /** Removes a record (every revision) and bumps the marker; false when there was none. */
  remove(p11: P11, session: Handle, kind: RecordKind, id: string): boolean {
    const handles = this.handlesOf(p11, session, kind, id);
    for (const { handle } of handles) this.destroy(p11, session, handle);
    if (handles.length > 0) this.bump(p11, session);
    return handles.length > 0;
  }

  private destroy(p11: P11, session: Handle, handle: Handle): void {
    try {
      p11.C_DestroyObject(session, handle);
    } catch (err) {
      if (!isGone(err)) throw err;
    }
    this.cache.delete(handle);
  }

  private bump(p11: P11, session: Handle): void {
    const value = randomBytes(12).toString('hex');
    if (this.generation(p11, session) !== '' && this.marker !== undefined) {
      p11.C_SetAttributeValue(session, this.marker, [{ type: pkcs11js.CKA_LABEL, value }]);
      return;
    }
    this.marker = p11.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_APPLICATION, value: MARKER_APPLICATION },
      { type: pkcs11js.CKA_LABEL, value },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from('hsm-gateway registry generation marker') },
    ]);
  }
}
