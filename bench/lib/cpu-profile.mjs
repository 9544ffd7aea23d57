// Summaries of a V8 .cpuprofile (node --cpu-prof): self time by function and by file / package.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

/** The newest .cpuprofile in a directory, parsed. */
export function readNewestProfile(dir) {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  return JSON.parse(readFileSync(join(dir, files.sort().at(-1)), 'utf8'));
}

/** Where a function's time goes, by area: the file that owns it (npm packages and node internals grouped). */
function areaOf(name) {
  if (/^\((idle|program|garbage collector)\)/.test(name)) return name.split(' ')[0];
  const m = name.match(/ (\S+):\d+$/);
  if (!m) return '(native / V8 builtins)';
  const u = m[1];
  if (u.startsWith('node:')) return u.replace(/^node:internal\//, 'node:').split('/').slice(0, 2).join('/');
  if (u.includes('node_modules/')) return 'npm:' + u.split('node_modules/')[1].split('/')[0];
  return u;
}

/** The hits of each node id among the samples taken between `from` and `to` (µs, CLOCK_MONOTONIC as V8 keeps it). */
function hitsBetween(profile, from, to) {
  const hits = new Map();
  let t = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i];
    if (t >= from && t <= to) hits.set(profile.samples[i], (hits.get(profile.samples[i]) ?? 0) + 1);
  }
  return hits;
}

/**
 * Self time of each function ("name file:line", paths relative to `root`) and of each area, as sample counts, with
 * the total and the mean sample interval (µs). `window` ({ from, to }, µs of CLOCK_MONOTONIC: what
 * process.hrtime.bigint() / 1000n reads in any process) keeps only the samples taken then (not the start-up).
 */
export function selfTime(profile, root, window) {
  const hits = window ? hitsBetween(profile, window.from, window.to) : undefined;
  const byFunction = new Map();
  let total = 0;
  for (const node of profile.nodes) {
    const f = node.callFrame;
    const url = f.url.startsWith('file://') ? relative(root, f.url.slice(7)) : f.url;
    const name = `${f.functionName || '(anonymous)'} ${url ? `${url}:${f.lineNumber + 1}` : ''}`.trim();
    const count = hits ? (hits.get(node.id) ?? 0) : node.hitCount;
    byFunction.set(name, (byFunction.get(name) ?? 0) + count);
    total += count;
  }
  const byArea = new Map();
  for (const [name, hits] of byFunction) byArea.set(areaOf(name), (byArea.get(areaOf(name)) ?? 0) + hits);
  const intervalUs = (profile.endTime - profile.startTime) / Math.max(1, profile.samples.length);
  return { byFunction, byArea, total, intervalUs };
}

/** The `top` largest entries of a Map of counts, as "share name" lines. */
export function topLines(counts, total, top) {
  const pct = (h) => ((100 * h) / total).toFixed(1).padStart(5) + ' %';
  return [...counts].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, hits]) => `${pct(hits)} ${name}`);
}
