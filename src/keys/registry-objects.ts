import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { ckrOf } from '../hsm/ckr.js';
import type { AsyncOperations } from '../hsm/async-pkcs11.js';
import { findObjects } from '../hsm/objects.js';
import { abandoned, rivalOf, type SeenRevision } from './registry-cas.js';

/**
 * The registry's records stored ON the token, as private CKO_DATA objects, so every gateway that logs in to the
 * token (every replica, the admin CLI) reads the same ids, versions, aliases, states and access keys, and an HSM
 * backup carries them with the key material they describe.
 *
 * - A record is one object: CKA_APPLICATION `hsm-gateway/registry`, CKA_LABEL `<kind>:<id>`, CKA_VALUE the JSON
 *   `{ revision, record }`. Tokens make CKA_VALUE of data objects read-only (SoftHSMv2: CKR_ATTRIBUTE_READ_ONLY,
 *   measured), so a record is never modified: a change creates the next revision, then destroys the older one.
 *   A reader that sees both (a writer in flight) keeps the highest revision; two of one revision (which the
 *   compare-and-swap makes impossible but a hand edit is not) are ordered by their text, so every reader picks one.
 * - A change through RegistrySource is a compare-and-swap (registry-cas.ts): its objects are first written *pending*
 *   (CKA_LABEL `pending:<kind>:<id>`, the value with `writtenAt`; a removal as a tombstone `{ revision, removed: true }`),
 *   which readers ignore, and relabelled `<kind>:<id>` when the change wins.
 * - The generation marker is one object (CKA_APPLICATION `hsm-gateway/registry-generation`; two for a while when a process
 *   could not see it, see generation()) whose CKA_LABEL, which
 *   tokens do let change, gets a fresh random value after every write. Replicas poll that one attribute (0.2 ms at 1,000
 *   records on SoftHSMv2) and re-read the records only when it changed. A random value rather than a counter: two writers
 *   racing on a counter could both write n+1 and a reader would miss the second change.
 * - CKA_PRIVATE: only a logged-in user (the gateway, the admin CLI) sees the records; access-key secrets are among them.
 */
const RECORD_APPLICATION = 'hsm-gateway/registry';
const PENDING = 'pending:';
const MARKER_APPLICATION = 'hsm-gateway/registry-generation';
/** Marker reads between two searches for markers (generation()): about every 10 s at the default poll. */
const MARKER_SEARCH_EVERY = 10;
/**
 * Attribute reads a registry read off the event loop keeps in flight at once: enough to hide each job's hand-off,
 * few enough that signing jobs still find libuv threads free while thousands of records are read.
 */
const READ_LANES = 4;
/** Searches a read makes while objects it found are destroyed before it reads them (readAllOffThread). */
const READ_ATTEMPTS = 3;
const joined = (labels: readonly Buffer[]): string => labels.map((label) => label.toString('utf8')).sort().join(',');

export type RecordKind = 'key' | 'certificate' | 'accessKey';
const RECORD_KINDS: readonly RecordKind[] = ['key', 'certificate', 'accessKey'];

export interface StoredRecord {
  kind: RecordKind;
  id: string;
  revision: number;
  record: unknown;
}

/** A cached object: a record, or (pending only) a removal's tombstone. */
interface Cached extends StoredRecord {
  removed?: boolean;
  pending?: boolean;
  writtenAt?: number;
}

/** An object created by phase (a) of a change: what the look and the clean-up need. */
interface Written {
  kind: RecordKind;
  id: string;
  handle: pkcs11js.Handle;
  revision: number;
  /** The committed object the change read (its revision and text); none for a new record. */
  basis?: { revision: number; value: string };
  removed: boolean;
}

type Handle = pkcs11js.Handle;
type P11 = pkcs11js.PKCS11;

/** Handles are Buffers, a new one from every call that returns one: compared by their bytes, never by identity. */
const handleKey = (handle: Handle): string => Buffer.from(handle).toString('hex');

/** A map keyed by handle value (see handleKey). */
class ByHandle<V> {
  private readonly map = new Map<string, [Handle, V]>();
  has(handle: Handle): boolean {
    return this.map.has(handleKey(handle));
  }
  get(handle: Handle): V | undefined {
    return this.map.get(handleKey(handle))?.[1];
  }
  set(handle: Handle, value: V): void {
    this.map.set(handleKey(handle), [handle, value]);
  }
  delete(handle: Handle): void {
    this.map.delete(handleKey(handle));
  }
  clear(): void {
    this.map.clear();
  }
  values(): V[] {
    return [...this.map.values()].map(([, value]) => value);
  }
  [Symbol.iterator](): IterableIterator<[Handle, V]> {
    return this.map.values();
  }
}

const labelOf = (kind: RecordKind, id: string): string => `${kind}:${id}`;

const dataTemplate = (application: string, label?: string): pkcs11js.Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
  { type: pkcs11js.CKA_TOKEN, value: true },
  { type: pkcs11js.CKA_APPLICATION, value: application },
  ...(label === undefined ? [] : [{ type: pkcs11js.CKA_LABEL, value: label }]),
];

/** A record object: private (access-key secrets are among the records), its value the JSON body. */
const recordTemplate = (label: string, body: object): pkcs11js.Template => [
  ...dataTemplate(RECORD_APPLICATION, label),
  { type: pkcs11js.CKA_PRIVATE, value: true },
  { type: pkcs11js.CKA_VALUE, value: Buffer.from(JSON.stringify(body), 'utf8') },
];

const markerTemplate = (value: string): pkcs11js.Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
  { type: pkcs11js.CKA_TOKEN, value: true },
  { type: pkcs11js.CKA_PRIVATE, value: true },
  { type: pkcs11js.CKA_APPLICATION, value: MARKER_APPLICATION },
  { type: pkcs11js.CKA_LABEL, value },
  // Distinct per marker, so that processes which find several agree which one stays.
  { type: pkcs11js.CKA_VALUE, value: Buffer.from(`hsm-gateway registry generation marker ${randomBytes(8).toString('hex')}`) },
];

/** Markers with their CKA_VALUE (hex): the one every process keeps first, the others after it. */
const keptFirst = <T extends { value: string }>(markers: T[]): T[] => markers.sort((x, y) => (x.value < y.value ? -1 : x.value > y.value ? 1 : 0));

/** The text two objects of one revision are ordered by ('' for a tombstone), the same in every process. */
const textOf = (stored: Cached): string => (stored.removed ? '' : JSON.stringify(stored.record));

/** Whether readers keep `a` over `b`: the higher revision; at one revision, the greater text. */
const supersedes = (a: Cached, b: Cached): boolean => a.revision > b.revision || (a.revision === b.revision && textOf(a) > textOf(b));

function parse(fullLabel: string, value: Buffer): Cached | undefined {
  const pending = fullLabel.startsWith(PENDING);
  const label = pending ? fullLabel.slice(PENDING.length) : fullLabel;
  const colon = label.indexOf(':');
  const kind = label.slice(0, colon) as RecordKind;
  if (colon < 1 || !RECORD_KINDS.includes(kind)) return undefined;
  try {
    const body = JSON.parse(value.toString('utf8')) as { revision?: unknown; record?: unknown; removed?: unknown; writtenAt?: unknown };
    if (typeof body.revision !== 'number') return undefined;
    const flags = pending ? { pending, ...(typeof body.writtenAt === 'number' ? { writtenAt: body.writtenAt } : {}) } : {};
    if (pending && body.removed === true) return { kind, id: label.slice(colon + 1), revision: body.revision, record: null, removed: true, ...flags };
    if (typeof body.record !== 'object' || body.record === null) return undefined;
    return { kind, id: label.slice(colon + 1), revision: body.revision, record: body.record, ...flags };
  } catch {
    return undefined;
  }
}

/** The calls a read makes, each one job off the event loop. */
export type ReadCalls = Pick<AsyncOperations, 'findObjects' | 'getAttributeValue'>;
/** The calls a change makes (its reads and its writes), each one job off the event loop. */
export type ChangeCalls = ReadCalls & Pick<AsyncOperations, 'createObject' | 'destroyObject' | 'setAttributeValue'>;

/** Runs a read as one section (the caller's store gate, store-gate.ts). */
type ReadSection = <T>(read: () => Promise<T>) => Promise<T>;

/** For a read that stays on the session it was given. */
export const noOtherSession = async (): Promise<undefined> => undefined;

const isGone = (err: unknown): boolean => ckrOf(err) === pkcs11js.CKR_OBJECT_HANDLE_INVALID;

/**
 * Reads and writes the records on one token, through a logged-in read/write session the caller provides. Records are
 * immutable objects; a search reads every object again (a module may reuse a destroyed object's handle), and the
 * cache holds what the last search and this process's own writes left.
 *
 * Costs (SoftHSMv2 scans every object of the token on each C_FindObjects, ~30 µs per object): the marker is read
 * through its cached handle (a search every 10th read); `readAll` searches once; `put`, `remove` and `writePending` after a
 * `readAll` search no more (they know the handles); `lookAgain` searches once, however many records a change writes.
 */
export class RegistryObjects {
  private cache = new ByHandle<Cached | undefined>();
  /** The marker objects known (normally one; see generation()). */
  private markers: Handle[] = [];
  /** Marker reads since the markers were last searched for. */
  private markerReads = 0;
  /** The generation this process's last bump left. */
  bumpedTo: string | undefined;
  /** True once readAll filled the cache: until then writes search for the records they replace. */
  private synced = false;

  /**
   * The current generation ('' when nothing was ever written): the labels of the marker objects, sorted and joined.
   * Normally there is one. A process that could not see it (SoftHSMv2 can hide an object another process rewrites at
   * that moment, see shared-view.ts) creates another at its next write, and would then watch only its own: so the
   * markers are searched for again every MARKER_SEARCH_EVERY reads, and a bump leaves only one.
   */
  generation(p11: P11, session: Handle): string {
    const labels = (): string => joined(this.markers.map((marker) => p11.C_GetAttributeValue(session, marker, [{ type: pkcs11js.CKA_LABEL }])[0]!.value as Buffer));
    if (this.markers.length === 0 || ++this.markerReads >= MARKER_SEARCH_EVERY) this.searched(findObjects(p11, session, dataTemplate(MARKER_APPLICATION)));
    try {
      return labels();
    } catch (err) {
      if (!isGone(err)) throw err;
      this.searched(findObjects(p11, session, dataTemplate(MARKER_APPLICATION)));
      return labels();
    }
  }

  /** generation(), each call one job off the event loop (the poll's path: it runs every second on every replica). */
  async generationOffThread(ops: ReadCalls, session: Handle): Promise<string> {
    // One after another: PKCS#11 allows no concurrent calls on one session.
    const labels = async (): Promise<string> => {
      const values: Buffer[] = [];
      for (const marker of this.markers) values.push((await ops.getAttributeValue(session, marker, [pkcs11js.CKA_LABEL]))[0] ?? Buffer.alloc(0));
      return joined(values);
    };
    if (this.markers.length === 0 || ++this.markerReads >= MARKER_SEARCH_EVERY) this.searched(await ops.findObjects(session, dataTemplate(MARKER_APPLICATION)));
    try {
      return await labels();
    } catch (err) {
      if (!isGone(err)) throw err;
      this.searched(await ops.findObjects(session, dataTemplate(MARKER_APPLICATION)));
      return labels();
    }
  }

  private searched(markers: Handle[]): void {
    this.markers = markers;
    this.markerReads = 0;
  }

  /** Every record, the highest revision of each; unreadable objects are skipped (and counted). One search. */
  readAll(p11: P11, session: Handle): { records: StoredRecord[]; unreadable: number } {
    const handles = findObjects(p11, session, dataTemplate(RECORD_APPLICATION));
    // Every object is read again: a module may give a destroyed object's handle to a new one.
    this.cache.clear();
    for (const handle of handles) {
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

  /**
   * readAll(), every call one job off the event loop (a search, then each object's label and value): the read a
   * replica makes when another writer changed the registry, which at 10,000 records held the event loop for seconds.
   * The cache is replaced only when every object was read. A change's reads (its fresh read and its look) come here
   * too, on the change's one session, as do its writes (writePending, discard, commit).
   */
  async readAllOffThread(
    ops: ReadCalls,
    session: Handle,
    another: () => Promise<Handle | undefined>,
  ): Promise<{ records: StoredRecord[]; unreadable: number }> {
    const sessions = [session];
    for (let attempt = 1; ; attempt++) {
      const handles = await ops.findObjects(session, dataTemplate(RECORD_APPLICATION));
      // One session per lane: PKCS#11 allows no concurrent calls on one session.
      while (sessions.length < Math.min(READ_LANES, handles.length)) {
        const more = await another();
        if (more === undefined) break;
        sessions.push(more);
      }
      const { read, gone } = await this.readObjects(ops, sessions, handles);
      // An object destroyed since the search: another writer committed meanwhile (it destroys the older revision once
      // the newer one is relabelled), and the newer one may have been read while still pending. The read would lack
      // that record: search again (a writer's commit takes milliseconds), and past READ_ATTEMPTS serve what was read.
      if (gone > 0 && attempt < READ_ATTEMPTS) continue;
      this.cache = read;
      this.synced = true;
      return this.current();
    }
  }

  /** Reads the objects' labels and values, one lane per session; counts the objects destroyed since the search. */
  private async readObjects(ops: ReadCalls, sessions: readonly Handle[], handles: readonly Handle[]): Promise<{ read: ByHandle<Cached | undefined>; gone: number }> {
    const read = new ByHandle<Cached | undefined>();
    let gone = 0;
    let next = 0;
    const lane = async (session: Handle): Promise<void> => {
      while (next < handles.length) {
        const handle = handles[next++]!;
        try {
          const [label, value] = await ops.getAttributeValue(session, handle, [pkcs11js.CKA_LABEL, pkcs11js.CKA_VALUE]);
          read.set(handle, label && value ? parse(label.toString('utf8'), value) : undefined);
        } catch (err) {
          if (!isGone(err)) throw err;
          gone++;
        }
      }
    };
    // Every lane ends before the sessions are closed (a failure in one stops the others at their next object).
    let failed: { error: unknown } | undefined;
    await Promise.all(
      sessions.map((session) =>
        lane(session).catch((error: unknown) => {
          failed ??= { error };
          next = handles.length;
        }),
      ),
    );
    if (failed) throw failed.error;
    return { read, gone };
  }

  /**
   * What the last readAll and this process's own writes left in the cache (no token call): the committed records.
   * `inFlight` (a change's look): pending objects count too, the highest of each record, tombstones as absent.
   */
  current(inFlight = false): { records: StoredRecord[]; unreadable: number } {
    let unreadable = 0;
    const latest = new Map<string, Cached>();
    const now = Date.now();
    for (const stored of this.cache.values()) {
      if (!stored) {
        unreadable++;
        continue;
      }
      if (stored.pending && (!inFlight || abandoned(stored, now))) continue;
      const key = labelOf(stored.kind, stored.id);
      const seen = latest.get(key);
      if (!seen || supersedes(stored, seen)) latest.set(key, stored);
    }
    const live = [...latest.values()].filter((s) => !s.removed);
    return { records: live.map(({ kind, id, revision, record }) => ({ kind, id, revision, record })), unreadable };
  }

  /** Forgets cached handles (after the token was re-initialized, handles mean nothing any more). */
  forget(): void {
    this.cache.clear();
    this.markers = [];
    this.synced = false;
  }

  /** The objects holding a record: from the cache after a readAll, else by a search. */
  private handlesOf(p11: P11, session: Handle, kind: RecordKind, id: string): Array<{ handle: Handle; revision: number }> {
    const label = labelOf(kind, id);
    if (this.synced) {
      return [...this.cache]
        .filter(([, stored]) => stored !== undefined && !stored.pending && stored.kind === kind && stored.id === id)
        .map(([handle, stored]) => ({ handle, revision: stored!.revision }));
    }
    return findObjects(p11, session, dataTemplate(RECORD_APPLICATION, label)).map((handle) => {
      const [value] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_VALUE }]);
      return { handle, revision: parse(label, value!.value as Buffer)?.revision ?? 0 };
    });
  }

  /** Every cached object of one record, pending ones included. */
  private objectsOf(kind: RecordKind, id: string): Array<[Handle, Cached]> {
    return [...this.cache].filter((entry): entry is [Handle, Cached] => entry[1] !== undefined && entry[1].kind === kind && entry[1].id === id);
  }

  /**
   * Phase (a) of a change (registry-cas.ts), after a readAll: creates the next revision of each record as a pending
   * object (`record` undefined: a tombstone), destroying nothing and leaving the marker alone. A removal of a record
   * that is not there writes nothing. A failure part-way destroys what this call made.
   */
  async writePending(ops: ChangeCalls, session: Handle, writes: ReadonlyArray<{ kind: RecordKind; id: string; record?: unknown }>): Promise<Written[]> {
    const made: Written[] = [];
    try {
      for (const { kind, id, record } of writes) {
        let basis: Cached | undefined;
        for (const [, stored] of this.objectsOf(kind, id)) if (!stored.pending && (!basis || supersedes(stored, basis))) basis = stored;
        if (record === undefined && basis === undefined) continue;
        const revision = (basis?.revision ?? 0) + 1;
        const writtenAt = Date.now();
        const body = record === undefined ? { revision, removed: true, writtenAt } : { revision, record, writtenAt };
        const handle = await ops.createObject(session, recordTemplate(PENDING + labelOf(kind, id), body));
        const removed = record === undefined;
        this.cache.set(handle, { kind, id, revision, record: removed ? null : record, pending: true, writtenAt, ...(removed ? { removed } : {}) });
        made.push({ kind, id, handle, revision, removed, ...(basis ? { basis: { revision: basis.revision, value: textOf(basis) } } : {}) });
      }
    } catch (err) {
      await this.destroyAll(ops, session, made);
      throw err;
    }
    return made;
  }

  /**
   * Phase (b): searches every record again (one search, as one `section`) and answers why the change lost to a rival
   * writer of a record it wrote, or undefined. Afterwards current(true) is the registry with everything now on the token.
   */
  async lookAgain(ops: ReadCalls, session: Handle, written: readonly Written[], section: ReadSection = (read) => read()): Promise<string | undefined> {
    // On the change's own session alone: with the objects read on four sessions at once, SoftHSMv2 let both of two
    // rival changes see no rival (2 of 12 forced races acknowledged both; 0 of 12 on one session).
    await section(() => this.readAllOffThread(ops, session, noOtherSession));
    const mine = new Set(written.map((w) => handleKey(w.handle)));
    const now = Date.now();
    for (const w of written) {
      const rival = rivalOf(this.seen(w, mine), w.revision, w.basis, now);
      if (rival !== undefined) return `${rival} (${w.kind} ${w.id})`;
    }
    return undefined;
  }

  /** Lost: destroys what writePending made (nobody read it: readers ignore pending objects). */
  async discard(ops: ChangeCalls, session: Handle, written: readonly Written[]): Promise<void> {
    await this.destroyAll(ops, session, written);
  }

  /**
   * Won (phase c): relabels the change's objects as records (the commit point; a tombstone is destroyed instead),
   * destroys the older revisions and abandoned pending objects the look saw, then bumps the marker. Returns the
   * marker's value just before the bump (another writer's, when one committed since this change read it).
   */
  async commit(ops: ChangeCalls, session: Handle, written: readonly Written[]): Promise<string | undefined> {
    const mine = new Set(written.map((w) => handleKey(w.handle)));
    const now = Date.now();
    for (const w of written) {
      if (w.removed) await this.destroyOffThread(ops, session, w.handle);
      else {
        await ops.setAttributeValue(session, w.handle, [{ type: pkcs11js.CKA_LABEL, value: labelOf(w.kind, w.id) }]);
        const stored = this.cache.get(w.handle);
        if (stored) this.cache.set(w.handle, { kind: stored.kind, id: stored.id, revision: stored.revision, record: stored.record });
      }
    }
    for (const w of written) {
      for (const [handle, stored] of this.objectsOf(w.kind, w.id)) {
        if (mine.has(handleKey(handle))) continue;
        if ((!stored.pending && stored.revision < w.revision) || abandoned(stored, now)) await this.destroyOffThread(ops, session, handle);
      }
    }
    return written.length > 0 ? this.bumpOffThread(ops, session) : undefined;
  }

  private seen(w: Written, mine: ReadonlySet<string>): SeenRevision[] {
    return this.objectsOf(w.kind, w.id).map(([handle, stored]) => ({
      revision: stored.revision,
      value: textOf(stored),
      mine: mine.has(handleKey(handle)),
      pending: stored.pending === true,
      ...(stored.writtenAt !== undefined ? { writtenAt: stored.writtenAt } : {}),
    }));
  }

  private async destroyAll(ops: ChangeCalls, session: Handle, written: ReadonlyArray<{ handle: Handle }>): Promise<void> {
    for (const { handle } of written) {
      try {
        await this.destroyOffThread(ops, session, handle);
      } catch {
        // Best effort: the failure that brought us here is the one to report; an object left pending is abandoned later.
      }
    }
  }

  /** Writes the next revision of a record, removes the older ones, and bumps the generation marker. */
  put(p11: P11, session: Handle, kind: RecordKind, id: string, record: unknown): number {
    const older = this.handlesOf(p11, session, kind, id);
    const revision = Math.max(0, ...older.map((o) => o.revision)) + 1;
    const handle = p11.C_CreateObject(session, recordTemplate(labelOf(kind, id), { revision, record }));
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
        const handle = p11.C_CreateObject(session, recordTemplate(labelOf(kind, id), { revision: 1, record }));
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

  /** destroy() as a job off the event loop. */
  private async destroyOffThread(ops: ChangeCalls, session: Handle, handle: Handle): Promise<void> {
    try {
      await ops.destroyObject(session, handle);
    } catch (err) {
      if (!isGone(err)) throw err;
    }
    this.cache.delete(handle);
  }

  /**
   * A fresh random label on the marker; returns the generation it replaces ('' when there was no marker). Extra
   * markers (generation()) are destroyed, all but the first by CKA_VALUE, so every process converges on one.
   */
  private bump(p11: P11, session: Handle): string {
    const before = this.generation(p11, session);
    const value = randomBytes(12).toString('hex');
    this.bumpedTo = value;
    if (this.markers.length > 1) {
      const byValue = keptFirst(this.markers.map((marker) => ({ marker, value: (p11.C_GetAttributeValue(session, marker, [{ type: pkcs11js.CKA_VALUE }])[0]!.value as Buffer).toString('hex') })));
      for (const { marker } of byValue.slice(1)) this.destroy(p11, session, marker);
      this.searched([byValue[0]!.marker]);
    }
    if (this.markers.length > 0) {
      try {
        p11.C_SetAttributeValue(session, this.markers[0]!, [{ type: pkcs11js.CKA_LABEL, value }]);
        return before;
      } catch (err) {
        // Destroyed meanwhile by another process that kept another marker: that one gets the new value.
        if (!isGone(err)) throw err;
        this.searched(findObjects(p11, session, dataTemplate(MARKER_APPLICATION)));
        if (this.markers.length > 0) {
          p11.C_SetAttributeValue(session, this.markers[0]!, [{ type: pkcs11js.CKA_LABEL, value }]);
          return before;
        }
      }
    }
    this.searched([p11.C_CreateObject(session, markerTemplate(value))]);
    return before;
  }

  /**
   * bump() with every call one job off the event loop: a change through the gateway. bump() itself stays for the
   * writers that run before any request is served (the demo's bootstrap, `registry migrate`), which are synchronous.
   */
  private async bumpOffThread(ops: ChangeCalls, session: Handle): Promise<string> {
    const before = await this.generationOffThread(ops, session);
    const value = randomBytes(12).toString('hex');
    this.bumpedTo = value;
    if (this.markers.length > 1) {
      const values: Array<{ marker: Handle; value: string }> = [];
      for (const marker of this.markers) values.push({ marker, value: ((await ops.getAttributeValue(session, marker, [pkcs11js.CKA_VALUE]))[0] ?? Buffer.alloc(0)).toString('hex') });
      const byValue = keptFirst(values);
      for (const { marker } of byValue.slice(1)) await this.destroyOffThread(ops, session, marker);
      this.searched([byValue[0]!.marker]);
    }
    const label = [{ type: pkcs11js.CKA_LABEL, value }];
    if (this.markers.length > 0) {
      try {
        await ops.setAttributeValue(session, this.markers[0]!, label);
        return before;
      } catch (err) {
        // Destroyed meanwhile by another process that kept another marker: that one gets the new value.
        if (!isGone(err)) throw err;
        this.searched(await ops.findObjects(session, dataTemplate(MARKER_APPLICATION)));
        if (this.markers.length > 0) {
          await ops.setAttributeValue(session, this.markers[0]!, label);
          return before;
        }
      }
    }
    this.searched([await ops.createObject(session, markerTemplate(value))]);
    return before;
  }
}
