/**
 * What an admin command hands back: a JSON document (for `--json`) and the lines a person reads, plus optional
 * notices for stderr (warnings that must not mix into a JSON document on stdout).
 */
export interface CommandOutput {
  data: unknown;
  text: string[];
  notices?: string[];
}

/** Failures of the command line itself: unknown command or option, missing or malformed argument (exit 2). */
export class UsageError extends Error {}
/** The operation was refused: not found, wrong state, already there (exit 1). */
export class RefusedError extends Error {}
/** The HSM or the config cannot be used: unreadable config, no token, wrong PIN (exit 3). */
export class UnavailableError extends Error {}

type Cell = string | number | boolean | undefined | null;

const show = (value: Cell): string => (value === undefined || value === null || value === '' ? '-' : String(value));

/** An aligned table: a header row in capitals, then one row per item; '-' where a value is absent. */
export function table<T>(items: readonly T[], columns: ReadonlyArray<readonly [header: string, value: (item: T) => Cell]>): string[] {
  const rows = [columns.map(([header]) => header), ...items.map((item) => columns.map(([, value]) => show(value(item))))];
  const widths = columns.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
}

/** Name/value lines, the values aligned; absent values are left out. */
export function details(pairs: ReadonlyArray<readonly [string, Cell]>): string[] {
  const present = pairs.filter(([, value]) => value !== undefined && value !== null && value !== '');
  const width = Math.max(0, ...present.map(([name]) => name.length));
  return present.map(([name, value]) => `${name.padEnd(width)}  ${String(value)}`);
}

/**
 * registry.store: file — what a command made on the token is not registered: the entry for the operator's file
 * (JSON, an element of its `section` array), and `registered: false` in the JSON document.
 */
export function asFileEntry(output: CommandOutput, section: 'keys' | 'certificates', entry: unknown, file: string): CommandOutput {
  return {
    data: { ...(output.data as object), registered: false },
    text: [
      ...output.text,
      '',
      `Not registered: the registry is the file ${file} (registry.store: file). Add this entry to its "${section}" array and send SIGHUP to the gateway:`,
      ...JSON.stringify(entry, null, 2).split('\n'),
    ],
    notices: [...(output.notices ?? []), `not registered: add the entry printed to ${file} (registry.store: file) and send SIGHUP to the gateway`],
  };
}
