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
