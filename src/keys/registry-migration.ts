import type { Token } from '../hsm/token.js';
import { LifecycleError, RegistryError, RegistryNotEmptyError } from './errors.js';
import { RecordConflictError, type RecordWrite } from './postgres-records.js';
import { RegistryObjects, type RecordKind, type StoredRecord } from './registry-objects.js';
import type { PostgresStore } from './registry-source.js';
import { readRegistryFile } from './registry.js';

/**
 * `registry migrate`: moves every record of the registry from one store to another (the token, PostgreSQL, or a
 * registry file as a source), without loss. Records are copied verbatim — a key with its versions, aliases, state and
 * deletion date, a certificate with its ids and chain labels, an access key with its policies and live secrets — the
 * secrets opened from (and sealed again for) PostgreSQL on the token. The target must be empty. After the copy the
 * target is read back and compared, record by record, with what was read from the source, and the source is read
 * again to tell a writer that changed it meanwhile.
 *
 * What is not a record stays where it is: the key material and the certificates' DER (token objects, found by
 * CKA_LABEL + CKA_ID whichever store holds the records), the config's access keys and registry.file entries, and
 * PostgreSQL's history (the token keeps none; a migration into PostgreSQL starts it with one row per record).
 */
type StoreName = 'token' | 'postgres' | 'file';

/** A record as it moves: access-key secrets in clear, in memory only, for the length of the copy. */
interface MovedRecord {
  kind: RecordKind;
  id: string;
  record: unknown;
}

export interface RecordStore {
  readonly name: StoreName;
  /** Every record; `skipped`: objects that are not readable records (left behind, and said so). */
  readAll(): Promise<{ records: MovedRecord[]; skipped: number }>;
  /** Fills the empty store with these records; RegistryNotEmptyError when it holds any. */
  writeAll(records: readonly MovedRecord[]): Promise<void>;
}

const strip = ({ kind, id, record }: StoredRecord): MovedRecord => ({ kind, id, record });

/** The records on the default token (private CKO_DATA objects). */
export function tokenRecordStore(token: Token): RecordStore {
  return {
    name: 'token',
    readAll: () =>
      token.admin((p11, session) => {
        const { records, unreadable } = new RegistryObjects().readAll(p11, session);
        return { records: records.map(strip), skipped: unreadable };
      }),
    writeAll: (records) =>
      token.admin((p11, session) => {
        const objects = new RegistryObjects();
        const present = objects.readAll(p11, session).records;
        if (present.length > 0) throw new RegistryNotEmptyError('token', countByKind(present));
        objects.putAll(p11, session, records);
      }),
  };
}

/** The records in PostgreSQL; access-key secrets sealed by the token's secrets key (or the key file). */
export function postgresRecordStore(postgres: PostgresStore, token: Token): RecordStore {
  return {
    name: 'postgres',
    async readAll() {
      const { records } = await database(postgres.records.readAll());
      const sealed = records.filter((r) => r.kind === 'accessKey' && r.sealedSecrets);
      const opened = new Map<string, string[]>();
      if (sealed.length > 0) {
        // A record that does not open is refused, not skipped: the copy would lose an access key.
        await token.admin((p11, session) => {
          const sealer = postgres.sealer(p11, session);
          for (const r of sealed) opened.set(r.id, sealer.open(r.id, r.sealedSecrets!));
        });
      }
      return {
        records: records.map((r) => ({ kind: r.kind, id: r.id, record: opened.has(r.id) && r.kind === 'accessKey' ? { ...(r.record as object), secrets: opened.get(r.id) } : r.record })),
        skipped: 0,
      };
    },
    async writeAll(records) {
      const accessKeys = records.filter((r) => r.kind === 'accessKey');
      const sealed = new Map<string, Buffer>();
      if (accessKeys.length > 0) {
        await token.admin((p11, session) => {
          const sealer = postgres.sealer(p11, session);
          for (const r of accessKeys) sealed.set(r.id, sealer.seal(r.id, secretsOf(r)));
        });
      }
      const rows: Array<Omit<RecordWrite, 'readRevision'>> = records.map((r) => {
        if (r.kind !== 'accessKey') return r;
        // The database gets the record without its secrets, and the secrets only sealed.
        const { secrets: _secrets, ...withoutSecrets } = r.record as { secrets?: unknown };
        return { kind: r.kind, id: r.id, record: withoutSecrets, sealedSecrets: sealed.get(r.id)! };
      });
      try {
        await database(postgres.records.importAll(rows, postgres.actor));
      } catch (err) {
        if (err instanceof RecordConflictError) throw new RegistryError(`the source binds one alias to two keys of an account (${err.id}); nothing was written`);
        throw err;
      }
    },
  };
}

/** A registry file (registry.file) as a source: its keys and certificates (a file holds no access keys). */
export function fileRecordStore(path: string): RecordStore {
  return {
    name: 'file',
    async readAll() {
      const file = readRegistryFile(path);
      return {
        records: [
          ...file.keys.map((record) => ({ kind: 'key' as const, id: record.keyId, record })),
          ...(file.certificates ?? []).map((record) => ({ kind: 'certificate' as const, id: record.certificateId, record })),
        ],
        skipped: 0,
      };
    },
    writeAll: () => Promise.reject(new LifecycleError('unsupported', 'a registry file is not a target of registry migrate: the CLI prints file entries with registry.store: file')),
  };
}

/** What was moved, per kind of thing the registry holds. */
export interface MigrationCounts {
  keys: number;
  keyVersions: number;
  aliases: number;
  enabledKeys: number;
  disabledKeys: number;
  pendingDeletionKeys: number;
  certificates: number;
  certificateChainLinks: number;
  accessKeys: number;
  accessKeySecrets: number;
  policies: number;
  accounts: number;
}

export interface MigrationResult {
  from: StoreName;
  to: StoreName;
  counts: MigrationCounts;
  /** Objects of the source that were not readable records (not moved). */
  skipped: number;
}

export async function migrateRegistry(from: RecordStore, to: RecordStore): Promise<MigrationResult> {
  if (from.name === to.name) throw new LifecycleError('invalid', `the source and the target are the same store (${from.name})`);
  const source = await from.readAll();
  await to.writeAll(source.records);
  const copied = await to.readAll();
  const lost = differences(source.records, copied.records);
  if (lost.length > 0) {
    throw new RegistryError(`the ${to.name} registry read back differs from the ${from.name} registry (${lost.slice(0, 5).join('; ')}${lost.length > 5 ? `; ${lost.length - 5} more` : ''}): check it before use`);
  }
  const again = await from.readAll();
  const moved = differences(source.records, again.records);
  if (moved.length > 0) {
    throw new LifecycleError(
      'conflict',
      `the ${from.name} registry changed while it was copied (${moved.slice(0, 5).join('; ')}): the ${to.name} registry holds the earlier state; stop every writer, empty the ${to.name} registry and run again`,
    );
  }
  return { from: from.name, to: to.name, counts: countsOf(source.records), skipped: source.skipped };
}

/** `kind:id — what differs` for every record not identical in both lists (JSON compared with sorted keys). */
function differences(expected: readonly MovedRecord[], actual: readonly MovedRecord[]): string[] {
  const index = (records: readonly MovedRecord[]): Map<string, string> => new Map(records.map((r) => [`${r.kind}:${r.id}`, canonical(r.record)]));
  const want = index(expected);
  const got = index(actual);
  const out: string[] = [];
  for (const [label, value] of want) {
    if (!got.has(label)) out.push(`${label} missing`);
    else if (got.get(label) !== value) out.push(`${label} differs`);
  }
  for (const label of got.keys()) if (!want.has(label)) out.push(`${label} unexpected`);
  return out;
}

/** JSON with object keys sorted: PostgreSQL's jsonb keeps no key order, so records compare by content. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

function secretsOf(r: MovedRecord): string[] {
  const secrets = (r.record as { secrets?: unknown }).secrets;
  if (!Array.isArray(secrets) || secrets.length === 0) throw new RegistryError(`access key ${r.id} has no secret to move`);
  return secrets as string[];
}

function countByKind(records: readonly { kind: RecordKind }[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of records) counts[r.kind] = (counts[r.kind] ?? 0) + 1;
  return counts;
}

interface Loose {
  account?: string;
  state?: string;
  versions?: unknown[];
  aliases?: unknown[];
  chainLabels?: unknown[];
  secrets?: unknown[];
  policies?: unknown[];
}

function countsOf(records: readonly MovedRecord[]): MigrationCounts {
  const counts: MigrationCounts = {
    keys: 0, keyVersions: 0, aliases: 0, enabledKeys: 0, disabledKeys: 0, pendingDeletionKeys: 0,
    certificates: 0, certificateChainLinks: 0, accessKeys: 0, accessKeySecrets: 0, policies: 0, accounts: 0,
  };
  const accounts = new Set<string>();
  for (const { kind, record } of records) {
    const r = record as Loose;
    accounts.add(r.account ?? 'default');
    if (kind === 'key') {
      counts.keys++;
      counts.keyVersions += r.versions?.length ?? 0;
      counts.aliases += r.aliases?.length ?? 0;
      if (r.state === 'Disabled') counts.disabledKeys++;
      else if (r.state === 'PendingDeletion') counts.pendingDeletionKeys++;
      else counts.enabledKeys++;
    } else if (kind === 'certificate') {
      counts.certificates++;
      counts.certificateChainLinks += r.chainLabels?.length ?? 0;
    } else {
      counts.accessKeys++;
      counts.accessKeySecrets += r.secrets?.length ?? 0;
      counts.policies += r.policies?.length ?? 0;
    }
  }
  counts.accounts = accounts.size;
  return counts;
}

/** PostgreSQL's failures as the CLI's: no schema yet is a set-up step missed (exit 3), unreachable is 'unavailable'. */
async function database<T>(work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if (err instanceof RegistryNotEmptyError || err instanceof RecordConflictError) throw err;
    if ((err as { code?: string }).code === '42P01') throw new RegistryError('the registry database has no schema yet: run "hsm-gateway registry init" first');
    throw new LifecycleError('unavailable', `the registry database is unreachable (${(err as Error).message})`);
  }
}
