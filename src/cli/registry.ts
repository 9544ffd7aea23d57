import { LifecycleError, RegistryNotEmptyError } from '../keys/errors.js';
import type { HistoryEntry } from '../keys/postgres-records.js';
import { recordDiff } from '../keys/record-diff.js';
import { fileRecordStore, migrateRegistry, postgresRecordStore, tokenRecordStore, type MigrationCounts, type MigrationResult, type RecordStore } from '../keys/registry-migration.js';
import { secretsKey } from '../keys/secret-sealer.js';
import type { AdminContext } from './admin-context.js';
import { integerOption, requiredOption, stringOption, type Command, type OptionValues } from './command.js';
import { details, RefusedError, table, UnavailableError, UsageError } from './output.js';

const STORES = ['token', 'postgres', 'file'] as const;

/** The store a --from / --to names, from the config: the default token, registry.postgres, registry.file. */
function storeNamed(context: AdminContext, option: 'from' | 'to', values: OptionValues): RecordStore {
  const name = requiredOption(values, option);
  if (!(STORES as readonly string[]).includes(name) || (option === 'to' && name === 'file')) {
    throw new UsageError(`--${option} is one of ${(option === 'to' ? ['token', 'postgres'] : STORES).join(', ')} (got "${name}")`);
  }
  if (name === 'token') return tokenRecordStore(context.token('default'));
  if (name === 'postgres') return postgresRecordStore(context.postgresStore(), context.token('default'));
  const file = context.config().registry.file;
  if (!file) throw new UnavailableError(`--from file needs registry.file in ${context.configPath}`);
  return fileRecordStore(file);
}

/** The count lines of a migration, in the order an operator checks them. */
const COUNT_LINES: ReadonlyArray<readonly [keyof MigrationCounts, string]> = [
  ['keys', 'keys'],
  ['keyVersions', 'key versions'],
  ['aliases', 'aliases'],
  ['enabledKeys', 'keys Enabled'],
  ['disabledKeys', 'keys Disabled'],
  ['pendingDeletionKeys', 'keys PendingDeletion'],
  ['certificates', 'certificates'],
  ['certificateChainLinks', 'certificate chain links'],
  ['accessKeys', 'access keys'],
  ['accessKeySecrets', 'access-key secrets'],
  ['policies', 'policies'],
  ['accounts', 'accounts'],
];

const HISTORY_KINDS = ['key', 'certificate', 'accessKey', 'alias'] as const;

/** One history row as shown: never a record, only what changed (recordDiff leaves secret fields out). */
const historyView = (e: HistoryEntry): Record<string, unknown> => ({
  seq: e.seq,
  at: e.at.toISOString(),
  actor: e.actor,
  kind: e.kind,
  id: e.id,
  oldRevision: e.oldRevision,
  newRevision: e.newRevision,
  changes: recordDiff(e.oldRecord, e.newRecord),
});

/** `registry …`: the registry's own store (registry.store: postgres). */
export const REGISTRY_COMMANDS: Command[] = [
  {
    words: ['registry', 'init'],
    synopsis: '',
    summary: 'prepare the PostgreSQL registry: apply its schema migrations and make the secrets key on the token (re-runnable)',
    help: [
      'Needs registry.postgres (registry.store may still be token: prepare, migrate, then switch). Applies the schema',
      'migrations the database lacks (in one transaction, under an advisory lock: several at once are safe) and, unless',
      'registry.secretsKey.kekFile is set, makes the AES-256 key that seals access-key secrets on the default token (label',
      'registry.secretsKey.label; sensitive, never extractable, encrypt/decrypt only) unless it is there. Running it again',
      'changes nothing.',
    ],
    async run({ context }) {
      const records = context.postgresRecords();
      let applied: number[];
      try {
        applied = await records.migrate();
      } catch (err) {
        throw new UnavailableError(`cannot prepare the registry database: ${(err as Error).message}`);
      }
      const { label, kekFile } = context.config().registry.secretsKey;
      const key = kekFile
        ? `a key-encryption key file (${kekFile}): not on the token`
        : await context.token('default').admin((p11, session) => (secretsKey(p11, session, label, true)!.created ? `made on the default token (label ${label})` : `already on the default token (label ${label})`));
      const notices = kekFile ? ['warning: access-key secrets are sealed with a key file, not by the HSM (registry.secretsKey.kekFile)'] : [];
      return {
        data: { migrationsApplied: applied, secretsKey: kekFile ? { kekFile } : { label } },
        text: details([
          ['Migrations applied', applied.length > 0 ? applied.join(', ') : 'none (the schema is current)'],
          ['Secrets key', key],
        ]),
        notices,
      };
    },
  },
  {
    words: ['registry', 'migrate'],
    synopsis: '--from token|postgres|file --to token|postgres',
    summary: 'move every record of the registry to another store (empty), verify the copy, and print what was moved',
    help: [
      '--from <store>   token (the records on the default token), postgres (registry.postgres), or file (registry.file)',
      '--to <store>     token or postgres; it must hold no record (else exit 1, nothing written)',
      'Moves keys (versions, aliases, state, deletion date), certificates (ids, chain labels; the DER stays on the',
      'token), access keys with their secrets (sealed by registry.secretsKey for postgres) and policies, verbatim.',
      'The target is read back and compared with the source; the source is left as it was. Stop every writer (gateways,',
      'other CLI runs) first; then switch registry.store in the config and restart the gateways.',
    ],
    options: { from: { type: 'string' }, to: { type: 'string' } },
    async run({ values, context }) {
      const from = storeNamed(context, 'from', values);
      const to = storeNamed(context, 'to', values);
      if (from.name === to.name) throw new UsageError(`--from and --to name the same store (${from.name})`);
      let result: MigrationResult;
      try {
        result = await migrateRegistry(from, to);
      } catch (err) {
        if (err instanceof RegistryNotEmptyError) throw new RefusedError(err.message);
        if (err instanceof LifecycleError && err.kind === 'conflict') throw new RefusedError(err.message);
        throw err;
      }
      const notices = [
        ...(result.skipped > 0 ? [`${result.skipped} object(s) of the ${result.from} registry are not readable records and were not moved`] : []),
        `the ${result.from} registry was left as it was; set registry.store: ${result.to} in the config and restart the gateways`,
      ];
      return {
        data: { ...result, verified: true },
        text: [
          `Moved the registry from ${result.from} to ${result.to}; the copy was read back and matches.`,
          ...table(COUNT_LINES, [
            ['WHAT', ([, label]) => label],
            ['COUNT', ([name]) => result.counts[name]],
          ]),
        ],
        notices,
      };
    },
  },
  {
    words: ['registry', 'history'],
    synopsis: '[--kind key|certificate|accessKey|alias --id <id>] [--limit <n>]',
    summary: 'who changed which registry record in PostgreSQL, when, old → new revision, and what changed (never a secret)',
    help: [
      '--kind <kind>   key, certificate, accessKey, or alias (the keys an alias was bound to or taken from; needs --id)',
      '--id <id>       the KeyId, CertificateId, AccessKeyId, or alias name (alias/…)',
      '--limit <n>     the newest n changes (default 20, at most 10000)',
      'Needs registry.postgres: the token store keeps no history.',
    ],
    options: { kind: { type: 'string' }, id: { type: 'string' }, limit: { type: 'string' } },
    async run({ values, context }) {
      const kind = stringOption(values, 'kind');
      const id = stringOption(values, 'id');
      if (kind !== undefined && !(HISTORY_KINDS as readonly string[]).includes(kind)) throw new UsageError(`--kind is one of ${HISTORY_KINDS.join(', ')} (got "${kind}")`);
      if (kind === 'alias' && id === undefined) throw new UsageError('--kind alias needs --id alias/<name>');
      if (id !== undefined && kind === undefined) throw new UsageError('--id needs --kind');
      const limit = integerOption(values, 'limit', { min: 1, max: 10_000 }) ?? 20;
      const filter = kind === 'alias' ? { alias: id!, limit } : { ...(kind ? { kind: kind as HistoryEntry['kind'] } : {}), ...(id ? { id } : {}), limit };
      const records = context.postgresRecords();
      let entries: HistoryEntry[];
      try {
        entries = await records.changes(filter);
      } catch (err) {
        if ((err as { code?: string }).code === '42P01') throw new UnavailableError('the registry database has no schema yet: run "hsm-gateway registry init" first');
        throw new UnavailableError(`the registry database is unreachable (${(err as Error).message})`);
      }
      const views = entries.map(historyView);
      return {
        data: views,
        text:
          views.length === 0
            ? ['No change recorded.']
            : table(views, [
                ['AT', (v) => (v.at as string).replace('T', ' ').replace(/\.\d+Z$/, 'Z')],
                ['ACTOR', (v) => v.actor as string],
                ['KIND', (v) => v.kind as string],
                ['ID', (v) => v.id as string],
                ['REVISION', (v) => `${v.oldRevision ?? '-'} → ${v.newRevision ?? '-'}`],
                ['CHANGES', (v) => (v.changes as string[]).join('; ')],
              ]),
      };
    },
  },
];
