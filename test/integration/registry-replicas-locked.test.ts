import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoInfo } from '../../src/demo/bootstrap.js';
import { REGISTRY_LOCK_FILE } from '../../src/keys/host-lock.js';
import { outcomeOf, startLockedReplicas, type BarrierReplicas } from '../helpers/cas-replicas.js';
import { kmsAction } from '../helpers/sdk.js';

// Two gateway processes on one SoftHSMv2 token, NO Redis, configured as shipped: their registry changes take turns
// under the lock file in SoftHSMv2's token directory (src/keys/host-lock.ts), each starting from a read of the
// token made after the other's change. So a race through two replicas behaves as two changes through one: the
// second of two bindings of one alias is refused as a duplicate, two descriptions of one key are both made (the
// later one stays), and each replica sees the other's keys. (registry-replicas-cas.test.ts turns the lock off and
// forces the same races on the compare-and-swap alone.)
let setup: BarrierReplicas;
let demo: DemoInfo;
let replicas: BarrierReplicas['replicas'];

beforeAll(async () => {
  setup = await startLockedReplicas('hsm-gateway-replicas-locked-');
  ({ demo, replicas } = setup);
}, 120_000);

afterAll(async () => {
  await setup?.stop();
});

const a = () => kmsAction(replicas[0]!.creds);
const b = () => kmsAction(replicas[1]!.creds);
/** Retries `check` every 100 ms until it holds or `ms` pass (the poll's bound, with room for a loaded machine). */
async function eventually(check: () => Promise<boolean>, ms = 8_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('two replicas without Redis on SoftHSMv2 (changes take turns under the token directory lock)', () => {
  it('when both bind one alias to two keys at once, round after round, then exactly one gets 200, the other the duplicate alias error, and both replicas serve the one binding', async () => {
    const [k1, k2] = demo.keys.filter((k) => k.keySpec === 'EC_P256' || k.keySpec === 'RSA_2048');
    for (let round = 0; round < 8; round++) {
      const alias = `alias/locked-${round}`;
      const outcomes = await Promise.all([
        outcomeOf(a().call('CreateAlias', { aliasName: alias, keyId: k1!.keyId })),
        outcomeOf(b().call('CreateAlias', { aliasName: alias, keyId: k2!.keyId })),
      ]);
      expect(outcomes.filter((o) => o === 'ok'), outcomes.join(', ')).toHaveLength(1);
      expect(outcomes.find((o) => o !== 'ok')).toBe('Rejected.AlreadyExists 409');
      const owner = outcomes[0] === 'ok' ? k1! : k2!;
      for (const replica of [a, b]) {
        const bound = await eventually(async () => ((await replica().call('ListAliasesByKeyId', { keyId: owner.keyId })).aliases.alias as Array<{ aliasName: string }>).some((x) => x.aliasName === alias));
        expect(bound, `round ${round}: replica ${replica === a ? 'A' : 'B'} does not show ${alias} on its key`).toBe(true);
        const other = owner === k1 ? k2! : k1!;
        const aliases = (await replica().call('ListAliasesByKeyId', { keyId: other.keyId })).aliases.alias as Array<{ aliasName: string }>;
        expect(aliases.some((x) => x.aliasName === alias)).toBe(false);
      }
    }
    // The lock is a file beside SoftHSMv2's token folders.
    expect(existsSync(join(setup.home, 'softhsm', 'tokens', REGISTRY_LOCK_FILE))).toBe(true);
  });

  it('when both change one key at once, round after round, then both are acknowledged one after the other and both replicas end with one of them', async () => {
    const key = demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    for (let round = 0; round < 6; round++) {
      const wanted = [0, 1].map((i) => `round ${round} by ${'ab'[i]}`);
      const outcomes = await Promise.all([a, b].map((replica, i) => outcomeOf(replica().call('UpdateKeyDescription', { keyId: key.keyId, description: wanted[i] }))));
      expect(outcomes, outcomes.join(', ')).toEqual(['ok', 'ok']);
      const descriptions = async () => Promise.all([a, b].map(async (replica) => (await replica().call('DescribeKey', { keyId: key.keyId })).keyMetadata.description as string));
      const agreed = await eventually(async () => {
        const [da, db] = await descriptions();
        return da === db && wanted.includes(da!);
      });
      expect(agreed, `round ${round}: ${(await descriptions()).join(' / ')}`).toBe(true);
    }
  });

  it('when both create a key at the same moment, round after round, then each replica serves (and signs with) both keys', async () => {
    const digest = createHash('sha256').update('locked replicas').digest('base64');
    const signs = (replica: typeof a, keyId: string, keyVersionId: string) => () =>
      replica()
        .call('AsymmetricSign', { keyId, keyVersionId, algorithm: 'ECDSA_SHA_256', digest })
        .then(
          () => true,
          () => false,
        );
    for (let round = 0; round < 4; round++) {
      const made = await Promise.all([a, b].map(async (replica) => (await replica().call('CreateKey', { keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY' })).keyMetadata as { keyId: string; primaryKeyVersion: string }));
      for (const replica of [a, b]) {
        for (const { keyId, primaryKeyVersion } of made) {
          expect(await eventually(signs(replica, keyId, primaryKeyVersion)), `round ${round}: replica ${replica === a ? 'A' : 'B'} does not sign with ${keyId}`).toBe(true);
        }
      }
    }
  });
});
