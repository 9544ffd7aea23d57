import { z } from 'zod';
import { LifecycleError } from '../keys/errors.js';
import { PolicyDocumentSchema, type PolicyDocument } from '../keys/policy.js';
import type { AccessKeyRecord } from '../keys/registry-source.js';
import type { AdminContext } from './admin-context.js';
import { accountOption, readInput, stringOption, type Command } from './command.js';
import { details, RefusedError, table, UsageError } from './output.js';

/**
 * `accounts …`: access keys kept on the token (private CKO_DATA records, see registry-objects.ts). Secrets are printed
 * only by the command that made them, once; listings show how many live secrets a key has, never a secret.
 */

interface AccessKeyView {
  accessKeyId: string;
  account: string;
  enabled: boolean;
  liveSecrets: number;
  createdAt?: string;
  description?: string;
  policies?: unknown[];
  source: 'token' | 'config';
}

/** What may be shown of an access key: everything but its secrets. */
const viewOf = (k: AccessKeyRecord): AccessKeyView => ({
  accessKeyId: k.accessKeyId,
  account: k.account,
  enabled: k.enabled,
  liveSecrets: k.secrets.length,
  ...(k.createdAt ? { createdAt: k.createdAt } : {}),
  ...(k.description ? { description: k.description } : {}),
  ...(k.policies ? { policies: k.policies } : {}),
  source: 'token',
});

function readPolicies(path: string): PolicyDocument[] {
  let data: unknown;
  try {
    data = JSON.parse(readInput(path, 'the policy file'));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`the policy file ${path} is not JSON: ${(err as Error).message}`);
  }
  const parsed = z.array(PolicyDocumentSchema).min(1).safeParse(Array.isArray(data) ? data : [data]);
  if (!parsed.success) throw new UsageError(`the policy file ${path} is not a RAM policy document (or a list of them):\n${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

/** A change refused because the key is in the config file, said plainly. */
async function onToken(context: AdminContext, accessKeyId: string, change: () => Promise<AccessKeyRecord>): Promise<AccessKeyRecord> {
  try {
    return await change();
  } catch (err) {
    if (err instanceof LifecycleError && err.kind === 'access-key-not-found' && context.config().auth.accessKeys.some((k) => k.accessKeyId === accessKeyId)) {
      throw new RefusedError(`access key ${accessKeyId} is declared in ${context.configPath}; change it there (and send the gateway SIGHUP)`);
    }
    throw err;
  }
}

const KEEP_NOTICE = 'store this AccessKeySecret now: it is shown once and cannot be read back';

function enabling(verb: 'enable' | 'disable'): Command {
  return {
    words: ['accounts', verb],
    synopsis: '<AccessKeyId>',
    summary: verb === 'enable' ? 'enable an access key again' : 'disable an access key (its requests answer Forbidden.AccessKey)',
    positionals: ['accessKeyId'],
    async run({ args, context }) {
      const accessKeys = await context.accessKeys();
      const record = await onToken(context, args.accessKeyId!, () => accessKeys.setEnabled(args.accessKeyId!, verb === 'enable'));
      return { data: viewOf(record), text: [`Access key ${record.accessKeyId} is ${record.enabled ? 'enabled' : 'disabled'}.`] };
    },
  };
}

export const ACCOUNT_COMMANDS: Command[] = [
  {
    words: ['accounts', 'create'],
    synopsis: '--account <name> [--policy <file.json>] [--description <text>]',
    summary: 'make an access key (AccessKeyId + secret) for an account; the secret is printed once',
    help: [
      '--account <name>       the account whose keys the access key may use',
      '--policy <file.json>   a RAM policy document (or a JSON list of them) that narrows what it may do',
      '--description <text>   free text',
    ],
    options: { account: { type: 'string' }, policy: { type: 'string' }, description: { type: 'string' } },
    async run({ values, context }) {
      const account = accountOption(values, null);
      if (account === undefined) throw new UsageError('--account is required');
      const policyFile = stringOption(values, 'policy');
      const policies = policyFile === undefined ? undefined : readPolicies(policyFile);
      const description = stringOption(values, 'description');
      const { accessKey, secret } = await (await context.accessKeys()).create({
        account,
        ...(policies ? { policies } : {}),
        ...(description !== undefined ? { description } : {}),
      });
      return {
        data: { ...viewOf(accessKey), accessKeySecret: secret },
        text: details([
          ['AccessKeyId', accessKey.accessKeyId],
          ['AccessKeySecret', secret],
          ['Account', accessKey.account],
          ['Policies', policies ? `${policies.length} document(s)` : 'none (everything on the account\'s keys)'],
        ]),
        notices: [KEEP_NOTICE],
      };
    },
  },
  {
    words: ['accounts', 'list'],
    synopsis: '',
    summary: 'list the access keys, on the token and in the config (never their secrets)',
    async run({ context }) {
      const snapshot = await context.snapshot();
      const fromConfig = context.config().auth.accessKeys.map(
        (k): AccessKeyView => ({
          accessKeyId: k.accessKeyId,
          account: k.account,
          enabled: k.enabled,
          liveSecrets: k.secondarySecret ? 2 : 1,
          ...(k.policies ? { policies: k.policies } : {}),
          source: 'config',
        }),
      );
      const views = [...fromConfig, ...snapshot.accessKeys.filter((k) => !fromConfig.some((c) => c.accessKeyId === k.accessKeyId)).map(viewOf)].sort(
        (a, b) => a.account.localeCompare(b.account) || (a.createdAt ?? '').localeCompare(b.createdAt ?? '') || a.accessKeyId.localeCompare(b.accessKeyId),
      );
      return {
        data: views,
        text: table(views, [
          ['ACCESS KEY ID', (k) => k.accessKeyId],
          ['ACCOUNT', (k) => k.account],
          ['ENABLED', (k) => (k.enabled ? 'yes' : 'no')],
          ['SECRETS', (k) => k.liveSecrets],
          ['POLICIES', (k) => k.policies?.length ?? 0],
          ['KEPT IN', (k) => k.source],
          ['CREATED', (k) => k.createdAt],
          ['DESCRIPTION', (k) => k.description],
        ]),
      };
    },
  },
  {
    words: ['accounts', 'rotate-secret'],
    synopsis: '<AccessKeyId>',
    summary: 'give an access key a new secret (printed once); the previous one stays valid until the next rotation',
    positionals: ['accessKeyId'],
    async run({ args, context }) {
      const accessKeys = await context.accessKeys();
      let secret = '';
      const record = await onToken(context, args.accessKeyId!, async () => {
        const rotated = await accessKeys.rotateSecret(args.accessKeyId!);
        secret = rotated.secret;
        return rotated.accessKey;
      });
      return {
        data: { ...viewOf(record), accessKeySecret: secret },
        text: details([
          ['AccessKeyId', record.accessKeyId],
          ['AccessKeySecret', secret],
        ]),
        notices: [KEEP_NOTICE, 'the previous secret stays valid until the next rotation: move every client to the new one before rotating again'],
      };
    },
  },
  enabling('disable'),
  enabling('enable'),
];
