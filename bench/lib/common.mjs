// Shared pieces of the benchmarks: a demo home on fresh tokens, pre-signed V1 requests, the gateway as a real
// process, wrk as the load generator (another process), /proc sampling of CPU and memory, /metrics scraping.
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { cpus, hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';

export const ROOT = resolve(import.meta.dirname, '../..');
export const MODULE = process.env.HSM_GATEWAY_PKCS11_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';
export const WRK = process.env.BENCH_WRK ?? 'wrk';
const { percentEncode } = await import(join(ROOT, 'dist/http/auth/canonical.js'));

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** The machine the figures come from. */
export function machine() {
  const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m)?.[1] ?? 'unknown';
  const memKb = Number(readFileSync('/proc/meminfo', 'utf8').match(/^MemTotal:\s+(\d+)/m)?.[1] ?? 0);
  let softhsm = 'unknown';
  try {
    softhsm = execFileSync('softhsm2-util', ['--version'], { encoding: 'utf8' }).trim();
  } catch {}
  let wrk = 'absent';
  try {
    wrk = execFileSync(WRK, ['--version'], { encoding: 'utf8' }).split('\n')[0].trim();
  } catch (err) {
    wrk = String(err.stdout ?? '').split('\n')[0].trim() || 'absent';
  }
  return { hostname: hostname(), nproc: cpus().length, cpu, memoryGiB: Math.round(memKb / 1048576), node: process.version, softhsm, wrk, loadAverageAtStart: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number) };
}

/** The cases: one demo key and algorithm each, the mechanism the raw token run uses for the same work. */
export function benchCases(pkcs11js, { sm2 }) {
  const digestInfo = (d) => Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), d]);
  const pss = { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 };
  const cases = [
    { name: 'RSA-2048 PKCS#1', alias: 'alias/demo-rsa-2048', algorithm: 'RSA_PKCS1_SHA_256', mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS }, out: 256, input: digestInfo },
    { name: 'RSA-2048 PSS', alias: 'alias/demo-rsa-2048', algorithm: 'RSA_PSS_SHA_256', mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: pss }, out: 256, input: (d) => d },
    { name: 'RSA-3072 PKCS#1', alias: 'alias/demo-rsa-3072', algorithm: 'RSA_PKCS1_SHA_256', mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS }, out: 384, input: digestInfo },
    { name: 'ECDSA P-256', alias: 'alias/demo-ec-p256', algorithm: 'ECDSA_SHA_256', mechanism: { mechanism: pkcs11js.CKM_ECDSA }, out: 64, input: (d) => d },
    { name: 'ECDSA secp256k1', alias: 'alias/demo-ec-p256k', algorithm: 'ECDSA_SHA_256', mechanism: { mechanism: pkcs11js.CKM_ECDSA }, out: 64, input: (d) => d },
  ];
  if (sm2) cases.push({ name: 'SM2', alias: 'alias/demo-sm2', algorithm: 'SM2DSA', token: 'sm2', mechanism: { mechanism: 0x80001002 }, out: 64, input: (d) => d });
  return cases;
}

export const DIGEST = createHash('sha256').update('bench').digest();

/**
 * Pre-signed V1 GET request targets (HMAC-SHA1 over the canonical query, as @alicloud/pop-core signs), one per line,
 * each with its own SignatureNonce, all with one Timestamp (valid for ±15 min).
 */
export function presign(file, count, { accessKeyId, secret, params }) {
  const timestamp = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
  const fixed = { ...params, Format: 'JSON', Version: '2016-01-20', AccessKeyId: accessKeyId, SignatureMethod: 'HMAC-SHA1', SignatureVersion: '1.0', Timestamp: timestamp };
  // The nonce is hex, so it needs no encoding: split the canonical query around it once.
  const names = [...Object.keys(fixed), 'SignatureNonce'].sort();
  const before = [];
  const after = [];
  let seen = false;
  for (const k of names) {
    if (k === 'SignatureNonce') {
      seen = true;
      continue;
    }
    (seen ? after : before).push(`${percentEncode(k)}=${percentEncode(fixed[k])}`);
  }
  const head = before.map((p) => p + '&').join('') + 'SignatureNonce=';
  const tail = after.map((p) => '&' + p).join('');
  const stsHead = `GET&%2F&${percentEncode(head)}`;
  const stsTail = percentEncode(tail);
  const key = `${secret}&`;
  const prefix = randomBytes(8).toString('hex');
  count = Math.ceil(count);
  const lines = new Array(count);
  for (let i = 0; i < count; i++) {
    const nonce = prefix + i.toString(16).padStart(8, '0');
    const signature = createHmac('sha1', key).update(stsHead + nonce + stsTail).digest('base64');
    lines[i] = `/?${head}${nonce}${tail}&Signature=${percentEncode(signature)}`;
  }
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

// ---------------------------------------------------------------- /proc sampling
const TICKS = 100; // USER_HZ on Linux

function procStat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) };
  } catch {
    return undefined;
  }
}

function procMemoryKb(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number(status.match(/^VmRSS:\s+(\d+)/m)?.[1] ?? 0);
    let pss = rss;
    try {
      pss = Number(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').match(/^Pss:\s+(\d+)/m)?.[1] ?? rss);
    } catch {}
    return { rss, pss };
  } catch {
    return { rss: 0, pss: 0 };
  }
}

/** The process and its descendants (the cluster workers). */
export function processTree(root) {
  const byParent = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const st = procStat(entry);
    if (!st) continue;
    if (!byParent.has(st.ppid)) byParent.set(st.ppid, []);
    byParent.get(st.ppid).push(Number(entry));
  }
  const out = [];
  const walk = (pid) => {
    out.push(pid);
    for (const c of byParent.get(pid) ?? []) walk(c);
  };
  walk(root);
  return out;
}

function machineTicks() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/**
 * Samples CPU and memory of process groups (name → root pid; descendants included) every 250 ms until stopped.
 * CPU% is per core (200 % = both cores of this machine); memory is the peak of the group's summed RSS / PSS.
 */
export function startSampling(groups) {
  const first = {};
  const peak = {};
  const pidsOf = {};
  // The last CPU ticks seen of each process: one that exits before the end (wrk) keeps its last reading.
  const lastTicks = new Map();
  const ticksOf = (pid) => {
    const t = procStat(pid)?.ticks;
    if (t !== undefined) lastTicks.set(pid, t);
    return lastTicks.get(pid) ?? 0;
  };
  const firstOf = new Map();
  for (const [name, pid] of Object.entries(groups)) {
    pidsOf[name] = processTree(pid);
    for (const p of pidsOf[name]) firstOf.set(p, ticksOf(p));
    first[name] = pidsOf[name].reduce((a, p) => a + ticksOf(p), 0);
    peak[name] = { rss: 0, pss: 0 };
  }
  const machineFirst = machineTicks();
  const started = process.hrtime.bigint();
  const sample = () => {
    for (const name of Object.keys(groups)) {
      let rss = 0;
      let pss = 0;
      for (const p of pidsOf[name]) {
        ticksOf(p);
        const m = procMemoryKb(p);
        rss += m.rss;
        pss += m.pss;
      }
      peak[name].rss = Math.max(peak[name].rss, rss);
      peak[name].pss = Math.max(peak[name].pss, pss);
    }
  };
  sample();
  const timer = setInterval(sample, 250);
  return {
    stop() {
      clearInterval(timer);
      sample();
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const machineNow = machineTicks();
      const out = {};
      for (const name of Object.keys(groups)) {
        const ticks = pidsOf[name].reduce((a, p) => a + ticksOf(p), 0) - first[name];
        // Per process, in tree order (the root first: a cluster's primary, then its workers).
        const perProcessCpu = pidsOf[name].map((p) => Math.round((100 * (ticksOf(p) - firstOf.get(p))) / TICKS / seconds));
        out[name] = { cpuPercent: (100 * ticks) / TICKS / seconds, rssMB: peak[name].rss / 1024, pssMB: peak[name].pss / 1024, processes: pidsOf[name].length, perProcessCpu };
      }
      const busy = machineNow.busy - machineFirst.busy;
      const total = machineNow.total - machineFirst.total;
      out.machine = { cpuPercent: (100 * cpus().length * busy) / Math.max(1, total) };
      return out;
    },
  };
}

// ---------------------------------------------------------------- metrics
export async function scrapeMetrics(url) {
  const text = await fetch(`${url}/metrics`).then((r) => r.text());
  return text;
}

/**
 * Event-loop delay p99 beyond the monitor's own 10 ms timer (prom-client's monitorEventLoopDelay histogram records
 * the whole interval between ticks, resolution included), the worst process of the gateway. The histogram is reset
 * by every scrape, so scrape once before a run and read it after.
 */
export function eventLoopLagP99Ms(metricsText, resolutionMs = 10) {
  const values = [...metricsText.matchAll(/^nodejs_eventloop_lag_p99_seconds(?:\{[^}]*\})? ([0-9.e+-]+)$/gm)].map((m) => Number(m[1]));
  if (values.length === 0) return undefined;
  return Math.max(0, Math.max(...values) * 1000 - resolutionMs);
}

// ---------------------------------------------------------------- the gateway process
/** The gateway as `npm start` runs it; `root`: another build of it (bench/cost.mjs compares snapshots). */
/** Node's flags as `npm start`, the systemd unit and the container start the gateway (bin/hsm-gateway.cjs). */
export const GATEWAY_NODE_FLAGS = ['--max-semi-space-size=8'];

export async function startGateway({ home, port, env = {}, cpuProf, root = ROOT, nodeArgs = [] }) {
  const args = [...GATEWAY_NODE_FLAGS, ...nodeArgs, ...(cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`] : []), join(root, 'bin/hsm-gateway.cjs')];
  const started = process.hrtime.bigint();
  // The bench process sizes its own libuv pool for the raw token sweep; the gateway sizes its own (bin/hsm-gateway.cjs).
  const { UV_THREADPOOL_SIZE: _ownPool, ...inherited } = process.env;
  const child = spawn(process.execPath, args, {
    env: { ...inherited, HSM_GATEWAY_HOME: home, HSM_GATEWAY_CONFIG: '', HSM_GATEWAY_PORT: String(port), HSM_GATEWAY_LOG_LEVEL: 'warn', HSM_GATEWAY_THROTTLE_LIMIT: '1000000', ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r(code ?? signal)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`the gateway exited during start-up (${child.exitCode})`);
    const up = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    if (up) break;
    if (i > 1200) throw new Error('the gateway did not become ready within 120 s');
    await sleep(100);
  }
  const startupSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  return {
    child,
    url,
    startupSeconds,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** A baseline server (bench/lib/hello-server.mjs: `express` or `node:http`) in its own process. */
export async function startBaseline(kind, port) {
  const child = spawn(process.execPath, [join(ROOT, 'bench/lib/hello-server.mjs'), kind, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r(code ?? signal)));
  await new Promise((resolve, reject) => {
    child.stdout.once('data', resolve);
    child.once('exit', (code) => reject(new Error(`the ${kind} baseline exited (${code})`)));
  });
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** bench/lib/raw-child.mjs in a fresh process (the emulated network HSM reads its settings once per process). */
export function measureRawInChild(spec, env) {
  const r = spawnSync(process.execPath, [join(ROOT, 'bench/lib/raw-child.mjs'), JSON.stringify(spec)], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
  const line = r.stdout?.trim().split('\n').at(-1);
  if (r.status !== 0 || !line) throw new Error(`raw token measurement failed (${r.status}): ${r.stderr}`);
  return JSON.parse(line);
}

// ---------------------------------------------------------------- wrk
/** One wrk run over pre-signed requests; returns its figures plus the CPU/memory of the gateway and of wrk. */
export async function runWrk({ url, paths, seconds, connections, threads = 1, rate = 0, gatewayPid }) {
  const before = await scrapeMetrics(url).catch(() => '');
  void before;
  // bash's `times` prints the CPU time of its children (wrk) exactly, even though wrk exits before we could sample it.
  const wrkArgs = ['-t', String(threads), '-c', String(connections), '-d', `${seconds}s`, '--timeout', '10s', '-s', join(ROOT, 'bench/wrk/presigned.lua'), url];
  const child = spawn('bash', ['-c', `"$0" "$@"; rc=$?; echo; echo BENCH_TIMES; times; exit $rc`, WRK, ...wrkArgs], {
    env: { ...process.env, BENCH_PATHS: paths, BENCH_RATE: String(rate), BENCH_THREADS: String(threads) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  // Listened for at once: a wrk that fails at start (not installed, a bad script) exits within the wait below.
  const exited = new Promise((r) => child.once('exit', r));
  // wrk reads its request file before it connects: sample once it has (a first line of output or 1 s).
  await sleep(300);
  const sampler = startSampling({ gateway: gatewayPid, wrk: child.pid });
  const code = await exited;
  const usage = sampler.stop();
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (code !== 0 || !line) throw new Error(`wrk failed (${code}):\n${out}`);
  const r = JSON.parse(line.slice('BENCH_JSON '.length));
  // `times`: the shell's own user/sys, then its children's: "0m1.234s 0m0.567s".
  const childTimes = out.split('BENCH_TIMES')[1]?.trim().split('\n')[1] ?? '';
  const secondsOf = (t) => { const m = /^(\d+)m([\d.]+)s$/.exec(t); return m ? Number(m[1]) * 60 + Number(m[2]) : NaN; };
  const [wrkUser, wrkSys] = childTimes.trim().split(/\s+/).map(secondsOf);
  usage.wrk.cpuPercent = (100 * (wrkUser + wrkSys)) / (r.duration_us / 1e6);
  const after = await scrapeMetrics(url).catch(() => '');
  const okRequests = r.requests - r.errors.status;
  return {
    rate,
    connections,
    threads,
    opsPerSecond: okRequests / (r.duration_us / 1e6),
    requests: r.requests,
    errors: r.errors.status + r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout,
    errorDetail: r.errors,
    latencyMs: { p50: r.latency_us.p50 / 1000, p99: r.latency_us.p99 / 1000, p999: r.latency_us.p999 / 1000, max: r.latency_us.max / 1000, mean: r.latency_us.mean / 1000 },
    lateSends: r.late,
    requestFileWrapped: r.wrapped,
    eventLoopLagP99Ms: eventLoopLagP99Ms(after),
    gateway: usage.gateway,
    wrk: usage.wrk,
    machineCpuPercent: usage.machine.cpuPercent,
  };
}

/** Reads what a demo home holds that the benchmarks need. */
export function demoOf(home) {
  const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));
  return {
    demo,
    secret: readFileSync(demo.accessKeySecretFile, 'utf8').trim(),
    pin: readFileSync(join(home, 'secrets', 'user-pin'), 'utf8').trim(),
    registry: JSON.parse(readFileSync(join(home, 'registry.json'), 'utf8')),
    softhsmConf: join(home, 'softhsm', 'softhsm2.conf'),
    sm2Dir: existsSync(join(home, 'sm2token')) ? join(home, 'sm2token') : undefined,
    // The SM2 test token's label, as the demo configured it (the bench opens the same token raw).
    sm2TokenLabel: parseYaml(readFileSync(join(home, 'gateway.yaml'), 'utf8')).tokens?.sm2?.tokenLabel,
  };
}

/**
 * A demo home of its own (the registry as a file) on a free port, and pre-signed V1 AsymmetricSign requests for its
 * P-256 key: `sign(count)` writes that many unique request lines and returns the file. For the experiments that drive
 * one gateway (bench/experiments/memory.mjs, allocations.mjs).
 */
export async function p256DemoHome(prefix) {
  const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));
  const home = mkdtempSync(join(tmpdir(), prefix));
  const port = await freePort();
  bootstrapDemo({ home, modulePath: MODULE, host: '127.0.0.1', port, registryIn: 'file' });
  const d = demoOf(home);
  const key = d.demo.keys.find((k) => k.alias === 'alias/demo-ec-p256');
  const params = { Action: 'AsymmetricSign', KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: DIGEST.toString('base64') };
  const paths = join(home, 'requests.txt');
  return { home, port, sign: (count) => presign(paths, count, { accessKeyId: d.demo.accessKeyId, secret: d.secret, params }) };
}
