import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import pkcs11js from 'pkcs11js';
import { z } from 'zod';
import { probeTokenObject } from '../hsm/capabilities.js';
import { disturbedByOtherWriters, seesOtherProcessesObjects } from '../hsm/shared-view.js';
import type { Token } from '../hsm/token.js';
import { localOnly, type ChangeLock } from './change-lock.js';
import { hostFileLock, REGISTRY_LOCK_FILE, softhsmTokenDirectory } from './host-lock.js';
import { compareAndSwap } from './registry-cas.js';
import { LifecycleError, RegistryError, type LifecycleErrorKind } from './errors.js';
import { PolicyDocumentSchema } from './policy.js';
import { RecordConflictError, type PostgresRecords, type RecordWrite } from './postgres-records.js';
import type { SecretSealer } from './secret-sealer.js';
import { StoreState, type StoreStatus } from './store-state.js';
import { storeGateOf, type StoreGate } from './store-gate.js';
import { noOtherSession, RegistryObjects, type ChangeCalls, type ReadCalls, type RecordKind, type StoredRecord } from './registry-objects.js';
import {
  CertificateSchema,
  KeyRegistry,
  KeySchema,
  readRegistryFile,
  type CertificateRecord,
  type KeyRecord,
  type RegistryFile,
} from './registry.js';

/** An access key kept on the token (made by the admin CLI); its secrets are private token data. */
const AccessKeyRecordSchema = z
  .object({
    accessKeyId: z.string().min(1),
    account: z.string().min(1),
    /** The live secrets, newest first: a rotation keeps the previous one live until the next rotation. */
    secrets: z.array(z.string().min(1)).min(1).max(2),
    enabled: z.boolean().default(true),
    policies: z.array(PolicyDocumentSchema).optional(),
    createdAt: z.iso.datetime({ offset: true }).optional(),
    description: z.string().optional(),
  })
  .strict();
export type AccessKeyRecord = z.infer<typeof AccessKeyRecordSchema>;

/** One consistent view: the registry every request of a moment uses, and which entries the token manages. */
export interface RegistrySnapshot {
  registry: KeyRegistry;
  accessKeys: readonly AccessKeyRecord[];
  /** Entries stored on the token (changeable through the API and CLI); the rest come from the registry file. */
  onToken: { keys: ReadonlySet<string>; certificates: ReadonlySet<string> };
  /** The generation marker this snapshot was read at. */
  generation: string;
  /** Where the changeable entries (`onToken`) are kept: the token, or the PostgreSQL database (registry.store: postgres). */
  store: 'token' | 'postgres';
}

/** Writes inside one `change`: collected, checked as a whole, then made on the token when the change's work ends. */
/** Records validated, by kind (build()). */
interface ParsedRecords {
  keys: KeyRecord[];
  certificates: CertificateRecord[];
  accessKeys: AccessKeyRecord[];
}

/** Records validated between two turns of the event loop when a snapshot is built off it (buildYielding). */
const PARSE_CHUNK = 500;

/** The keys a change writes, and the registry it was made from (whose alias bindings the change may keep). */
interface ChangedKeys {
  ids: ReadonlySet<string>;
  before: KeyRegistry;
}

interface RegistryWriter {
  putKey(key: KeyRecord): void;
  removeKey(keyId: string): void;
  putCertificate(certificate: CertificateRecord): void;
  putAccessKey(accessKey: AccessKeyRecord): void;
}

interface RegistrySourceOptions {
  /** The token that stores the records (the "default" token). */
  token: Token;
  /** `file`: the registry is the file alone (registry.store: file); nothing is read from or written to the token. */
  store?: 'token' | 'file' | 'postgres';
  /** registry.store: postgres — the records in the database, and the sealer of access-key secrets (on the default token). */
  postgres?: PostgresStore;
  /** Optional static entries, read-only through the API (an operator's file, reloaded on SIGHUP). */
  file?: string;
  /** Serializes changes across replicas (a Redis lock when Redis is configured). */
  lock?: ChangeLock;
  /**
   * SoftHSMv2 only (registry.softhsmLock, default true): changes of every process sharing the token directory take turns
   * through a lock file there (host-lock.ts). False leaves them to the compare-and-swap alone (its tests).
   */
  hostLock?: boolean;
  /** Tells the other replicas a change was written, so they refresh now instead of at their next poll. */
  announce?: () => void;
  log: { info(m: string, meta?: Record<string, unknown>): void; warn(m: string, meta?: Record<string, unknown>): void; error(m: string, meta?: Record<string, unknown>): void };
}

/** The registry in PostgreSQL: the records, who this writer is (history), and the sealer, made on a token session. */
export interface PostgresStore {
  records: PostgresRecords;
  actor: string;
  sealer(p11: pkcs11js.PKCS11, session: pkcs11js.Handle): SecretSealer;
}

/** A change's work answered "not found" from a read that lacked records the registry holds (lacksPublished). */
class ReadLacksRecords extends Error {}

const NOT_FOUND: ReadonlySet<LifecycleErrorKind> = new Set(['key-not-found', 'alias-not-found', 'certificate-not-found', 'access-key-not-found']);

/** A record's key in the maps of a change and of a read: `kind:id` (the token object's label without `pending:`). */
const recordKey = (r: { kind: RecordKind; id: string }): string => `${r.kind}:${r.id}`;

/** A read of the token's records: the snapshot built from them, and the records. */
interface TokenRead {
  snapshot: RegistrySnapshot;
  records: readonly StoredRecord[];
}

/** A read of the database: what the records were at, for the revisions a change writes against. */
interface PostgresRead {
  snapshot: RegistrySnapshot;
  records: StoredRecord[];
  revisions: Map<string, number>;
}

const parsers: Record<RecordKind, z.ZodType> = { key: KeySchema, certificate: CertificateSchema, accessKey: AccessKeyRecordSchema };

/** After another writer's change, how long until the module is re-initialized once more (revealHidden). */
const SETTLE_MS = 3_000;

/**
 * Where the registry comes from: the records on the token (the source of truth every replica shares) plus, if
 * configured, a static file. Reads are snapshots; changes are serialized in this process, start from a fresh read
 * of the token, are written as a compare-and-swap against what they read (registry-cas.ts: a replica never writes
 * over a change it has not seen, it gets a 409 instead), and end with a new snapshot.
 */
export class RegistrySource {
  private readonly objects = new RegistryObjects();
  private settleTimer: NodeJS.Timeout | undefined;
  private fileEntries: RegistryFile = { keys: [], certificates: [] };
  private snapshot: RegistrySnapshot | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  /** The token's handle generation the cached record handles belong to (a re-initialization or a new login moves it). */
  private tokenHandles = -1;
  /**
   * The last read found the registry gone from the token (storeGone): warned once, and the next read searches
   * whatever the marker says, until it is back.
   */
  private storeMissing = false;
  /** How many records the last read that found the registry on the token found there. */
  private tokenRecords = 0;
  /** The token's records (`kind:id`) the published snapshot was read from: what a later read must account for (lacksPublished). */
  private publishedRecords: ReadonlySet<string> = new Set();
  /**
   * registry.store: postgres: the access keys' secrets as last opened, with the sealed bytes they came from. A refresh
   * opens only what changed: each opening is a C_Decrypt on the token through pkcs11js, on the event loop, and every
   * replica refreshes at every change (with 1,000 access keys on a network HSM at 1 ms a call: a second per change).
   */
  private readonly openedSecrets = new Map<string, { sealed: Buffer; secrets: string[] }>();
  private readonly listeners: Array<(snapshot: RegistrySnapshot) => void> = [];
  /** registry.store: postgres — whether the database answered this process's last call. */
  private readonly storeState = new StoreState();
  /** The notified refresh requests wait for (notified()), while it runs. */
  private catching: Promise<void> | undefined;
  private hostLockMade = false;
  private hostLockValue: ChangeLock | undefined;

  constructor(private readonly options: RegistrySourceOptions) {
    if (options.file) this.fileEntries = readRegistryFile(options.file);
  }

  /** The registry is the file alone (registry.store: file): changes through the API and the CLI are refused. */
  get fileStore(): boolean {
    return this.options.store === 'file';
  }

  /** Reads everything now (start-up). */
  async load(): Promise<RegistrySnapshot> {
    if (this.fileStore) return this.publish(this.build([], 'file', false));
    if (this.options.postgres) return this.publish((await this.readPostgres(this.options.postgres)).snapshot);
    return this.gate.use(() => this.options.token.admin(async (_p11, session, ops) => this.publishRead(await this.gate.read(() => this.read(ops, session)))));
  }

  /**
   * Refuses a change where the registry is the file. `entry`: the caller (the admin CLI) makes the token objects and
   * prints the entry for the operator's file instead of writing a record.
   */
  assertWritable(entry = false): void {
    if (this.fileStore && !entry) {
      throw new LifecycleError('not-on-token', `the registry is the file ${this.options.file} (registry.store: file): change it there and send SIGHUP to the gateway`);
    }
  }

  /** False until a first snapshot is published (a gateway whose PostgreSQL was away at start-up). */
  get loaded(): boolean {
    return this.snapshot !== undefined;
  }

  /** registry.store: postgres: whether the database answered the last call (undefined for the other stores). */
  storeStatus(): StoreStatus | undefined {
    return this.options.postgres ? this.storeState.status() : undefined;
  }

  current(): RegistrySnapshot {
    if (!this.snapshot) throw new Error('the registry was not loaded');
    return this.snapshot;
  }

  onChange(listener: (snapshot: RegistrySnapshot) => void): void {
    this.listeners.push(listener);
  }

  /** Re-reads the file (SIGHUP); a broken file is refused and the previous entries kept. */
  async reloadFile(file: string | undefined): Promise<RegistrySnapshot> {
    const entries = file ? readRegistryFile(file) : { keys: [], certificates: [] };
    const previous = this.fileEntries;
    this.fileEntries = entries;
    try {
      if (this.fileStore) return this.publish(this.build([], 'file', false));
      const postgres = this.options.postgres;
      if (postgres) return await this.serialized(async () => this.publish((await this.readPostgres(postgres)).snapshot));
      return await this.serialized(async () => {
        await this.readOffThread(() => true);
        return this.current();
      });
    } catch (err) {
      this.fileEntries = previous;
      throw err;
    }
  }

  /**
   * One poll: when the token's generation marker moved (another replica or the CLI wrote), re-read the records and
   * publish the new snapshot. Cheap when nothing changed: one attribute read, on a session of its own, every call off
   * the event loop (token.inspect); only a change is read through admin().
   */
  async refresh(): Promise<boolean> {
    if (this.fileStore) return false;
    const postgres = this.options.postgres;
    if (postgres) {
      return this.serialized(async () => {
        if (this.snapshot && (await this.reach(() => postgres.records.generation())) === this.snapshot.generation) return false;
        this.publish((await this.readPostgres(postgres)).snapshot);
        return true;
      });
    }
    const token = this.options.token;
    const unchanged = (generation: string): boolean =>
      !this.storeMissing && this.snapshot !== undefined && generation === this.snapshot.generation && this.tokenHandles === token.handleGeneration;
    return this.serialized(async () => {
      if (this.snapshot && this.tokenHandles === token.handleGeneration) {
        if (unchanged(await this.markerGeneration())) return false;
      }
      let foreign = false;
      const changed = await this.readOffThread(
        (generation) => {
          if (unchanged(generation)) return false;
          foreign = this.snapshot !== undefined && generation !== this.snapshot.generation;
          return true;
        },
        (records) => foreign && this.lacksPublished(records, 'a read of another writer\'s change'),
      );
      if (foreign) return (await this.revealHidden('another writer changed the registry')) || changed;
      return changed;
    });
  }

  /**
   * On a module whose searches can miss objects other processes write at the same moment (SoftHSMv2: shared-view.ts
   * disturbedByOtherWriters), what was just read after another writer's change may lack some of it: the
   * module is initialized again, which lists every object, and the registry read once more. Off the event loop; the
   * token's operations are held meanwhile (Token.reinitialize, 5–30 ms on a SoftHSMv2 demo token) while the
   * snapshot read before it is already served — unless that read lacked records (lacksPublished), which is then
   * served by this one. Returns whether it published.
   */
  private async revealHidden(reason: string, settling = false): Promise<boolean> {
    const token = this.options.token;
    if (!disturbedByOtherWriters(token.library)) return false;
    let published = false;
    try {
      // A read after a re-initialization can still lack a record another process rewrote during it: what it lacks is
      // served once a second re-initialization and read confirm it (a removal indeed), else the record is back.
      for (let round = 1; round <= 2 && !published; round++) {
        // Re-initializing tears down the module for the whole process: not while another RegistrySource of this module
        // in this process (the tests' replicas) has a session in use (store-gate.ts). One gateway process has one.
        await this.gate.alone(() => token.reinitialize(reason));
        published = await this.readOffThread(
          () => true,
          (records) => round === 1 && this.lacksPublished(records, 'the read after a re-initialization'),
        );
      }
    } catch (err) {
      this.options.log.warn('re-reading the registry after a re-initialization failed; the next refresh catches up', { error: (err as Error).message });
    }
    if (settling) return published;
    // The re-initialization reads every object file again, and one another process was rewriting at that moment can
    // stay unreadable in this process (measured: about one round in 70 of two replicas creating keys at once): once
    // more when the writers have settled, SETTLE_MS after the last change seen.
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => void this.serialized(() => this.revealHidden('another writer changed the registry (settled)', true)), SETTLE_MS);
    this.settleTimer.unref();
    return published;
  }

  /**
   * A refresh this process was told of (another cluster worker's or replica's announcement): the change is
   * acknowledged already, so requests that arrive from now until its snapshot is published wait for it (catchingUp())
   * instead of being served the registry it replaces — the refresh has steps off the event loop (the marker's read)
   * during which requests would otherwise run. A wait is bounded by the token's operation deadline: past it (a token
   * that hangs) requests go on with the snapshot they have, as after a poll.
   */
  notified(): Promise<boolean> {
    const refresh = this.refresh();
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.options.log.warn('a registry change this process was told of is still being read; requests go on with the previous registry meanwhile', { waitedMs: this.catchUpBoundMs });
        resolve();
      }, this.catchUpBoundMs);
      timer.unref();
    });
    const settled = refresh.then(
      () => undefined,
      () => undefined,
    );
    const caught: Promise<void> = Promise.race([settled, bound]).then(() => {
      clearTimeout(timer);
      if (this.catching === caught) this.catching = undefined;
    });
    // The newest one: it is queued after any earlier refresh (serialized), so waiting for it waits for them all.
    this.catching = caught;
    return refresh;
  }

  /**
   * While a notified() refresh runs: a promise that settles once its snapshot is published (or the wait's bound
   * passed; it never rejects). Every request checks it before it reads the registry; undefined otherwise, so that
   * costs nothing.
   */
  catchingUp(): Promise<void> | undefined {
    return this.catching;
  }

  /**
   * The lock file that serializes changes across the processes sharing a SoftHSMv2 token (host-lock.ts), made once;
   * undefined on other modules, when turned off, or when SoftHSMv2's token directory is not found (said once).
   */
  private hostLock(): ChangeLock | undefined {
    if (this.hostLockMade) return this.hostLockValue;
    this.hostLockMade = true;
    if (this.options.hostLock === false || !disturbedByOtherWriters(this.options.token.library)) return undefined;
    const log = this.options.log;
    const directory = softhsmTokenDirectory();
    if (directory === undefined) {
      log.warn('SoftHSMv2\'s token directory was not found (directories.tokendir in $SOFTHSM2_CONF): registry changes of processes sharing the token are left to the compare-and-swap alone');
      return undefined;
    }
    this.hostLockValue = hostFileLock(join(directory, REGISTRY_LOCK_FILE), {
      unusable: (reason) => log.warn('the registry\'s lock file cannot be used: registry changes of processes sharing the token are left to the compare-and-swap alone', { reason }),
    });
    return this.hostLockValue;
  }

  /** The token's generation marker now: one attribute read on a session of its own, off the event loop. */
  private markerGeneration(): Promise<string> {
    return this.gate.use(() => this.options.token.inspect((ops, session) => this.gate.read(() => this.objects.generationOffThread(ops, session))));
  }

  /** This process's store gate of the registry's module (store-gate.ts). */
  private get gate(): StoreGate {
    return storeGateOf(this.options.token.options.modulePath);
  }

  private get catchUpBoundMs(): number {
    return this.options.token.options.operationTimeoutMs ?? 10_000;
  }

  /**
   * Changes the registry: `work` sees a fresh snapshot (read from the token inside this change) and writes through the
   * writer; the writes are validated as a whole (ids, aliases, identifiers unique) before any reaches the token.
   */
  async change<T>(work: (snapshot: RegistrySnapshot, writer: RegistryWriter) => T | Promise<T>, options: { entry?: boolean } = {}): Promise<T> {
    this.assertWritable(options.entry);
    if (this.fileStore) return this.checkedEntries(work);
    const postgres = this.options.postgres;
    if (postgres) return this.serialized(() => this.changeInPostgres(postgres, work));
    const lock = this.options.lock ?? localOnly;
    const hostLock = this.hostLock();
    // Every token call of a change runs off the event loop, each one job: its reads (generation, records, the look)
    // and its writes (pending objects, the commit, the marker). Reads and writes are sections of this process's store
    // gate (store-gate.ts): another RegistrySource of this module in this process never writes in the middle of a read.
    const gate = this.gate;
    const onToken = async (_p11: pkcs11js.PKCS11, session: pkcs11js.Handle, ops: ChangeCalls): Promise<T> => {
      // Nothing committed since this process last read or wrote (the marker has not moved): the cache holds the
      // token's records, and a search (a scan of every object, seconds at 10,000 records) would find nothing new.
      const { snapshot: fresh, records: freshRecords } = await gate.read(async () => {
        const generation = await this.objects.generationOffThread(ops, session);
        const known = !this.storeMissing && this.snapshot !== undefined && generation === this.snapshot.generation && this.tokenHandles === this.options.token.handleGeneration;
        return this.read(ops, session, generation, !known);
      });
      if (this.storeMissing) throw new LifecycleError('unavailable', 'the registry is not readable on the token now; try again');
      // Writes are collected, checked together against the records they join, and only then made: a change that
      // would break the registry (two certificates with one identifier) never reaches the token.
      const pending = new Map<string, { kind: RecordKind; id: string; record?: unknown }>();
      const put = (kind: RecordKind, id: string, record?: unknown): void => void pending.set(recordKey({ kind, id }), { kind, id, record });
      const writer: RegistryWriter = {
        putKey: (key) => put('key', key.keyId, key),
        removeKey: (keyId) => put('key', keyId),
        putCertificate: (certificate) => put('certificate', certificate.certificateId, certificate),
        putAccessKey: (accessKey) => put('accessKey', accessKey.accessKeyId, accessKey),
      };
      foreign = previous !== undefined && fresh.generation !== previous;
      let result: T;
      try {
        result = await work(fresh, writer);
      } catch (err) {
        // "Not found" from a read that lacks records the registry holds: SoftHSMv2 may have hidden the very record
        // (a replica answered 404 for an existing key under load). Once, the change is made again from a read after
        // a re-initialization, outside this session (nothing was written yet).
        if (!revealed && err instanceof LifecycleError && NOT_FOUND.has(err.kind) && this.lacksPublished(freshRecords, 'the read a change starts from')) {
          throw new ReadLacksRecords();
        }
        throw err;
      }
      if (pending.size === 0) return result;
      const merged = new Map(this.objects.current().records.map((r) => [recordKey(r), r]));
      for (const [label, write] of pending) {
        if (write.record === undefined) merged.delete(label);
        else merged.set(label, { kind: write.kind, id: write.id, revision: 0, record: write.record });
      }
      const changedKeys: ChangedKeys = { ids: new Set([...pending.values()].filter((w) => w.kind === 'key').map((w) => w.id)), before: fresh.registry };
      try {
        await this.buildYielding([...merged.values()], fresh.generation, true, changedKeys);
      } catch (err) {
        throw new LifecycleError('invalid', `the change was not made: ${(err as Error).message}`);
      }
      // Without a lock across processes another replica may be writing too: the writes are a compare-and-swap
      // (registry-cas.ts), and a lost race leaves nothing behind and answers 409.
      // The writes hold the gate; the look, a read section, runs between the two holds.
      await gate.hold();
      try {
        await compareAndSwap({
          write: () => this.objects.writePending(ops, session, [...pending.values()]),
          look: async (written) => {
            gate.release();
            try {
              return (await this.objects.lookAgain(ops, session, written, (read) => gate.read(read))) ?? (await this.invalidWithRivals(changedKeys));
            } finally {
              await gate.hold();
            }
          },
          discard: (written) => this.objects.discard(ops, session, written),
          commit: async (written) => {
            // Another writer's bump between this change's read and its own: its objects may be hidden (revealHidden).
            if ((await this.objects.commit(ops, session, written)) !== fresh.generation) foreign = rivalCommitted = true;
          },
        });
      } finally {
        gate.release();
      }
      // The look read every object; with no other writer's bump before this change's or after it, the cache plus this
      // change's commit is the token's state. Otherwise a full read (the marker first, then a search): a rival may
      // have committed since the look, and the cache still holds its object as pending.
      const seen = await gate.read(async () => {
        const after = await this.objects.generationOffThread(ops, session);
        return this.read(ops, session, after, rivalCommitted || after !== this.objects.bumpedTo);
      });
      const removed = new Set([...pending].filter(([, write]) => write.record === undefined).map(([label]) => label));
      // A read (or the look it reuses) that lacks records: served only once read again after a re-initialization.
      if (this.lacksPublished(seen.records, 'the read after a change', removed)) foreign = true;
      // Another writer's bump after this change's own: its objects may be hidden from the read just made.
      else if (this.publishRead(seen).generation !== this.objects.bumpedTo) foreign = true;
      return result;
    };
    const token = this.options.token;
    let previous: string | undefined;
    let foreign = false;
    let rivalCommitted = false;
    let revealed = false;
    return this.serialized(() =>
      lock(() => (hostLock ?? localOnly)(async () => {
        // Taking turns, the change starts after any other process's has ended: one whose commit this process has not
        // read yet may be hidden from it (SoftHSMv2), so the module is initialized again and the registry read first.
        if (hostLock && this.snapshot !== undefined) {
          if ((await this.markerGeneration()) !== this.snapshot.generation) await this.revealHidden('another process changed the registry before this change');
        }
        const attempt = (): Promise<T> => {
          previous = this.snapshot?.generation;
          foreign = rivalCommitted = false;
          return gate.use(() => token.admin(onToken));
        };
        const result = await attempt().catch(async (err: unknown) => {
          if (!(err instanceof ReadLacksRecords)) throw err;
          await this.revealHidden('a change did not find a record its read lacked');
          revealed = true;
          return attempt();
        });
        if (foreign) await this.revealHidden('another writer changed the registry around this change');
        this.options.announce?.();
        return result;
      })),
    );
  }

  /**
   * registry.store: postgres. No lock: the change reads fresh, and the transaction writes each record only if it is
   * still at the revision read (else nothing is written and the caller gets a conflict, 409). The change is
   * acknowledged after the commit; secrets reach the database only sealed by the token.
   */
  private async changeInPostgres<T>(postgres: PostgresStore, work: (snapshot: RegistrySnapshot, writer: RegistryWriter) => T | Promise<T>): Promise<T> {
    // A change checks that the secrets key is there even when it opens nothing: a registry that cannot seal is
    // refused as misconfigured (503) at once, not at the next change of an access key.
    const fresh = await this.readPostgres(postgres, true);
    const pending = new Map<string, { kind: RecordKind; id: string; record?: unknown }>();
    const put = (kind: RecordKind, id: string, record?: unknown): void => void pending.set(recordKey({ kind, id }), { kind, id, record });
    const result = await work(fresh.snapshot, {
      putKey: (key) => put('key', key.keyId, key),
      removeKey: (keyId) => put('key', keyId),
      putCertificate: (certificate) => put('certificate', certificate.certificateId, certificate),
      putAccessKey: (accessKey) => put('accessKey', accessKey.accessKeyId, accessKey),
    });
    if (pending.size === 0) return result;
    const merged = new Map(fresh.records.map((r) => [recordKey(r), r]));
    for (const [label, write] of pending) {
      if (write.record === undefined) merged.delete(label);
      else merged.set(label, { kind: write.kind, id: write.id, revision: 0, record: write.record });
    }
    try {
      const changedKeys: ChangedKeys = { ids: new Set([...pending.values()].filter((w) => w.kind === 'key').map((w) => w.id)), before: fresh.snapshot.registry };
      this.build([...merged.values()], fresh.snapshot.generation, true, changedKeys);
    } catch (err) {
      throw new LifecycleError('invalid', `the change was not made: ${(err as Error).message}`);
    }
    const writes: RecordWrite[] = [];
    const toSeal = [...pending.entries()].filter(([, w]) => w.kind === 'accessKey' && w.record !== undefined);
    const sealed = new Map<string, Buffer>();
    if (toSeal.length > 0) {
      await this.options.token.admin((p11, session) => {
        const sealer = postgres.sealer(p11, session);
        for (const [label, write] of toSeal) sealed.set(label, sealer.seal(write.id, (write.record as AccessKeyRecord).secrets));
      });
    }
    for (const [label, write] of pending) {
      const readRevision = fresh.revisions.get(label) ?? 0;
      if (write.record === undefined) writes.push({ kind: write.kind, id: write.id, readRevision });
      else if (write.kind === 'accessKey') {
        const { secrets: _secrets, ...withoutSecrets } = write.record as AccessKeyRecord;
        writes.push({ kind: write.kind, id: write.id, record: withoutSecrets, sealedSecrets: sealed.get(label)!, readRevision });
      } else writes.push({ kind: write.kind, id: write.id, record: write.record, readRevision });
    }
    try {
      await this.reach(() => postgres.records.apply(writes, postgres.actor));
    } catch (err) {
      if (err instanceof RecordConflictError) throw new LifecycleError('conflict', `the change was not made: ${err.message}`);
      throw new LifecycleError('unavailable', 'the registry database is unreachable; nothing was changed, try again', { cause: err });
    }
    // Acknowledged after the commit; a failed re-read leaves the next poll or notification to publish it.
    await this.readPostgres(postgres).then(
      (next) => this.publish(next.snapshot),
      (err: unknown) => this.options.log.warn('registry re-read after a change failed; the next refresh catches up', { error: (err as Error).message }),
    );
    return result;
  }

  /** Reads every record from PostgreSQL and opens the access keys' sealed secrets on the token. */
  private async readPostgres(postgres: PostgresStore, checkSealer = false): Promise<PostgresRead> {
    let read: Awaited<ReturnType<PostgresRecords['readAll']>>;
    try {
      read = await this.reach(() => postgres.records.readAll());
    } catch (err) {
      throw new LifecycleError('unavailable', 'the registry database is unreachable', { cause: err });
    }
    const sealedOnes = read.records.filter((r) => r.kind === 'accessKey' && r.sealedSecrets);
    const cache = this.openedSecrets;
    const toOpen = sealedOnes.filter((r) => !cache.get(r.id)?.sealed.equals(r.sealedSecrets!));
    const present = new Set(sealedOnes.map((r) => r.id));
    for (const id of cache.keys()) if (!present.has(id)) cache.delete(id);
    if (toOpen.length > 0 || checkSealer) {
      await this.options.token.admin((p11, session) => {
        const sealer = postgres.sealer(p11, session);
        for (const r of toOpen) {
          try {
            cache.set(r.id, { sealed: Buffer.from(r.sealedSecrets!), secrets: sealer.open(r.id, r.sealedSecrets!) });
          } catch (err) {
            cache.delete(r.id);
            // One record that does not open (altered, or sealed by another key) is skipped, not the whole registry.
            this.options.log.error('an access key whose secrets do not open was skipped', { accessKeyId: r.id, error: (err as Error).message });
          }
        }
      });
    }
    const opened = new Map([...cache].map(([id, entry]) => [id, entry.secrets]));
    const records: StoredRecord[] = read.records.map((r) => {
      const secrets = r.kind === 'accessKey' ? opened.get(r.id) : undefined;
      return { kind: r.kind, id: r.id, revision: r.revision, record: secrets ? { ...(r.record as object), secrets } : r.record };
    });
    const revisions = new Map(read.records.map((r) => [recordKey(r), r.revision]));
    return { snapshot: await this.buildYielding(records, read.generation), records, revisions };
  }

  /**
   * The look's second half: the registry with every object now on the token (this change's and any rival's in
   * flight) checked as before the write; it was valid then, so an error now comes from another writer's change.
   */
  private async invalidWithRivals(changedKeys: ChangedKeys): Promise<string | undefined> {
    try {
      await this.buildYielding(this.objects.current(true).records, '', true, changedKeys);
      return undefined;
    } catch (err) {
      return `another writer's change conflicts with it (${(err as Error).message})`;
    }
  }

  /** registry.store: file: the writes are checked against the file's entries, and not made (the caller prints them). */
  private async checkedEntries<T>(work: (snapshot: RegistrySnapshot, writer: RegistryWriter) => T | Promise<T>): Promise<T> {
    const records: StoredRecord[] = [];
    const put = (kind: RecordKind, id: string, record?: unknown): void => {
      if (record !== undefined) records.push({ kind, id, revision: 0, record });
    };
    const result = await work(this.current(), {
      putKey: (key) => put('key', key.keyId, key),
      removeKey: () => undefined,
      putCertificate: (certificate) => put('certificate', certificate.certificateId, certificate),
      putAccessKey: () => this.assertWritable(),
    });
    try {
      this.build(records, 'file', true);
    } catch (err) {
      throw new LifecycleError('invalid', `the entry would not fit the registry file: ${(err as Error).message}`);
    }
    return result;
  }

  /** One call to the database, noted in the store's state: a lost race (conflict) reached it too. */
  private async reach<T>(call: () => Promise<T>): Promise<T> {
    try {
      const result = await call();
      this.storeState.reached();
      return result;
    } catch (err) {
      if (err instanceof RecordConflictError) this.storeState.reached();
      else this.storeState.failed(err);
      throw err;
    }
  }

  private serialized<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private publish(snapshot: RegistrySnapshot): RegistrySnapshot {
    this.snapshot = snapshot;
    for (const listener of this.listeners) listener(snapshot);
    return snapshot;
  }

  /**
   * Two writers that bypassed the lock (the CLI and a replica without Redis) can bind one alias of an account to two
   * of its keys. One bad pair must not stop every replica from taking changes, so the oldest binding wins everywhere,
   * deterministically, and the conflict is logged until someone deletes one of them. File entries are declared by the
   * operator: they win. Aliases are per account (registry.ts): one name in two accounts is two aliases, no conflict.
   * Checking a change (`changed`: the keys it writes), a conflict that involves one of them is the change's error,
   * except where the written key is the one that already held the alias before the change: the binding that wins
   * stays changeable (disable it, describe it) while the losing record waits for someone to fix it. A conflict already
   * on the token between two other keys is resolved as on a read, so it never blocks unrelated changes.
   */
  private dropDuplicateAliases(keys: KeyRecord[], changed?: ChangedKeys): void {
    const owner = new Map<string, string>();
    const scoped = (account: string | undefined, alias: string): string => `${account ?? 'default'}\u0000${alias}`;
    for (const key of this.fileEntries.keys) for (const alias of key.aliases ?? []) owner.set(scoped(key.account, alias), key.keyId);
    const ordered = [...keys].sort((a, b) => (a.createdAt ?? '').localeCompare(b.createdAt ?? '') || a.keyId.localeCompare(b.keyId));
    for (const key of ordered) {
      key.aliases = key.aliases.filter((alias) => {
        const taken = owner.get(scoped(key.account, alias));
        if (taken !== undefined && taken !== key.keyId) {
          const keptAsBefore = changed?.before.key(taken)?.aliases.includes(alias) === true && !changed.ids.has(key.keyId);
          if (changed && !keptAsBefore && (changed.ids.has(key.keyId) || changed.ids.has(taken))) {
            throw new RegistryError(`alias ${alias} of account ${key.account ?? 'default'} would be bound to two keys (${taken}, ${key.keyId})`);
          }
          this.options.log.error('alias bound to two keys of one account on the token; the older binding is kept', { alias, account: key.account, kept: taken, dropped: key.keyId });
          return false;
        }
        owner.set(scoped(key.account, alias), key.keyId);
        return true;
      });
    }
  }

  /**
   * Reads the generation, and when `wanted(generation)` says so every record, and publishes the snapshot: every call
   * one job off the event loop (token.inspect), so that a replica reading another writer's change goes on serving
   * meanwhile. Returns whether it published. A re-initialization of the module meanwhile (token recovery) makes the
   * handles read meaningless: then nothing is published, and the next refresh reads again.
   */
  private async readOffThread(wanted: (generation: string) => boolean, held: (records: readonly StoredRecord[]) => boolean = () => false): Promise<boolean> {
    const token = this.options.token;
    return this.gate.use(() => token.inspect(async (ops, session, another) => {
      const handles = token.handleGeneration;
      if (this.tokenHandles !== handles) {
        this.objects.forget();
        this.tokenHandles = handles;
      }
      const read = await this.gate.read(async () => {
        const generation = await this.objects.generationOffThread(ops, session);
        return wanted(generation) ? { generation, ...(await this.objects.readAllOffThread(ops, session, another)) } : undefined;
      });
      if (!read) return false;
      const { generation, records, unreadable } = read;
      if (token.handleGeneration !== handles || this.storeGone(generation, records.length) || held(records)) return false;
      if (unreadable > 0) this.options.log.warn('registry objects on the token that are not hsm-gateway records were skipped', { unreadable });
      const snapshot = await this.buildYielding(records, generation);
      if (token.handleGeneration !== handles) return false;
      this.publishRead({ snapshot, records });
      return true;
    }));
  }

  /**
   * Whether a read found neither the generation marker nor any record on a token this process had read records
   * from. No change does that (a change never removes the marker, registry-objects.ts bump): the token's store is
   * unreachable or was replaced — SoftHSMv2 whose token directory went away answers every search with nothing for a
   * while before its checks fail — and publishing it would answer 404 for every key. The loaded registry stays, the
   * token is checked, and changes are refused until the records are back (a registry wiped on purpose is loaded by a
   * restart). A marker missing beside records is another matter (SoftHSMv2 can hide it a moment): read as before.
   */
  private storeGone(generation: string, records: number): boolean {
    const gone = generation === '' && records === 0 && this.tokenRecords > 0;
    if (gone && !this.storeMissing) {
      this.options.log.warn('no registry record or marker on the token any more; serving the loaded registry until they are back (a registry wiped on purpose is loaded by a restart)');
      void this.options.token.probe();
    }
    // While gone, every read searches (unchanged, known): what comes back has new handles, even at the marker's old value.
    this.storeMissing = gone;
    if (!gone) this.tokenRecords = records;
    return gone;
  }

  /**
   * A snapshot of the token's records. `search: false` after this process's own writes: the cache already holds
   * them, and a search costs a scan of every object on the token.
   */
  private async read(ops: ReadCalls, session: pkcs11js.Handle, generation?: string, search = true): Promise<TokenRead> {
    if (this.tokenHandles !== this.options.token.handleGeneration) {
      // The module was re-initialized (token recovery) or logged in again: cached handles belong to the old generation.
      this.objects.forget();
      this.tokenHandles = this.options.token.handleGeneration;
      search = true;
    }
    generation ??= await this.objects.generationOffThread(ops, session);
    const { records, unreadable } = search ? await this.objects.readAllOffThread(ops, session, noOtherSession) : this.objects.current();
    this.storeGone(generation, records.length);
    if (unreadable > 0) this.options.log.warn('registry objects on the token that are not hsm-gateway records were skipped', { unreadable });
    return { snapshot: await this.buildYielding(records, generation), records };
  }

  /** Publishes a snapshot read from the token, noting which records it came from (lacksPublished). */
  private publishRead({ snapshot, records }: TokenRead): RegistrySnapshot {
    this.publishedRecords = new Set(records.map(recordKey));
    return this.publish(snapshot);
  }

  /**
   * Whether a read lacks records the published snapshot holds (other than a change's own `removed` ones), on a module
   * whose searches can hide an object another process wrote at that moment (shared-view.ts disturbedByOtherWriters).
   * Such a read is not served (served, a replica answered 404 for a key another replica had just rewritten, until the
   * re-initialization after it): revealHidden reads again after a re-initialization, and what that read lacks was
   * removed indeed. On other modules a removal is served at once.
   */
  private lacksPublished(records: readonly StoredRecord[], what: string, removed: ReadonlySet<string> = new Set()): boolean {
    if (!disturbedByOtherWriters(this.options.token.library)) return false;
    const present = new Set(records.map(recordKey));
    const lacking = [...this.publishedRecords].filter((label) => !present.has(label) && !removed.has(label)).length;
    if (lacking > 0) this.options.log.info(`${what} lacks records the registry holds; read again after a re-initialization before it is served`, { lacking });
    return lacking > 0;
  }

  /**
   * A snapshot of these records plus the file's entries. `strict` (checking a change before it is written): an
   * invalid record or a doubly bound alias is an error, not something to log and skip.
   */
  private build(records: readonly StoredRecord[], generation: string, strict: boolean, changedKeys?: ChangedKeys): RegistrySnapshot {
    return this.assemble(this.parseRecords(records, strict), generation, strict, changedKeys);
  }

  /**
   * build() for a snapshot read off the event loop (a refresh, a change's reads and its check): the records are
   * validated PARSE_CHUNK at a time, the event loop served in between (10,000 records held it for 60–150 ms in one piece).
   */
  private async buildYielding(records: readonly StoredRecord[], generation: string, strict = false, changedKeys?: ChangedKeys): Promise<RegistrySnapshot> {
    const parsed: ParsedRecords = { keys: [], certificates: [], accessKeys: [] };
    for (let from = 0; from < records.length; from += PARSE_CHUNK) {
      this.parseRecords(records.slice(from, from + PARSE_CHUNK), strict, parsed);
      await yieldToLoop();
    }
    return this.assemble(parsed, generation, strict, changedKeys);
  }

  /** Validates records against their schemas; `strict`: an invalid one is an error, else it is logged and skipped. */
  private parseRecords(records: readonly StoredRecord[], strict: boolean, into: ParsedRecords = { keys: [], certificates: [], accessKeys: [] }): ParsedRecords {
    for (const stored of records) {
      const parsed = parsers[stored.kind].safeParse(stored.record);
      if (!parsed.success) {
        if (strict) throw new RegistryError(`invalid ${stored.kind} record ${stored.id}: ${z.prettifyError(parsed.error)}`);
        this.options.log.error('an invalid registry record on the token was skipped', { kind: stored.kind, id: stored.id });
        continue;
      }
      if (stored.kind === 'key') into.keys.push(parsed.data as KeyRecord);
      else if (stored.kind === 'certificate') into.certificates.push(parsed.data as CertificateRecord);
      else into.accessKeys.push(parsed.data as AccessKeyRecord);
    }
    return into;
  }

  private assemble({ keys, certificates, accessKeys }: ParsedRecords, generation: string, strict: boolean, changedKeys?: ChangedKeys): RegistrySnapshot {
    if (!strict) this.dropDuplicateAliases(keys);
    else if (changedKeys) this.dropDuplicateAliases(keys, changedKeys);
    const onToken = { keys: new Set(keys.map((k) => k.keyId)), certificates: new Set(certificates.map((c) => c.certificateId)) };
    for (const key of this.fileEntries.keys) {
      if (onToken.keys.has(key.keyId)) throw new RegistryError(`key ${key.keyId} is both in the registry file and on the token`);
    }
    // The token's or database's records were parsed by parseRecords, the file's entries by readRegistryFile.
    const registry = KeyRegistry.ofValidated({
      keys: [...keys, ...(this.fileEntries.keys as KeyRecord[])],
      certificates: [...certificates, ...((this.fileEntries.certificates ?? []) as CertificateRecord[])],
    });
    return { registry, accessKeys, onToken, generation, store: this.options.postgres ? 'postgres' : 'token' };
  }
}

/**
 * Start-up check of a registry kept on the token: the module must show this process what other processes write
 * (the CLI, replicas, cluster workers), or the registry silently diverges and, among other things, a key disabled by
 * the CLI keeps signing here. Measured by shared-view.ts; a module that does not share is refused with the way out.
 */
export async function checkTokenRegistryView(token: Token, log: RegistrySourceOptions['log']): Promise<void> {
  const { modulePath, initArgs, tokenLabel, pin } = token.options;
  const view = await seesOtherProcessesObjects({ modulePath, tokenLabel, pin, ...(initArgs !== undefined ? { initArgs } : {}) }, (work) => token.admin(work));
  if (view.shared === true) return;
  if (view.shared === undefined) {
    // The other process could not write a record: if this one cannot either, the token refuses the registry's objects.
    const stored = await probeTokenObject(token, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_LABEL, value: `hsm-gateway/registry-check-${randomBytes(6).toString('hex')}` },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from('{}') },
    ]);
    if (stored !== 'ok') {
      throw new RegistryError(
        `token "${token.options.name}" (module ${modulePath}) refuses private data objects (C_CreateObject of a private CKO_DATA: ${stored}; NSS softokn does), ` +
          `so the key registry cannot be kept on it. ${OUTSIDE_THE_TOKEN}`,
      );
    }
    log.warn('could not tell whether the module shows objects other processes write; the registry stays on the token', { token: token.options.name, reason: view.reason });
    return;
  }
  throw new RegistryError(
    `token "${token.options.name}" (module ${modulePath}) does not show token objects that other processes write after it was initialized ` +
      '(measured at start-up: tpm2-pkcs11 reads its store once at C_Initialize; nShield does so under CKNFAST_ASSUME_SINGLE_PROCESS=1), ' +
      `so a key registry kept on it would silently diverge from what the admin CLI and other gateway processes change. ${OUTSIDE_THE_TOKEN}`,
  );
}

const OUTSIDE_THE_TOKEN =
  'Keep the registry outside the token: "registry.store: file" with "registry.file: <path>" (read-only entries, reloaded on SIGHUP; ' +
  'the admin CLI prints the entries of the keys it makes), or "registry.store: postgres" (the registry in PostgreSQL; run "hsm-gateway registry init" once)';
