import pg from 'pg';
import { RegistryNotEmptyError } from './errors.js';
import { MIGRATIONS } from './postgres-migrations.js';
import type { RecordKind, StoredRecord } from './registry-objects.js';

/**
 * The registry's records in PostgreSQL: the same records the token store keeps as CKO_DATA objects, for modules that
 * cannot hold them (kmsp11, NSS, YubiHSM, CloudHSM) or do not share them live across processes (tpm2-pkcs11, nShield),
 * and for sites that run many replicas. Changes are transactions with optimistic concurrency: every write names the
 * revision its writer read, and a record that moved since is a conflict, never a silent lost update. Every change is
 * kept in a history table and announced with NOTIFY, so replicas re-read at once.
 */
const NOTIFY_CHANNEL = 'hsm_gateway_registry';
/** pg_advisory_xact_lock key for migrations ("hsmgw" in ASCII). */
const MIGRATION_LOCK = 0x68736d6777;

interface PostgresRecord extends StoredRecord {
  /** Access keys: their secrets, sealed by the HSM (the JSON record holds none). */
  sealedSecrets?: Buffer;
}

/** A write inside one change: `record` undefined removes it. `readRevision`: what the writer saw (0: absent). */
export interface RecordWrite {
  kind: RecordKind;
  id: string;
  record?: unknown;
  sealedSecrets?: Buffer;
  readRevision: number;
}

/** Another writer changed the record (or took the alias) since this one read it: nothing of the change was made. */
export class RecordConflictError extends Error {
  constructor(
    readonly kind: RecordKind | 'alias',
    readonly id: string,
  ) {
    super(
      kind === 'alias'
        ? `alias ${id} was bound to another key by another writer meanwhile; nothing was changed`
        : `${kind} ${id} was changed by another writer meanwhile; nothing was changed, read it again and retry`,
    );
    this.name = 'RecordConflictError';
  }
}

/** One row of the history: who changed which record when, from which revision to which, and both versions as stored. */
export interface HistoryEntry {
  seq: number;
  at: Date;
  actor: string;
  kind: RecordKind;
  id: string;
  oldRevision: number | null;
  newRevision: number | null;
  oldRecord: unknown;
  newRecord: unknown;
}

interface HistoryRow {
  seq: string;
  at: Date;
  actor: string;
  kind: RecordKind;
  id: string;
  old_revision: string | null;
  new_revision: string | null;
  old_record: unknown;
  new_record: unknown;
}

/** Records per statement when a registry is imported. */
const IMPORT_BATCH = 1000;

const UNIQUE_VIOLATION = '23505';
const isUniqueViolation = (err: unknown): boolean => (err as { code?: string }).code === UNIQUE_VIOLATION;

interface PostgresRecordsOptions {
  url: string;
  /** Overrides the URL's password (read from a file or the environment by the caller). */
  password?: string;
  /** PEM of the CA that signed the server's certificate: TLS with verification. */
  tlsCa?: string;
  /** Per statement, ms: a stuck database is an error, not a hung request. */
  statementTimeoutMs?: number;
}

interface Row {
  kind: RecordKind;
  id: string;
  revision: string;
  record: unknown;
  sealed_secrets: Buffer | null;
}

export class PostgresRecords {
  private readonly pool: pg.Pool;

  constructor(private readonly options: PostgresRecordsOptions) {
    this.pool = new pg.Pool(this.clientConfig());
    // An idle client's connection lost (server restart): the pool drops it; the next query reconnects.
    this.pool.on('error', () => undefined);
  }

  /** Applies the migrations this database lacks; returns the versions applied now. */
  async migrate(): Promise<number[]> {
    return this.transaction(async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await client.query(
        'CREATE TABLE IF NOT EXISTS hsm_gateway_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())',
      );
      const done = new Set((await client.query<{ version: number }>('SELECT version FROM hsm_gateway_migrations')).rows.map((r) => r.version));
      const applied: number[] = [];
      for (const m of MIGRATIONS) {
        if (done.has(m.version)) continue;
        await client.query(m.sql);
        await client.query('INSERT INTO hsm_gateway_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
        applied.push(m.version);
      }
      return applied;
    });
  }

  /** Every record and the generation they belong to, read in one snapshot. */
  async readAll(): Promise<{ generation: string; records: PostgresRecord[] }> {
    return this.transaction(async (client) => {
      const generation = await this.generationIn(client);
      const { rows } = await client.query<Row>('SELECT kind, id, revision, record, sealed_secrets FROM hsm_gateway_records ORDER BY kind, id');
      return { generation, records: rows.map(toRecord) };
    }, 'REPEATABLE READ READ ONLY');
  }

  /** The generation alone: what a poll compares with the snapshot it serves. */
  async generation(): Promise<string> {
    return this.generationIn(this.pool);
  }

  /**
   * Makes the writes as one transaction: each record must still be at the revision its writer read, else nothing is
   * written and RecordConflictError names the record. Returns the new generation; replicas are notified on commit.
   */
  async apply(writes: readonly RecordWrite[], actor: string): Promise<string> {
    return this.transaction(async (client) => {
      for (const write of writes) await this.applyOne(client, write, actor);
      const { rows } = await client.query<{ generation: string }>('UPDATE hsm_gateway_generation SET generation = generation + 1 RETURNING generation');
      const generation = rows[0]!.generation;
      await client.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, generation]);
      return generation;
    });
  }

  /**
   * Fills an empty registry in one transaction (registry migrate): every record at revision 1, its history row, its
   * aliases, one generation step and one notification. A registry holding any record is refused, nothing written;
   * the table lock keeps a writer from adding one between that check and the copy.
   */
  async importAll(records: ReadonlyArray<Omit<RecordWrite, 'readRevision'>>, actor: string): Promise<string> {
    return this.transaction(async (client) => {
      await client.query('LOCK TABLE hsm_gateway_records IN SHARE ROW EXCLUSIVE MODE');
      const { rows: present } = await client.query<{ kind: string; n: number }>('SELECT kind, count(*)::int AS n FROM hsm_gateway_records GROUP BY kind ORDER BY kind');
      if (present.length > 0) throw new RegistryNotEmptyError('PostgreSQL', Object.fromEntries(present.map((r) => [r.kind, r.n])));
      // Batches as one JSON parameter each: thousands of records in a few statements, not a round trip per record.
      for (let i = 0; i < records.length; i += IMPORT_BATCH) {
        const batch = records.slice(i, i + IMPORT_BATCH).map((r) => ({ kind: r.kind, id: r.id, record: r.record, sealed: r.sealedSecrets?.toString('base64') ?? null }));
        const rows = `jsonb_to_recordset($1::jsonb) AS t(kind text, id text, record jsonb, sealed text)`;
        await client.query(
          `INSERT INTO hsm_gateway_records (kind, id, revision, record, sealed_secrets, updated_by) SELECT kind, id, 1, record, decode(sealed, 'base64'), $2 FROM ${rows}`,
          [JSON.stringify(batch), actor],
        );
        await client.query(
          `INSERT INTO hsm_gateway_record_history (actor, kind, id, old_revision, new_revision, old_record, new_record) SELECT $2, kind, id, NULL, 1, NULL, record FROM ${rows}`,
          [JSON.stringify(batch), actor],
        );
      }
      await client
        .query(
          `INSERT INTO hsm_gateway_aliases (account, alias, key_id)
           SELECT coalesce(r.record->>'account', 'default'), a.alias, r.id
           FROM hsm_gateway_records r, jsonb_array_elements_text(coalesce(r.record->'aliases', '[]'::jsonb)) AS a(alias)
           WHERE r.kind = 'key'`,
        )
        .catch((err: unknown) => {
          throw isUniqueViolation(err) ? new RecordConflictError('alias', (err as { detail?: string }).detail ?? 'of one account') : err;
        });
      const { rows } = await client.query<{ generation: string }>('UPDATE hsm_gateway_generation SET generation = generation + 1 RETURNING generation');
      const generation = rows[0]!.generation;
      await client.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, generation]);
      return generation;
    });
  }

  /**
   * The latest changes, newest first (`registry history`): of one kind, one record, or (`alias`) the keys an alias
   * was bound to or taken from. Records as stored: an access key's secrets are never among them.
   */
  async changes(filter: { kind?: RecordKind; id?: string; alias?: string; limit: number }): Promise<HistoryEntry[]> {
    const { rows } = await this.pool.query<HistoryRow>(
      `SELECT seq, at, actor, kind, id, old_revision, new_revision, old_record, new_record FROM hsm_gateway_record_history
       WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR id = $2)
         AND ($3::text IS NULL OR (kind = 'key' AND (coalesce(old_record->'aliases', '[]'::jsonb) ? $3 OR coalesce(new_record->'aliases', '[]'::jsonb) ? $3)))
       ORDER BY seq DESC LIMIT $4`,
      [filter.kind ?? null, filter.id ?? null, filter.alias ?? null, filter.limit],
    );
    return rows.map((r) => ({
      seq: Number(r.seq),
      at: r.at,
      actor: r.actor,
      kind: r.kind,
      id: r.id,
      oldRevision: numberOrNull(r.old_revision),
      newRevision: numberOrNull(r.new_revision),
      oldRecord: r.old_record,
      newRecord: r.new_record,
    }));
  }

  /** The changes made to one record, oldest first (tests, `registry history`). */
  async history(kind: RecordKind, id: string): Promise<Array<{ actor: string; oldRevision: number | null; newRevision: number | null; at: Date }>> {
    const { rows } = await this.pool.query<{ actor: string; old_revision: string | null; new_revision: string | null; at: Date }>(
      'SELECT actor, old_revision, new_revision, at FROM hsm_gateway_record_history WHERE kind = $1 AND id = $2 ORDER BY seq',
      [kind, id],
    );
    return rows.map((r) => ({ actor: r.actor, oldRevision: numberOrNull(r.old_revision), newRevision: numberOrNull(r.new_revision), at: r.at }));
  }

  /**
   * Calls `changed` with the new generation whenever a change commits (LISTEN/NOTIFY), and `resync` after every
   * (re)connection of the listening session: a notification sent while it was away is lost, so the caller re-reads.
   * Reconnects by itself with backoff (0.1 s doubling to 5 s) until closed.
   */
  listen(handlers: { changed: (generation: string) => void; resync: () => void; connection?: (up: boolean) => void }): { close(): Promise<void> } {
    let closed = false;
    let client: pg.Client | undefined;
    let delay = 100;
    let timer: NodeJS.Timeout | undefined;
    const connect = async (): Promise<void> => {
      timer = undefined;
      const next = new pg.Client(this.clientConfig());
      const lost = (): void => {
        if (client !== next) return;
        client = undefined;
        handlers.connection?.(false);
        next.end().catch(() => undefined);
        if (!closed) timer = setTimeout(() => void connect(), delay);
        delay = Math.min(delay * 2, 5000);
      };
      next.on('error', lost);
      next.on('end', lost);
      next.on('notification', (n) => {
        if (n.channel === NOTIFY_CHANNEL && n.payload) handlers.changed(n.payload);
      });
      client = next;
      try {
        await next.connect();
        await next.query(`LISTEN ${NOTIFY_CHANNEL}`);
      } catch {
        lost();
        return;
      }
      if (closed) return void next.end().catch(() => undefined);
      delay = 100;
      handlers.connection?.(true);
      handlers.resync();
    };
    void connect();
    return {
      async close() {
        closed = true;
        if (timer) clearTimeout(timer);
        const c = client;
        client = undefined;
        await c?.end().catch(() => undefined);
      },
    };
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private async applyOne(client: pg.PoolClient, write: RecordWrite, actor: string): Promise<void> {
    const { rows } = await client.query<{ revision: string; record: unknown }>('SELECT revision, record FROM hsm_gateway_records WHERE kind = $1 AND id = $2 FOR UPDATE', [
      write.kind,
      write.id,
    ]);
    const current = rows[0];
    const currentRevision = current ? Number(current.revision) : 0;
    if (currentRevision !== write.readRevision) throw new RecordConflictError(write.kind, write.id);
    if (write.record === undefined) {
      if (!current) return;
      await client.query('DELETE FROM hsm_gateway_records WHERE kind = $1 AND id = $2', [write.kind, write.id]);
    } else if (!current) {
      // A new record: two writers creating it at once both find no row to lock; the primary key lets one insert win.
      await client
        .query('INSERT INTO hsm_gateway_records (kind, id, revision, record, sealed_secrets, updated_by) VALUES ($1, $2, 1, $3, $4, $5)', [
          write.kind,
          write.id,
          JSON.stringify(write.record),
          write.sealedSecrets ?? null,
          actor,
        ])
        .catch((err: unknown) => {
          throw isUniqueViolation(err) ? new RecordConflictError(write.kind, write.id) : err;
        });
    } else {
      await client.query(
        'UPDATE hsm_gateway_records SET revision = $3, record = $4, sealed_secrets = $5, updated_at = now(), updated_by = $6 WHERE kind = $1 AND id = $2',
        [write.kind, write.id, currentRevision + 1, JSON.stringify(write.record), write.sealedSecrets ?? null, actor],
      );
    }
    if (write.kind === 'key') await this.bindAliases(client, write.id, write.record as { account?: string; aliases?: string[] } | undefined);
    await client.query(
      'INSERT INTO hsm_gateway_record_history (actor, kind, id, old_revision, new_revision, old_record, new_record) VALUES ($1, $2, $3, $4, $5, $6, $7)',
      [
        actor,
        write.kind,
        write.id,
        current ? currentRevision : null,
        write.record === undefined ? null : currentRevision + 1,
        current ? JSON.stringify(current.record) : null,
        write.record === undefined ? null : JSON.stringify(write.record),
      ],
    );
  }

  /** The key's aliases as rows: its old ones dropped, its new ones claimed (a taken one is a conflict). */
  private async bindAliases(client: pg.PoolClient, keyId: string, key: { account?: string; aliases?: string[] } | undefined): Promise<void> {
    await client.query('DELETE FROM hsm_gateway_aliases WHERE key_id = $1', [keyId]);
    for (const alias of key?.aliases ?? []) {
      // A failed insert aborts the transaction: the whole change is rolled back, as it must be.
      await client.query('INSERT INTO hsm_gateway_aliases (account, alias, key_id) VALUES ($1, $2, $3)', [key?.account ?? 'default', alias, keyId]).catch((err: unknown) => {
        throw isUniqueViolation(err) ? new RecordConflictError('alias', alias) : err;
      });
    }
  }

  private async generationIn(queryable: pg.Pool | pg.PoolClient): Promise<string> {
    const { rows } = await queryable.query<{ generation: string }>('SELECT generation FROM hsm_gateway_generation');
    return rows[0]!.generation;
  }

  private async transaction<T>(work: (client: pg.PoolClient) => Promise<T>, mode = 'READ COMMITTED'): Promise<T> {
    const client = await this.pool.connect();
    // pg-pool listens for errors only on idle clients: a connection lost while this one is checked out (the server
    // killed between two statements) would be an uncaught 'error' event, i.e. a crashed gateway.
    let lost: Error | undefined;
    const onError = (err: Error): void => void (lost = err);
    client.on('error', onError);
    try {
      await client.query(`BEGIN ISOLATION LEVEL ${mode}`);
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch((rollbackErr: Error) => void (lost ??= rollbackErr));
      throw err;
    } finally {
      client.off('error', onError);
      // A broken connection goes back with its error, so the pool destroys it instead of handing it out again.
      client.release(lost);
    }
  }

  private clientConfig(): pg.ClientConfig {
    const { url, password, tlsCa, statementTimeoutMs } = this.options;
    return {
      // pg lets the URL's (absent) password override a `password` given beside it: the password goes into the URL.
      connectionString: password === undefined ? url : withPassword(url, password),
      ...(tlsCa ? { ssl: { ca: tlsCa, rejectUnauthorized: true } } : {}),
      statement_timeout: statementTimeoutMs ?? 5000,
      connectionTimeoutMillis: 5000,
      application_name: 'hsm-gateway',
    };
  }
}

function withPassword(url: string, password: string): string {
  const parsed = new URL(url);
  parsed.password = encodeURIComponent(password);
  return parsed.toString();
}

const numberOrNull = (v: string | null): number | null => (v === null ? null : Number(v));

function toRecord(row: Row): PostgresRecord {
  return {
    kind: row.kind,
    id: row.id,
    revision: Number(row.revision),
    record: row.record,
    ...(row.sealed_secrets ? { sealedSecrets: row.sealed_secrets } : {}),
  };
}
