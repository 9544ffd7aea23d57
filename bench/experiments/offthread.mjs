// Experiment behind "Off the event loop: init+sign as one job" (bench/README.md): how to make no PKCS#11 call on the
// main thread when signing. pkcs11js has no async C_SignInit, so today the gateway calls it on the event loop and
// only C_Sign runs on the libuv pool; on a network HSM every call is a round trip that the event loop waits out.
// Candidates, each signing with 32 sessions, one sign in flight per session:
//   today       C_SignInit on the main thread + pkcs11js C_SignAsync (libuv pool)
//   addon       native/async-pkcs11: C_SignInit + C_Sign as one libuv job (src/hsm/async-pkcs11.ts)
//   workers-N   N worker threads, each with its own pkcs11js instance on the same module (its C_Initialize answers
//               CKR_CRYPTOKI_ALREADY_INITIALIZED), sync C_SignInit + C_Sign, one postMessage each way per sign
// on three tokens: SoftHSMv2 in process, and the emulated network HSM (softhsm/netsim) at 0.2 ms and 1 ms per call.
// Each token runs in its own child process (the emulator reads its delay once per process), with
// UV_THREADPOOL_SIZE=64 (EXP_POOL). Measured per run: signs/s, per-sign latency p50/p99 (from the call to its
// answer on the main thread), the main thread's lag — monitorEventLoopDelay (1 ms resolution, minus it) p99, and a
// 10 ms setInterval's lateness p99/max —, event-loop utilisation and the process's CPU.
//
// Usage: bash scripts/setup.sh bench && node bench/experiments/offthread.mjs
//   EXP_SECONDS (3 per run), EXP_WARMUP (0.5), EXP_TOKENS (raw,netsim-0.2ms,netsim-1ms), EXP_CANDIDATES
//   (today,addon,workers-4,workers-32), EXP_KEYS (p256,rsa2048), EXP_POOL (64), EXP_CONCURRENCY (32)
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const ROOT = resolve(import.meta.dirname, '../..');
const require = createRequire(join(ROOT, 'package.json'));
const SOFTHSM = '/usr/lib/softhsm/libsofthsm2.so';
const NETSIM = join(ROOT, 'softhsm/netsim/build/libnetsim-pkcs11.so');
const PIN = 'bench-pin-2468';
const list = (v, d) => (v ?? d).split(',').map((s) => s.trim()).filter(Boolean);

// ---- worker thread (candidate workers-N): its own pkcs11js on the module the process loaded ----
if (!isMainThread) {
  const pkcs11js = require('pkcs11js');
  const p11 = new pkcs11js.PKCS11();
  p11.load(workerData.module);
  try {
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (err.code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
  }
  const buf = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
  parentPort.on('message', ({ id, session, mechanism, key, data, out }) => {
    try {
      const s = buf(session);
      p11.C_SignInit(s, mechanism, buf(key));
      const signature = p11.C_Sign(s, buf(data), Buffer.alloc(out));
      parentPort.postMessage({ id, signature });
    } catch (err) {
      parentPort.postMessage({ id, code: err.code ?? -1 });
    }
  });
  parentPort.postMessage({ ready: true });
}

// ---- child: one token, every candidate × key ----
async function child() {
  const pkcs11js = require('pkcs11js');
  const { AsyncPkcs11 } = await import(join(ROOT, 'dist/hsm/async-pkcs11.js'));
  const module = process.env.EXP_MODULE;
  const seconds = Number(process.env.EXP_SECONDS ?? 3);
  const warmup = Number(process.env.EXP_WARMUP ?? 0.5);
  const concurrency = Number(process.env.EXP_CONCURRENCY ?? 32);
  const p11 = new pkcs11js.PKCS11();
  p11.load(module);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p11.C_GetSlotList(true)[0];
  const sessions = Array.from({ length: concurrency }, () => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION));
  p11.C_Login(sessions[0], pkcs11js.CKU_USER, PIN);
  const findKey = (label) => {
    p11.C_FindObjectsInit(sessions[0], [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: label }]);
    const [key] = p11.C_FindObjects(sessions[0], 1);
    p11.C_FindObjectsFinal(sessions[0]);
    return key;
  };
  const digest = createHash('sha256').update('offthread').digest();
  const keys = {
    p256: { name: 'P-256 ECDSA', key: findKey('p256'), mechanism: { mechanism: pkcs11js.CKM_ECDSA }, out: 64 },
    rsa2048: {
      name: 'RSA-2048 PSS',
      key: findKey('rsa2048'),
      mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } },
      out: 256,
    },
  };
  const asyncP11 = AsyncPkcs11.bind(module);

  // Worker pools are started once per size, before their runs.
  const pools = new Map();
  async function workerPool(n) {
    if (pools.has(n)) return pools.get(n);
    const pending = new Map();
    let next = 0;
    const threads = await Promise.all(
      Array.from({ length: n }, () => new Promise((ok, fail) => {
        const w = new Worker(new URL(import.meta.url), { workerData: { module } });
        w.on('error', fail);
        w.on('message', (m) => {
          if (m.ready) return ok(w);
          const p = pending.get(m.id);
          pending.delete(m.id);
          if (m.signature) p.ok(m.signature);
          else p.fail(Object.assign(new Error(`CKR ${m.code}`), { code: m.code }));
        });
      })),
    );
    const pool = {
      sign(i, session, mechanism, key, data, out) {
        const id = next++;
        return new Promise((ok, fail) => {
          pending.set(id, { ok, fail });
          // A session always goes to the same thread (not required: handles are process-wide).
          threads[i % n].postMessage({ id, session, mechanism, key, data, out });
        });
      },
      close: () => Promise.all(threads.map((t) => t.terminate())),
    };
    pools.set(n, pool);
    return pool;
  }

  async function signer(candidate) {
    if (candidate === 'today') {
      return (i, k) => {
        p11.C_SignInit(sessions[i], k.mechanism, k.key);
        return p11.C_SignAsync(sessions[i], digest, Buffer.alloc(k.out));
      };
    }
    if (candidate === 'addon') return (i, k) => asyncP11.sign(sessions[i], k.mechanism, k.key, digest, k.out);
    const m = /^workers-(\d+)$/.exec(candidate);
    if (!m) throw new Error(`unknown candidate ${candidate}`);
    const pool = await workerPool(Number(m[1]));
    return (i, k) => pool.sign(i, sessions[i], k.mechanism, k.key, digest, k.out);
  }

  // CPU time of the main thread alone (its tid is the pid): /proc's utime + stime, in clock ticks (1/100 s).
  const mainThreadCpuMs = () => {
    const fields = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  };

  async function run(sign, k, secs, measure) {
    const latencies = [];
    let count = 0;
    let errors = 0;
    let firstError;
    const eld = monitorEventLoopDelay({ resolution: 1 });
    const late = [];
    let last = performance.now();
    const interval = setInterval(() => {
      const now = performance.now();
      late.push(now - last - 10);
      last = now;
    }, 10);
    eld.enable();
    const elu0 = performance.eventLoopUtilization();
    const cpu0 = process.cpuUsage();
    const main0 = mainThreadCpuMs();
    const started = performance.now();
    const end = started + secs * 1000;
    await Promise.all(
      sessions.map(async (_, i) => {
        while (performance.now() < end) {
          const t = performance.now();
          try {
            await sign(i, k);
            count++;
            if (measure) latencies.push(performance.now() - t);
          } catch (err) {
            errors++;
            firstError ??= err;
          }
        }
      }),
    );
    const wall = performance.now() - started;
    const cpu = process.cpuUsage(cpu0);
    const mainCpuMs = mainThreadCpuMs() - main0;
    const elu = performance.eventLoopUtilization(elu0);
    eld.disable();
    clearInterval(interval);
    if (!measure) return undefined;
    const q = (arr, p) => {
      const s = [...arr].sort((a, b) => a - b);
      return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
    };
    return {
      signsPerSecond: Math.round((count / wall) * 1000),
      p50Ms: q(latencies, 50),
      p99Ms: q(latencies, 99),
      loopLagP99Ms: eld.percentile(99) / 1e6 - 1,
      loopLagMaxMs: eld.max / 1e6 - 1,
      timer10msLateP99Ms: q(late, 99),
      timer10msLateMaxMs: late.length ? Math.max(...late) : NaN,
      eventLoopUtilization: elu.utilization,
      // The main thread's own CPU time per sign (not the loop's active wall time, which counts time spent waiting
      // for a core when the token's threads saturate both).
      mainThreadCpuUsPerSign: count ? (mainCpuMs * 1000) / count : NaN,
      mainThreadCpuPercent: (mainCpuMs / wall) * 100,
      rssMB: process.memoryUsage().rss / 1048576,
      cpuPercent: ((cpu.user + cpu.system) / 1000 / wall) * 100,
      errors,
      firstError: firstError ? String(firstError.message ?? firstError) : undefined,
    };
  }

  for (const candidate of list(process.env.EXP_CANDIDATES, 'today,addon,workers-4,workers-32')) {
    const sign = await signer(candidate);
    for (const keyName of list(process.env.EXP_KEYS, 'p256,rsa2048')) {
      const k = keys[keyName];
      await run(sign, k, warmup, false);
      const r = await run(sign, k, seconds, true);
      process.stdout.write(`${JSON.stringify({ candidate, key: k.name, ...r })}\n`);
    }
  }
  for (const pool of pools.values()) await pool.close();
  p11.C_Logout(sessions[0]);
  p11.C_Finalize();
  process.exit(0);
}

// ---- parent: the token, one child per token configuration, the table ----
async function parent() {
  // The machine's load before this experiment adds its own (its signing threads count in the load average).
  const loadBefore = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const dir = mkdtempSync(join(tmpdir(), 'offthread-'));
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'offthread', '--so-pin', 'so-2468', '--pin', PIN], { env, stdio: 'ignore' });
  for (const [label, type] of [['p256', 'EC:prime256v1'], ['rsa2048', 'rsa:2048']]) {
    execFileSync('pkcs11-tool', ['--module', SOFTHSM, '--login', '--pin', PIN, '--keypairgen', '--key-type', type, '--label', label], { env, stdio: 'ignore' });
  }
  const tokens = {
    raw: { module: SOFTHSM, env: {} },
    'netsim-0.2ms': { module: NETSIM, env: { NETSIM_DELAY_US: '200' } },
    'netsim-1ms': { module: NETSIM, env: { NETSIM_DELAY_US: '1000' } },
  };
  const rows = [];
  for (const name of list(process.env.EXP_TOKENS, 'raw,netsim-0.2ms,netsim-1ms')) {
    const t = tokens[name];
    const childEnv = { ...env, ...t.env, EXP_CHILD: '1', EXP_MODULE: t.module, UV_THREADPOOL_SIZE: process.env.EXP_POOL ?? '64' };
    const out = await new Promise((ok, fail) => {
      const c = spawn(process.execPath, [new URL(import.meta.url).pathname], { env: childEnv, stdio: ['ignore', 'pipe', 'inherit'] });
      let text = '';
      c.stdout.on('data', (d) => {
        text += d;
        process.stderr.write(`[${name}] ${d}`);
      });
      c.on('exit', (code) => (code === 0 ? ok(text) : fail(new Error(`${name}: child exited ${code}`))));
    });
    for (const line of out.split('\n').filter(Boolean)) rows.push({ token: name, ...JSON.parse(line) });
  }
  rmSync(dir, { recursive: true, force: true });
  const f = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '—');
  console.log(`\n${cpus().length} cores, Node ${process.version}, libuv pool ${process.env.EXP_POOL ?? 64}, ${process.env.EXP_CONCURRENCY ?? 32} sessions each with one sign in flight, ${process.env.EXP_SECONDS ?? 3} s per row; load average before: ${loadBefore}\n`);
  console.log('| token | key | candidate | signs/s | p50 ms | p99 ms | loop lag p99 ms | 10 ms timer late p99 / max ms | loop busy | main thread CPU % (µs/sign) | process CPU % | RSS MB | errors |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    console.log(`| ${r.token} | ${r.key} | ${r.candidate} | ${r.signsPerSecond} | ${f(r.p50Ms, 2)} | ${f(r.p99Ms, 2)} | ${f(r.loopLagP99Ms)} | ${f(r.timer10msLateP99Ms)} / ${f(r.timer10msLateMaxMs)} | ${f(r.eventLoopUtilization * 100, 0)} % | ${f(r.mainThreadCpuPercent, 0)} (${f(r.mainThreadCpuUsPerSign, 0)}) | ${f(r.cpuPercent, 0)} | ${f(r.rssMB, 0)} | ${r.errors}${r.firstError ? ` (${r.firstError})` : ''} |`);
  }
  if (process.env.EXP_JSON) writeFileSync(process.env.EXP_JSON, JSON.stringify(rows, null, 1));
}

if (isMainThread) {
  if (process.env.EXP_CHILD) await child();
  else await parent();
}
