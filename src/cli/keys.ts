import pkcs11js from 'pkcs11js';
import { HsmObjectNotFoundError } from '../hsm/errors.js';
import { describeProtection, readKeyProtection, type KeyProtection } from '../hsm/key-protection.js';
import { findObjects, objectTemplate } from '../hsm/objects.js';
import { PENDING_WINDOW_DAYS } from '../keys/lifecycle.js';
import type { RegistrySnapshot } from '../keys/registry-source.js';
import type { KeyRecord } from '../keys/registry.js';
import { publicKeyPem } from '../signing/public-key.js';
import type { AdminContext } from './admin-context.js';
import { accountOption, aliasArgument, integerOption, keySpecOption, stringOption, type Command } from './command.js';
import { asFileEntry, details, RefusedError, table, UsageError, type CommandOutput } from './output.js';

/** `keys …` and `aliases …`: the key lifecycle of src/keys/lifecycle.ts, on the registry kept on the token. */

const sourceOf = (snapshot: RegistrySnapshot, key: KeyRecord): 'token' | 'postgres' | 'file' => (snapshot.onToken.keys.has(key.keyId) ? snapshot.store : 'file');
const primaryOf = (key: KeyRecord): string => key.primaryKeyVersion ?? key.versions[0]!.keyVersionId;

const ACCOUNT_HELP = '--account <name>       whose alias <key> is (needed only when several accounts have an alias of that name)';

/**
 * The key a `<key>` argument names. Aliases are per account, as in the cloud: with --account the alias is that
 * account's; without it, the one account that has an alias of that name (several: the operator must say which).
 * A GUID names one key; --account, when given, must be its account.
 */
function keyNamed(snapshot: RegistrySnapshot, name: string, account: string | undefined): KeyRecord {
  const { registry } = snapshot;
  if (!name.startsWith('alias/')) {
    const key = registry.key(name);
    if (!key || (account !== undefined && key.account !== account)) throw new RefusedError(`key ${name} does not exist${account !== undefined ? ` in account ${account}` : ''}`);
    return key;
  }
  if (account !== undefined) {
    const key = registry.alias(account, name);
    if (!key) throw new RefusedError(`alias ${name} does not exist in account ${account}`);
    return key;
  }
  const accounts = registry.accountsWithAlias(name);
  if (accounts.length === 0) throw new RefusedError(`alias ${name} does not exist`);
  if (accounts.length > 1) throw new UsageError(`alias ${name} exists in accounts ${accounts.join(', ')}: say which with --account`);
  return registry.alias(accounts[0]!, name)!;
}

/** The key as JSON: the registry record as stored, and where it is kept. */
const keyJson = (snapshot: RegistrySnapshot, key: KeyRecord): Record<string, unknown> => ({ ...key, primaryKeyVersion: primaryOf(key), source: sourceOf(snapshot, key) });

/** What each version's private key may do and how it is protected, read from the token now (undefined: no single private key). */
async function protections(context: AdminContext, key: KeyRecord): Promise<Map<string, KeyProtection | undefined>> {
  return context.token(key.token).admin((p11, session) => {
    const found = new Map<string, KeyProtection | undefined>();
    for (const version of key.versions) {
      const ref = { label: version.label, id: version.id };
      const privates = findObjects(p11, session, objectTemplate(pkcs11js.CKO_PRIVATE_KEY, ref), 2);
      const publics = findObjects(p11, session, objectTemplate(pkcs11js.CKO_PUBLIC_KEY, ref), 2);
      found.set(version.keyVersionId, privates.length === 1 ? readKeyProtection(p11, session, privates[0]!, publics.length === 1 ? publics[0] : undefined) : undefined);
    }
    return found;
  });
}

/** Per version: the template that made it (or the import override accepted for it) and its protection as read back. */
function protectionLines(key: KeyRecord, read: ReadonlyMap<string, KeyProtection | undefined>): string[] {
  return key.versions.flatMap((v) => [
    `Version ${v.keyVersionId}:`,
    `  made with    ${v.template ?? (v.importOverride ? 'imported (bring your own key)' : 'imported or made before templates were recorded')}`,
    ...(v.importOverride ? [`  accepted     ${v.importOverride.accepted.join('; ')} (operator override, ${v.importOverride.at})`] : []),
    `  on the token ${read.get(v.keyVersionId) ? describeProtection(read.get(v.keyVersionId)!) : 'no single private key object found'}`,
  ]);
}

function keyLines(snapshot: RegistrySnapshot, key: KeyRecord, publicKey?: string, read?: ReadonlyMap<string, KeyProtection | undefined>): string[] {
  const primary = primaryOf(key);
  return [
    ...details([
      ['KeyId', key.keyId],
      ['Aliases', key.aliases.join(', ')],
      ['KeySpec', key.keySpec],
      ['Usage', key.usage],
      ['State', key.state],
      ['DeleteDate', key.state === 'PendingDeletion' ? key.deleteDate : undefined],
      ['Account', key.account],
      ['AccessKeyIds', key.accessKeyIds?.join(', ')],
      ['Token', key.token],
      ['Kept in', { token: 'the token registry', postgres: 'the PostgreSQL registry', file: 'the registry file (read-only here)' }[sourceOf(snapshot, key)]],
      ['Created', key.createdAt],
      ['Creator', key.creator],
      ['Description', key.description],
      ['PrimaryVersion', primary],
    ]),
    '',
    ...table(key.versions, [
      ['KEY VERSION ID', (v) => (v.keyVersionId === primary ? `${v.keyVersionId} *` : v.keyVersionId)],
      ['CKA_LABEL', (v) => v.label],
      ['CKA_ID', (v) => v.id],
      ['CREATED', (v) => v.createdAt],
    ]),
    ...(read ? ['', ...protectionLines(key, read)] : []),
    ...(publicKey ? ['', `Public key of the primary version:`, ...publicKey.trimEnd().split('\n')] : []),
  ];
}

/** The key's primary public key as PEM, read from its token (undefined when that object is missing). */
function primaryPublicKey(context: AdminContext, key: KeyRecord): string | undefined {
  const version = key.versions.find((v) => v.keyVersionId === primaryOf(key))!;
  try {
    return publicKeyPem(context.token(key.token).publicKey({ label: version.label, id: version.id }), key.keySpec);
  } catch (err) {
    if (err instanceof HsmObjectNotFoundError) return undefined;
    throw err;
  }
}

async function described(context: AdminContext, key: KeyRecord, withPublicKey = true): Promise<CommandOutput> {
  const snapshot = await context.snapshot();
  const fresh = snapshot.registry.key(key.keyId) ?? key;
  const publicKey = withPublicKey ? primaryPublicKey(context, fresh) : undefined;
  const read = await protections(context, fresh);
  const json = keyJson(snapshot, fresh);
  const versions = fresh.versions.map((v) => ({ ...v, protection: read.get(v.keyVersionId) ?? null }));
  return { data: { ...json, versions, ...(publicKey ? { publicKeyPem: publicKey } : {}) }, text: keyLines(snapshot, fresh, publicKey, read) };
}

/** A key just made or imported: described; with registry.store: file, as the entry for the operator's file. */
async function registered(context: AdminContext, key: KeyRecord): Promise<CommandOutput> {
  const out = await described(context, key);
  return context.fileStore() ? asFileEntry(out, 'keys', key, context.config().registry.file!) : out;
}

function stateChange(verb: 'enable' | 'disable' | 'cancel-deletion', summary: string, change: 'enableKey' | 'disableKey' | 'cancelKeyDeletion'): Command {
  return {
    words: ['keys', verb],
    synopsis: '<key> [--account <name>]',
    summary,
    help: [ACCOUNT_HELP],
    options: { account: { type: 'string' } },
    positionals: ['key'],
    async run({ args, values, context }) {
      const named = keyNamed(await context.snapshot(), args.key!, accountOption(values, null));
      const key = await (await context.keys(false))[change](named.account, named.keyId);
      const snapshot = await context.snapshot();
      return { data: keyJson(snapshot, key), text: [`Key ${key.keyId} is ${key.state}.`] };
    },
  };
}

export const KEY_COMMANDS: Command[] = [
  {
    words: ['keys', 'create'],
    synopsis: '--spec <spec> [--account <name>] [--alias alias/…] [--description <text>]',
    summary: 'generate a signing key pair on the token (sensitive, never extractable) and register it',
    help: [
      '--spec <spec>          RSA_2048, RSA_3072, EC_P256, EC_P256K or EC_SM2 (on a token whose profile has SM2)',
      '--account <name>       the account that owns the key (default: default)',
      '--alias alias/…        bind this alias to the new key',
      '--description <text>   free text',
    ],
    options: { spec: { type: 'string' }, account: { type: 'string' }, alias: { type: 'string' }, description: { type: 'string' } },
    async run({ values, context }) {
      const keySpec = keySpecOption(values);
      const alias = stringOption(values, 'alias');
      if (alias !== undefined) aliasArgument(alias, '--alias');
      const description = stringOption(values, 'description');
      const account = accountOption(values, 'default')!;
      const key = await (await context.keys(true)).createKey({
        account,
        keySpec,
        creator: 'hsm-gateway admin CLI',
        ...(alias !== undefined ? { alias } : {}),
        ...(description !== undefined ? { description } : {}),
        fileEntry: context.fileStore(),
      });
      return registered(context, key);
    },
  },
  {
    words: ['keys', 'import'],
    synopsis: '(--label <CKA_LABEL> | --id <CKA_ID hex>) [--token <name>] [--accept-imported-key] [--account <name>] [--alias alias/…] [--description <text>]',
    summary: 'bring your own key: register a key pair already on a token (by CKA_LABEL and/or CKA_ID) without regenerating it',
    help: [
      '--label <CKA_LABEL>    the private key\'s label (its public key must be on the token too)',
      '--id <hex>             the private key\'s CKA_ID, hex; with --label both must match',
      '--token <name>         the configured token that holds it (default: the default token)',
      '--accept-imported-key  accept a key that existed outside the HSM (CKA_NEVER_EXTRACTABLE false: a key imported',
      '                       into it); recorded on the key and shown by keys describe. A key that is extractable or',
      '                       not sensitive is refused regardless',
      '--account, --alias, --description   as for keys create',
    ],
    options: {
      label: { type: 'string' },
      id: { type: 'string' },
      token: { type: 'string' },
      'accept-imported-key': { type: 'boolean' },
      account: { type: 'string' },
      alias: { type: 'string' },
      description: { type: 'string' },
    },
    async run({ values, context }) {
      const label = stringOption(values, 'label');
      const id = stringOption(values, 'id');
      if (label === undefined && id === undefined) throw new UsageError('name the key with --label, --id, or both');
      if (id !== undefined && !/^([0-9a-fA-F]{2})+$/.test(id)) throw new UsageError(`--id is the CKA_ID in hex, an even number of hex digits (got "${id}")`);
      const alias = stringOption(values, 'alias');
      if (alias !== undefined) aliasArgument(alias, '--alias');
      const tokenName = stringOption(values, 'token');
      if (tokenName !== undefined && !context.config().tokens[tokenName] && tokenName !== 'default') throw new UsageError(`--token: no token "${tokenName}" in the config`);
      const description = stringOption(values, 'description');
      const key = await (await context.keys(true)).importKey({
        account: accountOption(values, 'default')!,
        ...(label !== undefined ? { label } : {}),
        ...(id !== undefined ? { id: id.toLowerCase() } : {}),
        ...(tokenName !== undefined ? { tokenName } : {}),
        ...(alias !== undefined ? { alias } : {}),
        ...(description !== undefined ? { description } : {}),
        acceptImported: values['accept-imported-key'] === true,
        fileEntry: context.fileStore(),
      });
      const accepted = key.versions[0]!.importOverride;
      if (accepted) context.log.warn('operator override: key registered although it existed outside the HSM', { keyId: key.keyId, accepted: accepted.accepted });
      return registered(context, key);
    },
  },
  {
    words: ['keys', 'list'],
    synopsis: '[--account <name>]',
    summary: 'list the registered keys (of one account with --account)',
    options: { account: { type: 'string' } },
    async run({ values, context }) {
      const account = accountOption(values, null);
      const snapshot = await context.snapshot();
      const keys = snapshot.registry
        .all()
        .filter((k) => account === undefined || k.account === account)
        .sort((a, b) => a.account.localeCompare(b.account) || (a.createdAt ?? '').localeCompare(b.createdAt ?? '') || a.keyId.localeCompare(b.keyId));
      return {
        data: keys.map((k) => keyJson(snapshot, k)),
        text: table(keys, [
          ['KEY ID', (k) => k.keyId],
          ['SPEC', (k) => k.keySpec],
          ['STATE', (k) => k.state],
          ['ACCOUNT', (k) => k.account],
          ['VERSIONS', (k) => k.versions.length],
          ['TOKEN', (k) => k.token],
          ['KEPT IN', (k) => sourceOf(snapshot, k)],
          ['ALIASES', (k) => k.aliases.join(', ')],
        ]),
      };
    },
  },
  {
    words: ['keys', 'describe'],
    synopsis: '<key> [--account <name>]',
    summary: 'show a key, its versions (labels and CKA_IDs on the token, how each was made, what the token says it may do) and its primary public key',
    help: [ACCOUNT_HELP],
    options: { account: { type: 'string' } },
    positionals: ['key'],
    async run({ args, values, context }) {
      return described(context, keyNamed(await context.snapshot(), args.key!, accountOption(values, null)));
    },
  },
  stateChange('enable', 'enable a key (it signs again)', 'enableKey'),
  stateChange('disable', 'disable a key (signing answers Rejected.Disabled)', 'disableKey'),
  stateChange('cancel-deletion', 'cancel a scheduled deletion (the key is Enabled again)', 'cancelKeyDeletion'),
  {
    words: ['keys', 'rotate'],
    synopsis: '<key> [--account <name>]',
    summary: 'generate a new key version on the token; it becomes the primary (older versions still sign when named)',
    help: [ACCOUNT_HELP],
    options: { account: { type: 'string' } },
    positionals: ['key'],
    async run({ args, values, context }) {
      const named = keyNamed(await context.snapshot(), args.key!, accountOption(values, null));
      const { key, version } = await (await context.keys(true)).createKeyVersion(named.account, named.keyId);
      const out = await described(context, key, false);
      return { data: { ...(out.data as object), keyVersionId: version.keyVersionId }, text: [`New primary version ${version.keyVersionId}.`, '', ...out.text] };
    },
  },
  {
    words: ['keys', 'schedule-deletion'],
    synopsis: `<key> --days <${PENDING_WINDOW_DAYS.min}-${PENDING_WINDOW_DAYS.max}> [--account <name>]`,
    summary: 'stop the key signing now; a gateway destroys its token objects after the window',
    help: [`--days <n>             the pending window, ${PENDING_WINDOW_DAYS.min} to ${PENDING_WINDOW_DAYS.max} days`, ACCOUNT_HELP],
    options: { days: { type: 'string' }, account: { type: 'string' } },
    positionals: ['key'],
    async run({ args, values, context }) {
      const days = integerOption(values, 'days', PENDING_WINDOW_DAYS);
      if (days === undefined) throw new UsageError('--days is required');
      const named = keyNamed(await context.snapshot(), args.key!, accountOption(values, null));
      const key = await (await context.keys(false)).scheduleKeyDeletion(named.account, named.keyId, days);
      const snapshot = await context.snapshot();
      return { data: keyJson(snapshot, key), text: [`Key ${key.keyId} is PendingDeletion; its token objects are destroyed after ${key.deleteDate}.`] };
    },
  },
];

export const ALIAS_COMMANDS: Command[] = [
  {
    words: ['aliases', 'list'],
    synopsis: '[--account <name>]',
    summary: 'list the aliases (each an account\'s own) and the keys they name',
    options: { account: { type: 'string' } },
    async run({ values, context }) {
      const account = accountOption(values, null);
      const snapshot = await context.snapshot();
      const aliases = snapshot.registry
        .all()
        .filter((k) => account === undefined || k.account === account)
        .flatMap((k) => k.aliases.map((alias) => ({ alias, keyId: k.keyId, account: k.account })))
        .sort((a, b) => (a.alias < b.alias ? -1 : a.alias > b.alias ? 1 : a.account < b.account ? -1 : a.account > b.account ? 1 : 0));
      return {
        data: aliases,
        text: table(aliases, [
          ['ALIAS', (a) => a.alias],
          ['KEY ID', (a) => a.keyId],
          ['ACCOUNT', (a) => a.account],
        ]),
      };
    },
  },
  {
    words: ['aliases', 'set'],
    synopsis: '<alias> <key> [--account <name>]',
    summary: 'bind an alias of the key\'s account to the key: create it, or move it there from another key of that account',
    help: ['--account <name>       the account the alias belongs to (default: the account of <key>)'],
    options: { account: { type: 'string' } },
    positionals: ['alias', 'key'],
    async run({ args, values, context }) {
      const alias = aliasArgument(args.alias!);
      const account = accountOption(values, null);
      const snapshot = await context.snapshot();
      // The alias belongs to the account named, else to the key's own: a GUID says which; an alias <key> is looked
      // up in that account (or the one account that has it).
      const key = keyNamed(snapshot, args.key!, account);
      const keys = await context.keys(false);
      const existed = snapshot.registry.alias(key.account, alias) !== undefined;
      const bound = existed ? await keys.updateAlias(key.account, alias, key.keyId) : await keys.createAlias(key.account, alias, key.keyId);
      return { data: { alias, keyId: bound.keyId, account: bound.account, moved: existed }, text: [`${alias} → ${bound.keyId} (account ${bound.account})${existed ? ' (moved)' : ''}`] };
    },
  },
  {
    words: ['aliases', 'delete'],
    synopsis: '<alias> [--account <name>]',
    summary: 'delete an alias (the key stays)',
    help: ['--account <name>       whose alias it is (needed only when several accounts have an alias of that name)'],
    options: { account: { type: 'string' } },
    positionals: ['alias'],
    async run({ args, values, context }) {
      const alias = aliasArgument(args.alias!);
      const named = keyNamed(await context.snapshot(), alias, accountOption(values, null));
      const key = await (await context.keys(false)).deleteAlias(named.account, alias);
      return { data: { alias, keyId: key.keyId, account: key.account }, text: [`${alias} deleted (it named ${key.keyId}, account ${key.account}).`] };
    },
  },
];
