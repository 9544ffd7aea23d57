/**
 * errors-doc: writes docs/errors.md and the README's error table from the error catalog (`npm run docs:errors`).
 *
 *   node dist/cli/errors-doc.js
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { errorsMarkdown, readmeWithErrorTable } from '../http/error-docs.js';
import { executedDirectly } from './run-as-script.js';

if (executedDirectly(import.meta.url)) {
  const root = resolve(import.meta.dirname, '../..');
  writeFileSync(join(root, 'docs/errors.md'), errorsMarkdown());
  const readme = join(root, 'README.md');
  writeFileSync(readme, readmeWithErrorTable(readFileSync(readme, 'utf8')));
  console.log('errors-doc: wrote docs/errors.md and the error table of README.md');
}
