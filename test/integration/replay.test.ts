import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { nonceKey } from '../../src/http/auth/redis-nonces.js';
import { nonceId } from '../../src/http/auth/replay-guard.js';
import { freePort, startGatewayProcess, startRedis, type Running } from '../helpers/processes.js';
import { send, signV1, toQuery, v1Params, type RawResponse } from '../helpers/raw-client.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// Issue #18: a request accepted once is refused for its whole timestamp window — across a kill -9 of the gateway,
// across replicas while Redis stalls or is gone, and after Redis lost its data; nonces are bounded and hashed.
// Real processes: gateways as `npm start` runs them (dist/), one SoftHSMv2 token, a real redis-server.

let home: string;
let demo: DemoInfo;
let secret: string;
let baseConfig: Record<string, any>;

const THROTTLED = { accessKeyId: 'LTAIthrottledxxxxxxx', secret: 'throttled-secret', account: 'throttled' };

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-replay-'));
  demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
  baseConfig = parse(readFileSync(demo.configFile, 'utf8'));
  const secretFile = join(home, 'secrets', 'throttled.secret');
  writeFileSync(secretFile, THROTTLED.secret, { mode: 0o600 });
  baseConfig.auth.accessKeys.push({ accessKeyId: THROTTLED.accessKeyId, secret: { file: secretFile }, account: THROTTLED.account });
  baseConfig.throttle = { accounts: { [THROTTLED.account]: 1 } };
  baseConfig.logging = { level: 'info' };
}, 120_000);

afterAll(() => rmSync(home, { recursive: true, force: true }));

function writeConfig(name: string, change: (config: Record<string, any>) => void): string {
  const config = structuredClone(baseConfig);
  change(config);
  const file = join(home, `${name}.yaml`);
  writeFileSync(file, stringify(config));
  return file;
}

async function startGateway(configFile: string): Promise<{ run: Running; url: string }> {
  const port = await freePort();
  return { run: await startGatewayProcess({ HSM_GATEWAY_CONFIG: configFile, HSM_GATEWAY_PORT: String(port) }), url: `http://127.0.0.1:${port}` };
}

/** A signed request, kept as a query string to be sent again (a captured request). */
const describeKey = (overrides: Record<string, string> = {}): string =>
  toQuery(signV1(v1Params(demo.accessKeyId, { Action: 'DescribeKey', KeyId: demo.keys[0]!.keyId }, overrides), secret));
const sign = (): string => {
  const k = demo.keys.find((key) => key.keySpec === 'EC_P256')!;
  const digest = createHash('sha256').update(`message ${Math.random()}`).digest('base64');
  return toQuery(signV1(v1Params(demo.accessKeyId, { KeyId: k.keyId, KeyVersionId: k.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: digest }), secret));
};
/** A lifecycle call (state-changing): UpdateKeyDescription of a demo key. */
const updateDescription = (): string =>
  toQuery(signV1(v1Params(demo.accessKeyId, { Action: 'UpdateKeyDescription', KeyId: demo.keys[1]!.keyId, Description: `d ${Math.random()}` }), secret));

const at = (url: string, query: string): Promise<RawResponse> => send(`${url}/?${query}`);

async function eventually<T>(what: string, attempt: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await attempt();
    if (got !== undefined) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('one gateway without Redis, killed with SIGKILL and started again', () => {
  it('when requests accepted before a kill -9 are replayed after the restart, then they are refused (SignatureNonceUsed), lifecycle calls included', async () => {
    const config = writeConfig('single', (c) => {
      c.replay = { journal: join(home, 'single', 'nonces.journal') };
    });
    let gateway = await startGateway(config);
    const read = describeKey();
    const change = updateDescription();
    const signed = sign();
    try {
      for (const query of [read, change, signed]) expect((await at(gateway.url, query)).status).toBe(200);
      expect((await at(gateway.url, read)).json).toMatchObject({ Code: 'SignatureNonceUsed' });
      // kill -9 right after the answers: whatever was answered must already be in the journal.
      await gateway.run.stop('SIGKILL');
      gateway = await startGateway(config);
      for (const query of [read, change, signed]) {
        const replay = await at(gateway.url, query);
        expect(replay.status, replay.text).toBe(400);
        expect(replay.json).toMatchObject({ Code: 'SignatureNonceUsed' });
      }
      expect(gateway.run.output()).toMatch(/"restored":3\b/);
      expect((await at(gateway.url, describeKey())).status).toBe(200);
    } finally {
      await gateway.run.stop('SIGKILL');
    }
  }, 120_000);
});

describe('a cluster of two workers without Redis, its primary killed with SIGKILL and started again', () => {
  it('when requests accepted before the kill are replayed to either worker after the restart, then they are refused (the primary journals the shared guard)', async () => {
    const config = writeConfig('cluster', (c) => {
      c.server.workers = 2;
      c.replay = { journal: join(home, 'cluster', 'nonces.journal') };
    });
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const startCluster = async (): Promise<Running> => {
      const run = await startGatewayProcess({ HSM_GATEWAY_CONFIG: config, HSM_GATEWAY_PORT: String(port), HSM_GATEWAY_WORKERS: '' });
      await eventually('both workers to listen', async () => ((run.output().match(/"message":"listening"/g) ?? []).length >= 2 ? true : undefined), 60_000);
      return run;
    };
    let run = await startCluster();
    const accepted = [describeKey(), updateDescription(), sign(), describeKey()];
    try {
      // A new connection per request (Connection: close): the primary hands each to the next worker.
      const fresh = (query: string) => send(`${url}/?${query}`, { headers: { connection: 'close' } });
      for (const query of accepted) expect((await fresh(query)).status).toBe(200);
      await run.stop('SIGKILL'); // the workers exit when their primary's channel closes
      await eventually('the port to be free', async () => ((await fetch(`${url}/healthz`).then(() => false, () => true)) ? true : undefined));
      run = await startCluster();
      for (const query of accepted) {
        for (let i = 0; i < 2; i++) {
          const replay = await fresh(query);
          expect(replay.status, replay.text).toBe(400);
          expect(replay.json).toMatchObject({ Code: 'SignatureNonceUsed' });
        }
      }
    } finally {
      await run.stop('SIGKILL');
    }
  }, 180_000);
});

describe('two replicas sharing one redis-server', () => {
  let redisPort: number;
  let redis: Running;
  let client: Redis;
  let strict: { run: Running; url: string }[];
  let tolerant: { run: Running; url: string };

  beforeAll(async () => {
    redisPort = await freePort();
    redis = await startRedis(redisPort);
    client = new Redis({ host: '127.0.0.1', port: redisPort, maxRetriesPerRequest: 1 });
    client.on('error', () => undefined);
    const replicaConfig = (name: string, whenSharedStoreDown: 'refuse' | 'local'): string =>
      writeConfig(name, (c) => {
        // 200 ms rather than the default 50: a loaded 2-core machine must not miss the deadline outside the stalls
        // this file makes (the answers during a 3 s stall still come at the deadline, not after the stall).
        c.throttle.redis = { url: `redis://127.0.0.1:${redisPort}`, commandTimeoutMs: 200 };
        c.throttle.replicas = 3;
        c.replay = { journal: join(home, name, 'nonces.journal'), whenSharedStoreDown, recoveryGraceMs: 3000 };
      });
    strict = [await startGateway(replicaConfig('replica-0', 'refuse')), await startGateway(replicaConfig('replica-1', 'refuse'))];
    tolerant = await startGateway(replicaConfig('replica-local', 'local'));
    // Every replica has adopted Redis's epoch once a request passes through each.
    for (const g of [...strict, tolerant]) await eventually('the replica to serve with Redis', async () => ((await at(g.url, describeKey())).status === 200 ? true : undefined));
  }, 180_000);

  afterAll(async () => {
    for (const g of [...(strict ?? []), tolerant]) await g?.run.stop('SIGKILL');
    client?.disconnect();
    await redis?.stop('SIGKILL');
  });

  const nonceKeys = async (): Promise<string[]> => client.keys('hsmgw:nonce:*');
  const backendOf = async (url: string): Promise<string | undefined> =>
    /hsm_gateway_limiter_backend\{backend="(\w+)"\} 1/.exec((await send(`${url}/metrics`)).text)?.[1];

  it('when a nonce is longer than 64 characters, then the request is answered 400 InvalidParameter and nothing is stored', async () => {
    const before = (await nonceKeys()).length;
    const long = await at(strict[0]!.url, describeKey({ SignatureNonce: 'n'.repeat(65) }));
    expect(long.status).toBe(400);
    expect(long.json).toMatchObject({ Code: 'InvalidParameter', Message: expect.stringContaining('SignatureNonce') });
    expect((await at(strict[0]!.url, describeKey({ SignatureNonce: 'u'.repeat(64) }))).status).toBe(200);
    expect((await nonceKeys()).length).toBe(before + 1);
  });

  it('when requests are stored in Redis, then each key is a fixed-size hash, never the nonce the client sent', async () => {
    const nonce = 'a-client-chosen-nonce-0123456789abcdefABCDEF';
    expect((await at(strict[0]!.url, describeKey({ SignatureNonce: nonce }))).status).toBe(200);
    const keys = await nonceKeys();
    expect(keys.length).toBeGreaterThan(0);
    for (const key of keys) expect(key).toMatch(/^hsmgw:nonce:[0-9a-f]{1,14}$/);
    expect(keys.some((k) => k.includes(nonce))).toBe(false);
    const ttl = await client.pttl(keys[0]!);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(2 * 900_000);
  });

  it('when a request fails authentication or is throttled, then no nonce of it stays in Redis', async () => {
    const before = new Set(await nonceKeys());
    const forged = toQuery(signV1(v1Params(demo.accessKeyId, { Action: 'DescribeKey', KeyId: demo.keys[0]!.keyId }), 'not-the-secret'));
    expect((await at(strict[0]!.url, forged)).json).toMatchObject({ Code: 'SignatureDoesNotMatch' });
    // The account `throttled` may send 1 request per second: of 6 at once, at least 5 are refused.
    const queries = Array.from({ length: 6 }, () => toQuery(signV1(v1Params(THROTTLED.accessKeyId, { Action: 'ListKeys' }), THROTTLED.secret)));
    const answers = await Promise.all(queries.map((q, i) => at(strict[i % 2]!.url, q)));
    const admitted = answers.filter((a) => a.status === 200).length;
    expect(answers.filter((a) => a.status === 429).length).toBeGreaterThanOrEqual(5);
    // The refused ones' nonces are deleted after their answer: wait for the count to settle.
    const added = await eventually('the throttled nonces to be released', async () => {
      const now = (await nonceKeys()).filter((k) => !before.has(k));
      return now.length === admitted ? now : undefined;
    }, 10_000);
    expect(added).toHaveLength(admitted);
  });

  it('when Redis is stopped (SIGSTOP) for 3 s, then answers come at the deadline, replays across replicas are refused, state changes are refused everywhere, the metric says local_fallback, and all recovers after SIGCONT', async () => {
    const accepted = sign();
    expect((await at(strict[0]!.url, accepted)).status).toBe(200);
    const acceptedOnTolerant = sign();
    expect((await at(tolerant.url, acceptedOnTolerant)).status).toBe(200);

    redis.child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    let during: Array<{ name: string; answer: RawResponse; ms: number }>;
    try {
      const timed = async (name: string, url: string, query: string) => {
        const t = Date.now();
        const answer = await at(url, query);
        return { name, answer, ms: Date.now() - t };
      };
      during = await Promise.all([
        timed('replay to the other strict replica', strict[1]!.url, accepted),
        timed('fresh sign on a strict replica', strict[1]!.url, sign()),
        timed('fresh sign on the tolerant replica', tolerant.url, sign()),
        timed('state change on the tolerant replica', tolerant.url, updateDescription()),
        timed('replay of its own on the tolerant replica', tolerant.url, acceptedOnTolerant),
      ]);
      expect(Date.now() - stoppedAt, 'every answer came while Redis was still stopped').toBeLessThan(3000);
      expect(await backendOf(strict[1]!.url)).toBe('local_fallback');
      await new Promise((r) => setTimeout(r, Math.max(0, 3000 - (Date.now() - stoppedAt))));
    } finally {
      redis.child.kill('SIGCONT');
    }
    const byName = Object.fromEntries(during.map((d) => [d.name, d.answer]));
    console.info(`during a 3 s SIGSTOP: ${during.map((d) => `${d.name} ${d.answer.status} in ${d.ms} ms`).join('; ')}`);
    expect(byName['replay to the other strict replica']).toMatchObject({ status: 503, json: expect.objectContaining({ Code: 'ServiceUnavailableTemporary' }) });
    expect(byName['fresh sign on a strict replica']!.status).toBe(503);
    expect(byName['fresh sign on the tolerant replica']!.status).toBe(200);
    expect(byName['state change on the tolerant replica']).toMatchObject({ status: 503, json: expect.objectContaining({ Code: 'ServiceUnavailableTemporary' }) });
    expect(byName['replay of its own on the tolerant replica']).toMatchObject({ status: 400, json: expect.objectContaining({ Code: 'SignatureNonceUsed' }) });

    // By itself once Redis answers: shared counting, and the replay refused by the shared store.
    await eventually('a fresh request to pass again', async () => ((await at(strict[1]!.url, sign())).status === 200 ? true : undefined));
    await eventually('the limiter back on Redis', async () => ((await backendOf(strict[1]!.url)) === 'redis' ? true : undefined));
    expect((await at(strict[1]!.url, accepted)).json).toMatchObject({ Code: 'SignatureNonceUsed' });
  }, 120_000);

  it('when Redis loses its data (FLUSHALL), then a request accepted on one replica is never accepted on another: refused while the replicas re-publish, SignatureNonceUsed after', async () => {
    const accepted = updateDescription();
    expect((await at(strict[0]!.url, accepted)).status).toBe(200);
    const logsBefore = strict[0]!.run.output().split('lost its nonces').length;
    await client.flushall();
    const first = await at(strict[1]!.url, accepted);
    expect([400, 503], first.text).toContain(first.status);
    // Replica 0 noticed (on its poll) and re-published what it accepted.
    await eventually('replica 0 to re-publish', async () => (strict[0]!.run.output().split('lost its nonces').length > logsBefore ? true : undefined));
    const after = await at(strict[1]!.url, accepted);
    expect(after.status, after.text).toBe(400);
    expect(after.json).toMatchObject({ Code: 'SignatureNonceUsed' });
    // The recovery grace ends by itself.
    await eventually('fresh requests to pass after the grace', async () => ((await at(strict[1]!.url, updateDescription())).status === 200 ? true : undefined));
  }, 120_000);

  it('when Redis is killed and restarted without persistence, then replays are refused while it is away and after it returns', async () => {
    const accepted = sign();
    expect((await at(strict[0]!.url, accepted)).status).toBe(200);
    await redis.stop('SIGKILL');
    const away = await at(strict[1]!.url, accepted);
    expect(away.status, away.text).toBe(503);
    redis = await startRedis(redisPort);
    const key = nonceKey(nonceId(demo.accessKeyId, new URLSearchParams(accepted).get('SignatureNonce')!));
    await eventually('replica 0 to re-publish into the new Redis', async () => ((await client.exists(key).catch(() => 0)) === 1 ? true : undefined));
    const replay = await eventually('a definite answer from replica 1', async () => {
      const r = await at(strict[1]!.url, accepted);
      return r.status === 503 ? undefined : r;
    });
    expect(replay.status, replay.text).toBe(400);
    expect(replay.json).toMatchObject({ Code: 'SignatureNonceUsed' });
  }, 120_000);
});
