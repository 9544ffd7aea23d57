import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { freePort, startGatewayProcess, startRedis, type Running } from '../helpers/processes.js';
import { send, signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// Three gateway processes share one real redis-server: one account's limit holds across all of them.
const LIMIT = 200;
const OTHER = { accessKeyId: 'LTAIotheraccountoth01', secret: 'other-account-secret', account: 'other' };
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
  const otherSecretFile = join(home, 'secrets', `${OTHER.accessKeyId}.secret`);
  writeFileSync(otherSecretFile, OTHER.secret, { mode: 0o600 });
  const config = parse(readFileSync(demo.configFile, 'utf8'));
  config.auth.accessKeys.push({ accessKeyId: OTHER.accessKeyId, secret: { file: otherSecretFile }, account: OTHER.account });
  config.throttle = { defaultLimit: LIMIT, redis: { url: `redis://127.0.0.1:${redisPort}` }, replicas: 3 };
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
  at: number;
  status: number;
}

/**
 * Sends `perSecond` DescribeKey requests per second (V1-signed, unique nonces) for `seconds`, round-robin over the
 * replicas, as `accessKeyId`; returns each request's send time and status.
 */
async function load(perSecond: number, seconds: number, who = { accessKeyId: demo.accessKeyId, secret }): Promise<Sent[]> {
  const tickMs = 10;
  const perTick = Math.round((perSecond * tickMs) / 1000);
  const key = demo.keys[0]!;
  const pending: Array<Promise<Sent>> = [];
  const started = Date.now();
  for (let tick = 0; Date.now() - started < seconds * 1000; tick++) {
    for (let i = 0; i < perTick; i++) {
      const replica = replicas[(tick * perTick + i) % replicas.length]!;
      const at = Date.now();
      const query = toQuery(signV1(v1Params(who.accessKeyId, { Action: 'DescribeKey', KeyId: key.keyId }), who.secret));
      pending.push(send(`${replica.url}/?${query}`).then((r) => ({ at, status: r.status })));
    }
    const next = started + (tick + 1) * tickMs;
    await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
  }
  return Promise.all(pending);
}

/** Admitted requests sent inside [from, to) ms after the first one. */
function admittedBetween(sent: Sent[], fromMs: number, toMs: number): number {
  const t0 = sent[0]!.at;
  return sent.filter((s) => s.status === 200 && s.at - t0 >= fromMs && s.at - t0 < toMs).length;
}

describe('per-account throttling across three replicas sharing Redis', () => {
  it(`when one account sends 3× its ${LIMIT}/s limit across the replicas, then ${LIMIT}/s ±5 % pass and the rest get 429 Rejected.Throttling`, async () => {
    const [sent, other] = await Promise.all([load(3 * LIMIT, 3.5), load(20, 3.5, OTHER)]);
    // The middle two seconds, away from the start and end of the run.
    const admitted = admittedBetween(sent, 1000, 3000);
    console.info(`throttle accuracy: ${admitted} admitted in 2 s at ${LIMIT}/s (${((admitted / (2 * LIMIT) - 1) * 100).toFixed(1)} %), ${sent.length} sent`);
    expect(admitted).toBeGreaterThanOrEqual(2 * LIMIT * 0.95);
    expect(admitted).toBeLessThanOrEqual(2 * LIMIT * 1.05);
    expect(sent.every((s) => s.status === 200 || s.status === 429)).toBe(true);
    // Another account is not affected by the first one's throttling.
    expect(other.every((s) => s.status === 200)).toBe(true);
  });

  it('when a request is throttled, then it is an Alibaba error with a retry hint in milliseconds', async () => {
    const key = demo.keys[0]!;
    let throttled;
    for (let i = 0; i < 400 && !throttled; i++) {
      const r = await send(`${replicas[0]!.url}/?${toQuery(signV1(v1Params(demo.accessKeyId, { Action: 'DescribeKey', KeyId: key.keyId }), secret))}`);
      if (r.status === 429) throttled = r;
    }
    expect(throttled).toBeDefined();
    expect(throttled!.json).toMatchObject({ Code: 'Rejected.Throttling' });
    expect(throttled!.json!.RequestId).toBe(throttled!.headers.get('x-acs-request-id'));
    expect(Number(throttled!.headers.get('x-acs-retry-after'))).toBeGreaterThan(0);
  });

  it('when a signed request is replayed to another replica, then the shared nonce store refuses it (SignatureNonceUsed)', async () => {
    await new Promise((r) => setTimeout(r, 1100)); // let the account's limit refill after the load above
    const query = toQuery(signV1(v1Params(demo.accessKeyId, { Action: 'DescribeKey', KeyId: demo.keys[0]!.keyId }), secret));
    expect((await send(`${replicas[0]!.url}/?${query}`)).status).toBe(200);
    const replay = await send(`${replicas[1]!.url}/?${query}`);
    expect(replay.status).toBe(400);
    expect(replay.json).toMatchObject({ Code: 'SignatureNonceUsed' });
  });

  it('when Redis dies, then the replicas keep serving with local limits and say so; when it returns, limits are shared again', async () => {
    await redis.stop('SIGKILL');
    await waitForBackend('local_fallback');
    const during = await load(3 * LIMIT, 2);
    expect(during.every((s) => s.status === 200 || s.status === 429)).toBe(true);
    // Each replica admits its share (limit / replicas, rounded down per slot): the account stays near its limit.
    const admittedDuring = admittedBetween(during, 500, 1500);
    expect(admittedDuring).toBeGreaterThan(LIMIT * 0.7);
    expect(admittedDuring).toBeLessThanOrEqual(LIMIT * 1.05);
    for (const r of replicas) expect(r.run.output()).toContain('Redis unreachable');

    redis = await startRedis(redisPort);
    await waitForBackend('redis');
    const after = await load(3 * LIMIT, 2.5);
    const admittedAfter = admittedBetween(after, 500, 2000);
    expect(admittedAfter).toBeGreaterThanOrEqual(1.5 * LIMIT * 0.95);
    expect(admittedAfter).toBeLessThanOrEqual(1.5 * LIMIT * 1.05);
  });
});
