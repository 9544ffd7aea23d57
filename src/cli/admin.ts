/**
 * The admin CLI: `hsm-gateway <group> <command> [options]` (bin/hsm-gateway.cjs runs the gateway when there is no
 * command, or `serve`). It changes the registry kept on the token through the same KeyLifecycle /
 * CertificateLifecycle / AccessKeys the gateway uses, so gateways running against the token pick changes up at their next poll.
 *
 *   runAdmin(args, io) → exit code: 0 done, 1 refused, 2 usage error, 3 HSM or config unavailable.
 *
 * Output: aligned tables / name-value lines, or with --json one JSON document on stdout. Errors: one line on
 * stderr, `hsm-gateway: <message>`, never a stack trace, a PIN or a secret.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/load.js';
import { ckrName, ckrOf, classifyCkr } from '../hsm/ckr.js';
import { HsmError, HsmObjectNotFoundError, HsmUnavailableError } from '../hsm/errors.js';
import { LifecycleError, RegistryError } from '../keys/errors.js';
import { ACCOUNT_COMMANDS } from './accounts.js';
import { AdminContext } from './admin-context.js';
import { CERTIFICATE_COMMANDS } from './certs.js';
import type { Command, OptionValues } from './command.js';
import { ALIAS_COMMANDS, KEY_COMMANDS } from './keys.js';
import { RefusedError, UnavailableError, UsageError, type CommandOutput } from './output.js';
import { REGISTRY_COMMANDS } from './registry.js';
import { executedDirectly } from './run-as-script.js';
import { TOKEN_COMMANDS } from './token.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const COMMANDS: readonly Command[] = [...TOKEN_COMMANDS, ...KEY_COMMANDS, ...ALIAS_COMMANDS, ...CERTIFICATE_COMMANDS, ...ACCOUNT_COMMANDS, ...REGISTRY_COMMANDS];
const GROUPS = [...new Set(COMMANDS.map((c) => c.words[0]))];

const GLOBAL_OPTIONS = {
  config: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const EXIT = { ok: 0, refused: 1, usage: 2, unavailable: 3 } as const;

const GLOBAL_HELP = [
  '  --config <file>   the gateway config (default: $HSM_GATEWAY_CONFIG, else $HSM_GATEWAY_HOME/gateway.yaml;',
  '                    HSM_GATEWAY_HOME defaults to .data in the checkout)',
  '  --json            print one JSON document on stdout instead of tables',
  '  -h, --help        help (of a command: hsm-gateway keys create --help)',
];

function usage(): string[] {
  const width = Math.max(...COMMANDS.map((c) => `${c.words.join(' ')}`.length));
  return [
    'usage: hsm-gateway [serve] [--config <file>]     run the gateway (no command, or "serve")',
    '       hsm-gateway <command> [options]           administer tokens, keys, certificates and access keys',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.words.join(' ').padEnd(width)}  ${c.summary}`),
    '',
    '<key> is a KeyId or an alias (alias/…). Key specs: RSA_2048, RSA_3072, EC_P256, EC_P256K, EC_SM2.',
    '',
    'Options of every command:',
    ...GLOBAL_HELP,
    '',
    'PINs are never taken on the command line (the process list would show them): the token PIN comes from the',
    "config (hsm.pin: { file } or { env }); token init reads its PINs from files or $HSM_GATEWAY_SO_PIN / $HSM_GATEWAY_PIN.",
    'Secrets are never printed, except by accounts create and accounts rotate-secret: the one they just made, once.',
    '',
    'Changes go to the registry kept on the token; running gateways apply them within registry.refreshIntervalMs',
    '(1 s by default). keys disable / schedule-deletion hold on every gateway when they return: the key\'s CKA_SIGN',
    'is off (where the token cannot do that, they say so and wait that bound + 1 s first).',
    '',
    'Exit codes:',
    '  0  done',
    '  1  refused: not found, wrong state, already exists, or input the operation does not accept',
    '  2  usage error: unknown command or option, missing or malformed argument, unreadable input file',
    '  3  HSM or config unavailable: no or invalid config, token not found, wrong PIN, module not loadable',
    '',
    'More: docs/cli.md',
  ];
}

function commandHelp(command: Command): string[] {
  return [
    `usage: hsm-gateway ${command.words.join(' ')}${command.synopsis ? ` ${command.synopsis}` : ''}`,
    '',
    command.summary.charAt(0).toUpperCase() + command.summary.slice(1) + '.',
    ...(command.help?.length ? ['', 'Options:', ...command.help.map((line) => `  ${line}`)] : []),
    '',
    'Options of every command:',
    ...GLOBAL_HELP,
  ];
}

/** The indexes of the command words: the first two arguments that are neither options nor --config's value. */
function commandWords(args: readonly string[]): number[] {
  const found: number[] = [];
  for (let i = 0; i < args.length && found.length < 2; i++) {
    const arg = args[i]!;
    if (arg === '--') break;
    if (arg === '--config') i++;
    else if (!arg.startsWith('-')) found.push(i);
  }
  return found;
}

/** The exit code and the one line to print for anything a command threw. */
function failureOf(err: unknown): { code: number; message: string } {
  const message = (err as Error)?.message ?? String(err);
  if (err instanceof UsageError) return { code: EXIT.usage, message };
  // The operator at the CLI gets the cause an API client is not shown (the database's address, the driver's words).
  if (err instanceof LifecycleError && err.kind === 'unavailable') return { code: EXIT.unavailable, message: err.cause instanceof Error ? `${message} (${err.cause.message})` : message };
  if (err instanceof RefusedError || err instanceof LifecycleError) return { code: EXIT.refused, message };
  if (err instanceof UnavailableError || err instanceof ConfigError || err instanceof RegistryError) return { code: EXIT.unavailable, message };
  if (err instanceof HsmUnavailableError) return { code: EXIT.unavailable, message: `the token is unavailable: ${message}` };
  if (err instanceof HsmObjectNotFoundError) return { code: EXIT.refused, message };
  if (err instanceof HsmError) return { code: EXIT.refused, message: `the token refused the operation: ${message}` };
  const ckr = ckrOf(err);
  if (ckr !== undefined) {
    const kind = classifyCkr(ckr);
    return kind === 'device' || kind === 'login'
      ? { code: EXIT.unavailable, message: `the token failed: ${ckrName(ckr)}` }
      : { code: EXIT.refused, message: `the token refused the operation: ${ckrName(ckr)}` };
  }
  return { code: EXIT.refused, message };
}

interface AdminIo {
  out(line: string): void;
  err(line: string): void;
  env: NodeJS.ProcessEnv;
}

const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, '; ').trim();

/** What runAdmin answers without running a command: help on stdout, or one error line on stderr, and the exit code. */
interface Answer {
  code: number;
  out?: string[];
  error?: string;
}

function answer(io: AdminIo, { code, out, error }: Answer): number {
  for (const line of out ?? []) io.out(line);
  if (error !== undefined) io.err(`hsm-gateway: ${oneLine(error)}`);
  return code;
}

/** The command the first two words name, and the other arguments; or the help / usage error to answer instead. */
function lookUp(args: readonly string[]): { command: Command; rest: string[] } | Answer {
  const wantsHelp = args.includes('--help') || args.includes('-h');
  const [groupAt, verbAt] = commandWords(args);
  const group = groupAt === undefined ? undefined : args[groupAt]!;
  if (group === undefined || group === 'serve') {
    if (wantsHelp) return { code: EXIT.ok, out: usage() };
    return { code: EXIT.usage, error: `${group === undefined ? 'no command given' : '"serve" runs the gateway: start it with bin/hsm-gateway.cjs'} (hsm-gateway --help lists the commands)` };
  }
  if (!GROUPS.includes(group)) return { code: EXIT.usage, error: `unknown command "${group}" (hsm-gateway --help lists the commands)` };
  const verbs = COMMANDS.filter((c) => c.words[0] === group);
  const verb = verbAt === undefined ? undefined : args[verbAt]!;
  const command = verbs.find((c) => c.words[1] === verb);
  if (!command) {
    if (verb === undefined && wantsHelp) {
      return { code: EXIT.ok, out: [`usage: hsm-gateway ${group} <command>`, '', ...verbs.map((c) => `  ${group} ${c.words[1]} ${c.synopsis}`.trimEnd()), '', 'hsm-gateway <command> --help explains one.'] };
    }
    return { code: EXIT.usage, error: `${verb === undefined ? `"${group}" needs a command` : `unknown command "${group} ${verb}"`}: ${verbs.map((c) => c.words[1]).join(', ')}` };
  }
  return { command, rest: args.filter((_, i) => i !== groupAt && i !== verbAt) };
}

/** The command's options and named positional arguments; or its help / a usage error to answer instead. */
function parseCommandLine(command: Command, rest: string[]): { values: OptionValues; args: Record<string, string> } | Answer {
  const name = command.words.join(' ');
  let values: OptionValues;
  let positionals: string[];
  try {
    const parsed = parseArgs({ args: rest, options: { ...GLOBAL_OPTIONS, ...command.options }, allowPositionals: true, strict: true });
    values = parsed.values as OptionValues;
    positionals = parsed.positionals;
  } catch (err) {
    const unknown = (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /'(-[^']*)'/.exec((err as Error).message)?.[1] : undefined;
    return { code: EXIT.usage, error: `${unknown ? `unknown option ${unknown}` : (err as Error).message} (hsm-gateway ${name} --help)` };
  }
  if (values.help) return { code: EXIT.ok, out: commandHelp(command) };
  const expected = command.positionals ?? [];
  if (positionals.length < expected.length) return { code: EXIT.usage, error: `${name} needs ${expected.slice(positionals.length).map((p) => `<${p}>`).join(' ')} (hsm-gateway ${name} --help)` };
  if (positionals.length > expected.length) return { code: EXIT.usage, error: `unexpected argument "${positionals[expected.length]}" (hsm-gateway ${name} --help)` };
  return { values, args: Object.fromEntries(expected.map((p, i) => [p, positionals[i]!])) };
}

/** Runs the command against the config (opened only as far as it asks), prints its output, and closes what it opened. */
async function execute(command: Command, line: { values: OptionValues; args: Record<string, string> }, io: AdminIo): Promise<number> {
  const explicit = (line.values.config as string | undefined) || io.env.HSM_GATEWAY_CONFIG || undefined;
  const configPath = explicit ? resolve(explicit) : join(resolve(io.env.HSM_GATEWAY_HOME ?? join(ROOT, '.data')), 'gateway.yaml');
  const context = new AdminContext(configPath, explicit !== undefined, (message) => io.err(`hsm-gateway: ${oneLine(message)}`));
  let output: CommandOutput;
  try {
    if (!explicit && !existsSync(configPath) && command.words.join(' ') !== 'token init') {
      throw new UnavailableError(`no config at ${configPath}: give --config <file> or set HSM_GATEWAY_CONFIG (the first npm start writes the demo's)`);
    }
    output = await command.run({ values: line.values, args: line.args, context, env: io.env });
  } catch (err) {
    const failure = failureOf(err);
    return answer(io, { code: failure.code, error: failure.message });
  } finally {
    await context.close();
  }
  if (line.values.json) io.out(JSON.stringify(output.data, null, 2));
  else for (const text of output.text) io.out(text);
  for (const notice of output.notices ?? []) io.err(`hsm-gateway: note: ${notice}`);
  return EXIT.ok;
}

async function runAdmin(args: readonly string[], io: AdminIo): Promise<number> {
  const found = lookUp(args);
  if (!('command' in found)) return answer(io, found);
  const line = parseCommandLine(found.command, found.rest);
  if (!('values' in line)) return answer(io, line);
  return execute(found.command, line, io);
}

/** The command line: `node dist/cli/admin.js …`, or bin/hsm-gateway.cjs with a command. */
export async function main(args: readonly string[] = process.argv.slice(2)): Promise<void> {
  process.stdout.on('error', () => undefined); // a closed pipe (| head) is not an error of the command
  process.exitCode = await runAdmin(args, {
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
    env: process.env,
  });
}

if (executedDirectly(import.meta.url)) void main();
