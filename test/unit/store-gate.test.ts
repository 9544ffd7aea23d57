import { describe, expect, it } from 'vitest';
import { StoreGate } from '../../src/keys/store-gate.js';

/** A job that runs until `end()` is called, recording when it started. */
function job(log: string[], name: string): { run: () => Promise<string>; end: () => void } {
  let end!: () => void;
  const done = new Promise<void>((resolve) => (end = resolve));
  return {
    run: async () => {
      log.push(`${name} starts`);
      await done;
      log.push(`${name} ends`);
      return name;
    },
    end: () => end(),
  };
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('StoreGate (a process\'s registry reads kept apart from its writes)', () => {
  it('when a write holds the gate, then a read waits until it is released', async () => {
    const gate = new StoreGate();
    const log: string[] = [];
    await gate.hold();
    const r = job(log, 'read');
    const reading = gate.read(r.run);
    await turn();
    expect(log).toEqual([]);
    log.push('write made');
    gate.release();
    await turn();
    r.end();
    await expect(reading).resolves.toBe('read');
    expect(log).toEqual(['write made', 'read starts', 'read ends']);
  });

  it('when reads are in flight, then hold waits for all of them, and no read starts in between', async () => {
    const gate = new StoreGate();
    const log: string[] = [];
    const [r1, r2] = [job(log, 'r1'), job(log, 'r2')];
    const reads = [gate.read(r1.run), gate.read(r2.run)];
    await turn();
    let held = false;
    const holding = gate.hold().then(() => (held = true));
    const r3 = job(log, 'r3');
    const late = gate.read(r3.run);
    r1.end();
    await turn();
    expect(held).toBe(false);
    r2.end();
    await holding;
    await turn();
    expect(log).toEqual(['r1 starts', 'r2 starts', 'r1 ends', 'r2 ends']);
    gate.release();
    await turn();
    r3.end();
    await Promise.all([...reads, late]);
    expect(log.slice(-2)).toEqual(['r3 starts', 'r3 ends']);
  });

  it('when two writers hold in turn, then the second holds only after the first released', async () => {
    const gate = new StoreGate();
    await gate.hold();
    let second = false;
    const holding = gate.hold().then(() => (second = true));
    await turn();
    expect(second).toBe(false);
    gate.release();
    await holding;
    expect(second).toBe(true);
    gate.release();
  });
});

describe('StoreGate.alone (a re-initialization kept apart from every registry session in use)', () => {
  it('when sessions are in use, then a re-initialization waits for them, and a use that starts meanwhile waits for it', async () => {
    const gate = new StoreGate();
    const log: string[] = [];
    const change = job(log, 'change');
    const changing = gate.use(change.run);
    await turn();
    const reinit = job(log, 'reinitialize');
    const reinitializing = gate.alone(reinit.run);
    const poll = job(log, 'poll');
    const polling = gate.use(poll.run);
    await turn();
    expect(log).toEqual(['change starts']);
    change.end();
    await changing;
    await turn();
    expect(log).toEqual(['change starts', 'change ends', 'reinitialize starts']);
    reinit.end();
    await reinitializing;
    await turn();
    expect(log.slice(3)).toEqual(['reinitialize ends', 'poll starts']);
    poll.end();
    expect(await polling).toBe('poll');
  });

  it('when a use in flight reads and writes while a re-initialization waits, then it is not held up (no deadlock)', async () => {
    const gate = new StoreGate();
    const log: string[] = [];
    const r = job(log, 'read');
    const changing = gate.use(async () => {
      await turn();
      await turn(); // the re-initialization is waiting by now
      await gate.hold();
      log.push('write made');
      gate.release();
      const read = gate.read(r.run);
      await turn();
      r.end();
      return read;
    });
    await turn();
    const reinitializing = gate.alone(async () => void log.push('reinitialized'));
    expect(await changing).toBe('read');
    await reinitializing;
    expect(log).toEqual(['write made', 'read starts', 'read ends', 'reinitialized']);
  });
});
