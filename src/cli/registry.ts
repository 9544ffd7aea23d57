import { LifecycleError, RegistryNotEmptyError } from '../keys/errors.js';
import { fileRecordStore, migrateRegistry, postgresRecordStore, tokenRecordStore, type MigrationCounts, type MigrationResult, type RecordStore } from '../keys/registry-migration.js';
import { secretsKey } from '../keys/secret-sealer.js';
import type { AdminContext } from './admin-context.js';
import { requiredOption, type Command, type OptionValues } from './command.js';
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

/** `registry …`: the registry's own store (registry.store: postgres). */
export const REGISTRY_COMMANDS: Command[] = [
  {
    words: ['registry', 'init'],
    synopsis: '',
    summary: 'prepare the PostgreSQL registry: apply its schema migrations and make the secrets key on the token (re-runnable)',
    help: [
      'Needs registry.postgres (registry.store may still be token: prepare, migrate, then switch). Applies the schema migrations the database lacks (in one transaction, under an',
      'advisory lock: several at once are safe) and, unless registry.secretsKey.kekFile is set, makes the AES-256 key that',
      'seals access-key secrets on the default token (label registry.secretsKey.label; sensitive, never extractable,',
      'encrypt/decrypt only) unless it is there. Running it again changes nothing.',
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
];
