// How long a replica's event loop stalls while it reads another writer's change of a large token-store registry
// (#17): a SoftHSMv2 demo token given EXP_RECORDS key records (records only, no key objects), one RegistrySource
// changes a key, the other's refresh() reads the change while a 1 ms timer measures the event loop's delay.
//
// Usage: npx tsc -p tsconfig.json && node bench/experiments/registry-refresh-stall.mjs [dist dir, ./dist]
//        (EXP_RECORDS, 10000; EXP_ROUNDS, 3). A new demo token each run. EXP_MODULE: the module both sources open
//        the demo token through, e.g. the emulated network HSM (softhsm/netsim/build/libnetsim-pkcs11.so, with
//        NETSIM_DELAY_US=1000). The writer's change is measured too (its reads are addon jobs, its writes pkcs11js).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const dist = resolve(process.argv[2] ?? 'dist');
const RECORDS = Number(process.env.EXP_RECORDS ?? 10_000);
const ROUNDS = Number(process.env.EXP_ROUNDS ?? 3);
const load = (path) => import(pathToFileURL(resolve(dist, path)).href);
const { bootstrapDemo } = await load('demo/bootstrap.js');
const { loadConfig } = await load('config/load.js');
const { openToken } = await load('open-tokens.js');
const { RegistrySource } = await load('keys/registry-source.js');
const { RegistryObjects } = await load('keys/registry-objects.js');

const quiet = { info() {}, warn() {}, error() {}, debug() {} };
const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-refresh-stall-'));
const demo = bootstrapDemo({ home, modulePath: '/usr/lib/softhsm/libsofthsm2.so', host: '127.0.0.1', port: 0 });
const config = { ...loadConfig(demo.configFile, {}).hsm, ...(process.env.EXP_MODULE ? { module: process.env.EXP_MODULE } : {}) };
const open = () => openToken('default', config, quiet, { sessions: 2, healthIntervalMs: 0 });
const token = open();
{
  const started = Date.now();
  const objects = new RegistryObjects();
  await token.admin((p11, session) => {
    objects.readAll(p11, session);
    const records = Array.from({ length: RECORDS }, (_, i) => {
      const keyId = `bulk-${String(i).padStart(6, '0')}`;
      return { kind: 'key', id: keyId, record: { keyId, account: 'default', keySpec: 'EC_P256', aliases: [], versions: [{ keyVersionId: `${keyId}-v1`, label: `${keyId}-v1` }], createdAt: '2026-01-01T00:00:00Z' } };
    });
    objects.putAll(p11, session, records);
  });
  console.log(`made ${RECORDS} records in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
const reader = new RegistrySource({ token, log: quiet });
let t = Date.now();
await reader.load();
console.log(`load: ${Date.now() - t} ms, ${reader.current().registry.all().length} keys`);
const writerToken = open();
const writer = new RegistrySource({ token: writerToken, log: quiet });
await writer.load();
const keyId = 'bulk-000000';
for (let round = 0; round < ROUNDS; round++) {
  const changeDelay = monitorEventLoopDelay({ resolution: 1 });
  changeDelay.enable();
  // The histogram's timer runs from the next turn of the loop: a change started in this one would not be seen.
  await new Promise((r) => setTimeout(r, 5));
  const changeStarted = Date.now();
  await writer.change((_s, w) => w.putKey({ ...writer.current().registry.key(keyId), description: `round ${round} ${Date.now()}` }));
  const changeMs = Date.now() - changeStarted;
  // One turn of the timers, so that a delay the change's last synchronous stretch caused is recorded.
  await new Promise((r) => setTimeout(r, 5));
  changeDelay.disable();
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  await new Promise((r) => setTimeout(r, 5));
  t = Date.now();
  const changed = await reader.refresh();
  const ms = Date.now() - t;
  await new Promise((r) => setTimeout(r, 5));
  delay.disable();
  console.log(`round ${round}: change ${changeMs} ms (event-loop delay max ${(changeDelay.max / 1e6).toFixed(0)} ms); refresh ${ms} ms (changed: ${changed}); event-loop delay max ${(delay.max / 1e6).toFixed(0)} ms, p99 ${(delay.percentile(99) / 1e6).toFixed(0)} ms`);
}
await writerToken.close();
await token.close();
rmSync(home, { recursive: true, force: true });
process.exit(0);
