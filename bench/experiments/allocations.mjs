// Where a request's allocations come from: V8's sampling heap profiler, collected objects included (what
// --heap-prof leaves out), on one gateway process at 1,000 req/s P-256 for 10 s after a saturated warm-up; prints the
// allocation by function and by file. Run after `npx tsc -p tsconfig.json`, with Node's WebSocket client:
//   node --experimental-websocket bench/experiments/allocations.mjs
// bench/README.md, "Memory".
import { rmSync } from 'node:fs';
import { freePort, p256DemoHome, runWrk, sleep, startGateway } from '../lib/common.mjs';

const { home, port, sign } = await p256DemoHome('hsm-gateway-alloc-');
const inspectPort = await freePort();
const RATE = Number(process.env.ALLOC_RATE ?? 1000);

// ALLOC_NODE_FLAGS: node flags for the measured gateway (space-separated).
const gateway = await startGateway({ home, port, nodeArgs: [`--inspect=127.0.0.1:${inspectPort}`, ...(process.env.ALLOC_NODE_FLAGS ?? '').split(' ').filter(Boolean)] });
const pid = gateway.child.pid;
try {
  const [{ webSocketDebuggerUrl }] = await (await fetch(`http://127.0.0.1:${inspectPort}/json/list`)).json();
  const ws = new WebSocket(webSocketDebuggerUrl);
  await new Promise((resolve, reject) => ((ws.onopen = resolve), (ws.onerror = reject)));
  let next = 1;
  const pending = new Map();
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.id && pending.has(msg.id)) pending.get(msg.id)(msg);
  };
  const send = (method, params = {}) =>
    new Promise((resolve) => {
      const id = next++;
      pending.set(id, resolve);
      ws.send(JSON.stringify({ id, method, params }));
    });
  await runWrk({ url: gateway.url, paths: sign(30_000), seconds: 2, connections: 64, gatewayPid: pid });
  await sleep(500);
  await send('HeapProfiler.enable');
  // ALLOC_PROMOTED=1: leave out what the scavenges collect — what remains outlived the young generation (promoted to
  // the old space, where only a mark-compact frees it), by allocation site.
  const promotedOnly = process.env.ALLOC_PROMOTED === '1';
  await send('HeapProfiler.startSampling', { samplingInterval: 8192, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: !promotedOnly });
  const run = await runWrk({ url: gateway.url, paths: sign(Math.ceil(RATE * 12 * 1.1)), seconds: 10, connections: 64, rate: RATE, gatewayPid: pid });
  const { result } = await send('HeapProfiler.stopSampling');
  ws.close();
  const answered = run.requests;
  const byFunction = new Map();
  const byFile = new Map();
  const short = (url) => url.replace(/^file:\/\//, '').replace(/.*\/(node_modules\/(@[^/]+\/)?[^/]+|dist)\//, '$1/') || '(native)';
  const walk = (node) => {
    const f = node.callFrame;
    const file = short(f.url);
    const name = `${f.functionName || '(anonymous)'} ${file}:${f.lineNumber + 1}`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + node.selfSize);
    byFile.set(file, (byFile.get(file) ?? 0) + node.selfSize);
    for (const child of node.children) walk(child);
  };
  walk(result.profile.head);
  const total = [...byFile.values()].reduce((a, b) => a + b, 0);
  console.log(`${answered} requests in 10 s at ${RATE}/s: ${(total / 2 ** 20).toFixed(0)} MB ${promotedOnly ? 'promoted (allocated and not collected by a scavenge)' : 'allocated'} (sampled), ${(total / answered / 1024).toFixed(1)} KB per request`);
  const table = (title, map, n) => {
    console.log(`\n| ${title} | KB / request | share |\n|---|---|---|`);
    for (const [k, v] of [...map].sort((a, b) => b[1] - a[1]).slice(0, n)) console.log(`| ${k} | ${(v / answered / 1024).toFixed(2)} | ${((100 * v) / total).toFixed(1)} % |`);
  };
  table('file', byFile, 20);
  table('function', byFunction, 25);
} finally {
  await gateway.stop();
  rmSync(home, { recursive: true, force: true });
}
