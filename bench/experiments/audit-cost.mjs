// Experiment behind "The audit trail's cost on the whole gateway" (bench/README.md): the same gateway with the
// hash-chained audit trail on (the demo's `audit.file`, each record handed to the OS before its answer) and off (no
// `audit.file`), in alternating rounds of one run (on, off, off, on, on, off, …), so that load from other work on the
// machine falls on both alike. Each round: a fresh gateway process, a 2 s warm-up, then wrk at a fixed rate and
// saturated, as bench/run.mjs does (pre-signed V1 AsymmetricSign requests, 64 keep-alive connections).
//
// Usage: npx tsc -p tsconfig.json && UV_THREADPOOL_SIZE=64 node bench/experiments/audit-cost.mjs
// Environment: EXP_ROUNDS (pairs of rounds, 3), BENCH_SECONDS (per run, 10), BENCH_RATES (1000), BENCH_CONNECTIONS
// (64), BENCH_CASES (one case, 'ECDSA P-256'), BENCH_WORKERS (the gateway's server.workers; default: its default).
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { parse, stringify } from 'yaml';
import { benchCases, demoOf, DIGEST, freePort, machine, MODULE, presign, ROOT, runWrk, sleep, startGateway } from '../lib/common.mjs';

const PAIRS = Number(process.env.EXP_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const RATES = (process.env.BENCH_RATES ?? '1000').split(',').filter(Boolean).map(Number);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 64);
const CASE = process.env.BENCH_CASES?.split(',')[0]?.trim() ?? 'ECDSA P-256';

const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));
const log = (...a) => console.error('audit-cost:', ...a);
const host = machine();
log(`${host.nproc} cores (${host.cpu}), Node ${host.node}, ${host.wrk}, load average ${host.loadAverageAtStart.join(' ')}`);

const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-audit-cost-'));
const port = await freePort();
bootstrapDemo({ home, modulePath: MODULE, host: '127.0.0.1', port, registryIn: 'file' });
const d = demoOf(home);
const c = benchCases(pkcs11js, { sm2: false }).find((x) => x.name === CASE);
if (!c) throw new Error(`no bench case named ${CASE}`);
const key = d.demo.keys.find((k) => k.alias === c.alias);
const paths = join(home, 'requests.txt');
const sign = (count) =>
  presign(paths, count, { accessKeyId: d.demo.accessKeyId, secret: d.secret, params: { Action: 'AsymmetricSign', KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: c.algorithm, Digest: DIGEST.toString('base64') } });

// The demo's config (audit on) and the same without `audit.file` (off), side by side: relative paths stay valid.
const config = parse(readFileSync(join(home, 'gateway.yaml'), 'utf8'));
const auditFile = config.audit.file;
const { audit: _audit, ...withoutAudit } = config;
writeFileSync(join(home, 'audit-off.yaml'), stringify(withoutAudit));
const configOf = { on: join(home, 'gateway.yaml'), off: join(home, 'audit-off.yaml') };
const auditLines = () => (existsSync(auditFile) ? readFileSync(auditFile, 'utf8').split('\n').length - 1 : 0);

const order = Array.from({ length: PAIRS }, (_, i) => (i % 2 === 0 ? ['on', 'off'] : ['off', 'on'])).flat();
const rounds = [];
for (const [i, audit] of order.entries()) {
  const load = loadavg().map((x) => Number(x.toFixed(2)));
  const linesBefore = auditLines();
  const gateway = await startGateway({ home, port, env: { HSM_GATEWAY_CONFIG: configOf[audit], ...(process.env.BENCH_WORKERS ? { HSM_GATEWAY_WORKERS: process.env.BENCH_WORKERS } : {}) } });
  const round = { round: i + 1, audit, loadAverage: load, runs: [] };
  try {
    const warm = await runWrk({ url: gateway.url, paths: sign(20_000), seconds: 2, connections: CONNECTIONS, gatewayPid: gateway.child.pid });
    for (const rate of RATES) {
      round.runs.push(await runWrk({ url: gateway.url, paths: sign(Math.ceil(rate * (SECONDS + 2) * 1.1)), seconds: SECONDS, connections: CONNECTIONS, rate, gatewayPid: gateway.child.pid }));
    }
    await sleep(500);
    const count = Math.ceil(Math.max(warm.opsPerSecond * 2.5, 2000) * (SECONDS + 1));
    round.runs.push(await runWrk({ url: gateway.url, paths: sign(count), seconds: SECONDS, connections: CONNECTIONS, gatewayPid: gateway.child.pid }));
  } finally {
    await gateway.stop();
  }
  // Proof of the mode: the trail grew by every answered request with audit on, not at all with it off.
  round.auditRecords = auditLines() - linesBefore;
  rounds.push(round);
  const summary = round.runs.map((r) => `${r.rate ? `@${r.rate}/s` : 'saturated'} ${r.opsPerSecond.toFixed(0)}/s p50 ${r.latencyMs.p50.toFixed(2)} p99 ${r.latencyMs.p99.toFixed(2)} ms`).join('; ');
  log(`round ${i + 1} audit ${audit} (load ${load.join(' ')}): ${summary}; audit records ${round.auditRecords}`);
}
rmSync(home, { recursive: true, force: true });

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const f = (x, digits = 0) => x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const labels = [...RATES.map((r) => `@${r}/s`), 'saturated'];
console.log(`\n## Audit trail on vs off (${CASE}, ${SECONDS} s per run, ${CONNECTIONS} connections, ${order.length} alternating rounds)\n`);
console.log(`load average at start ${host.loadAverageAtStart.join(' ')}, at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
console.log(`| round | audit | load avg (1 min) | ${labels.map((l) => `${l}: answered /s, p50 / p99 ms, gateway CPU %`).join(' | ')} | machine CPU % | audit records |`);
console.log(`|---|---|---|${labels.map(() => '---|').join('')}---|---|`);
for (const r of rounds) {
  const cells = r.runs.map((x) => `${f(x.opsPerSecond)}, ${f(x.latencyMs.p50, 2)} / ${f(x.latencyMs.p99, 2)}, ${f(x.gateway.cpuPercent)}`);
  console.log(`| ${r.round} | ${r.audit} | ${r.loadAverage[0]} | ${cells.join(' | ')} | ${r.runs.map((x) => f(x.machineCpuPercent)).join(' / ')} | ${f(r.auditRecords)} |`);
}
console.log('\nmedians:\n');
console.log(`| audit | ${labels.map((l) => `${l} answered /s | ${l} p99 ms | ${l} gateway CPU µs / request`).join(' | ')} |`);
console.log(`|---|${labels.map(() => '---|---|---|').join('')}`);
for (const audit of ['on', 'off']) {
  const mine = rounds.filter((r) => r.audit === audit);
  const cells = labels.map((_, j) => {
    const runs = mine.map((r) => r.runs[j]);
    const cpuPerRequest = median(runs.map((x) => (x.gateway.cpuPercent / 100 / x.opsPerSecond) * 1e6));
    return `${f(median(runs.map((x) => x.opsPerSecond)))} | ${f(median(runs.map((x) => x.latencyMs.p99)), 2)} | ${f(cpuPerRequest)}`;
  });
  console.log(`| ${audit} | ${cells.join(' | ')} |`);
}
