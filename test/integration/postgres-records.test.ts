import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresRecords, RecordConflictError, type RecordWrite } from '../../src/keys/postgres-records.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

// The registry's record store on a real PostgreSQL (initdb in a temp dir, its own port): migrations, optimistic
// concurrency, the alias claim, history, LISTEN/NOTIFY and the listener's recovery after the server was killed.
let db: TestPostgres;
let a: PostgresRecords;
let b: PostgresRecords;

beforeAll(async () => {
  db = await startPostgres();
  a = new PostgresRecords({ url: db.url });
  b = new PostgresRecords({ url: db.url });
}, 120_000);

afterAll(async () => {
  await a?.close();
  await b?.close();
  await db?.close();
});

const key = (id: string, aliases: string[] = [], account = 'default') => ({ keyId: id, account, aliases, versions: [] });
const write = (id: string, readRevision: number, record: unknown = key(id)): RecordWrite => ({ kind: 'key', id, record, readRevision });
const revisionOf = async (store: PostgresRecords, id: string) => (await store.readAll()).records.find((r) => r.id === id)?.revision ?? 0;

describe('PostgreSQL record store', () => {
  it('when two replicas migrate at once, then the schema is applied once and a later migrate applies nothing', async () => {
    const [first, second] = await Promise.all([a.migrate(), b.migrate()]);
    expect([...first, ...second]).toEqual([1]);
    expect(await a.migrate()).toEqual([]);
    expect(db.psql('SELECT count(*) FROM hsm_gateway_migrations', 'hsm_gateway').trim()).toBe('1');
  });

  it('when records are written, then a read returns them with their revisions and the generation moves', async () => {
    const g0 = await a.generation();
    await a.apply([write('k1', 0), { kind: 'accessKey', id: 'LTAI1', record: { accessKeyId: 'LTAI1', account: 'default' }, sealedSecrets: Buffer.from([1, 2, 3]), readRevision: 0 }], 'test');
    const { generation, records } = await b.readAll();
    expect(BigInt(generation)).toBe(BigInt(g0) + 1n);
    expect(records.find((r) => r.id === 'k1')).toMatchObject({ kind: 'key', revision: 1, record: key('k1') });
    expect(records.find((r) => r.id === 'LTAI1')?.sealedSecrets).toEqual(Buffer.from([1, 2, 3]));
    await b.apply([write('k1', 1, key('k1', ['alias/one']))], 'cli');
    expect(await revisionOf(a, 'k1')).toBe(2);
    expect((await a.history('key', 'k1')).map((h) => [h.actor, h.oldRevision, h.newRevision])).toEqual([
      ['test', null, 1],
      ['cli', 1, 2],
    ]);
  });

  it('when two writers change the same record from the same revision, then exactly one wins and the other gets a conflict', async () => {
    await a.apply([write('k2', 0)], 'test');
    const results = await Promise.allSettled([a.apply([write('k2', 1, key('k2', ['alias/a']))], 'a'), b.apply([write('k2', 1, key('k2', ['alias/b']))], 'b')]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(lost.reason).toBeInstanceOf(RecordConflictError);
    expect(await revisionOf(a, 'k2')).toBe(2);
  });

  it('when two writers create the same new record at once, then one gets a conflict', async () => {
    const results = await Promise.allSettled([a.apply([write('k3', 0)], 'a'), b.apply([write('k3', 0)], 'b')]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toBeInstanceOf(RecordConflictError);
  });

  it('when a change conflicts on its second write, then its first write is not made either', async () => {
    await a.apply([write('k4', 0)], 'test');
    const generation = await a.generation();
    await expect(a.apply([write('k5', 0), write('k4', 0)], 'test')).rejects.toBeInstanceOf(RecordConflictError);
    expect(await revisionOf(a, 'k5')).toBe(0);
    expect(await a.generation()).toBe(generation);
  });

  it('when two keys claim one alias of an account at once, then one gets a conflict; another account may use the same name', async () => {
    await a.apply([write('k6', 0), write('k7', 0), write('k8', 0, key('k8', [], 'other'))], 'test');
    const results = await Promise.allSettled([
      a.apply([write('k6', 1, key('k6', ['alias/payments']))], 'a'),
      b.apply([write('k7', 1, key('k7', ['alias/payments']))], 'b'),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toMatchObject({ kind: 'alias', id: 'alias/payments' });
    await a.apply([write('k8', 1, key('k8', ['alias/payments'], 'other'))], 'test');
    // Removing a key frees its aliases.
    const owner = (await a.readAll()).records.find((r) => r.id === 'k6' && (r.record as { aliases: string[] }).aliases.length > 0) ? 'k6' : 'k7';
    await a.apply([{ kind: 'key', id: owner, readRevision: 2 }], 'test');
    const other = owner === 'k6' ? 'k7' : 'k6';
    await a.apply([write(other, 1, key(other, ['alias/payments']))], 'test');
  });

  it('when a change commits, then a listening replica is notified with the new generation (latency measured)', async () => {
    const seen: string[] = [];
    let wake: (() => void) | undefined;
    let connected!: () => void;
    const up = new Promise<void>((r) => (connected = r));
    const listener = b.listen({ changed: (g) => (seen.push(g), wake?.()), resync: () => connected() });
    await up;
    const latencies: number[] = [];
    for (let i = 0; i < 30; i++) {
      const arrived = new Promise<void>((r) => (wake = r));
      const t0 = performance.now();
      const generation = await a.apply([write(`n${i}`, 0)], 'test');
      await arrived;
      latencies.push(performance.now() - t0);
      expect(seen.at(-1)).toBe(generation);
    }
    await listener.close();
    latencies.sort((x, y) => x - y);
    // Reported, not asserted tightly (shared machine): the goal is p99 ≤ 100 ms.
    console.info(`NOTIFY: commit → notification p50 ${latencies[15]!.toFixed(1)} ms, max ${latencies.at(-1)!.toFixed(1)} ms (30 changes, commit included)`);
    expect(latencies.at(-1)!).toBeLessThan(5000);
  });

  it('when the connection of an open transaction is cut between two statements, then the change fails and the process lives on', async () => {
    const store = new PostgresRecords({ url: db.url });
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown): void => void uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      // The transaction helper is private: reached here to cut the connection at the one moment no query is running.
      const transaction = (store as unknown as { transaction: (work: (c: { query: (sql: string) => Promise<{ rows: Array<{ pid: number }> }> }) => Promise<void>) => Promise<void> }).transaction.bind(store);
      await expect(
        transaction(async (client) => {
          const { rows } = await client.query('SELECT pg_backend_pid() AS pid');
          db.psql(`SELECT pg_terminate_backend(${rows[0]!.pid})`);
          await new Promise((r) => setTimeout(r, 300));
          await client.query('SELECT 1');
        }),
      ).rejects.toThrow();
      expect(uncaught).toEqual([]);
      // The broken connection was not handed out again.
      await store.apply([write('after-cut', 0)], 'test');
    } finally {
      process.off('uncaughtException', onUncaught);
      await store.close();
    }
  });

  it('when PostgreSQL is killed and comes back, then the listener reconnects by itself and asks for a full re-read', async () => {
    const events: string[] = [];
    let resyncs = 0;
    let resynced: (() => void) | undefined;
    const listener = b.listen({ changed: () => events.push('changed'), resync: () => (resyncs++, resynced?.()), connection: (up) => events.push(up ? 'up' : 'down') });
    await expect.poll(() => resyncs, { timeout: 10_000 }).toBe(1);
    await db.kill();
    await expect(a.apply([write('during-outage', 0)], 'test')).rejects.toThrow();
    await expect.poll(() => events.includes('down'), { timeout: 10_000 }).toBe(true);
    const again = new Promise<void>((r) => (resynced = r));
    await db.restart();
    await again;
    expect(resyncs).toBe(2);
    await a.apply([write('after-outage', 0)], 'test');
    await expect.poll(() => events.filter((e) => e === 'changed').length, { timeout: 10_000 }).toBeGreaterThanOrEqual(1);
    await listener.close();
  }, 60_000);
});
