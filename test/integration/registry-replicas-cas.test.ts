import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoInfo } from '../../src/demo/bootstrap.js';
import { outcomeOf, startBarrierReplicas, type BarrierReplicas } from '../helpers/cas-replicas.js';
import { kmsAction } from '../helpers/sdk.js';

// Two gateway processes on one SoftHSMv2 token and NO Redis: nothing serializes their registry changes but the
// compare-and-swap on the token (src/keys/registry-cas.ts). A barrier loaded into both (test/helpers/cas-barrier.mjs)
// makes each change wait, after its write and before its look, until the other process has written too; on odd
// rounds A looks (and loses, seeing B's write) before B looks (and wins), on even rounds both look at once.
// Ordered rounds expect exactly one winner, not which: SoftHSMv2's file store can hide from one process an object
// another created a moment before its own (README, "How replicas agree"). The test numbers the rounds (setRound), so a
// change that fails before its look leaves the later rounds aligned.
// SoftHSMv2 2.6.1 sometimes answers CKR_GENERAL_ERROR while another process rewrites the files it reads, and a token
// check that fails twice makes the gateway re-initialize it: such a change answers 503 ServiceUnavailableTemporary
// (nothing of it is made). That is the module's fault and a correct answer, so it counts as a loser here (printed);
// what the test guards is that never two are acknowledged.
let setup: BarrierReplicas;
let demo: DemoInfo;
let barrier: string;
let replicas: BarrierReplicas['replicas'];

beforeAll(async () => {
  setup = await startBarrierReplicas('hsm-gateway-replicas-cas-', { HSMGW_CAS_PARTIES: '2' });
  ({ demo, barrier, replicas } = setup);
}, 120_000);

afterAll(async () => {
  await setup?.stop();
});

const UNAVAILABLE = 'ServiceUnavailableTemporary 503';
const a = () => kmsAction(replicas[0]!.creds);
const b = () => kmsAction(replicas[1]!.creds);

describe('two replicas without Redis (compare-and-swap on the token)', () => {
  it('when both bind one alias to two keys at once, round after round, then at most one gets 200, the other 409, and no replica ever shows a double binding', async () => {
    const [k1, k2] = demo.keys.filter((k) => k.keySpec === 'EC_P256' || k.keySpec === 'RSA_2048');
    let won = 0;
    for (let round = 0; round < 5; round++) {
      setup.setRound(round);
      const alias = `alias/raced-${round}`;
      const outcomes = await Promise.all([
        outcomeOf(a().call('CreateAlias', { aliasName: alias, keyId: k1!.keyId })),
        outcomeOf(b().call('CreateAlias', { aliasName: alias, keyId: k2!.keyId })),
      ]);
      expect(outcomes.filter((o) => o === 'ok').length, outcomes.join(', ')).toBeLessThanOrEqual(1);
      for (const o of outcomes.filter((x) => x !== 'ok')) expect(o).toMatch(/^(Rejected\.UnexpectedState 409|ServiceUnavailableTemporary 503)$/);
      if (outcomes.includes(UNAVAILABLE)) console.log(`alias round ${round}: ${outcomes.join(', ')} (the token failed a change, see the replicas' lines)`);
      // Ordered: exactly one wins — usually B (A sees B's write), A when SoftHSMv2 hid B's object from A (see README).
      if (round % 2 === 1 && !outcomes.includes(UNAVAILABLE)) expect(outcomes.filter((o) => o === 'ok'), outcomes.join(', ')).toHaveLength(1);
      won += outcomes.filter((o) => o === 'ok').length;
      for (const replica of [a, b]) {
        // A fresh read on every replica (the poll, or the writer's own publish): the alias names one key, or none.
        const owners = await Promise.all(
          [k1!, k2!].map(async (k) => ((await replica().call('ListAliasesByKeyId', { keyId: k.keyId })).aliases.alias as Array<{ aliasName: string }>).some((x) => x.aliasName === alias)),
        );
        expect(owners.filter(Boolean).length).toBeLessThanOrEqual(1);
      }
    }
    console.log(`forced alias races through two processes: ${won} of 5 rounds had a winner, the rest two 409s`);
    // The barrier was in both processes: each marked its five changes.
    expect(readdirSync(barrier).filter((f) => !f.startsWith('done-') && f !== 'round')).toHaveLength(10);
  });

  it('when both create a key at the same moment, round after round, then each replica serves (and signs with) both keys within the poll bound', async () => {
    // SoftHSMv2's searches can miss an object another process wrote at the same moment, for good (shared-view.ts
    // disturbedByOtherWriters); before the re-initialization after another writer's change, one replica missed
    // the other's key in 21 of 30 such rounds, still 5 s later.
    const digest = createHash('sha256').update('replicas').digest('base64');
    const servedBy = async (replica: typeof a, keyId: string, keyVersionId: string): Promise<boolean> => {
      try {
        await replica().call('AsymmetricSign', { keyId, keyVersionId, algorithm: 'ECDSA_SHA_256', digest });
        return true;
      } catch {
        return false;
      }
    };
    const createKey = async (replica: typeof a, round: number): Promise<{ keyId: string; primaryKeyVersion: string }> => {
      const create = async () => (await replica().call('CreateKey', { keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY' })).keyMetadata;
      try {
        return await create();
      } catch (err) {
        // A CreateKey is no race (two keys): only the token's failure (see the top of the file) is tried again.
        if ((await outcomeOf(Promise.reject(err))) !== UNAVAILABLE) throw err;
        console.log(`create round ${round}: 503 from replica ${replica === a ? 'A' : 'B'}, tried again`);
        await new Promise((r) => setTimeout(r, 2_000));
        return create();
      }
    };
    for (let round = 0; round < 6; round++) {
      setup.setRound(5 + round);
      const made = await Promise.all([a, b].map((replica) => createKey(replica, round)));
      for (const replica of [a, b]) {
        for (const { keyId, primaryKeyVersion } of made) {
          // The poll's bound (registry.refreshIntervalMs, 1 s) and a re-initialization, or the second one 3 s after the
          // change (RegistrySource SETTLE_MS), with room for a loaded machine.
          const deadline = Date.now() + 8_000;
          let served = await servedBy(replica, keyId, primaryKeyVersion);
          while (!served && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 100));
            served = await servedBy(replica, keyId, primaryKeyVersion);
          }
          expect(served, `round ${round}: replica ${replica === a ? 'A' : 'B'} does not serve key ${keyId}`).toBe(true);
        }
      }
    }
  });

  it('when both change one key at once, round after round, then at most one is acknowledged and the key ends as that one', async () => {
    const key = demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    let expected: string | undefined;
    for (let round = 0; round < 5; round++) {
      setup.setRound(11 + round);
      const outcomes = await Promise.all(
        [a, b].map((replica, i) => outcomeOf(replica().call('UpdateKeyDescription', { keyId: key.keyId, description: `round ${round} by ${'ab'[i]}` }))),
      );
      expect(outcomes.filter((o) => o === 'ok').length, outcomes.join(', ')).toBeLessThanOrEqual(1);
      for (const o of outcomes.filter((x) => x !== 'ok')) expect(o).toMatch(/^(Rejected\.UnexpectedState 409|ServiceUnavailableTemporary 503)$/);
      if (outcomes.includes(UNAVAILABLE)) console.log(`description round ${round}: ${outcomes.join(', ')} (the token failed a change, see the replicas' lines)`);
      // Barrier rounds 11 + round: the ordered (odd) ones are the even rounds here.
      if (round % 2 === 0 && !outcomes.includes(UNAVAILABLE)) expect(outcomes.filter((o) => o === 'ok'), outcomes.join(', ')).toHaveLength(1);
      const i = outcomes.indexOf('ok');
      if (i >= 0) expected = `round ${round} by ${'ab'[i]}`;
      if (expected !== undefined) {
        // The winner publishes at once; the other replica follows at its next poll (1 s). On SoftHSMv2 the winner's
        // re-read after the rival's earlier commit can miss its own newest object for a moment (README, "How replicas
        // agree"; seen once in about ten runs): the key must end as the winner's, within the settle re-read (3 s).
        const describe = async () => (await [a, b][i >= 0 ? i : 0]!().call('DescribeKey', { keyId: key.keyId })).keyMetadata.description as string;
        const deadline = Date.now() + 6_000;
        let seen = await describe();
        if (seen !== expected) console.log(`description round ${round}: the ${i >= 0 ? 'winner' : 'replica'} showed "${seen}" right after, not "${expected}"`);
        while (seen !== expected && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 200));
          seen = await describe();
        }
        expect(seen).toBe(expected);
      }
    }
  });
});
