// What one request costs the gateway in CPU, at a fixed offered rate: a measure that holds on a busy machine, where
// throughput does not. Builds of the gateway (snapshots) are compared side by side, interleaved, in the same minutes.
//
//   node bench/cost.mjs --snapshot <dir>       copy this tree's build (dist/, bin/, the native addon) to <dir>
//   npm run bench:cost                         measure this tree's build
//   COST_VARIANTS=before=<dir>,after=. npm run bench:cost      compare builds (`.` = this tree)
//   COST_VARIANTS='default=.,semi4=.|--max-semi-space-size=4'   node options of a variant's gateway, after `|`
//
// Each variant is a gateway process of its own (its own demo home, P-256 key by default), started once; then every
// round runs each variant once, after a saturated warm-up (COST_WARMUP_SECONDS: the JIT's compiling is CPU too), for
// COST_SECONDS at COST_RATE requests/s (wrk, pre-signed V1 AsymmetricSign, each
// request sent once), alternating the order between rounds. Per run: the gateway's CPU time over the run (every
// thread, and the main thread alone, from /proc/<pid>/task/*/schedstat, in ns) divided by the requests answered 200.
// COST_PROFILE=1 adds, per variant, a gateway under --cpu-prof at the same rate: self-time shares by function / file.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pkcs11js from 'pkcs11js';
import { readNewestProfile, selfTime, topLines } from './lib/cpu-profile.mjs';
import { benchCases, demoOf, DIGEST, freePort, MODULE, presign, ROOT, sleep, startGateway, WRK } from './lib/common.mjs';

if (process.argv[2] === '--snapshot') {
  const dir = resolve(process.argv[3] ?? '');
  if (!process.argv[3]) throw new Error('usage: node bench/cost.mjs --snapshot <dir>');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, 'native/async-pkcs11'), { recursive: true });
  for (const part of ['dist', 'bin', 'package.json', 'native/async-pkcs11/build']) cpSync(join(ROOT, part), join(dir, part), { recursive: true });
  // Dependencies and the test tokens are the same for every build: shared, not copied.
  for (const part of ['node_modules', 'softhsm']) symlinkSync(join(ROOT, part), join(dir, part));
  console.log(`snapshot of ${ROOT}'s build in ${dir}`);
  process.exit(0);
}

const RATE = Number(process.env.COST_RATE ?? 400);
const SECONDS = Number(process.env.COST_SECONDS ?? 10);
const WARMUP_SECONDS = Number(process.env.COST_WARMUP_SECONDS ?? 5);
const ROUNDS = Number(process.env.COST_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.COST_CONNECTIONS ?? 32);
const CASE = process.env.COST_CASE ?? 'ECDSA P-256';
const variants = (process.env.COST_VARIANTS ?? 'current=.').split(',').map((v, i) => {
  const [label, spec] = v.includes('=') ? [v.slice(0, v.indexOf('=')), v.slice(v.indexOf('=') + 1)] : [`v${i + 1}`, v];
  // `dir|--flag|…`: node options for that variant's gateway (e.g. `.|--max-semi-space-size=4`).
  const [dir, ...nodeFlags] = spec.split('|');
  return { label, root: resolve(ROOT, dir), nodeFlags };
});
const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));

/**
 * CPU time (ns) of a process: every thread's, its main thread's, and by thread name (libuv pool threads live as long
 * as the process does).
 */
function cpuNs(pid) {
  let all = 0;
  let main = 0;
  const byName = new Map();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const ns = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      const name = tid === String(pid) ? 'main' : readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      all += ns;
      if (tid === String(pid)) main = ns;
      byName.set(name, (byName.get(name) ?? 0) + ns);
    } catch {
      // a thread that ended meanwhile
    }
  }
  return { all, main, byName };
}

/** µs per request of each thread name over a run, largest first. */
function threadShares(before, after, requests) {
  return [...after.byName]
    .map(([name, ns]) => [name, (ns - (before.byName.get(name) ?? 0)) / 1e3 / requests])
    .sort((a, b) => b[1] - a[1])
    .map(([name, us]) => `${name} ${us.toFixed(0)}`)
    .join(', ');
}

/** One wrk run at the fixed rate; the gateway's CPU over exactly that run. */
async function run(v, seconds, rate = RATE) {
  const paths = presign(join(v.home, 'paths.txt'), (rate || 20_000) * seconds * 1.1 + 100, v.signing);
  const wrkArgs = ['-t', '1', '-c', String(CONNECTIONS), '-d', `${seconds}s`, '--timeout', '10s', '-s', join(ROOT, 'bench/wrk/presigned.lua'), v.gateway.url];
  // COST_PERF=<dir>: `perf record` (cpu-clock: CPU time, every thread, kernel included) over the measured runs.
  const perf = process.env.COST_PERF && seconds === SECONDS ? spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', '1999', '-g', '-p', String(v.gateway.child.pid), '-o', join(process.env.COST_PERF, `${v.label}-${Date.now()}.data`)], { stdio: 'ignore' }) : undefined;
  const before = cpuNs(v.gateway.child.pid);
  const child = spawn(WRK, wrkArgs, { env: { ...process.env, BENCH_PATHS: paths, BENCH_RATE: String(rate), BENCH_THREADS: '1' }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const code = await new Promise((r) => child.once('exit', r));
  const after = cpuNs(v.gateway.child.pid);
  if (perf) {
    perf.kill('SIGINT');
    await new Promise((r) => perf.once('exit', r));
  }
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (code !== 0 || !line) throw new Error(`wrk failed (${code}):\n${out}`);
  const r = JSON.parse(line.slice('BENCH_JSON '.length));
  const ok = r.requests - r.errors.status;
  const errors = r.errors.status + r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout;
  return { ok, errors, threads: threadShares(before, after, ok), rate: ok / (r.duration_us / 1e6), msPerRequest: (after.all - before.all) / 1e6 / ok, mainMsPerRequest: (after.main - before.main) / 1e6 / ok, p50: r.latency_us.p50 / 1000, p99: r.latency_us.p99 / 1000 };
}

async function start(v, cpuProf) {
  const port = await freePort();
  // --perf-basic-prof-only-functions: perf names the JIT's functions (/tmp/perf-<pid>.map).
  const nodeArgs = [...v.nodeFlags, ...(process.env.COST_PERF ? ['--perf-basic-prof-only-functions'] : [])];
  const options = { home: v.home, port, root: v.root, nodeArgs, ...(cpuProf ? { cpuProf } : {}), env: { HSM_GATEWAY_WORKERS: '1' } };
  // SoftHSMv2 has been seen to answer CKR_GENERAL_ERROR at start-up on a loaded machine: one more try.
  return startGateway(options).catch(() => startGateway(options));
}

const c = benchCases(pkcs11js, { sm2: false }).find((x) => x.name === CASE);
if (!c) throw new Error(`unknown COST_CASE ${CASE}`);
for (const v of variants) {
  if (!existsSync(join(v.root, 'bin/hsm-gateway.cjs'))) throw new Error(`${v.label}: no build in ${v.root} (node bench/cost.mjs --snapshot <dir>)`);
  v.home = mkdtempSync(join(tmpdir(), `hsm-gateway-cost-${v.label}-`));
  bootstrapDemo({ home: v.home, modulePath: MODULE, host: '127.0.0.1', port: 0, registryIn: 'file' });
  const { demo, secret } = demoOf(v.home);
  const key = demo.keys.find((k) => k.alias === c.alias);
  v.signing = { accessKeyId: demo.accessKeyId, secret, params: { Action: 'AsymmetricSign', KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: c.algorithm, Digest: DIGEST.toString('base64') } };
  v.gateway = await start(v);
  v.runs = [];
}
const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
console.log(`cost: ${CASE}, ${RATE} req/s offered for ${SECONDS} s (wrk, ${CONNECTIONS} connections), ${ROUNDS} rounds, ${WARMUP_SECONDS} s warm-up (saturated); load average ${load()}`);
try {
  // Warm-up as fast as the gateway answers: the JIT's compilation (V8's background threads) is done before measuring.
  for (const v of variants) await run(v, WARMUP_SECONDS, 0);
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? variants : [...variants].reverse();
    for (const v of order) {
      const r = await run(v, SECONDS);
      v.runs.push(r);
      console.log(`round ${round + 1} ${v.label.padEnd(12)} ${r.msPerRequest.toFixed(3)} CPU-ms/req (main thread ${r.mainMsPerRequest.toFixed(3)}), ${r.rate.toFixed(0)}/s answered, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, errors ${r.errors}, load ${load()}`);
      if (process.env.COST_THREADS) console.log(`  µs / request by thread: ${r.threads}`);
    }
  }
} finally {
  for (const v of variants) await v.gateway.stop();
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
const fmt = (xs) => `${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(3)}–${Math.max(...xs).toFixed(3)})`;
const base = median(variants[0].runs.map((r) => r.msPerRequest));
console.log('\n| variant | CPU ms / request, median (min–max) | main thread ms / request | vs first | p50 ms | p99 ms | errors |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const v of variants) {
  const cost = v.runs.map((r) => r.msPerRequest);
  const change = ((median(cost) / base - 1) * 100).toFixed(1);
  console.log(`| ${v.label} | ${fmt(cost)} | ${fmt(v.runs.map((r) => r.mainMsPerRequest))} | ${change} % | ${median(v.runs.map((r) => r.p50)).toFixed(2)} | ${median(v.runs.map((r) => r.p99)).toFixed(2)} | ${v.runs.reduce((a, r) => a + r.errors, 0)} |`);
}

if (process.env.COST_PROFILE) {
  for (const v of variants) {
    const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-cost-prof-'));
    v.gateway = await start(v, dir);
    await run(v, WARMUP_SECONDS, 0);
    const from = Number(process.hrtime.bigint() / 1000n);
    const r = await run(v, SECONDS);
    const to = Number(process.hrtime.bigint() / 1000n);
    await v.gateway.stop();
    await sleep(100);
    // Shares of the busy time during the measured run: idle (waiting for requests at a fixed rate) left out.
    const { byFunction, byArea } = selfTime(readNewestProfile(dir), v.root, { from, to });
    const idle = byFunction.get('(idle)') ?? 0;
    byFunction.delete('(idle)');
    byArea.delete('(idle)');
    const busy = [...byFunction.values()].reduce((a, b) => a + b, 0);
    console.log(`\n${v.label} under --cpu-prof: ${r.rate.toFixed(0)}/s, ${r.msPerRequest.toFixed(3)} CPU-ms/req; main thread busy ${busy} samples (idle ${idle}); shares of busy time, by function:`);
    for (const line of topLines(byFunction, busy, Number(process.env.COST_PROFILE_TOP ?? 30))) console.log(line);
    console.log('by file / package:');
    for (const line of topLines(byArea, busy, 20)) console.log(line);
    rmSync(dir, { recursive: true, force: true });
  }
}
for (const v of variants) rmSync(v.home, { recursive: true, force: true });
