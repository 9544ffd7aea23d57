import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { freePort, startGatewayProcess, type Running } from '../helpers/processes.js';
import { kmsAction, type Credentials } from '../helpers/sdk.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// Two gateway processes on one SoftHSMv2 token, no Redis. Replica A writes its change and looks, then holds its commit
// (test/helpers/cas-barrier.mjs, mode "window"); only then does replica B change the same key — B reads, writes and
// looks while A's pending object is on the token. B starts from its cache (the generation marker has not moved: A has
// not committed), so only its look can see A's object: it must, and lose, or both changes are acknowledged.
const BARRIER = pathToFileURL(resolve(import.meta.dirname, '../helpers/cas-barrier.mjs')).href;
let home: string;
let demo: DemoInfo;
let barrier: string;
const replicas: Array<{ run: Running; creds: Credentials }> = [];

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-cas-window-'));
  demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
  const config = parse(readFileSync(demo.configFile, 'utf8'));
  config.logging = { level: 'warn' };
  const replicaConfig = join(home, 'replica.yaml');
  writeFileSync(replicaConfig, stringify(config));
  barrier = join(home, 'barrier');
  mkdirSync(barrier);
  for (const role of ['first', 'second']) {
    const port = await freePort();
    replicas.push({
      run: await startGatewayProcess({
        HSM_GATEWAY_CONFIG: replicaConfig,
        HSM_GATEWAY_PORT: String(port),
        NODE_OPTIONS: `--import=${BARRIER}`,
        HSMGW_CAS_BARRIER_DIR: barrier,
        HSMGW_CAS_MODE: 'window',
        HSMGW_CAS_ROLE: role,
      }),
      creds: { endpoint: `127.0.0.1:${port}`, accessKeyId: demo.accessKeyId, accessKeySecret: secret },
    });
  }
}, 120_000);

afterAll(async () => {
  for (const r of replicas) await r.run.stop();
  rmSync(home, { recursive: true, force: true });
});

const outcomeOf = (p: Promise<unknown>) =>
  p.then(
    () => 'ok',
    (e: { message: string; code?: string; data?: { Code?: string } }) => `${e.data?.Code ?? e.code} ${/code: (\d{3})/.exec(e.message)?.[1]}`,
  );

describe('a change that starts while another replica\'s change has looked but not committed (no Redis)', () => {
  it('when B changes the key A is about to commit, round after round, then B gets 409 and only A\'s change is acknowledged and kept', async () => {
    const key = demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    for (let round = 0; round < 6; round++) {
      const [a, b] = replicas.map((r) => kmsAction(r.creds));
      const first = outcomeOf(a!.call('UpdateKeyDescription', { keyId: key.keyId, description: `round ${round} by a` }));
      const looked = join(barrier, `first-looked-${round}`);
      const deadline = Date.now() + 10_000;
      while (!existsSync(looked) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      expect(existsSync(looked)).toBe(true);
      const second = await outcomeOf(b!.call('UpdateKeyDescription', { keyId: key.keyId, description: `round ${round} by b` }));
      expect([await first, second]).toEqual(['ok', 'Rejected.UnexpectedState 409']);
      expect((await a!.call('DescribeKey', { keyId: key.keyId })).keyMetadata.description).toBe(`round ${round} by a`);
      // B catches up (its poll) before the next round, so that its next change starts from a current cache.
      const caughtUp = Date.now() + 10_000;
      while ((await b!.call('DescribeKey', { keyId: key.keyId })).keyMetadata.description !== `round ${round} by a` && Date.now() < caughtUp) {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  });
});
