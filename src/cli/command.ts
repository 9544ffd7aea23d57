import { readFileSync } from 'node:fs';
import type { ParseArgsConfig } from 'node:util';
import { isNewAliasName } from '../keys/registry.js';
import { KEY_SPEC_NAMES, type KeySpec } from '../signing/key-specs.js';
import type { AdminContext } from './admin-context.js';
import { UsageError, type CommandOutput } from './output.js';

/** One admin command: its words, its synopsis and options, and what it does. */
export interface Command {
  /** The words that name it, e.g. ['keys', 'create']. */
  words: readonly [string, string];
  /** The synopsis after the words, e.g. '--spec <spec> [--account <name>]'. */
  synopsis: string;
  summary: string;
  /** Option lines of its help (beyond the global ones). */
  help?: readonly string[];
  options?: NonNullable<ParseArgsConfig['options']>;
  /** Names of its positional arguments, all required. */
  positionals?: readonly string[];
  run(call: Call): Promise<CommandOutput>;
}

export type OptionValues = Record<string, string | boolean | undefined>;

export interface Call {
  values: OptionValues;
  /** Positional arguments by the names the command gave them. */
  args: Record<string, string>;
  context: AdminContext;
  env: NodeJS.ProcessEnv;
}

export function stringOption(values: OptionValues, name: string): string | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') throw new UsageError(`--${name} needs a value`);
  return value;
}

export function requiredOption(values: OptionValues, name: string): string {
  const value = stringOption(values, name);
  if (value === undefined) throw new UsageError(`--${name} is required`);
  return value;
}

export function keySpecOption(values: OptionValues, name = 'spec'): KeySpec {
  const value = requiredOption(values, name);
  if (!(KEY_SPEC_NAMES as readonly string[]).includes(value)) throw new UsageError(`--${name} is one of ${KEY_SPEC_NAMES.join(', ')} (got "${value}")`);
  return value as KeySpec;
}

export function integerOption(values: OptionValues, name: string, range: { min: number; max: number }): number | undefined {
  const value = stringOption(values, name);
  if (value === undefined) return undefined;
  if (!/^\d{1,9}$/.test(value) || Number(value) < range.min || Number(value) > range.max) {
    throw new UsageError(`--${name} is a whole number from ${range.min} to ${range.max} (got "${value}")`);
  }
  return Number(value);
}

export function aliasArgument(value: string, what = 'an alias'): string {
  if (!isNewAliasName(value)) {
    throw new UsageError(`${what} is "alias/" followed by 1–255 letters, digits, "_", "-", "/" or ":" and does not start with "alias/acs/" (got "${value}")`);
  }
  return value;
}

/** --account, checked; `fallback` when it is not given (null: no fallback). */
export function accountOption(values: OptionValues, fallback: string | null): string | undefined {
  const value = stringOption(values, 'account') ?? fallback ?? undefined;
  if (value !== undefined && (value.length > 128 || /[\u0000-\u001f]/.test(value))) throw new UsageError('--account is 1–128 characters, no control characters');
  return value;
}

/** Reads an input file named on the command line; one that cannot be read is a usage error. */
export function readInput(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** A secret from a file (trimmed) or an environment variable; never from the command line. */
export function secretFrom(values: OptionValues, option: string, env: NodeJS.ProcessEnv, variable: string, what: string): string {
  const file = stringOption(values, option);
  const value = file !== undefined ? readInput(file, what).trim() : env[variable];
  if (value === undefined || value === '') throw new UsageError(`${what}: give --${option} <file> or set ${variable} (never on the command line)`);
  return value;
}
