// npm run bench: for every demo key / algorithm, in one run on this machine —
//   1. the raw token: pkcs11js C_SignInit + C_SignAsync with N sessions (N swept), the best;
//   2. the gateway (bin/hsm-gateway.cjs, real V1 authentication, its default server.workers) driven by wrk in another
//      process with pre-signed unique requests: at saturation and at fixed rates (500 and 1,000 req/s);
//   3. a small sample through the official SDK client (@alicloud/kms20160120), to show the client-side cost apart.
// Prints markdown tables and writes bench/results/<date>-<host>.json and .md. See bench/README.md.
//
// Environment: BENCH_SECONDS (gateway run, default 10), BENCH_RAW_SECONDS (per session count, default 2),
// BENCH_CONNECTIONS (wrk, default 64), BENCH_RATES (default 500,1000), BENCH_CASES (names, comma-separated),
// BENCH_WORKERS (the gateway's server.workers; default: its own default), BENCH_SDK_REQUESTS (default 200),
// BENCH_SESSIONS (the gateway's sessions per worker; default: its own default), BENCH_OUT (results folder),
// BENCH_CLUSTER_WORKERS (default: one per core; 1 = skip): every case also at saturation on that many cluster workers,
// and P-256 at 1,000 req/s.
//   4. baselines in the same run: an Express 5 "hello world" and a bare node:http server answering a body of the same
//      size, driven by the same wrk (columns "gateway ÷ Express", "gateway ÷ node:http");
//   5. network-HSM rows: the gateway on the emulated network HSM (softhsm/netsim) at BENCH_NETSIM_DELAYS_US per call
//      (default 200,1000) with BENCH_NETSIM_SESSIONS sessions (default 32), saturated and at 1,000 req/s, beside the raw
//      token through the same emulator (the gateway's addon signing, one job per sign, 32 sessions). BENCH_NETSIM_CASES
//      (default "ECDSA P-256"; empty = skip).
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { benchCases, demoOf, DIGEST, freePort, machine, measureRawInChild, MODULE, presign, ROOT, runWrk, sleep, startBaseline, startGateway } from './lib/common.mjs';
import { openRawToken } from './lib/raw-token.mjs';
import { markdownReport } from './lib/report.mjs';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const RAW_SECONDS = Number(process.env.BENCH_RAW_SECONDS ?? 2);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 64);
const RATES = (process.env.BENCH_RATES ?? '500,1000').split(',').filter(Boolean).map(Number);
const SDK_REQUESTS = Number(process.env.BENCH_SDK_REQUESTS ?? 200);
const RAW_SESSIONS = [1, 2, 4, 8, 16, 32];
const NETSIM = join(ROOT, 'softhsm/netsim/build/libnetsim-pkcs11.so');
const NETSIM_DELAYS_US = (process.env.BENCH_NETSIM_DELAYS_US ?? '200,1000').split(',').filter(Boolean).map(Number);
const NETSIM_SESSIONS = Number(process.env.BENCH_NETSIM_SESSIONS ?? 32);
const NETSIM_CASES = (process.env.BENCH_NETSIM_CASES ?? 'ECDSA P-256').split(',').map((s) => s.trim()).filter(Boolean);
const OUT = process.env.BENCH_OUT ?? join(ROOT, 'bench/results');
// Besides the gateway's default (server.workers 1), each case runs at saturation with this many cluster workers.
const CLUSTER_WORKERS = Number(process.env.BENCH_CLUSTER_WORKERS ?? availableParallelism());
if (process.env.UV_THREADPOOL_SIZE === undefined || Number(process.env.UV_THREADPOOL_SIZE) < 32) {
  console.warn('bench: UV_THREADPOOL_SIZE < 32 in the bench process: the raw token sweep is capped by the libuv pool (npm run bench sets 64)');
}

const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));
const { sm2TokenAvailable } = await import(join(ROOT, 'dist/demo/sm2-demo.js'));
const require = createRequire(import.meta.url);
const Kms = require('@alicloud/kms20160120');

const log = (...a) => console.error('bench:', ...a);
const host = machine();
log(`${host.nproc} cores (${host.cpu}), Node ${host.node}, ${host.softhsm ? `SoftHSM ${host.softhsm}` : ''}, ${host.wrk}, load average ${host.loadAverageAtStart.join(' ')}`);

const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-bench-'));
const port = await freePort();
// The registry as a file: the bench reads it to find the demo keys' labels (signing serves the same either way).
bootstrapDemo({ home, modulePath: MODULE, host: '127.0.0.1', port, registryIn: 'file' });
const d = demoOf(home);
const wanted = process.env.BENCH_CASES?.split(',').map((s) => s.trim());
const cases = benchCases(pkcs11js, { sm2: sm2TokenAvailable() && d.sm2Dir !== undefined }).filter((c) => !wanted || wanted.includes(c.name));
const results = { machine: host, started: new Date().toISOString(), settings: { SECONDS, RAW_SECONDS, CONNECTIONS, RATES, SDK_REQUESTS, workers: process.env.BENCH_WORKERS ?? 'default', clusterWorkers: CLUSTER_WORKERS, sessions: process.env.BENCH_SESSIONS ?? 'default' }, cases: [] };

// ---------------------------------------------------------------- 1. raw token
const labelOf = (alias) => d.registry.keys.find((k) => k.aliases.includes(alias)).versions[0].label;
for (const tokenName of ['default', 'sm2']) {
  const mine = cases.filter((c) => (c.token ?? 'default') === tokenName);
  if (mine.length === 0) continue;
  const token =
    tokenName === 'default'
      ? await openRawToken({ module: MODULE, tokenLabel: 'hsm-gateway-demo', pin: d.pin, environment: { SOFTHSM2_CONF: d.softhsmConf }, sessions: Math.max(...RAW_SESSIONS) })
      : await openRawToken({ module: join(ROOT, 'softhsm/sm2-token/build/libsm2token.so'), tokenLabel: d.sm2TokenLabel, pin: d.pin, environment: { SM2TOKEN_DIR: d.sm2Dir }, sessions: Math.max(...RAW_SESSIONS) });
  for (const c of mine) {
    const key = token.findKey(labelOf(c.alias));
    await token.measure(c, key, 4, 0.5); // warm-up
    const sweep = [];
    for (const n of RAW_SESSIONS) sweep.push(await token.measure(c, key, n, RAW_SECONDS));
    const best = sweep.reduce((a, b) => (b.opsPerSecond > a.opsPerSecond ? b : a));
    results.cases.push({ name: c.name, algorithm: c.algorithm, raw: { best, sweep } });
    log(`raw ${c.name}: best ${best.opsPerSecond.toFixed(0)}/s with ${best.sessions} sessions`);
  }
  token.close();
}

// ---------------------------------------------------------------- 4. baselines: what the framework alone answers
const paths = join(home, 'requests.txt');
const signerFor = (c) => {
  const key = d.demo.keys.find((k) => k.alias === c.alias);
  const params = { Action: 'AsymmetricSign', KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: c.algorithm, Digest: DIGEST.toString('base64') };
  return (count) => presign(paths, count, { accessKeyId: d.demo.accessKeyId, secret: d.secret, params });
};
results.baselines = {};
if (cases.length > 0) {
  // The same request lines as the gateway gets (the baselines ignore them): wrk's own cost is the same.
  const lines = signerFor(cases[0])(200_000);
  for (const kind of ['express', 'node:http']) {
    const server = await startBaseline(kind, port);
    try {
      await runWrk({ url: server.url, paths: lines, seconds: 2, connections: CONNECTIONS, gatewayPid: server.child.pid });
      const sat = await runWrk({ url: server.url, paths: lines, seconds: SECONDS, connections: CONNECTIONS, gatewayPid: server.child.pid });
      results.baselines[kind] = sat;
      log(`baseline ${kind}: ${sat.opsPerSecond.toFixed(0)}/s, p99 ${sat.latencyMs.p99.toFixed(2)} ms`);
    } finally {
      await server.stop();
    }
  }
}
const versusBaselines = (opsPerSecond) => ({
  express: opsPerSecond / results.baselines.express?.opsPerSecond,
  http: opsPerSecond / results.baselines['node:http']?.opsPerSecond,
});

// ---------------------------------------------------------------- 2. + 3. the gateway, per case on a fresh process
// Every gateway starts without the nonces the earlier ones accepted: they share this home, and its replay journal
// (replay/) would otherwise hand each one the nonces of every case before it (tens of thousands per case), memory
// its row would count as its own.
const freshGateway = (options) => {
  rmSync(join(home, 'replay'), { recursive: true, force: true });
  return startGateway(options);
};
const gatewayEnv = {
  ...(process.env.BENCH_WORKERS ? { HSM_GATEWAY_WORKERS: process.env.BENCH_WORKERS } : {}),
  ...(process.env.BENCH_SESSIONS ? { HSM_GATEWAY_SESSIONS: process.env.BENCH_SESSIONS } : {}),
};
for (const c of cases) {
  const entry = results.cases.find((e) => e.name === c.name);
  const key = d.demo.keys.find((k) => k.alias === c.alias);
  const sign = signerFor(c);
  const gateway = await freshGateway({ home, port, env: gatewayEnv });
  entry.gateway = { startupSeconds: gateway.startupSeconds, runs: [] };
  try {
    // Warm-up (JIT, pools, connections), which also sizes the pre-signed request file of the saturation run.
    const warm = await runWrk({ url: gateway.url, paths: sign(Math.min(40_000, entry.raw.best.opsPerSecond * 2 + 2000)), seconds: 2, connections: CONNECTIONS, gatewayPid: gateway.child.pid });
    for (const rate of RATES) {
      const run = await runWrk({ url: gateway.url, paths: sign(Math.ceil(rate * (SECONDS + 2) * 1.1)), seconds: SECONDS, connections: CONNECTIONS, rate, gatewayPid: gateway.child.pid });
      entry.gateway.runs.push(run);
      log(`gateway ${c.name} @${rate}/s: ${run.opsPerSecond.toFixed(0)}/s p99 ${run.latencyMs.p99.toFixed(2)} ms, errors ${run.errors}`);
    }
    await sleep(500);
    // Enough unique requests for the run even if it goes much faster than the (shorter, colder) warm-up did.
    const count = Math.ceil(Math.max(warm.opsPerSecond * 2.5, 2000) * (SECONDS + 1));
    const sat = await runWrk({ url: gateway.url, paths: sign(count), seconds: SECONDS, connections: CONNECTIONS, gatewayPid: gateway.child.pid });
    sat.rate = 0;
    entry.gateway.saturation = sat;
    entry.ratio = sat.opsPerSecond / entry.raw.best.opsPerSecond;
    entry.versus = versusBaselines(sat.opsPerSecond);
    log(`gateway ${c.name} saturated: ${sat.opsPerSecond.toFixed(0)}/s (${(100 * entry.ratio).toFixed(0)} % of raw), p99 ${sat.latencyMs.p99.toFixed(1)} ms, errors ${sat.errors}`);

    // 3. The official SDK client, 8 requests in flight, in this process: its CPU per request is the client's cost.
    const client = new Kms.default({ endpoint: `127.0.0.1:${port}`, protocol: 'http', regionId: 'cn-hangzhou', accessKeyId: d.demo.accessKeyId, accessKeySecret: d.secret });
    const request = () => client.asymmetricSign(new Kms.AsymmetricSignRequest({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: c.algorithm, digest: DIGEST.toString('base64') }));
    for (let i = 0; i < 20; i++) await request();
    const latencies = [];
    let next = 0;
    let errors = 0;
    const cpu = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next++ < SDK_REQUESTS) {
          const t = performance.now();
          try {
            await request();
            latencies.push(performance.now() - t);
          } catch {
            errors++;
          }
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const used = process.cpuUsage(cpu);
    latencies.sort((a, b) => a - b);
    const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
    entry.sdk = { requests: SDK_REQUESTS, concurrency: 8, opsPerSecond: latencies.length / seconds, errors, latencyMs: { p50: q(50), p99: q(99) }, clientCpuMsPerRequest: (used.user + used.system) / 1000 / SDK_REQUESTS };
    log(`sdk ${c.name}: ${entry.sdk.opsPerSecond.toFixed(0)}/s, client CPU ${entry.sdk.clientCpuMsPerRequest.toFixed(2)} ms/request`);
  } finally {
    await gateway.stop();
  }
  // The same at saturation with one worker per core (server.workers: auto), and P-256 at 1,000 req/s with it.
  if (CLUSTER_WORKERS > 1) {
    const clustered = await freshGateway({ home, port, env: { ...gatewayEnv, HSM_GATEWAY_WORKERS: String(CLUSTER_WORKERS) } });
    entry.cluster = { workers: CLUSTER_WORKERS, startupSeconds: clustered.startupSeconds, runs: [] };
    try {
      const warm = await runWrk({ url: clustered.url, paths: sign(Math.min(40_000, entry.raw.best.opsPerSecond * 2 + 2000)), seconds: 2, connections: CONNECTIONS, gatewayPid: clustered.child.pid });
      if (c.name === 'ECDSA P-256' && RATES.includes(1000)) {
        const run = await runWrk({ url: clustered.url, paths: sign(Math.ceil(1000 * (SECONDS + 2) * 1.1)), seconds: SECONDS, connections: CONNECTIONS, rate: 1000, gatewayPid: clustered.child.pid });
        entry.cluster.runs.push(run);
        log(`gateway ${c.name} @1000/s, ${CLUSTER_WORKERS} workers: p99 ${run.latencyMs.p99.toFixed(2)} ms, PSS ${run.gateway.pssMB.toFixed(0)} MB`);
        await sleep(500);
      }
      const sat = await runWrk({ url: clustered.url, paths: sign(Math.ceil(Math.max(warm.opsPerSecond * 2.5, 2000) * (SECONDS + 1))), seconds: SECONDS, connections: CONNECTIONS, gatewayPid: clustered.child.pid });
      sat.rate = 0;
      entry.cluster.saturation = sat;
      entry.cluster.ratio = sat.opsPerSecond / entry.raw.best.opsPerSecond;
      entry.cluster.versus = versusBaselines(sat.opsPerSecond);
      log(`gateway ${c.name} saturated, ${CLUSTER_WORKERS} workers: ${sat.opsPerSecond.toFixed(0)}/s (${(100 * entry.cluster.ratio).toFixed(0)} % of raw)`);
    } finally {
      await clustered.stop();
    }
  }
}

// ---------------------------------------------------------------- 5. the emulated network HSM
// The emulator forwards to the demo's SoftHSMv2 token, adding the delay to every PKCS#11 call; the gateway and the raw
// token each load it in their own process. The bound for N sessions: every sign is two calls (init + sign) of one
// delay each, so N / (2 × delay) — unless the raw token or the CPU allows less. What the CPU allows is the same
// gateway (one process) without the emulator, saturated in this run: the delay adds round trips, not CPU.
results.netsim = [];
for (const c of cases.filter((x) => NETSIM_CASES.includes(x.name) && (x.token ?? 'default') === 'default')) {
  const sign = signerFor(c);
  for (const delayUs of NETSIM_DELAYS_US) {
    const netsimEnv = { NETSIM_MODULE: MODULE, NETSIM_DELAY_US: String(delayUs), SOFTHSM2_CONF: d.softhsmConf };
    const raw = measureRawInChild(
      { module: NETSIM, tokenLabel: 'hsm-gateway-demo', pin: d.pin, environment: netsimEnv, caseName: c.name, keyLabel: labelOf(c.alias), sessions: NETSIM_SESSIONS, seconds: RAW_SECONDS * 2, signer: 'addon' },
      { UV_THREADPOOL_SIZE: String(NETSIM_SESSIONS + 8) },
    );
    const cpuBound = results.cases.find((e) => e.name === c.name)?.gateway?.saturation?.opsPerSecond ?? Infinity;
    const bounds = { 'raw via emulator': raw.opsPerSecond, sessions: NETSIM_SESSIONS / (2 * delayUs * 1e-6), CPU: cpuBound };
    const [boundBy, bound] = Object.entries(bounds).reduce((low, entry) => (entry[1] < low[1] ? entry : low));
    const row = { name: c.name, delayUs, sessions: NETSIM_SESSIONS, raw, cpuBound: Number.isFinite(cpuBound) ? cpuBound : undefined, bound, boundBy, runs: [] };
    log(`netsim ${delayUs} µs raw ${c.name}: ${raw.opsPerSecond.toFixed(0)}/s with ${NETSIM_SESSIONS} sessions`);
    const gateway = await freshGateway({
      home,
      port,
      env: { ...gatewayEnv, ...netsimEnv, HSM_GATEWAY_PKCS11_MODULE: NETSIM, HSM_GATEWAY_SESSIONS: String(NETSIM_SESSIONS), UV_THREADPOOL_SIZE: String(NETSIM_SESSIONS + 8) },
    });
    try {
      const warm = await runWrk({ url: gateway.url, paths: sign(Math.ceil(Math.max(2000, raw.opsPerSecond * 3))), seconds: 2, connections: CONNECTIONS, gatewayPid: gateway.child.pid });
      if (RATES.includes(1000)) {
        const run = await runWrk({ url: gateway.url, paths: sign(Math.ceil(1000 * (SECONDS + 2) * 1.1)), seconds: SECONDS, connections: CONNECTIONS, rate: 1000, gatewayPid: gateway.child.pid });
        row.runs.push(run);
        log(`netsim ${delayUs} µs gateway ${c.name} @1000/s: p99 ${run.latencyMs.p99.toFixed(2)} ms, loop lag p99 ${run.eventLoopLagP99Ms?.toFixed(1)} ms`);
        await sleep(500);
      }
      // Sized from the bound too: the 2 s warm-up is cold, and a file that runs out is replayed (refused nonces).
      const count = Math.ceil(Math.max(warm.opsPerSecond * 2.5, row.bound * 1.5, 2000) * (SECONDS + 1));
      const sat = await runWrk({ url: gateway.url, paths: sign(count), seconds: SECONDS, connections: CONNECTIONS, gatewayPid: gateway.child.pid });
      sat.rate = 0;
      row.saturation = sat;
      row.ratio = sat.opsPerSecond / row.bound;
      log(`netsim ${delayUs} µs gateway ${c.name} saturated: ${sat.opsPerSecond.toFixed(0)}/s (${(100 * row.ratio).toFixed(0)} % of the bound ${row.bound.toFixed(0)}/s: ${row.boundBy})`);
    } finally {
      await gateway.stop();
    }
    results.netsim.push(row);
  }
}
rmSync(home, { recursive: true, force: true });
results.finished = new Date().toISOString();

const md = markdownReport(results);
console.log('\n' + md);
mkdirSync(OUT, { recursive: true });
const stem = `${results.started.slice(0, 19).replace(/:/g, '')}-${host.hostname}`;
writeFileSync(join(OUT, `${stem}.json`), JSON.stringify(results, null, 2) + '\n');
writeFileSync(join(OUT, `${stem}.md`), md + '\n');
log(`results written to ${join(OUT, stem)}.{json,md}`);
