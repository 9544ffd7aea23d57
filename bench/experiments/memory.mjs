// Where one gateway process's memory goes, as the main bench drives it for the P-256 row: PSS by kind of mapping
// (/proc/<pid>/smaps) and V8's heap spaces (the gateway's /metrics), at idle, after the 2 s saturated warm-up, and
// after 10 s at 500 and at 1,000 req/s. Run after `npx tsc -p tsconfig.json`:
//   node bench/experiments/memory.mjs                    # MEM_ENV='{"NODE_OPTIONS":"--max-semi-space-size=4"}' to compare
// bench/README.md, "Memory".
import { readFileSync, rmSync } from 'node:fs';
import { p256DemoHome, runWrk, scrapeMetrics, sleep, startGateway } from '../lib/common.mjs';

const { home, port, sign } = await p256DemoHome('hsm-gateway-memory-');
const env = JSON.parse(process.env.MEM_ENV ?? '{}');
// MEM_NODE_FLAGS: node flags for the measured gateway (space-separated; e.g. --trace-gc, which NODE_OPTIONS refuses).
const nodeArgs = (process.env.MEM_NODE_FLAGS ?? '').split(' ').filter(Boolean);

/** PSS (MB) of the process's mappings, by kind. */
function pssByKind(pid) {
  const kinds = {};
  let kind = 'other';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[1];
      kind = name === '' ? 'anonymous (V8 heap, malloc arenas, thread stacks)' : name === '[heap]' ? '[heap] (brk malloc)' : name.startsWith('[stack') ? '[stack]' : /\.so|\/node$|\/nodejs$/.test(name) ? 'code and data of node and libraries' : name.startsWith('[') ? name : 'files';
      continue;
    }
    const pss = /^Pss:\s+(\d+) kB/.exec(line);
    if (pss) kinds[kind] = (kinds[kind] ?? 0) + Number(pss[1]) / 1024;
  }
  return kinds;
}

async function snapshot(label, pid, url) {
  const metrics = await scrapeMetrics(url);
  const heap = {};
  for (const m of metrics.matchAll(/^nodejs_heap_space_size_(total|used)_bytes\{space="([^"]+)"[^}]*\} (\S+)/gm)) {
    if (Number(m[3]) < 2 ** 19) continue;
    heap[m[2]] = { ...heap[m[2]], [m[1]]: Number(m[3]) / 2 ** 20 };
  }
  const kinds = pssByKind(pid);
  const total = Object.values(kinds).reduce((a, b) => a + b, 0);
  console.log(`\n${label}: PSS ${total.toFixed(0)} MB`);
  for (const [k, v] of Object.entries(kinds).sort((a, b) => b[1] - a[1])) if (v >= 1) console.log(`  ${v.toFixed(1).padStart(6)} MB  ${k}`);
  console.log(`  V8 heap spaces, used / total MB: ${Object.entries(heap).map(([s, v]) => `${s} ${(v.used ?? 0).toFixed(1)} / ${(v.total ?? 0).toFixed(1)}`).join(', ')}`);
}

// MEM_PRIOR_SECONDS: a first gateway in the same home answers that long at saturation, and stops, before the measured
// one starts (the main bench runs its cases one after another in one home: the replay journal carries their nonces).
const PRIOR_SECONDS = Number(process.env.MEM_PRIOR_SECONDS ?? 0);
if (PRIOR_SECONDS > 0) {
  const prior = await startGateway({ home, port, env });
  const run = await runWrk({ url: prior.url, paths: sign(Math.ceil(PRIOR_SECONDS * 5000)), seconds: PRIOR_SECONDS, connections: 64, gatewayPid: prior.child.pid });
  console.log(`a first gateway in this home answered ${run.requests} requests in ${PRIOR_SECONDS} s, then stopped`);
  await prior.stop();
}
const gateway = await startGateway({ home, port, env, nodeArgs });
const pid = gateway.child.pid;
try {
  await sleep(1000);
  await snapshot('idle after start-up', pid, gateway.url);
  await runWrk({ url: gateway.url, paths: sign(30_000), seconds: 2, connections: 64, gatewayPid: pid });
  await snapshot('after the 2 s saturated warm-up (64 connections)', pid, gateway.url);
  for (const rate of [500, 1000]) {
    const run = await runWrk({ url: gateway.url, paths: sign(Math.ceil(rate * 12 * 1.1)), seconds: 10, connections: 64, rate, gatewayPid: pid });
    await snapshot(`after 10 s at ${rate}/s (p99 ${run.latencyMs.p99.toFixed(1)} ms, bench peak PSS ${run.gateway.pssMB.toFixed(0)} MB)`, pid, gateway.url);
  }
} finally {
  await gateway.stop();
  rmSync(home, { recursive: true, force: true });
}
