import { describe, expect, it } from 'vitest';
import type { Token } from '../../src/hsm/token.js';
import { LifecycleError } from '../../src/keys/errors.js';
import { KeyLifecycle, type KeyHome } from '../../src/keys/lifecycle.js';
import type { RegistrySnapshot, RegistrySource } from '../../src/keys/registry-source.js';
import type { KeyRecord } from '../../src/keys/registry.js';

// purgeExpired against a fake registry source and token: the order of the record's removal and the objects' destruction.
const expired: KeyRecord = {
  keyId: 'doomed',
  account: 'default',
  keySpec: 'EC_P256',
  aliases: [],
  versions: [{ keyVersionId: 'v1', label: 'key/v1', id: '01' }],
  createdAt: '2026-01-01T00:00:00Z',
  state: 'PendingDeletion',
  deleteDate: '2026-01-08T00:00:00Z',
  token: 'default',
} as unknown as KeyRecord;

function setUp(changeOutcome: 'commit' | 'conflict') {
  const events: string[] = [];
  const snapshot = { registry: { all: () => [expired] }, onToken: { keys: new Set(['doomed']) } } as unknown as RegistrySnapshot;
  const source = {
    current: () => snapshot,
    change: async (work: (s: RegistrySnapshot, w: { removeKey(id: string): void }) => unknown) => {
      const result = await work(snapshot, { removeKey: (id) => events.push(`record ${id} removed (pending)`) });
      if (changeOutcome === 'conflict') throw new LifecycleError('conflict', 'the change was not made: another writer; try again');
      events.push('change committed');
      return result;
    },
  } as unknown as RegistrySource;
  const token = {
    admin: async () => void events.push('token objects destroyed'),
    forget: () => undefined,
  } as unknown as Token;
  const home = { name: 'default', token } as unknown as KeyHome;
  return { events, lifecycle: new KeyLifecycle(source, [home], { now: () => new Date('2026-02-01T00:00:00Z') }) };
}

describe('purgeExpired', () => {
  it('when the registry change that removes an expired key loses (another replica cancelled the deletion), then the key\'s token objects are left whole', async () => {
    const { events, lifecycle } = setUp('conflict');
    await expect(lifecycle.purgeExpired()).rejects.toThrow(/conflict|not made/);
    expect(events).not.toContain('token objects destroyed');
  });

  it('when the change commits, then the token objects are destroyed after it, and the key is reported purged', async () => {
    const { events, lifecycle } = setUp('commit');
    expect(await lifecycle.purgeExpired()).toEqual(['doomed']);
    expect(events).toEqual(['record doomed removed (pending)', 'change committed', 'token objects destroyed']);
  });
});
