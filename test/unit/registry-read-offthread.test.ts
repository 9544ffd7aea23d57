import { describe, expect, it } from 'vitest';
import { RegistryObjects } from '../../src/keys/registry-objects.js';

// RegistryObjects.readAllOffThread against fake asynchronous calls: one session per lane, and nothing left in flight.
const handle = (n: number): Buffer => Buffer.from([n]);
const record = (n: number) => ({ label: Buffer.from(`key:k${n}`), value: Buffer.from(JSON.stringify({ revision: 1, record: { keyId: `k${n}` } })) });

function fakeOps(objects: number, failOn?: number) {
  const inFlight = new Map<string, number>();
  let most = 0;
  let afterEnd = 0;
  let ended = false;
  const ops = {
    findObjects: async () => Array.from({ length: objects }, (_, i) => handle(i)),
    getAttributeValue: async (session: Buffer, object: Buffer) => {
      const key = session.toString('hex');
      if (ended) afterEnd++;
      inFlight.set(key, (inFlight.get(key) ?? 0) + 1);
      most = Math.max(most, inFlight.get(key)!);
      await new Promise((r) => setTimeout(r, 1));
      inFlight.set(key, inFlight.get(key)! - 1);
      if (object[0] === failOn) throw Object.assign(new Error('CKR_DEVICE_ERROR'), { code: 0x30 });
      const { label, value } = record(object[0]!);
      return [label, value];
    },
  };
  let sessions = 1;
  const another = async () => handle(100 + sessions++);
  return { ops, another, end: () => (ended = true), mostPerSession: () => most, callsAfterEnd: () => afterEnd, sessions: () => sessions };
}

describe('RegistryObjects.readAllOffThread', () => {
  it('when it reads many objects, then each lane has a session of its own (never two calls at once on one) and every record is read', async () => {
    const fake = fakeOps(40);
    const { records } = await new RegistryObjects().readAllOffThread(fake.ops as never, handle(100), fake.another);
    expect(records.map((r) => r.id).sort()).toEqual(Array.from({ length: 40 }, (_, i) => `k${i}`).sort());
    expect(fake.mostPerSession()).toBe(1);
    expect(fake.sessions()).toBe(4);
  });

  it('when a read fails, then it rejects with that error only once every lane has stopped (the sessions are closed after it)', async () => {
    const fake = fakeOps(40, 5);
    const error = await new RegistryObjects().readAllOffThread(fake.ops as never, handle(100), fake.another).catch((e: unknown) => e);
    fake.end();
    expect((error as Error).message).toBe('CKR_DEVICE_ERROR');
    await new Promise((r) => setTimeout(r, 20));
    expect(fake.callsAfterEnd()).toBe(0);
  });
});

describe('RegistryObjects.readAllOffThread while another writer commits', () => {
  const GONE = Object.assign(new Error('CKR_OBJECT_HANDLE_INVALID'), { code: 0x82 });
  const body = (revision: number, pending = false) => ({
    label: Buffer.from(`${pending ? 'pending:' : ''}key:k1`),
    value: Buffer.from(JSON.stringify({ revision, record: { keyId: 'k1', revision } })),
  });

  it('when an object it found is destroyed before it reads it (the newer revision read while still pending), then it searches again and the record is there', async () => {
    // The search finds revision 1 (handle 1) and the pending revision 2 (handle 2); the writer relabels 2 and destroys
    // 1 before they are read: read alone, that lacks the record. The second search finds 2, committed.
    let searches = 0;
    const ops = {
      findObjects: async () => (++searches === 1 ? [handle(1), handle(2)] : [handle(2)]),
      getAttributeValue: async (_session: Buffer, object: Buffer) => {
        if (object[0] === 1) throw GONE;
        const { label, value } = body(2, searches === 1);
        return [label, value];
      },
    };
    const { records } = await new RegistryObjects().readAllOffThread(ops as never, handle(100), async () => undefined);
    expect(searches).toBe(2);
    expect(records.map((r) => [r.id, r.revision])).toEqual([['k1', 2]]);
  });

  it('when objects keep vanishing under it, then it gives up searching after three searches and answers what it read', async () => {
    let searches = 0;
    const ops = {
      findObjects: async () => {
        searches++;
        return [handle(1), handle(2)];
      },
      getAttributeValue: async (_session: Buffer, object: Buffer) => {
        if (object[0] === 1) throw GONE;
        const { label, value } = body(1);
        return [label, value];
      },
    };
    const { records } = await new RegistryObjects().readAllOffThread(ops as never, handle(100), async () => undefined);
    expect(searches).toBe(3);
    expect(records.map((r) => r.id)).toEqual(['k1']);
  });
});
