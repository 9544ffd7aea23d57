/**
 * The registry's schema in PostgreSQL, as numbered migrations. Each is applied once, in its own transaction, under an
 * advisory lock (two replicas starting at once do not both apply it), and recorded in `hsm_gateway_migrations`.
 * Plain SQL kept in the code (no files to copy next to dist/); a migration is never edited once released: a change
 * is the next number.
 */
interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'registry records, history and generation',
    sql: `
      -- One row per registry record (a key with its versions and aliases, a certificate, an access key). The JSON is
      -- what the token store keeps in CKA_VALUE, except access-key secrets: those are only in sealed_secrets,
      -- AES-256-GCM ciphertext made by the secrets key on the HSM.
      CREATE TABLE hsm_gateway_records (
        kind text NOT NULL CHECK (kind IN ('key', 'certificate', 'accessKey')),
        id text NOT NULL,
        revision bigint NOT NULL CHECK (revision > 0),
        record jsonb NOT NULL,
        sealed_secrets bytea,
        updated_at timestamptz NOT NULL DEFAULT now(),
        updated_by text NOT NULL,
        PRIMARY KEY (kind, id)
      );
      -- Who changed what, when, old → new (records as stored: never a secret in clear).
      CREATE TABLE hsm_gateway_record_history (
        seq bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        actor text NOT NULL,
        kind text NOT NULL,
        id text NOT NULL,
        old_revision bigint,
        new_revision bigint,
        old_record jsonb,
        new_record jsonb
      );
      -- The aliases of the key records, one row each: the primary key makes two keys claiming one alias of an
      -- account at once a conflict for the second writer (the token store can only detect that after the fact).
      CREATE TABLE hsm_gateway_aliases (
        account text NOT NULL,
        alias text NOT NULL,
        key_id text NOT NULL,
        PRIMARY KEY (account, alias)
      );
      CREATE INDEX hsm_gateway_aliases_by_key ON hsm_gateway_aliases (key_id);
      CREATE INDEX hsm_gateway_record_history_by_record ON hsm_gateway_record_history (kind, id, seq);
      -- One counter moved by every change: a replica compares it with the snapshot it serves.
      CREATE TABLE hsm_gateway_generation (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        generation bigint NOT NULL
      );
      INSERT INTO hsm_gateway_generation (generation) VALUES (0);
    `,
  },
];
