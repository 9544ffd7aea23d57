// Rough sign and verify throughput: the raw token (pkcs11js C_SignAsync / C_VerifyAsync, no gateway) vs. the
// gateway (AsymmetricSign / AsymmetricVerify over HTTP, V1-signed requests), in the same run on the same fresh
// SoftHSMv2 token, for RSA-2048 and P-256.
// Usage: npm run bench   (BENCH_SECONDS=5 BENCH_CONCURRENCY=32 BENCH_SESSIONS=8 to change the load)
// UV_THREADPOOL_SIZE must be set before node starts (npm run bench does): inside an ES module it is too late.
if (process.env.UV_THREADPOOL_SIZE === undefined) console.warn('bench: UV_THREADPOOL_SIZE is not set: the raw token runs on 4 libuv threads');
import { spawn } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pkcs11js from 'pkcs11js';

const ROOT = resolve(import.meta.dirname, '..');
const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));
const { percentEncode } = await import(join(ROOT, 'dist/http/auth/canonical.js'));
const MODULE = process.env.HSM_GATEWAY_PKCS11_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 8);

const CASES = [
  { name: 'RSA-2048 PKCS#1 v1.5', alias: 'alias/demo-rsa-2048', algorithm: 'RSA_PKCS1_SHA_256', mechanism: pkcs11js.CKM_RSA_PKCS, out: 256,
    input: (d) => Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), d]) },
  { name: 'P-256 ECDSA', alias: 'alias/demo-ec-p256', algorithm: 'ECDSA_SHA_256', mechanism: pkcs11js.CKM_ECDSA, out: 64, input: (d) => d },
];

const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-bench-'));
const port = await new Promise((ok) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => ok(p)); }); });
const demo = bootstrapDemo({ home, modulePath: MODULE, host: '127.0.0.1', port });
const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
const pin = readFileSync(join(home, 'secrets', 'user-pin'), 'utf8').trim();
const digest = createHash('sha256').update('bench').digest();

async function forDuration(workers, body) {
  let count = 0; let errors = 0;
  const end = Date.now() + SECONDS * 1000;
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: workers }, async (_, w) => {
    while (Date.now() < end) {
      try { await body(w); count++; } catch { errors++; }
    }
  }));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { perSecond: count / seconds, errors };
}

// ---- raw token: the same keys, the same mechanisms, no gateway
const raw = {};
{
  const p11 = new pkcs11js.PKCS11();
  p11.load(MODULE);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.replace(/[\s\0]+$/, '') === 'hsm-gateway-demo');
  const sessions = Array.from({ length: SESSIONS }, () => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION));
  p11.C_Login(sessions[0], pkcs11js.CKU_USER, pin);
  for (const c of CASES) {
    const label = demo.keys.find((k) => k.alias === c.alias).label;
    p11.C_FindObjectsInit(sessions[0], [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: label }]);
    const [key] = p11.C_FindObjects(sessions[0], 1);
    p11.C_FindObjectsFinal(sessions[0]);
    p11.C_FindObjectsInit(sessions[0], [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, { type: pkcs11js.CKA_LABEL, value: label }]);
    const [publicKey] = p11.C_FindObjects(sessions[0], 1);
    p11.C_FindObjectsFinal(sessions[0]);
    const data = c.input(digest);
    raw[c.name] = await forDuration(SESSIONS, async (w) => {
      p11.C_SignInit(sessions[w], { mechanism: c.mechanism }, key);
      await p11.C_SignAsync(sessions[w], data, Buffer.alloc(c.out));
    });
    p11.C_SignInit(sessions[0], { mechanism: c.mechanism }, key);
    const signature = p11.C_Sign(sessions[0], data, Buffer.alloc(c.out));
    raw[`${c.name} verify`] = await forDuration(SESSIONS, async (w) => {
      p11.C_VerifyInit(sessions[w], { mechanism: c.mechanism }, publicKey);
      if (!(await p11.C_VerifyAsync(sessions[w], data, signature))) throw new Error('verify failed');
    });
  }
  p11.C_Logout(sessions[0]);
  p11.C_Finalize();
}

// ---- gateway: bin/hsm-gateway.cjs on the same token, driven over HTTP with V1-signed GET requests
const gateway = spawn(process.execPath, [join(ROOT, 'bin/hsm-gateway.cjs')], {
  // The per-account limit (1,000/s by default) is lifted: this measures the gateway, not its throttle.
  env: { ...process.env, HSM_GATEWAY_HOME: home, HSM_GATEWAY_LOG_LEVEL: 'warn', HSM_GATEWAY_SESSIONS: String(SESSIONS), HSM_GATEWAY_THROTTLE_LIMIT: '1000000', HSM_GATEWAY_CONFIG: '' },
  stdio: ['ignore', 'inherit', 'inherit'],
});
for (let i = 0; i < 200; i++) {
  const up = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
  if (up) break;
  await new Promise((r) => setTimeout(r, 100));
}
const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
function signedPath(params) {
  const all = { ...params, Format: 'JSON', Version: '2016-01-20', AccessKeyId: demo.accessKeyId, SignatureMethod: 'HMAC-SHA1',
    SignatureVersion: '1.0', SignatureNonce: randomBytes(16).toString('hex'), Timestamp: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z') };
  const canonical = Object.keys(all).sort().map((k) => `${percentEncode(k)}=${percentEncode(all[k])}`).join('&');
  const signature = createHmac('sha1', `${secret}&`).update(`GET&%2F&${percentEncode(canonical)}`).digest('base64');
  return `/?${canonical}&Signature=${percentEncode(signature)}`;
}
function get(path) {
  return new Promise((ok, fail) => {
    http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? ok() : fail(new Error(String(res.statusCode)))));
    }).on('error', fail);
  });
}
const viaGateway = {};
for (const c of CASES) {
  const key = demo.keys.find((k) => k.alias === c.alias);
  const params = { Action: 'AsymmetricSign', KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: c.algorithm, Digest: digest.toString('base64') };
  viaGateway[c.name] = await forDuration(CONCURRENCY, () => get(signedPath(params)));
  const value = await new Promise((ok) => http.get({ host: '127.0.0.1', port, path: signedPath(params), agent }, (res) => {
    let body = ''; res.on('data', (d) => (body += d)); res.on('end', () => ok(JSON.parse(body).Value));
  }));
  const verifyParams = { ...params, Action: 'AsymmetricVerify', Value: value };
  viaGateway[`${c.name} verify`] = await forDuration(CONCURRENCY, () => get(signedPath(verifyParams)));
}
gateway.kill('SIGTERM');
await new Promise((r) => gateway.once('exit', r));
rmSync(home, { recursive: true, force: true });

console.log(`\nsign / verify throughput, ${SECONDS}s per row, ${SESSIONS} token sessions, ${CONCURRENCY} concurrent HTTP clients (same machine)`);
console.log('case'.padEnd(24), 'raw token/s'.padStart(12), 'gateway/s'.padStart(12), 'ratio'.padStart(8), 'errors'.padStart(8));
for (const name of CASES.flatMap((c) => [c.name, `${c.name} verify`])) {
  const r = raw[name]; const g = viaGateway[name];
  console.log(name.padEnd(24), r.perSecond.toFixed(0).padStart(12), g.perSecond.toFixed(0).padStart(12),
    (g.perSecond / r.perSecond).toFixed(2).padStart(8), String(r.errors + g.errors).padStart(8));
}
