import { describe, expect, it } from 'vitest';
import { recordDiff } from '../../src/keys/record-diff.js';

// `registry history`: what one change did to a record, in a line an operator reads; never a secret.
const key = {
  keyId: 'k1',
  account: 'default',
  keySpec: 'EC_P256',
  state: 'Enabled',
  aliases: ['alias/a', 'alias/b'],
  versions: [{ keyVersionId: 'v1', label: 'l1' }],
};

describe('recordDiff', () => {
  it('when a scalar field changes, then it shows old → new; an absent value is "-"', () => {
    expect(recordDiff(key, { ...key, state: 'Disabled' })).toEqual(['state Enabled → Disabled']);
    expect(recordDiff(key, { ...key, state: 'PendingDeletion', deleteDate: '2027-01-01T00:00:00.000Z' })).toEqual([
      'deleteDate - → 2027-01-01T00:00:00.000Z',
      'state Enabled → PendingDeletion',
    ]);
  });

  it('when aliases and versions change, then items added and removed are named (versions by KeyVersionId)', () => {
    const after = { ...key, aliases: ['alias/b', 'alias/c'], versions: [...key.versions, { keyVersionId: 'v2', label: 'l2' }], primaryKeyVersion: 'v2' };
    expect(recordDiff(key, after)).toEqual(['aliases +alias/c -alias/a', 'primaryKeyVersion - → v2', 'versions +v2']);
  });

  it('when a record is created or removed, then it says so', () => {
    expect(recordDiff(null, key)[0]).toBe('created');
    expect(recordDiff(key, null)).toEqual(['removed']);
  });

  it('when an access key record holds secrets, then no secret appears in the diff, whatever changed', () => {
    const before = { accessKeyId: 'LTAIx', account: 'default', enabled: true, secrets: ['old-secret-value'] };
    const after = { ...before, enabled: false, secrets: ['new-secret-value', 'old-secret-value'] };
    const shown = [...recordDiff(before, after), ...recordDiff(null, after), ...recordDiff(after, null)].join('\n');
    expect(shown).toContain('enabled true → false');
    expect(shown).not.toContain('secret-value');
    expect(shown).not.toContain('secrets');
  });

  it('when a value is long, then it is cut short', () => {
    const [line] = recordDiff({ description: 'a' }, { description: 'x'.repeat(200) });
    expect(line!.length).toBeLessThan(80);
    expect(line).toMatch(/…$/);
  });
});
