import { describe, expect, it } from 'vitest';
import { LifecycleError } from '../../src/keys/errors.js';
import { ABANDONED_MS, SELF_LIMIT_MS, compareAndSwap, rivalOf, type SeenRevision, type WriteThenLook } from '../../src/keys/registry-cas.js';

// The compare-and-swap's phases on a fake token: one record, objects visible to every writer at once (the property
// the start-up check demands of the module). Writers run step by step in every possible interleaving.

interface FakeObject {
  handle: number;
  pending: boolean;
  revision: number;
  value: string;
  writtenAt: number;
}

class FakeToken {
  objects: FakeObject[] = [{ handle: 0, pending: false, revision: 1, value: 'v0', writtenAt: 0 }];
  private next = 1;
  now = 1_000_000;
  /** What a reader keeps: the highest committed revision (at one revision, the greater text). */
  committed(): FakeObject | undefined {
    return this.objects.filter((o) => !o.pending).sort((a, b) => b.revision - a.revision || (a.value < b.value ? 1 : -1))[0];
  }
  create(revision: number, value: string): FakeObject {
    const made = { handle: this.next++, pending: true, revision, value, writtenAt: this.now };
    this.objects.push(made);
    return made;
  }
  destroy(handle: number): void {
    this.objects = this.objects.filter((o) => o.handle !== handle);
  }
}

/** One writer's change as the four steps the interleavings are made of: read, write, look, finish (commit or discard). */
class Writer {
  basis: FakeObject | undefined;
  mine: FakeObject | undefined;
  lost: string | undefined;
  outcome: 'acknowledged' | 'conflict' | undefined;
  constructor(
    readonly name: string,
    private readonly token: FakeToken,
  ) {}
  steps(): Array<() => void> {
    return [
      () => (this.basis = this.token.committed()),
      () => (this.mine = this.token.create((this.basis?.revision ?? 0) + 1, `${this.basis?.value ?? ''}+${this.name}`)),
      () => (this.lost = rivalOf(this.seen(), this.mine!.revision, this.basis && { revision: this.basis.revision, value: this.basis.value }, this.token.now)),
      () => (this.lost === undefined ? this.commit() : this.discard()),
    ];
  }
  private seen(): SeenRevision[] {
    return this.token.objects.map((o) => ({ revision: o.revision, value: o.value, mine: o.handle === this.mine!.handle, pending: o.pending, writtenAt: o.writtenAt }));
  }
  private commit(): void {
    this.mine!.pending = false;
    for (const o of [...this.token.objects]) if (o !== this.mine && !o.pending && o.revision < this.mine!.revision) this.token.destroy(o.handle);
    this.outcome = 'acknowledged';
  }
  private discard(): void {
    this.token.destroy(this.mine!.handle);
    this.outcome = 'conflict';
  }
}

/** Every order of the writers' steps that keeps each writer's own steps in order. */
function* interleavings(counts: number[]): Generator<number[]> {
  if (counts.every((c) => c === 0)) {
    yield [];
    return;
  }
  for (let w = 0; w < counts.length; w++) {
    if (counts[w] === 0) continue;
    const rest = [...counts];
    rest[w]!--;
    for (const tail of interleavings(rest)) yield [w, ...tail];
  }
}

function runAll(writers: number): { runs: number; bothWon: number; oneWon: number; noneWon: number } {
  const tally = { runs: 0, bothWon: 0, oneWon: 0, noneWon: 0 };
  for (const order of interleavings(Array.from({ length: writers }, () => 4))) {
    const token = new FakeToken();
    const ws = Array.from({ length: writers }, (_, i) => new Writer(String.fromCharCode(65 + i), token));
    const steps = ws.map((w) => w.steps());
    for (const w of order) steps[w]!.shift()!();
    const acknowledged = ws.filter((w) => w.outcome === 'acknowledged').map((w) => w.name);
    const final = token.committed()!;
    // Nothing acknowledged is lost, nothing refused is in: the final record is the acknowledged changes, in some order.
    expect(final.value.split('+').slice(1).sort(), `order ${order.join('')}`).toEqual(acknowledged.sort());
    // Nothing is left behind: one object, committed.
    expect(token.objects, `order ${order.join('')}`).toEqual([final]);
    tally.runs++;
    if (acknowledged.length === 0) tally.noneWon++;
    else if (acknowledged.length === 1) tally.oneWon++;
    else tally.bothWon++;
  }
  return tally;
}

describe('write, then look (every interleaving of racing writers of one record)', () => {
  it('when two writers race, then in every order no acknowledged change is lost, a refused one never lands, and nothing stays behind', () => {
    const tally = runAll(2);
    expect(tally.runs).toBe(70);
    // Both acknowledged only where one read the other's commit (a serial order); one winner or none otherwise.
    expect(tally.oneWon).toBeGreaterThan(0);
    expect(tally.noneWon).toBeGreaterThan(0);
    expect(tally.bothWon).toBeGreaterThan(0);
  });

  it('when three writers race, then the same holds in all 34,650 orders', () => {
    expect(runAll(3).runs).toBe(34_650);
  });
});

describe('rivalOf (the look\'s rule)', () => {
  const seen = (s: Partial<SeenRevision>): SeenRevision => ({ revision: 1, value: 'v', mine: false, pending: false, ...s });
  const now = 10 * ABANDONED_MS;

  it('when only my object and the committed one I read are there, then I win', () => {
    expect(rivalOf([seen({ revision: 1, value: 'v' }), seen({ revision: 2, mine: true, pending: true })], 2, { revision: 1, value: 'v' }, now)).toBeUndefined();
  });

  it('when a rival\'s object is at my revision (pending or committed), then I lose', () => {
    for (const pending of [true, false]) {
      expect(rivalOf([seen({}), seen({ revision: 2, pending, writtenAt: now }), seen({ revision: 2, mine: true, pending: true })], 2, { revision: 1, value: 'v' }, now)).toMatch(/same time/);
    }
  });

  it('when the object I read is gone or another of its revision replaced it, then I lose', () => {
    expect(rivalOf([seen({ revision: 2, mine: true, pending: true })], 2, { revision: 1, value: 'v' }, now)).toMatch(/since this change read it/);
    expect(rivalOf([seen({ value: 'other' }), seen({ revision: 2, mine: true, pending: true })], 2, { revision: 1, value: 'v' }, now)).toMatch(/since this change read it/);
  });

  it('when a pending object was left by a writer that died, then it stops counting once abandoned', () => {
    const left = seen({ revision: 2, pending: true, writtenAt: now - ABANDONED_MS + 1 });
    expect(rivalOf([seen({}), left, seen({ revision: 2, mine: true, pending: true })], 2, { revision: 1, value: 'v' }, now)).toMatch(/same time/);
    const old = seen({ revision: 2, pending: true, writtenAt: now - ABANDONED_MS - 1 });
    expect(rivalOf([seen({}), old, seen({ revision: 2, mine: true, pending: true })], 2, { revision: 1, value: 'v' }, now)).toBeUndefined();
  });
});

describe('compareAndSwap (the phases)', () => {
  function steps(look: () => string | undefined | Promise<string | undefined>): { calls: string[]; steps: WriteThenLook<string> } {
    const calls: string[] = [];
    return {
      calls,
      steps: {
        write: () => (calls.push('write'), 'w'),
        look: () => (calls.push('look'), look()),
        discard: () => void calls.push('discard'),
        commit: () => void calls.push('commit'),
      },
    };
  }

  it('when the look finds no rival, then the change commits', async () => {
    const s = steps(() => undefined);
    await compareAndSwap(s.steps);
    expect(s.calls).toEqual(['write', 'look', 'commit']);
  });

  it('when the look finds a rival, then what was written is discarded and the caller gets a conflict (409)', async () => {
    const s = steps(() => 'another writer changed the same record at the same time');
    const error = await compareAndSwap(s.steps).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LifecycleError);
    expect((error as LifecycleError).kind).toBe('conflict');
    expect((error as Error).message).toMatch(/not made: another writer .* try again/);
    expect(s.calls).toEqual(['write', 'look', 'discard']);
  });

  it('when the look fails, then what was written is discarded and the failure is the caller\'s', async () => {
    const s = steps(() => Promise.reject(new Error('device error')));
    await expect(compareAndSwap(s.steps)).rejects.toThrow('device error');
    expect(s.calls).toEqual(['write', 'look', 'discard']);
  });

  it('when the look ends later than the self-limit after the write (fake clock), then the writer gives up: it could be taken for dead', async () => {
    let clock = 0;
    const s = steps(() => {
      clock += SELF_LIMIT_MS + 1;
      return undefined;
    });
    const error = await compareAndSwap(s.steps, () => clock).catch((e: unknown) => e);
    expect((error as LifecycleError).kind).toBe('conflict');
    expect(s.calls).toEqual(['write', 'look', 'discard']);
  });
});
