// npm run bench:sizing — how cost grows with the work, to size a deployment:
//   workers   the gateway's server.workers 1, 2, 3 (and the libuv pool at 1 worker): the measured cluster choice
//   sessions  raw token, 1 → 64 sessions
//   clients   the gateway, 1 → 256 concurrent connections
//   registry  10 → 10,000 P-256 keys on the token and in the registry: start-up time, memory, sign latency
//   registry-store  the registry's store at SIZING_STORE_KEYS keys (10,000): token vs PostgreSQL, full load, one
//             change, the other replica's refresh, gateway start-up (the registry moved with `registry migrate`)
//   replicas  1 → 3 gateway processes sharing a real redis-server (limits and nonces in Redis)
// Prints markdown tables; writes bench/results/<date>-<host>-sizing.json and .md.
// Environment: SIZING_PARTS (comma-separated subset of the above), SIZING_SECONDS (per row, default 5),
// SIZING_KEYS (registry sizes, default 10,1000,10000), SIZING_STORE_KEYS (registry-store, default 10000),
// SIZING_REPEATS (repeats of the registry parts).
import { execFileSync, spawn } from 'node:child_process';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { parse, stringify } from 'yaml';
import { benchCases, demoOf, DIGEST, freePort, machine, MODULE, presign, processTree, ROOT, runWrk, sleep, startGateway } from './lib/common.mjs';
import { openRawToken } from './lib/raw-token.mjs';

const SECONDS = Number(process.env.SIZING_SECONDS ?? 5);
const PARTS = (process.env.SIZING_PARTS ?? 'workers,sessions,clients,registry,registry-store,replicas').split(',');
const KEY_COUNTS = (process.env.SIZING_KEYS ?? '10,1000,10000').split(',').map(Number);
const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));
const { generateKey } = await import(join(ROOT, 'dist/demo/pki.js'));
const { percentEncode } = await import(join(ROOT, 'dist/http/auth/canonical.js'));
const log = (...a) => console.error('sizing:', ...a);
const host = machine();
const results = { machine: host, started: new Date().toISOString(), seconds: SECONDS };
const md = [`### hsm-gateway sizing — ${results.started.slice(0, 16).replace('T', ' ')} UTC, ${host.hostname}`, '', `${host.nproc} cores (${host.cpu}), Node ${host.node}, SoftHSM ${host.softhsm}, ${host.wrk}; load average at start ${host.loadAverageAtStart.join(' ')}; ${SECONDS} s per row. Load generator, gateway(s), Redis and token share the same cores.`, ''];
const row = (cells) => `| ${cells.join(' | ')} |`;
const table = (title, head, rows) => md.push(`**${title}**`, '', row(head), row(head.map(() => '---')), ...rows.map(row), '');
const f0 = (x) => (x === undefined || Number.isNaN(x) ? '–' : Math.round(x).toLocaleString('en-US'));
const f2 = (x) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(2));

const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-sizing-'));
const port = await freePort();
// The registry as a file: the bench reads it to find the demo keys' labels (signing serves the same either way).
bootstrapDemo({ home, modulePath: MODULE, host: '127.0.0.1', port, registryIn: 'file' });
const d = demoOf(home);
const allCases = benchCases(pkcs11js, { sm2: false });
const CASES = ['ECDSA P-256', 'RSA-2048 PKCS#1'].map((n) => allCases.find((c) => c.name === n));
const paths = join(home, 'requests.txt');
const signFile = (c, count, accessKey = { id: d.demo.accessKeyId, secret: d.secret }) => {
  const key = d.demo.keys.find((k) => k.alias === c.alias);
  return presign(paths, count, { accessKeyId: accessKey.id, secret: accessKey.secret, params: { Action: 'AsymmetricSign', KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: c.algorithm, Digest: DIGEST.toString('base64') } });
};
const saturate = async (g, c, connections = 64) => {
  await runWrk({ url: g.url, paths: signFile(c, 20_000), seconds: 1, connections, gatewayPid: g.child.pid });
  return runWrk({ url: g.url, paths: signFile(c, 16_000 * (SECONDS + 1)), seconds: SECONDS, connections, gatewayPid: g.child.pid });
};

// ---------------------------------------------------------------- workers (the cluster / thread-pool decision)
if (PARTS.includes('workers')) {
  const configs = [
    { label: '1 process, libuv pool 4', env: { HSM_GATEWAY_WORKERS: '1', UV_THREADPOOL_SIZE: '4' } },
    { label: '1 process, libuv pool 16 (8 sessions)', env: { HSM_GATEWAY_WORKERS: '1' } },
    { label: '1 process, libuv pool 32, 32 sessions', env: { HSM_GATEWAY_WORKERS: '1', UV_THREADPOOL_SIZE: '32', HSM_GATEWAY_SESSIONS: '32' } },
    { label: 'cluster, 2 workers', env: { HSM_GATEWAY_WORKERS: '2' } },
    { label: 'cluster, 3 workers', env: { HSM_GATEWAY_WORKERS: '3' } },
  ];
  results.workers = [];
  for (const cfg of configs) {
    const g = await startGateway({ home, port, env: cfg.env });
    for (const c of CASES) {
      const r = await saturate(g, c);
      results.workers.push({ config: cfg.label, case: c.name, ...r });
      log(`workers: ${cfg.label} ${c.name}: ${r.opsPerSecond.toFixed(0)}/s`);
    }
    await g.stop();
  }
  table(
    'Gateway processes and libuv pool (saturation, 64 connections)',
    ['configuration', 'case', 'gateway /s', 'p50 ms', 'p99 ms', 'loop lag p99 ms', 'gateway CPU %', 'wrk CPU %', 'machine CPU %', 'PSS MB'],
    results.workers.map((r) => [r.config, r.case, f0(r.opsPerSecond), f2(r.latencyMs.p50), f2(r.latencyMs.p99), f2(r.eventLoopLagP99Ms), f0(r.gateway.cpuPercent), f0(r.wrk.cpuPercent), f0(r.machineCpuPercent), f0(r.gateway.pssMB)]),
  );
}

// ---------------------------------------------------------------- sessions (raw token)
if (PARTS.includes('sessions')) {
  const counts = [1, 2, 4, 8, 16, 32, 64];
  const token = await openRawToken({ module: MODULE, tokenLabel: 'hsm-gateway-demo', pin: d.pin, environment: { SOFTHSM2_CONF: d.softhsmConf }, sessions: 64 });
  results.sessions = [];
  for (const c of CASES) {
    const key = token.findKey(d.registry.keys.find((k) => k.aliases.includes(c.alias)).versions[0].label);
    for (const n of counts) results.sessions.push({ case: c.name, ...(await token.measure(c, key, n, Math.min(SECONDS, 2))) });
  }
  token.close();
  table('Raw token: sessions (ops/s; p99 ms)', ['case', ...counts.map(String)], CASES.map((c) => [c.name, ...results.sessions.filter((s) => s.case === c.name).map((s) => `${f0(s.opsPerSecond)}; ${f2(s.latencyMs.p99)}`)]));
}

// ---------------------------------------------------------------- clients (gateway, default workers)
if (PARTS.includes('clients')) {
  const counts = [1, 4, 16, 64, 256];
  results.clients = [];
  const g = await startGateway({ home, port });
  for (const c of CASES) {
    for (const n of counts) {
      const r = await saturate(g, c, n);
      results.clients.push({ case: c.name, connections: n, ...r });
      log(`clients: ${c.name} ${n}: ${r.opsPerSecond.toFixed(0)}/s p99 ${r.latencyMs.p99.toFixed(1)} ms`);
    }
  }
  await g.stop();
  table(
    'Gateway: concurrent clients (keep-alive connections, each one request at a time)',
    ['case', 'connections', 'gateway /s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'gateway CPU %', 'errors'],
    results.clients.map((r) => [r.case, String(r.connections), f0(r.opsPerSecond), f2(r.latencyMs.p50), f2(r.latencyMs.p99), f2(r.latencyMs.p999), f0(r.gateway.cpuPercent), String(r.errors)]),
  );
}

// ---------------------------------------------------------------- registry size
if (PARTS.includes('registry')) {
  // Two tokens: a small one (the demo's keys + a few, KEY_COUNTS[0] in all) and a big one grown to each larger size.
  // The smallest and the largest are measured again, alternately, so that a busy moment of the shared machine does
  // not pass for a cost of size.
  const { initializeModule, findSlotByLabel } = await import(join(ROOT, 'dist/hsm/module.js'));
  const { openUserSession } = await import(join(ROOT, 'dist/demo/token-work.js'));
  const REPEATS = Number(process.env.SIZING_REPEATS ?? 2);
  const homeBig = mkdtempSync(join(tmpdir(), 'hsm-gateway-sizing-big-'));
  bootstrapDemo({ home: homeBig, modulePath: MODULE, host: '127.0.0.1', port, registryIn: 'file' });
  const big = demoOf(homeBig);
  const grow = (demo, target, state) => {
    process.env.SOFTHSM2_CONF = demo.softhsmConf;
    const p11 = new pkcs11js.PKCS11();
    initializeModule(p11, MODULE);
    const session = openUserSession(p11, findSlotByLabel(p11, 'hsm-gateway-demo'), demo.pin);
    const t0 = performance.now();
    while (state.keys.length < target) {
      const keyVersionId = randomUUID();
      const n = state.keys.length;
      const key = generateKey(p11, session, 'EC_P256', `bench-${n}/${keyVersionId}`);
      state.keys.push({ keyId: randomUUID(), account: 'default', keySpec: 'EC_P256', usage: 'SIGN/VERIFY', state: 'Enabled', aliases: [`alias/bench-${n}`], token: 'default', versions: [{ keyVersionId, label: key.label, id: key.id.toString('hex'), createdAt: new Date().toISOString() }] });
    }
    p11.C_Logout(session);
    p11.C_Finalize();
    state.generationSeconds = (performance.now() - t0) / 1000;
    // Only the default token: this sweep is about one token's object count (the SM2 token stays out).
    const registryFile = join(state.home, `registry-${target}.json`);
    writeFileSync(registryFile, JSON.stringify({ keys: state.keys, certificates: (demo.registry.certificates ?? []).filter((c) => c.token === 'default') }));
    state.configFile = join(state.home, `gateway-${target}.yaml`);
    const config = parse(readFileSync(demo.demo.configFile, 'utf8'));
    writeFileSync(state.configFile, stringify({ ...config, tokens: {}, registry: { file: registryFile } }));
  };
  const measure = async (demo, state) => {
    const g = await startGateway({ home: state.home, port, env: { HSM_GATEWAY_CONFIG: state.configFile, HSM_GATEWAY_WORKERS: '1' } });
    try {
      await sleep(1000);
      const idle = processTree(g.child.pid).reduce((a, p) => a + Number(readFileSync(`/proc/${p}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m)[1]), 0) / 1024;
      // Requests spread over every P-256 key of the registry (one pre-signed request per key, round robin).
      const keys = state.keys.filter((k) => k.keySpec === 'EC_P256');
      const timestamp = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
      const writePaths = () => {
        const lines = [];
        for (let i = 0; i < 500 * (SECONDS + 3) * 1.1; i++) {
          const k = keys[i % keys.length];
          const p = { Action: 'AsymmetricSign', KeyId: k.keyId, KeyVersionId: k.versions[0].keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: DIGEST.toString('base64'), Format: 'JSON', Version: '2016-01-20', AccessKeyId: demo.demo.accessKeyId, SignatureMethod: 'HMAC-SHA1', SignatureVersion: '1.0', SignatureNonce: randomBytes(16).toString('hex'), Timestamp: timestamp };
          const canonical = Object.keys(p).sort().map((n) => `${percentEncode(n)}=${percentEncode(p[n])}`).join('&');
          const signature = createHmac('sha1', `${demo.secret}&`).update(`GET&%2F&${percentEncode(canonical)}`).digest('base64');
          lines.push(`/?${canonical}&Signature=${percentEncode(signature)}`);
        }
        writeFileSync(paths, lines.join('\n') + '\n');
      };
      writePaths();
      await runWrk({ url: g.url, paths, seconds: 1, connections: 16, rate: 500, gatewayPid: g.child.pid });
      writePaths(); // new nonces: the warm-up used the first ones
      const r = await runWrk({ url: g.url, paths, seconds: SECONDS, connections: 16, rate: 500, gatewayPid: g.child.pid });
      const row = { keys: state.keys.length, startupSeconds: g.startupSeconds, idleRssMB: idle, ...r };
      log(`registry ${row.keys}: start-up ${g.startupSeconds.toFixed(2)} s, idle RSS ${idle.toFixed(0)} MB, p50 ${r.latencyMs.p50} ms, p99 ${r.latencyMs.p99} ms`);
      return row;
    } finally {
      await g.stop();
    }
  };
  const small = { home, keys: d.registry.keys.filter((k) => k.token === 'default') };
  const large = { home: homeBig, keys: big.registry.keys.filter((k) => k.token === 'default') };
  grow(d, KEY_COUNTS[0], small);
  results.registry = [];
  results.registry.push(await measure(d, small));
  for (const total of KEY_COUNTS.slice(1)) {
    grow(big, total, large);
    log(`registry: ${total} keys generated (${large.generationSeconds.toFixed(0)} s)`);
    results.registry.push(await measure(big, large));
  }
  for (let i = 0; i < REPEATS; i++) {
    results.registry.push(await measure(d, small));
    results.registry.push(await measure(big, large));
  }
  rmSync(homeBig, { recursive: true, force: true });
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const sizes = [...new Set(results.registry.map((r) => r.keys))];
  const p50Of = (n) => median(results.registry.filter((r) => r.keys === n).map((r) => r.latencyMs.p50));
  results.registrySummary = sizes.map((n) => ({ keys: n, runs: results.registry.filter((r) => r.keys === n).length, p50MedianMs: p50Of(n), p99MedianMs: median(results.registry.filter((r) => r.keys === n).map((r) => r.latencyMs.p99)), startupMedianSeconds: median(results.registry.filter((r) => r.keys === n).map((r) => r.startupSeconds)), idleRssMedianMB: median(results.registry.filter((r) => r.keys === n).map((r) => r.idleRssMB)) }));
  table(
    'Registry size: P-256 keys on the token and in the registry (1 process; signs at 500/s spread over every key; runs in the order made)',
    ['keys', 'start-up s (to /readyz)', 'RSS idle MB', 'RSS under load MB', 'p50 ms', 'p99 ms', 'machine CPU %', 'errors'],
    results.registry.map((r) => [f0(r.keys), f2(r.startupSeconds), f0(r.idleRssMB), f0(r.gateway.rssMB), f2(r.latencyMs.p50), f2(r.latencyMs.p99), f0(r.machineCpuPercent), String(r.errors)]),
  );
  const base = results.registrySummary[0];
  table(
    'Registry size, medians',
    ['keys', 'runs', 'start-up s', 'RSS idle MB', 'p50 ms', 'p99 ms', 'p50 vs smallest'],
    results.registrySummary.map((s) => [f0(s.keys), String(s.runs), f2(s.startupMedianSeconds), f0(s.idleRssMedianMB), f2(s.p50MedianMs), f2(s.p99MedianMs), `${((100 * s.p50MedianMs) / base.p50MedianMs - 100).toFixed(0)} %`]),
  );
}

// ---------------------------------------------------------------- registry store: token vs PostgreSQL
if (PARTS.includes('registry-store')) {
  // One token grown to SIZING_STORE_KEYS P-256 keys (key objects as in production: the token store's searches scan
  // them), its registry written to the token and then to PostgreSQL by `hsm-gateway registry migrate`, as an
  // operator would. Then, alternately per store: a full load by a fresh RegistrySource (what a gateway does at
  // start-up and after a reconnect), one change through a second RegistrySource (another replica), the first one's
  // refresh that picks it up (what every replica pays per change), a refresh with nothing changed (the poll), and a
  // gateway process's start-up to /readyz. Every store is measured in the same run, so both see the same machine.
  const { initializeModule, findSlotByLabel } = await import(join(ROOT, 'dist/hsm/module.js'));
  const { openUserSession } = await import(join(ROOT, 'dist/demo/token-work.js'));
  const { loadConfig } = await import(join(ROOT, 'dist/config/load.js'));
  const { openToken } = await import(join(ROOT, 'dist/open-tokens.js'));
  const { postgresStoreOf } = await import(join(ROOT, 'dist/open-registry.js'));
  const { RegistrySource } = await import(join(ROOT, 'dist/keys/registry-source.js'));
  const { startPostgres } = await import('./lib/postgres.mjs');
  const TOTAL = Number(process.env.SIZING_STORE_KEYS ?? 10_000);
  const REPEATS = Number(process.env.SIZING_REPEATS ?? 3);
  const storeHome = mkdtempSync(join(tmpdir(), 'hsm-gateway-sizing-store-'));
  bootstrapDemo({ home: storeHome, modulePath: MODULE, host: '127.0.0.1', port, registryIn: 'file' });
  const sd = demoOf(storeHome);
  const keys = sd.registry.keys.filter((k) => k.token === 'default');
  process.env.SOFTHSM2_CONF = sd.softhsmConf;
  {
    const p11 = new pkcs11js.PKCS11();
    initializeModule(p11, MODULE);
    const session = openUserSession(p11, findSlotByLabel(p11, 'hsm-gateway-demo'), sd.pin);
    const t0 = performance.now();
    while (keys.length < TOTAL) {
      const keyVersionId = randomUUID();
      const n = keys.length;
      const key = generateKey(p11, session, 'EC_P256', `store-${n}/${keyVersionId}`);
      keys.push({ keyId: randomUUID(), account: 'default', keySpec: 'EC_P256', usage: 'SIGN/VERIFY', state: 'Enabled', aliases: [`alias/store-${n}`], token: 'default', versions: [{ keyVersionId, label: key.label, id: key.id.toString('hex'), createdAt: new Date().toISOString() }] });
    }
    p11.C_Logout(session);
    p11.C_Finalize();
    log(`registry-store: ${keys.length} keys on the token (${((performance.now() - t0) / 1000).toFixed(0)} s to generate)`);
  }
  const registryFile = join(storeHome, 'registry-store.json');
  writeFileSync(registryFile, JSON.stringify({ keys, certificates: (sd.registry.certificates ?? []).filter((c) => c.token === 'default') }));
  const pg = await startPostgres();
  writeFileSync(join(storeHome, 'pg-password'), `${pg.password}\n`, { mode: 0o600 });
  const base = parse(readFileSync(sd.demo.configFile, 'utf8'));
  const postgres = { url: pg.url, password: { file: join(storeHome, 'pg-password') } };
  const configOf = (name, registry) => {
    const file = join(storeHome, `${name}.yaml`);
    writeFileSync(file, stringify({ ...base, tokens: {}, logging: { level: 'warn' }, registry: { ...registry, postgres } }));
    return file;
  };
  const configs = { file: configOf('from-file', { store: 'token', file: registryFile }), token: configOf('on-token', { store: 'token' }), postgres: configOf('in-postgres', { store: 'postgres' }) };
  const cli = (config, args) => {
    const t0 = performance.now();
    const out = execFileSync(process.execPath, [join(ROOT, 'bin/hsm-gateway.cjs'), '--config', config, ...args], { env: { ...process.env, HSM_GATEWAY_CONFIG: '' }, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    return { seconds: (performance.now() - t0) / 1000, out };
  };
  const toToken = cli(configs.file, ['registry', 'migrate', '--from', 'file', '--to', 'token', '--json']);
  cli(configs.token, ['registry', 'init']);
  const toPostgres = cli(configs.token, ['registry', 'migrate', '--from', 'token', '--to', 'postgres', '--json']);
  results.registryStore = {
    keys: JSON.parse(toPostgres.out).counts.keys,
    postgresVersion: pg.version,
    migrateFileToTokenSeconds: toToken.seconds,
    migrateTokenToPostgresSeconds: toPostgres.seconds,
    runs: [],
  };
  log(`registry-store: registry migrate file → token ${toToken.seconds.toFixed(1)} s, token → postgres ${toPostgres.seconds.toFixed(1)} s (${results.registryStore.keys} keys)`);

  const quiet = { info() {}, warn() {}, error() {}, debug() {} };
  const loaded = { token: loadConfig(configs.token, {}), postgres: loadConfig(configs.postgres, {}) };
  const token = openToken('default', loaded.token.hsm, quiet, { sessions: 2, healthIntervalMs: 0 });
  const pools = [];
  const sourceOf = (store) => {
    const pgStore = store === 'postgres' ? postgresStoreOf(loaded.postgres, 'bench', quiet) : undefined;
    if (pgStore) pools.push(pgStore.records);
    return new RegistrySource({ token, store, postgres: pgStore, log: quiet });
  };
  const ms = async (work) => {
    const t0 = performance.now();
    const value = await work();
    return { ms: performance.now() - t0, value };
  };
  const measureStore = async (store, i) => {
    const reader = sourceOf(store);
    const full = await ms(() => reader.load());
    const writer = sourceOf(store);
    await writer.load();
    const keyId = keys[(i * 7919) % keys.length].keyId;
    const change = await ms(() => writer.change((snapshot, w) => w.putKey({ ...snapshot.registry.key(keyId), description: `bench ${store} ${i}` })));
    const refresh = await ms(() => reader.refresh());
    if (!refresh.value || reader.current().registry.key(keyId).description !== `bench ${store} ${i}`) throw new Error(`registry-store: the ${store} refresh missed the change`);
    const idle = await ms(() => reader.refresh());
    const g = await startGateway({ home: storeHome, port, env: { HSM_GATEWAY_CONFIG: configs[store], HSM_GATEWAY_WORKERS: '1' } });
    await g.stop();
    const run = { store, keys: reader.current().registry.all().length, fullLoadMs: full.ms, changeMs: change.ms, refreshAfterChangeMs: refresh.ms, refreshUnchangedMs: idle.ms, gatewayStartupSeconds: g.startupSeconds, loadAverage: loadavg()[0] };
    log(`registry-store ${store}: full load ${run.fullLoadMs.toFixed(0)} ms, change ${run.changeMs.toFixed(0)} ms, refresh after it ${run.refreshAfterChangeMs.toFixed(0)} ms, unchanged ${run.refreshUnchangedMs.toFixed(1)} ms, gateway start-up ${run.gatewayStartupSeconds.toFixed(2)} s (load ${run.loadAverage.toFixed(2)})`);
    return run;
  };
  for (let i = 0; i < REPEATS; i++) {
    // Alternate which store goes first, so neither always meets a warmer cache or a quieter moment.
    for (const store of i % 2 === 0 ? ['token', 'postgres'] : ['postgres', 'token']) results.registryStore.runs.push(await measureStore(store, i));
  }
  for (const p of pools) await p.close();
  await token.close();
  await pg.close();
  rmSync(storeHome, { recursive: true, force: true });
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const runsOf = (store) => results.registryStore.runs.filter((r) => r.store === store);
  results.registryStore.medians = ['token', 'postgres'].map((store) => ({
    store,
    runs: runsOf(store).length,
    ...Object.fromEntries(['fullLoadMs', 'changeMs', 'refreshAfterChangeMs', 'refreshUnchangedMs', 'gatewayStartupSeconds'].map((m) => [m, median(runsOf(store).map((r) => r[m]))])),
  }));
  const rs = results.registryStore;
  md.push(`registry migrate of ${f0(rs.keys)} keys: file → token ${f2(rs.migrateFileToTokenSeconds)} s, token → PostgreSQL ${rs.postgresVersion} ${f2(rs.migrateTokenToPostgresSeconds)} s (CLI process, start to end).`, '');
  table(
    `Registry store at ${f0(rs.keys)} keys: token (CKO_DATA) vs PostgreSQL (runs in the order made)`,
    ['store', 'full load ms', 'one change ms', 'refresh after it ms', 'refresh unchanged ms', 'gateway start-up s', 'load average'],
    rs.runs.map((r) => [r.store, f0(r.fullLoadMs), f0(r.changeMs), f0(r.refreshAfterChangeMs), f2(r.refreshUnchangedMs), f2(r.gatewayStartupSeconds), f2(r.loadAverage)]),
  );
  table(
    'Registry store, medians',
    ['store', 'runs', 'full load ms', 'one change ms', 'refresh after it ms', 'refresh unchanged ms', 'gateway start-up s'],
    rs.medians.map((m) => [m.store, String(m.runs), f0(m.fullLoadMs), f0(m.changeMs), f0(m.refreshAfterChangeMs), f2(m.refreshUnchangedMs), f2(m.gatewayStartupSeconds)]),
  );
}

// ---------------------------------------------------------------- replicas sharing Redis
if (PARTS.includes('replicas')) {
  const redisPort = await freePort();
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await sleep(500);
  const config = parse(readFileSync(d.demo.configFile, 'utf8'));
  const configFile = join(home, 'gateway-redis.yaml');
  // No audit trail here: a trail file has one writer, and the replicas would share the demo's.
  writeFileSync(configFile, stringify({ ...config, audit: {}, throttle: { defaultLimit: 1_000_000, redis: { url: `redis://127.0.0.1:${redisPort}` }, replicas: 3 } }));
  results.replicas = [];
  for (const n of [1, 2, 3]) {
    const gateways = [];
    for (let i = 0; i < n; i++) gateways.push(await startGateway({ home, port: await freePort(), env: { HSM_GATEWAY_CONFIG: configFile, HSM_GATEWAY_WORKERS: '1' } }));
    for (const c of CASES) {
      const files = gateways.map((_, i) => join(home, `replica-${i}.txt`));
      const runOnce = async (seconds) => {
        for (const file of files) {
          signFile(c, (16_000 * (seconds + 1)) / n);
          rmSync(file, { force: true });
          writeFileSync(file, readFileSync(paths));
        }
        return Promise.all(gateways.map((g, i) => runWrk({ url: g.url, paths: files[i], seconds, connections: Math.ceil(64 / n), gatewayPid: g.child.pid })));
      };
      await runOnce(1);
      const runs = await runOnce(SECONDS);
      const sum = runs.reduce((a, r) => a + r.opsPerSecond, 0);
      const p99 = Math.max(...runs.map((r) => r.latencyMs.p99));
      results.replicas.push({ replicas: n, case: c.name, opsPerSecond: sum, p99WorstMs: p99, gatewayCpuPercent: runs.reduce((a, r) => a + r.gateway.cpuPercent, 0), wrkCpuPercent: runs.reduce((a, r) => a + r.wrk.cpuPercent, 0), machineCpuPercent: runs[0].machineCpuPercent, errors: runs.reduce((a, r) => a + r.errors, 0) });
      log(`replicas ${n} ${c.name}: ${sum.toFixed(0)}/s`);
    }
    for (const g of gateways) await g.stop();
  }
  redis.kill('SIGTERM');
  table(
    'Replicas (1 process each) sharing one redis-server for limits and nonces (saturation, 64 connections split across them)',
    ['replicas', 'case', 'total /s', 'worst p99 ms', 'gateways CPU %', 'wrk CPU %', 'machine CPU %', 'errors'],
    results.replicas.map((r) => [String(r.replicas), r.case, f0(r.opsPerSecond), f2(r.p99WorstMs), f0(r.gatewayCpuPercent), f0(r.wrkCpuPercent), f0(r.machineCpuPercent), String(r.errors)]),
  );
}

rmSync(home, { recursive: true, force: true });
const text = md.join('\n');
console.log('\n' + text);
const out = process.env.BENCH_OUT ?? join(ROOT, 'bench/results');
mkdirSync(out, { recursive: true });
const stem = `${results.started.slice(0, 19).replace(/:/g, '')}-${host.hostname}-sizing`;
writeFileSync(join(out, `${stem}.json`), JSON.stringify(results, null, 2) + '\n');
writeFileSync(join(out, `${stem}.md`), text + '\n');
log(`results written to ${join(out, stem)}.{json,md}`);
