import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CATALOG, errorAnchor, type ErrorCode } from '../../src/http/error-catalog.js';
import { errorsMarkdown, readmeWithErrorTable } from '../../src/http/error-docs.js';

const ROOT = resolve(import.meta.dirname, '../..');
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8');

/** GitHub's heading anchor: lower case, spaces to '-', everything but letters, digits, '-' and '_' dropped. */
const githubSlug = (heading: string): string => heading.trim().toLowerCase().replace(/ /g, '-').replace(/[^a-z0-9_-]/g, '');

describe('docs/errors.md and the README error table, generated from the catalog (npm run docs:errors rewrites them)', () => {
  it('when docs/errors.md is read, then it is what the catalog generates', () => {
    expect(read('docs/errors.md')).toBe(errorsMarkdown());
  });

  it("when the README is read, then its error table is what the catalog generates", () => {
    const readme = read('README.md');
    expect(readme).toBe(readmeWithErrorTable(readme));
  });

  it('when the headings of docs/errors.md are read, then each code has one whose anchor is the Recommend fragment', () => {
    const anchors = [...read('docs/errors.md').matchAll(/^### (.+)$/gm)].map((m) => githubSlug(m[1]!));
    expect(anchors).toEqual(expect.arrayContaining((Object.keys(ERROR_CATALOG) as ErrorCode[]).map(errorAnchor)));
    expect(new Set(anchors).size).toBe(anchors.length);
  });
});
