// CPU profile of the gateway under load: node --cpu-prof on the gateway process, wrk saturating it with pre-signed
// AsymmetricSign requests, then the functions with the most self time.
// Usage: npm run bench:profile   (PROFILE_CASE="ECDSA P-256" PROFILE_SECONDS=10 PROFILE_WORKERS=1 to change it)
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import pkcs11js from 'pkcs11js';
import { benchCases, demoOf, DIGEST, freePort, MODULE, presign, ROOT, runWrk, startGateway } from './lib/common.mjs';

const SECONDS = Number(process.env.PROFILE_SECONDS ?? 10);
const CASE = process.env.PROFILE_CASE ?? 'ECDSA P-256';
const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));

const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-profile-'));
const profDir = mkdtempSync(join(tmpdir(), 'hsm-gateway-cpuprof-'));
const port = await freePort();
// The registry as a file: the bench reads it to find the demo keys' labels (signing serves the same either way).
bootstrapDemo({ home, modulePath: MODULE, host: '127.0.0.1', port, registryIn: 'file' });
const { demo, secret } = demoOf(home);
const c = benchCases(pkcs11js, { sm2: false }).find((x) => x.name === CASE);
const key = demo.keys.find((k) => k.alias === c.alias);
const params = { Action: 'AsymmetricSign', KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: c.algorithm, Digest: DIGEST.toString('base64') };
const paths = presign(join(home, 'paths.txt'), Number(process.env.PROFILE_REQUESTS ?? 15000 * SECONDS), { accessKeyId: demo.accessKeyId, secret, params });
const gateway = await startGateway({ home, port, cpuProf: profDir, env: { HSM_GATEWAY_WORKERS: process.env.PROFILE_WORKERS ?? '1' } });
const run = await runWrk({ url: gateway.url, paths, seconds: SECONDS, connections: 64, gatewayPid: gateway.child.pid });
await gateway.stop();

const files = readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile'));
const profile = JSON.parse(readFileSync(join(profDir, files.sort().at(-1)), 'utf8'));
const self = new Map();
let total = 0;
const dt = (profile.endTime - profile.startTime) / Math.max(1, profile.samples.length);
for (const node of profile.nodes) {
  const f = node.callFrame;
  const url = f.url.startsWith('file://') ? relative(ROOT, f.url.slice(7)) : f.url;
  const name = `${f.functionName || '(anonymous)'} ${url ? `${url}:${f.lineNumber + 1}` : ''}`.trim();
  self.set(name, (self.get(name) ?? 0) + node.hitCount);
  total += node.hitCount;
}
// Where the time went, by area: the file that owns the function.
const area = (name) => {
  if (/^\((idle|program|garbage collector)\)/.test(name)) return name.split(' ')[0];
  const m = name.match(/ (\S+):\d+$/);
  if (!m) return '(native / V8 builtins)';
  const u = m[1];
  if (u.startsWith('node:')) return u.replace(/^node:internal\//, 'node:').split('/').slice(0, 2).join('/');
  if (u.includes('node_modules/')) return 'npm:' + u.split('node_modules/')[1].split('/')[0];
  return u;
};
const byArea = new Map();
for (const [name, hits] of self) byArea.set(area(name), (byArea.get(area(name)) ?? 0) + hits);
const pct = (h) => ((100 * h) / total).toFixed(1).padStart(5) + ' %';
console.log(`\nprofile: ${CASE}, ${SECONDS}s saturated by wrk (64 connections): ${run.opsPerSecond.toFixed(0)} ops/s, p99 ${run.latencyMs.p99.toFixed(1)} ms, gateway CPU ${run.gateway.cpuPercent.toFixed(0)} %, wrk CPU ${run.wrk.cpuPercent.toFixed(0)} %, sample ≈ ${(dt / 1000).toFixed(2)} ms`);
console.log('\ntop self time, by function:');
for (const [name, hits] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.PROFILE_TOP ?? 30))) console.log(pct(hits), name);
console.log('\nself time, by file / package:');
for (const [name, hits] of [...byArea].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(pct(hits), name);
// graphene-pk11 serves admin work only (templates, token info): the signing path must not call it. Samples under its
// frames are split into loading its module at start-up and calls while serving.
const parentOf = new Map();
for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node);
const byNodeId = new Map(profile.nodes.map((n) => [n.id, n]));
const graphene = { loading: 0, serving: 0 };
for (const node of profile.nodes) {
  if (!node.hitCount) continue;
  const chain = [];
  for (let n = byNodeId.get(node.id); n; n = parentOf.get(n.id)) chain.push(n.callFrame);
  const at = chain.findIndex((f) => f.url.includes('/graphene-pk11/'));
  if (at < 0) continue;
  graphene[chain.slice(at).some((f) => f.functionName === 'Module._compile') ? 'loading' : 'serving'] += node.hitCount;
}
console.log(`\ngraphene-pk11 (admin only): ${graphene.serving} of ${total} samples in calls while serving (must be 0), ${graphene.loading} loading its module at start-up`);
if (process.env.PROFILE_KEEP) console.log(`\nprofile kept in ${profDir}`);
else rmSync(profDir, { recursive: true, force: true });
rmSync(home, { recursive: true, force: true });
