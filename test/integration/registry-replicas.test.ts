import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import pkcs11js from 'pkcs11js';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { findSlotByLabel, initializeModule } from '../../src/hsm/module.js';
import { RegistryObjects } from '../../src/keys/registry-objects.js';
import { MAIN, freePort, startGatewayProcess, startRedis, type Running } from '../helpers/processes.js';
import { kmsAction, kmsClient, type Credentials } from '../helpers/sdk.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// Two gateway processes on one SoftHSMv2 token and one real redis-server, with the default registry poll
// (registry.refreshIntervalMs = 1000): a change made through one replica is served by the other within the bound —
// at once when it is announced over Redis, at the next poll when it is not.
const BOUND_MS = 1000 + 1000; // the poll interval, plus a margin for a loaded 2-core machine
let home: string;
let demo: DemoInfo;
let redis: Running;
let replicaConfig: string;
const replicas: Array<{ run: Running; creds: Credentials }> = [];

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-replicas-'));
  demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
  const redisPort = await freePort();
  redis = await startRedis(redisPort);
  const config = parse(readFileSync(demo.configFile, 'utf8'));
  // Lifecycle calls are refused (503) when their nonce check misses the Redis deadline (50 ms by default), which a
  // loaded 2-core machine can: this file is about registry changes; replay.test.ts is about the deadline.
  config.throttle = { redis: { url: `redis://127.0.0.1:${redisPort}`, commandTimeoutMs: 2000 }, replicas: 2 };
  config.logging = { level: 'warn' };
  replicaConfig = join(home, 'replica.yaml');
  writeFileSync(replicaConfig, stringify(config));
  for (let i = 0; i < 2; i++) {
    const port = await freePort();
    replicas.push({
      run: await startGatewayProcess({ HSM_GATEWAY_CONFIG: replicaConfig, HSM_GATEWAY_PORT: String(port) }),
      creds: { endpoint: `127.0.0.1:${port}`, accessKeyId: demo.accessKeyId, accessKeySecret: secret },
    });
  }
}, 120_000);

afterAll(async () => {
  for (const r of replicas) await r.run.stop();
  await redis?.stop('SIGKILL');
  rmSync(home, { recursive: true, force: true });
});

const a = () => kmsAction(replicas[0]!.creds);
const b = () => kmsAction(replicas[1]!.creds);
const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string; data?: { Code?: string } }) => e.data?.Code ?? e.code);

/** Polls `seen` every 20 ms; returns how long it took to become true (or throws past 3 × the bound). */
async function millisUntil(seen: () => Promise<boolean>): Promise<number> {
  const started = Date.now();
  while (!(await seen())) {
    if (Date.now() - started > 3 * BOUND_MS) throw new Error('the change never reached the other replica');
    await new Promise((r) => setTimeout(r, 20));
  }
  return Date.now() - started;
}

describe('one registry for every replica (records on the token)', () => {
  it('when a key is created through one replica, then the other describes and signs with it within the bound', async () => {
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      const key = (await a().call('CreateKey', { keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY' })).keyMetadata;
      delays.push(await millisUntil(() => b().call('DescribeKey', { keyId: key.keyId }).then(() => true, () => false)));
      const signed = await kmsClient(replicas[1]!.creds).asymmetricSign({
        keyId: key.keyId,
        keyVersionId: key.primaryKeyVersion,
        algorithm: 'ECDSA_SHA_256',
        digest: createHash('sha256').update('replica').digest('base64'),
      });
      expect(signed.keyId).toBe(key.keyId);
    }
    console.log(`created on A, seen on B after ${delays.join(', ')} ms (bound ${BOUND_MS} ms)`);
    for (const d of delays) expect(d).toBeLessThan(BOUND_MS);
  });

  it('when a key is disabled through one replica, then the other refuses to sign with it within the bound', async () => {
    const key = demo.keys.find((k) => k.keySpec === 'RSA_2048')!;
    const sign = () =>
      kmsClient(replicas[1]!.creds).asymmetricSign({
        keyId: key.keyId,
        keyVersionId: key.keyVersionId,
        algorithm: 'RSA_PKCS1_SHA_256',
        digest: createHash('sha256').update('replica').digest('base64'),
      });
    expect(await codeOf(sign())).toBe('ok');
    await a().call('DisableKey', { keyId: key.keyId });
    const delay = await millisUntil(async () => (await codeOf(sign())) === 'Rejected.Disabled');
    console.log(`disabled on A, refused on B after ${delay} ms`);
    expect(delay).toBeLessThan(BOUND_MS);
    await b().call('EnableKey', { keyId: key.keyId });
    expect(await millisUntil(async () => (await codeOf(sign())) === 'ok')).toBeLessThan(BOUND_MS);
  });

  it('when both replicas bind the same alias at once, then exactly one wins and the other gets Rejected.AlreadyExists', async () => {
    const [k1, k2] = [demo.keys[0]!, demo.keys[1]!];
    const results = await Promise.all([
      codeOf(a().call('CreateAlias', { aliasName: 'alias/raced', keyId: k1.keyId })),
      codeOf(b().call('CreateAlias', { aliasName: 'alias/raced', keyId: k2.keyId })),
    ]);
    expect(results.sort()).toEqual(['Rejected.AlreadyExists', 'ok']);
  });

  it('when both replicas change one key at once, then neither change is lost (changes are serialized and start from the token)', async () => {
    const key = demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    await Promise.all([
      a().call('CreateAlias', { aliasName: 'alias/both-a', keyId: key.keyId }),
      b().call('UpdateKeyDescription', { keyId: key.keyId, description: 'changed on B' }),
      a().call('CreateAlias', { aliasName: 'alias/both-b', keyId: key.keyId }),
    ]);
    await millisUntil(async () => {
      const meta = (await b().call('DescribeKey', { keyId: 'alias/both-b' }).catch(() => undefined))?.keyMetadata;
      return meta?.description === 'changed on B';
    });
    const aliases = (await b().call('ListAliasesByKeyId', { keyId: key.keyId })).aliases.alias.map((x: { aliasName: string }) => x.aliasName);
    expect(aliases).toEqual(expect.arrayContaining(['alias/both-a', 'alias/both-b']));
  });

  it('when the admin CLI changes a key with the same config (Redis), then it takes the lock and announces: the replicas follow at once', async () => {
    const key = demo.keys.find((k) => k.keySpec === 'RSA_3072')!;
    const cli = spawnSync(process.execPath, [MAIN, '--config', replicaConfig, 'keys', 'disable', key.keyId, '--json'], { encoding: 'utf8', timeout: 30_000 });
    expect(cli.status, cli.stderr).toBe(0);
    const delays = await Promise.all(
      [a, b].map((replica) => millisUntil(async () => (await replica().call('DescribeKey', { keyId: key.keyId })).keyMetadata.keyState === 'Disabled')),
    );
    console.log(`CLI change seen after ${delays.join(', ')} ms`);
    for (const d of delays) expect(d).toBeLessThan(500);
  });

  it('when a change reaches the token unannounced (the admin CLI, a lost Redis message), then the poll delivers it within the bound', async () => {
    const key = demo.keys.find((k) => k.keySpec === 'EC_P256K')!;
    const p11 = new pkcs11js.PKCS11();
    initializeModule(p11, SOFTHSM_MODULE);
    const session = p11.C_OpenSession(findSlotByLabel(p11, 'hsm-gateway-demo')!, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p11.C_Login(session, pkcs11js.CKU_USER, readFileSync(join(home, 'secrets', 'user-pin'), 'utf8').trim());
    const objects = new RegistryObjects();
    const stored = objects.readAll(p11, session).records.find((r) => r.kind === 'key' && r.id === key.keyId)!;
    objects.put(p11, session, 'key', key.keyId, { ...(stored.record as object), description: 'written behind their backs' });
    p11.C_Logout(session);
    p11.C_CloseSession(session);
    const delays = await Promise.all(
      [a, b].map((replica) => millisUntil(async () => (await replica().call('DescribeKey', { keyId: key.keyId })).keyMetadata.description === 'written behind their backs')),
    );
    console.log(`unannounced change seen after ${delays.join(', ')} ms (poll every 1000 ms)`);
    for (const d of delays) expect(d).toBeLessThan(BOUND_MS);
  });
});
