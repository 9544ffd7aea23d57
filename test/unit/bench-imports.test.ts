import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

// bench/ loads the compiled gateway through import() of computed paths, which neither tsc nor knip follows: an export
// renamed or dropped as unused broke `npm run bench` unseen. This reads every such import and checks the name is
// still exported by the source module.
const ROOT = resolve(import.meta.dirname, '../..');
const IMPORT = /const \{([^}]*)\} = await import\(join\(ROOT, '(dist\/[^']+)\.js'\)\)/g;

function benchFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? benchFiles(join(dir, e.name)) : e.name.endsWith('.mjs') ? [join(dir, e.name)] : [],
  );
}

const imports = benchFiles(join(ROOT, 'bench')).flatMap((file) =>
  [...readFileSync(file, 'utf8').matchAll(IMPORT)].flatMap(([, names, path]) =>
    names!.split(',').map((n) => ({ file: file.slice(ROOT.length + 1), source: `src/${path!.slice('dist/'.length)}.ts`, name: n.split(':')[0]!.trim() })),
  ),
);

describe('the bench scripts', () => {
  it('import something from the compiled gateway at all (the pattern below still matches them)', () => {
    expect(imports.length).toBeGreaterThan(3);
  });

  it.each(imports)('$file: $name is exported by $source', ({ source, name }) => {
    const text = readFileSync(join(ROOT, source), 'utf8');
    expect(text).toMatch(new RegExp(`export (async )?(function|const|class|let) ${name}\\b|export \\{[^}]*\\b${name}\\b`));
  });
});
