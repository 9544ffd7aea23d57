// CPU profile of the gateway under load: node --cpu-prof on the gateway process, wrk saturating it with pre-signed
// AsymmetricSign requests, then the functions with the most self time.
// Usage: npm run bench:profile   (PROFILE_CASE="ECDSA P-256" PROFILE_SECONDS=10 PROFILE_WORKERS=1 to change it)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { readNewestProfile, selfTime, topLines } from './lib/cpu-profile.mjs';
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

const profile = readNewestProfile(profDir);
const { byFunction: self, byArea, total, intervalUs: dt } = selfTime(profile, ROOT);
console.log(`\nprofile: ${CASE}, ${SECONDS}s saturated by wrk (64 connections): ${run.opsPerSecond.toFixed(0)} ops/s, p99 ${run.latencyMs.p99.toFixed(1)} ms, gateway CPU ${run.gateway.cpuPercent.toFixed(0)} %, wrk CPU ${run.wrk.cpuPercent.toFixed(0)} %, sample ≈ ${(dt / 1000).toFixed(2)} ms`);
console.log('\ntop self time, by function:');
for (const line of topLines(self, total, Number(process.env.PROFILE_TOP ?? 30))) console.log(line);
console.log('\nself time, by file / package:');
for (const line of topLines(byArea, total, 25)) console.log(line);
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
