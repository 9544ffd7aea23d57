import fc from 'fast-check';
import { Redis } from 'ioredis';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { AccountLimiter } from '../../src/throttle/account-limiter.js';
import { freePort, startGatewayProcess, startRedis, type Running } from '../helpers/processes.js';
import { send, signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// Three gateway processes share one real redis-server: one account's limit holds across all of them.
//
// Nothing here depends on how fast this machine is. The limiter decides each request at some instant between the
// moment the test sends it and the moment the answer arrives (Redis's clock, or a replica's: the same clock as
// the test's on one machine), so the answers can be checked against the window exactly:
// - requests sent and answered within one second were decided within that second: at most the limit of them pass;
// - a request refused was decided after the limit had been admitted in the 1,010 ms before it (the window), so at
//   least the limit of admitted requests were answered after (sent − 1,010 ms) and sent before it was answered;
// - the first `limit` requests decided for a quiet account all pass, however the requests are spread in time.
// How many pass per second under sustained load is timing (the client shares 2 cores with 3 gateways and Redis):
// it is printed, not asserted; the fake-clock tests (test/unit/account-limiter.test.ts) prove the rates.
const LIMIT = 200;
const SHARE = Math.floor(LIMIT / 3); // each replica's while Redis is away
const OTHER = { accessKeyId: 'LTAIotheraccountoth01', secret: 'other-account-secret', account: 'other' };
/** Fresh accounts, one per test, so that no test sees another's admissions in its window. */
const ACCOUNTS = ['burst', 'flood', 'load', 'one', 'fallback', 'after'] as const;
type Who = { accessKeyId: string; secret: string };
const who = {} as Record<(typeof ACCOUNTS)[number], Who>;
let home: string;
let demo: DemoInfo;
let secret: string;
let redisPort: number;
let redis: Running;
const replicas: Array<{ run: Running; url: string }> = [];

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-throttle-'));
  demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
  redisPort = await freePort();
  redis = await startRedis(redisPort);
  const config = parse(readFileSync(demo.configFile, 'utf8'));
  for (const key of [OTHER, ...ACCOUNTS.map((account) => ({ accessKeyId: `LTAI${account}${'x'.repeat(17 - account.length)}`, secret: `${account}-secret`, account }))]) {
    const secretFile = join(home, 'secrets', `${key.accessKeyId}.secret`);
    writeFileSync(secretFile, key.secret, { mode: 0o600 });
    config.auth.accessKeys.push({ accessKeyId: key.accessKeyId, secret: { file: secretFile }, account: key.account });
    if (key.account !== OTHER.account) who[key.account as (typeof ACCOUNTS)[number]] = key;
  }
  // Every decision from Redis while it runs, however slowly this machine answers: with the default 250 ms a stalled
  // event loop (2 shared cores) times commands out and those requests are decided locally at the replica's share,
  // by design, on top of Redis's count. That degraded mode is the Redis-dies test's.
  const redisConfig = { url: `redis://127.0.0.1:${redisPort}`, commandTimeoutMs: 30_000 };
  config.throttle = { defaultLimit: LIMIT, accounts: { one: 1 }, redis: redisConfig, replicas: 3 };
  // This file is about the limit: while Redis is away the replicas keep serving these reads on their own nonce check
  // (the default, refusing them with 503, is replay.test.ts's).
  config.replay = { whenSharedStoreDown: 'local' };
  config.logging = { level: 'warn' };
  const replicaConfig = join(home, 'replica.yaml');
  writeFileSync(replicaConfig, stringify(config));
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    replicas.push({ run: await startGatewayProcess({ HSM_GATEWAY_CONFIG: replicaConfig, HSM_GATEWAY_PORT: String(port) }), url: `http://127.0.0.1:${port}` });
  }
  await waitForBackend('redis');
}, 120_000);

afterAll(async () => {
  for (const r of replicas) await r.run.stop();
  await redis?.stop('SIGKILL');
  rmSync(home, { recursive: true, force: true });
});

async function backendOf(url: string): Promise<string | undefined> {
  const text = (await send(`${url}/metrics`)).text;
  return /hsm_gateway_limiter_backend\{backend="(\w+)"\} 1/.exec(text)?.[1];
}

async function waitForBackend(backend: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const states = await Promise.all(replicas.map((r) => backendOf(r.url)));
    if (states.every((s) => s === backend)) return;
    if (Date.now() > deadline) throw new Error(`limiter backends are ${states.join(', ')}, expected ${backend}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Sent {
  /** Date.now() before sending. */
  at: number;
  /** Date.now() + 1 after the answer (Date.now() truncates: the decision was before `done`). */
  done: number;
  status: number;
  replica: number;
  retryAfter: number | undefined;
}

/** A cheap signed request: DescribeKey of a demo key for its account, ListKeys for the others (they own none). */
function signedQuery(as: Who): string {
  const business: Record<string, string> = as.accessKeyId === demo.accessKeyId ? { Action: 'DescribeKey', KeyId: demo.keys[0]!.keyId } : { Action: 'ListKeys' };
  return toQuery(signV1(v1Params(as.accessKeyId, business), as.secret));
}

async function sendTo(replica: number, query: string): Promise<Sent> {
  const at = Date.now();
  const r = await send(`${replicas[replica]!.url}/?${query}`);
  const retry = r.headers.get('x-acs-retry-after');
  return { at, done: Date.now() + 1, status: r.status, replica, retryAfter: retry === null ? undefined : Number(retry) };
}

/** `n` requests at once (signed first), round-robin over the replicas. */
function burst(n: number, as: Who): Promise<Sent[]> {
  const queries = Array.from({ length: n }, () => signedQuery(as));
  return Promise.all(queries.map((query, i) => sendTo(i % replicas.length, query)));
}

/** `perSecond` requests per second for `seconds`, round-robin over the replicas. */
async function load(perSecond: number, seconds: number, as: Who): Promise<Sent[]> {
  const tickMs = 10;
  const pending: Array<Promise<Sent>> = [];
  const started = Date.now();
  for (let tick = 0; Date.now() - started < seconds * 1000; tick++) {
    // As many as are due by the end of this tick (at 20/s, one every fifth tick), even if the ticks run late.
    const due = Math.floor(((Date.now() - started + tickMs) * perSecond) / 1000);
    while (pending.length < due) pending.push(sendTo(pending.length % replicas.length, signedQuery(as)));
    const next = started + (tick + 1) * tickMs;
    await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
  }
  while (pending.length < Math.floor(perSecond * seconds)) pending.push(sendTo(pending.length % replicas.length, signedQuery(as)));
  return Promise.all(pending);
}

/** The window's two guarantees, checked on what the client saw (see the top of the file). */
function expectWindowHeld(sent: Sent[], limit: number): void {
  expect(sent.filter((s) => s.status !== 200 && s.status !== 429)).toEqual([]);
  const admitted = sent.filter((s) => s.status === 200);
  let most = 0;
  for (const a of admitted) most = Math.max(most, admitted.filter((b) => b.at >= a.at && b.done <= a.at + 1000).length);
  expect(most, 'admitted within one second').toBeLessThanOrEqual(limit);
  for (const refused of sent.filter((s) => s.status === 429)) {
    const before = admitted.filter((a) => a.done > refused.at - 1010 && a.at < refused.done).length;
    expect(before, 'admitted in the window of a refused request').toBeGreaterThanOrEqual(limit);
    expect(refused.retryAfter).toBeGreaterThanOrEqual(1);
    expect(refused.retryAfter).toBeLessThanOrEqual(1010);
  }
}

describe('the Redis window (one Lua script per request) on a real redis-server', () => {
  let client: Redis;
  beforeAll(() => {
    client = new Redis({ host: '127.0.0.1', port: redisPort, enableOfflineQueue: true, maxRetriesPerRequest: 1 });
  });
  afterAll(() => client.disconnect());

  it('when requests arrive at any times (fake clock) and the limit changes (reload), then Redis decides exactly as the memory window, retry hints included', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({ at: fc.integer({ min: 0, max: 40_000 }), n: fc.integer({ min: 1, max: 60 }), limit: fc.option(fc.integer({ min: 1, max: 120 }), { freq: 4 }) }),
          { minLength: 1, maxLength: 40 },
        ),
        fc.integer({ min: 1, max: 120 }),
        async (bursts, firstLimit) => {
          const account = `differential-${run++}`;
          const accountLimits: Record<string, number> = { [account]: firstLimit };
          let now = 0;
          const options = { defaultLimit: 1, accountLimits, replicas: 1, now: () => now };
          const memory = new AccountLimiter(options);
          const shared = new AccountLimiter({ ...options, redis: client });
          for (const { at, n, limit } of [...bursts].sort((a, b) => a.at - b.at)) {
            if (limit !== null) accountLimits[account] = limit;
            now = 1_700_000_000_000 + at / 10;
            for (let i = 0; i < n; i++) expect(await shared.consume(account)).toEqual(await memory.consume(account));
          }
        },
      ),
      { numRuns: 20, seed: 20261125 },
    );
  });

  it('when requests are counted, then each is one EVALSHA; when Redis has lost the script, EVAL runs it once and EVALSHA again after', async () => {
    const limiter = new AccountLimiter({ defaultLimit: 5, accountLimits: {}, redis: client, replicas: 1, now: () => 1_700_000_000_000 });
    const calls = async (): Promise<Record<string, number>> => {
      const info = await client.info('commandstats');
      return Object.fromEntries([...info.matchAll(/cmdstat_(\w+):calls=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
    };
    await limiter.consume('rounds'); // the script is cached from here on
    await client.config('RESETSTAT');
    const decisions = await Promise.all(Array.from({ length: 8 }, () => limiter.consume('rounds')));
    expect(decisions.filter((d) => d.allowed)).toHaveLength(4);
    expect((await calls()).evalsha).toBe(8);
    expect((await calls()).eval).toBeUndefined();
    await client.script('FLUSH');
    await client.config('RESETSTAT');
    expect((await limiter.consume('rounds')).allowed).toBe(false);
    expect((await limiter.consume('rounds')).allowed).toBe(false);
    const after = await calls();
    expect(after.eval).toBe(1);
    expect(after.evalsha).toBe(2);
    // The account's hash lives no longer than the window after its last admission.
    const ttl = await client.pttl('hsmgw:throttle:rounds');
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(1020);
  });
});

describe('per-account throttling across three replicas sharing Redis', () => {
  it(`when a quiet account sends ${LIMIT} requests at once across the replicas, then all ${LIMIT} pass`, async () => {
    const sent = await burst(LIMIT, who.burst);
    expect(sent.filter((s) => s.status !== 200)).toEqual([]);
  });

  it(`when a quiet account sends ${2 * LIMIT} requests at once across the replicas, then the first ${LIMIT} decided pass and no second admits more than ${LIMIT}`, async () => {
    const sent = await burst(2 * LIMIT, who.flood);
    const admitted = sent.filter((s) => s.status === 200).length;
    console.info(`throttle burst: ${admitted} of ${sent.length} admitted in ${Math.max(...sent.map((s) => s.done)) - sent[0]!.at} ms at ${LIMIT}/s`);
    expect(admitted).toBeGreaterThanOrEqual(LIMIT);
    expectWindowHeld(sent, LIMIT);
  });

  it(`when one account sends 3× its ${LIMIT}/s limit across the replicas, then no second admits more than ${LIMIT}, nothing is refused below the limit, and another account is not affected`, async () => {
    const [sent, other] = await Promise.all([load(3 * LIMIT, 3.5, who.load), load(20, 3.5, OTHER)]);
    const t0 = sent[0]!.at;
    const middle = sent.filter((s) => s.status === 200 && s.at - t0 >= 1000 && s.at - t0 < 3000).length;
    console.info(`throttle rate (timing, not asserted): ${middle} admitted in the middle 2 s at ${LIMIT}/s, ${sent.length} sent`);
    expectWindowHeld(sent, LIMIT);
    expect(other).toHaveLength(70);
    expect(other.filter((s) => s.status !== 200)).toEqual([]);
  });

  it('when a request is throttled, then it is an Alibaba error with a retry hint in milliseconds', async () => {
    let throttled;
    for (let i = 0; i < 10 && !throttled; i++) {
      // The account `one` may send 1 request per second: of two at once, one is refused.
      const answers = await Promise.all([0, 1].map((r) => send(`${replicas[r]!.url}/?${signedQuery(who.one)}`)));
      throttled = answers.find((a) => a.status === 429);
    }
    expect(throttled).toBeDefined();
    expect(throttled!.json).toMatchObject({ Code: 'Rejected.Throttling' });
    expect(throttled!.json!.RequestId).toBe(throttled!.headers.get('x-acs-request-id'));
    const retryAfter = Number(throttled!.headers.get('x-acs-retry-after'));
    expect(retryAfter).toBeGreaterThan(0);
    expect(retryAfter).toBeLessThanOrEqual(1010);
  });

  it('when a signed request is replayed to another replica, then the shared nonce store refuses it (SignatureNonceUsed)', async () => {
    const query = signedQuery({ accessKeyId: demo.accessKeyId, secret });
    expect((await send(`${replicas[0]!.url}/?${query}`)).status).toBe(200);
    const replay = await send(`${replicas[1]!.url}/?${query}`);
    expect(replay.status).toBe(400);
    expect(replay.json).toMatchObject({ Code: 'SignatureNonceUsed' });
  });

  it('when Redis dies, then the replicas keep serving with local limits (each its share) and say so; when it returns, limits are shared again', async () => {
    await redis.stop('SIGKILL');
    await waitForBackend('local_fallback');
    const during = await burst(3 * (SHARE + 34), who.fallback);
    for (let r = 0; r < replicas.length; r++) {
      const mine = during.filter((s) => s.replica === r);
      expect(mine.filter((s) => s.status === 200).length).toBeGreaterThanOrEqual(SHARE);
      expectWindowHeld(mine, SHARE);
    }
    for (const r of replicas) expect(r.run.output()).toContain('Redis unreachable');

    redis = await startRedis(redisPort);
    await waitForBackend('redis');
    const after = await burst(2 * LIMIT, who.after);
    expect(after.filter((s) => s.status === 200).length).toBeGreaterThanOrEqual(LIMIT);
    expectWindowHeld(after, LIMIT);
  });
});
