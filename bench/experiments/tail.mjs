// Where the tail at a fixed rate comes from: one gateway process, P-256 at TAIL_RATE req/s (default 1,000) for 10 s
// per round after a saturated warm-up, as the main bench's fixed-rate row drives it. Per round it puts side by side:
// - wrk's latency (from the request's write to its answer's read, in the load generator);
// - the gateway's own latency, as each request's audit record has it (`latencyMs`: from the API handler's first step
//   to the record, so without the audit write, the answer's write and everything before Express);
// - the main thread's stalls over 8 ms (a 1 ms timer in the gateway, loaded with `-r stall-logger.cjs`), which the
//   event-loop lag histogram's p99 (10 ms resolution, one sample per 10 ms) does not show when they are rare.
// Run after `npx tsc -p tsconfig.json`:
//   node bench/experiments/tail.mjs           # TAIL_NODE_FLAGS=--trace-gc adds V8's collections to the output
// bench/README.md, "Why the throughput targets are not met" (the tail at 1,000 req/s).
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { p256DemoHome, runWrk, sleep, startGateway } from '../lib/common.mjs';

const RATE = Number(process.env.TAIL_RATE ?? 1000);
const ROUNDS = Number(process.env.TAIL_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.TAIL_CONNECTIONS ?? 64);
const nodeArgs = ['-r', join(import.meta.dirname, 'stall-logger.cjs'), ...(process.env.TAIL_NODE_FLAGS ?? '').split(' ').filter(Boolean)];

const { home, port, sign } = await p256DemoHome('hsm-gateway-tail-');
const gateway = await startGateway({ home, port, nodeArgs });
const pid = gateway.child.pid;
const at = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
const fixed = (x) => (x === undefined ? '–' : x.toFixed(1));

/** The latencyMs of the audit records written from `since` (epoch ms) on, sorted. */
function auditLatencies(since) {
  const dir = join(home, 'audit');
  const out = [];
  for (const file of readdirSync(dir)) {
    for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
      if (!line) continue;
      const r = JSON.parse(line);
      if (r.latencyMs !== undefined && Date.parse(r.time) >= since) out.push(r.latencyMs);
    }
  }
  return out.sort((a, b) => a - b);
}

try {
  await runWrk({ url: gateway.url, paths: sign(30_000), seconds: 3, connections: 64, gatewayPid: pid });
  await sleep(1000);
  console.log(`| round | wrk p50 / p99 / p99.9 / max ms | gateway's own (audit latencyMs) p50 / p99 / p99.9 / max ms | loop lag p99 ms (/metrics) | gateway CPU % |\n|---|---|---|---|---|`);
  for (let round = 1; round <= ROUNDS; round++) {
    const since = Date.now();
    process.stderr.write(`round ${round}: from ${since}\n`);
    const run = await runWrk({ url: gateway.url, paths: sign(Math.ceil(RATE * 12 * 1.1)), seconds: 10, connections: CONNECTIONS, rate: RATE, gatewayPid: pid });
    const own = auditLatencies(since);
    const w = run.latencyMs;
    console.log(
      `| ${round} | ${fixed(w.p50)} / ${fixed(w.p99)} / ${fixed(w.p999)} / ${fixed(w.max)} | ${fixed(at(own, 50))} / ${fixed(at(own, 99))} / ${fixed(at(own, 99.9))} / ${fixed(own.at(-1))} | ${fixed(run.eventLoopLagP99Ms)} | ${run.gateway.cpuPercent.toFixed(0)} |`,
    );
  }
  console.log('\nThe gateway\'s stalls over 8 ms are on stderr ("STALL <ms> at <epoch ms>"): compare their times with the rounds\'.');
} finally {
  await gateway.stop();
  rmSync(home, { recursive: true, force: true });
}
