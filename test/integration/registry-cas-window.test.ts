import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoInfo } from '../../src/demo/bootstrap.js';
import { outcomeOf, startBarrierReplicas, type BarrierReplicas } from '../helpers/cas-replicas.js';
import { kmsAction } from '../helpers/sdk.js';

// Two gateway processes on one SoftHSMv2 token, no Redis. Replica A writes its change and looks, then holds its commit
// (test/helpers/cas-barrier.mjs, mode "window"); only then does replica B change the same key — B reads, writes and
// looks while A's pending object is on the token. B starts from its cache (the generation marker has not moved: A has
// not committed), so only its look can see A's object: it must, and lose, or both changes are acknowledged.
let setup: BarrierReplicas;
let demo: DemoInfo;
let barrier: string;
let replicas: BarrierReplicas['replicas'];

beforeAll(async () => {
  setup = await startBarrierReplicas('hsm-gateway-cas-window-', { HSMGW_CAS_MODE: 'window' });
  ({ demo, barrier, replicas } = setup);
}, 120_000);

afterAll(async () => {
  await setup?.stop();
});

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
