import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { ModuleName } from './common.js';

/** The capability table of the module matrix: rows are probes, columns are modules, cells what each answered. */
export type Results = Map<ModuleName, Map<string, string>>;

const BEGIN = '<!-- module-matrix:begin (written by test/integration/module-matrix.test.ts; HSM_GATEWAY_MATRIX_DOC=1 rewrites it) -->';
const END = '<!-- module-matrix:end -->';

const escape = (cell: string): string => cell.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** A Markdown table: one row per probe (in `rows` order), one column per module. */
export function markdownTable(rows: ReadonlyArray<{ id: string; title: string }>, columns: ReadonlyArray<{ name: ModuleName; title: string }>, results: Results): string {
  const header = `| probe | ${columns.map((c) => escape(c.title)).join(' | ')} |`;
  const rule = `|---|${columns.map(() => '---').join('|')}|`;
  const lines = rows.map((r) => `| ${escape(r.title)} | ${columns.map((c) => escape(results.get(c.name)?.get(r.id) ?? '—')).join(' | ')} |`);
  return [header, rule, ...lines].join('\n');
}

/** The table as plain text for the test's output (one line per probe). */
export function textTable(rows: ReadonlyArray<{ id: string; title: string }>, columns: ReadonlyArray<{ name: ModuleName }>, results: Results): string {
  const cells = rows.map((r) => [r.title, ...columns.map((c) => results.get(c.name)?.get(r.id) ?? '—')]);
  const head = ['probe', ...columns.map((c) => c.name)];
  const widths = head.map((h, i) => Math.min(48, Math.max(h.length, ...cells.map((row) => row[i]!.length))));
  const fit = (s: string, w: number): string => (s.length > w ? `${s.slice(0, w - 1)}…` : s.padEnd(w));
  return [head, ...cells].map((row) => row.map((c, i) => fit(c, widths[i]!)).join('  ')).join('\n');
}

/** The table section of a document (between the markers), or undefined when it has none. */
export function section(doc: string): string | undefined {
  const from = doc.indexOf(BEGIN);
  const to = doc.indexOf(END);
  return from < 0 || to < from ? undefined : doc.slice(from + BEGIN.length, to).trim();
}

/** Replaces the section between the markers (the document must have them). */
export function rewriteSection(path: string, body: string): void {
  const doc = existsSync(path) ? readFileSync(path, 'utf8') : '';
  const from = doc.indexOf(BEGIN);
  const to = doc.indexOf(END);
  if (from < 0 || to < from) throw new Error(`${path} has no ${BEGIN} … ${END} section`);
  writeFileSync(path, `${doc.slice(0, from + BEGIN.length)}\n${body}\n${doc.slice(to)}`);
}

/** Parses a Markdown table written by markdownTable back into cells (probe title → module title → cell). */
export function parseTable(table: string): Map<string, Map<string, string>> {
  const split = (line: string): string[] =>
    line
      .replace(/^\|\s?|\s?\|$/g, '')
      .split(/(?<!\\)\|/)
      .map((c) => c.trim().replace(/\\\|/g, '|'));
  const lines = table.split('\n').filter((l) => l.startsWith('|'));
  const [head, , ...body] = lines;
  if (!head) return new Map();
  const columns = split(head).slice(1);
  return new Map(
    body.map((line) => {
      const [title, ...cells] = split(line);
      return [title!, new Map(columns.map((c, i) => [c, cells[i] ?? '']))];
    }),
  );
}
