import { secretsKey } from '../keys/secret-sealer.js';
import type { Command } from './command.js';
import { details, UnavailableError } from './output.js';

/** `registry …`: the registry's own store (registry.store: postgres). */
export const REGISTRY_COMMANDS: Command[] = [
  {
    words: ['registry', 'init'],
    synopsis: '',
    summary: 'prepare the PostgreSQL registry: apply its schema migrations and make the secrets key on the token (re-runnable)',
    help: [
      'Needs registry.store: postgres. Applies the schema migrations the database lacks (in one transaction, under an',
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
];
