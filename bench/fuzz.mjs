// npm run fuzz: a fuzz campaign against the gateway as `npm start` runs it (bin/hsm-gateway.cjs, a real SoftHSMv2 demo
// token, the SM2 test token when built). It drives FUZZ_REQUESTS (default 100,000) requests over every action of the
// dispatch map, V1 and V3 signatures, valid signatures with fuzzed parameters and malformed signatures, headers and
// bodies (bench/lib/fuzz-cases.mjs), checks every answer — no 5xx, no stack trace or source path, no secret (access-key
// secrets, PINs), a well-formed JSON or XML body with RequestId (errors: Code, Message, HostId) — and prints a summary.
// Exit 1 when any answer was wrong or the gateway died. Not part of `npm test` (it runs a small seeded set of the same
// cases: test/integration/fuzz.test.ts).
//
// Environment: FUZZ_REQUESTS (100000), FUZZ_SEED (1; the same seed generates the same cases), FUZZ_CONCURRENCY (32
// requests in flight), FUZZ_OUT (a folder: writes fuzz-<date>.json with the summary and every violation).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { parse, stringify } from 'yaml';
import { freePort, machine, MODULE, ROOT, startGateway } from './lib/common.mjs';
import { buildRequest, caseArbitrary, codeOf, prepareCampaign, send, validTemplates, valuePools, violationsOf } from './lib/fuzz-cases.mjs';

const TOTAL = Number(process.env.FUZZ_REQUESTS ?? 100_000);
const SEED = Number(process.env.FUZZ_SEED ?? 1);
const CONCURRENCY = Number(process.env.FUZZ_CONCURRENCY ?? 32);
const BATCH = 1000;
const log = (...a) => console.error('fuzz:', ...a);

const { bootstrapDemo } = await import(join(ROOT, 'dist/demo/bootstrap.js'));
const { apiActions } = await import(join(ROOT, 'dist/operations/index.js'));

const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-fuzz-'));
const port = await freePort();
const demo = bootstrapDemo({ home, modulePath: MODULE, host: '127.0.0.1', port });
const demoSecret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();

// The campaign's own account: the key-changing actions run there, so the demo keys keep signing for the whole run.
const campaign = { accessKeyId: 'LTAIfuzzCampaign00000001', secret: `fuzz-${Math.random().toString(36).slice(2)}-secret`, account: 'fuzz-campaign' };
const campaignSecretFile = join(home, 'secrets', `${campaign.accessKeyId}.secret`);
writeFileSync(campaignSecretFile, campaign.secret, { mode: 0o600 });
const config = parse(readFileSync(demo.configFile, 'utf8'));
config.auth.accessKeys.push({ accessKeyId: campaign.accessKeyId, secret: { file: campaignSecretFile }, account: campaign.account });
config.logging = { level: 'error' };
// Most malformed requests fail authentication, all from this one address: the per-address limit would answer them
// 429 before they reach the code under test.
config.auth.failedAuth = { ...config.auth.failedAuth, burst: 1_000_000_000 };
const configFile = join(home, 'fuzz.yaml');
writeFileSync(configFile, stringify(config));

const secrets = [demoSecret, campaign.secret, ...['user-pin', 'so-pin'].map((f) => readFileSync(join(home, 'secrets', f), 'utf8').trim())];
const gateway = await startGateway({ home, port, env: { HSM_GATEWAY_CONFIG: configFile, HSM_GATEWAY_LOG_LEVEL: 'error' } });
let gatewayExit;
gateway.child.once('exit', (code, signal) => (gatewayExit = code ?? signal));

const ctx = {
  host: `127.0.0.1:${port}`,
  demo: { accessKeyId: demo.accessKeyId, secret: demoSecret },
  campaign: { accessKeyId: campaign.accessKeyId, secret: campaign.secret },
};
const actions = apiActions();

// The campaign account's keys (so its lifecycle calls can succeed), made through the API like any client would.
const campaignKeys = await prepareCampaign(gateway.url, ctx);

// Sanity: a correctly signed request of each scheme succeeds. Otherwise every "signed" case would stop at
// authentication and the campaign would test nothing behind it.
const key = demo.keys.find((k) => k.keySpec === 'EC_P256');
for (const scheme of ['V1', 'V3']) {
  const answer = await send(gateway.url, buildRequest({ kind: 'signed', scheme, method: 'POST', version: '2016-01-20', action: 'GetPublicKey', params: { KeyId: key.alias, KeyVersionId: key.keyVersionId }, caller: 'demo' }, ctx));
  if (answer.status !== 200) throw new Error(`a valid ${scheme} request was refused (${answer.status}): ${answer.text}`);
}

const pools = valuePools(demo, { keys: campaignKeys });
const arbitrary = caseArbitrary(actions, pools, validTemplates(demo, campaignKeys));
log(`${TOTAL} requests, seed ${SEED}, ${CONCURRENCY} in flight, ${actions.length} actions, gateway at ${gateway.url} (pid ${gateway.child.pid})`);

const summary = {
  machine: machine(),
  seed: SEED,
  requests: 0,
  seconds: 0,
  byStatus: {},
  byCode: {},
  byKind: {},
  byScheme: {},
  byAction: {},
  noAnswer: 0,
  unsendable: 0,
  violations: 0,
};
const examples = [];
const bump = (map, name, by = 1) => (map[name] = (map[name] ?? 0) + by);

async function one(c) {
  const request = buildRequest(c, ctx);
  const kind = c.kind === 'signed' ? `signed ${c.scheme}` : c.kind;
  bump(summary.byKind, kind);
  bump(summary.byScheme, c.kind === 'signed' ? c.scheme : c.kind === 'v3-broken' ? 'V3' : 'V1');
  let answer;
  try {
    answer = await send(gateway.url, request);
  } catch (err) {
    // fetch refuses some requests before sending (a header value it will not put on the wire): no client can send those.
    if (err.cause === undefined) {
      summary.unsendable++;
      return;
    }
    summary.noAnswer++;
    summary.violations++;
    if (examples.length < 200) examples.push({ case: c, request: brief(request), problem: [`no answer: ${err.cause?.code ?? err.message}`] });
    return;
  }
  summary.requests++;
  bump(summary.byStatus, String(answer.status));
  bump(summary.byCode, codeOf(answer));
  const perAction = (summary.byAction[`${c.version} ${c.action}`] ??= { requests: 0, ok: 0 });
  perAction.requests++;
  if (answer.status < 400) perAction.ok++;
  const problems = violationsOf(answer, request, secrets);
  if (problems.length > 0) {
    summary.violations++;
    if (examples.length < 200) examples.push({ case: c, request: brief(request), status: answer.status, body: answer.text.slice(0, 600), problem: problems });
  }
}

const brief = (r) => ({ method: r.method, path: r.path.slice(0, 400), headers: r.headers, body: r.body === undefined ? undefined : String(r.body).slice(0, 400) });

const started = process.hrtime.bigint();
let lastReport = Date.now();
for (let batch = 0; summary.requests + summary.noAnswer + summary.unsendable < TOTAL && gatewayExit === undefined; batch++) {
  const cases = fc.sample(arbitrary, { seed: SEED + batch, numRuns: Math.min(BATCH, TOTAL - summary.requests - summary.noAnswer - summary.unsendable) });
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < cases.length && gatewayExit === undefined) await one(cases[next++]);
    }),
  );
  if (Date.now() - lastReport > 10_000) {
    lastReport = Date.now();
    const s = Number(process.hrtime.bigint() - started) / 1e9;
    log(`${summary.requests} answered in ${s.toFixed(0)} s (${(summary.requests / s).toFixed(0)}/s), ${summary.violations} violations`);
  }
}
summary.seconds = Number(process.hrtime.bigint() - started) / 1e9;
summary.ratePerSecond = Math.round(summary.requests / summary.seconds);
summary.gatewayAlive = gatewayExit === undefined;
summary.actionsCovered = Object.keys(summary.byAction).length;
summary.actionsInMap = actions.length;
await gateway.stop();

const sorted = (map) => Object.entries(map).sort((a, b) => b[1] - a[1]);
console.log(`\n## Fuzz campaign (seed ${SEED})\n`);
console.log(`requests answered: ${summary.requests} in ${summary.seconds.toFixed(1)} s (${summary.ratePerSecond}/s); no answer: ${summary.noAnswer}; not sendable by fetch: ${summary.unsendable}; violations: ${summary.violations}; gateway ${summary.gatewayAlive ? 'alive to the end' : `died (${gatewayExit})`}`);
console.log(`actions driven: ${summary.actionsCovered} of ${summary.actionsInMap} in the dispatch map\n`);
console.log('| status | answers |\n|---|---|');
for (const [status, n] of sorted(summary.byStatus)) console.log(`| ${status} | ${n} |`);
console.log('\n| case | requests |\n|---|---|');
for (const [kind, n] of sorted(summary.byKind)) console.log(`| ${kind} | ${n} |`);
console.log('\n| code | answers |\n|---|---|');
for (const [code, n] of sorted(summary.byCode)) console.log(`| ${code} | ${n} |`);
console.log('\n| action | requests | 2xx |\n|---|---|---|');
for (const [action, r] of Object.entries(summary.byAction).sort()) console.log(`| ${action} | ${r.requests} | ${r.ok} |`);
if (examples.length > 0) {
  console.log(`\nfirst violations (of ${summary.violations}):`);
  const short = (v) => (typeof v === 'string' && v.length > 80 ? `${v.slice(0, 60)}…(${v.length} chars)` : v);
  for (const e of examples.slice(0, 10)) console.log(JSON.stringify({ ...e, case: JSON.parse(JSON.stringify(e.case, (_k, v) => short(v))), request: JSON.parse(JSON.stringify(e.request, (_k, v) => short(v))) }).slice(0, 1500));
}
if (process.env.FUZZ_OUT) {
  mkdirSync(process.env.FUZZ_OUT, { recursive: true });
  const file = join(process.env.FUZZ_OUT, `fuzz-${new Date().toISOString().replace(/[:.]/g, '')}.json`);
  writeFileSync(file, JSON.stringify({ summary, examples }, null, 2));
  log(`wrote ${file}`);
}
rmSync(home, { recursive: true, force: true });
process.exit(summary.violations === 0 && summary.gatewayAlive && summary.requests > 0 ? 0 : 1);
