// Experiment behind the multi-core choice (bench/README.md): can worker_threads take per-request work off the main
// thread of one process? Node 20 cannot hand a listening socket to worker threads (http `reusePort` is Node ≥ 22.12),
// so a worker thread can only take work that the main thread hands over by message, after HTTP parsing.
// Three servers answer the same pre-signed V1 requests under wrk:
//   inline   — parse the query, rebuild the canonical string, HMAC-SHA1 it on the main thread (the gateway's auth work)
//   offload  — the same work in a worker thread (postMessage there and back per request)
//   cluster  — `inline` in 2 node:cluster workers
// Usage: node bench/experiments/worker-threads.mjs   (EXP_SECONDS=5)
import cluster from 'node:cluster';
import { createHmac } from 'node:crypto';
import http from 'node:http';
import { join } from 'node:path';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { freePort, presign, ROOT, runWrk } from '../lib/common.mjs';

const { parsePairs } = await import(join(ROOT, 'dist/http/rpc-request.js'));
const { canonicalQuery, percentEncode } = await import(join(ROOT, 'dist/http/auth/canonical.js'));
const SECRET = 'experiment-secret';
function work(url) {
  const pairs = parsePairs(url.slice(url.indexOf('?') + 1)).filter(([k]) => k !== 'Signature');
  return createHmac('sha1', `${SECRET}&`).update(`GET&%2F&${percentEncode(canonicalQuery(pairs))}`).digest('base64');
}

if (!isMainThread) {
  parentPort.on('message', ({ id, url }) => parentPort.postMessage({ id, signature: work(url) }));
} else if (cluster.isWorker) {
  http.createServer((req, res) => res.end(work(req.url))).listen(Number(process.env.EXP_PORT), '127.0.0.1');
} else {
  const seconds = Number(process.env.EXP_SECONDS ?? 5);
  const port = await freePort();
  const file = '/tmp/hsm-gateway-experiment-paths.txt';
  const results = [];
  const measure = async (name, pid) => {
    presign(file, 40_000 * (seconds + 1), { accessKeyId: 'LTAIexperiment', secret: SECRET, params: { Action: 'AsymmetricSign', KeyId: 'k', Digest: 'x' } });
    await runWrk({ url: `http://127.0.0.1:${port}`, paths: file, seconds: 1, connections: 64, gatewayPid: pid });
    const r = await runWrk({ url: `http://127.0.0.1:${port}`, paths: file, seconds, connections: 64, gatewayPid: pid });
    results.push({ name, opsPerSecond: Math.round(r.opsPerSecond), p99Ms: r.latencyMs.p99, serverCpuPercent: Math.round(r.gateway.cpuPercent - r.wrk.cpuPercent), // wrk runs as a child of this process
      wrkCpuPercent: Math.round(r.wrk.cpuPercent), machineCpuPercent: Math.round(r.machineCpuPercent) });
    console.error(results.at(-1));
  };
  // inline and offload run in this process; the bench's /metrics scrape gets a 404, which runWrk tolerates.
  let pending = new Map();
  let next = 0;
  const thread = new Worker(new URL(import.meta.url));
  thread.on('message', ({ id, signature }) => {
    pending.get(id)(signature);
    pending.delete(id);
  });
  for (const mode of ['inline', 'offload']) {
    const server = http.createServer((req, res) => {
      if (mode === 'inline') return res.end(work(req.url));
      const id = next++;
      pending.set(id, (s) => res.end(s));
      thread.postMessage({ id, url: req.url });
    });
    await new Promise((r) => server.listen(port, '127.0.0.1', r));
    await measure(mode, process.pid);
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  await thread.terminate();
  cluster.setupPrimary({ exec: new URL(import.meta.url).pathname });
  for (let i = 0; i < 2; i++) cluster.fork({ EXP_PORT: String(port) });
  await new Promise((r) => setTimeout(r, 1500));
  await measure('cluster (2 workers)', process.pid);
  for (const w of Object.values(cluster.workers)) w.kill();
  console.log(JSON.stringify(results, null, 1));
  process.exit(0);
}
