import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { bootstrapDemo } from '../../src/demo/bootstrap.js';
import { findObjects } from '../../src/hsm/objects.js';
import type { Token } from '../../src/hsm/token.js';
import { LifecycleError } from '../../src/keys/errors.js';
import { ABANDONED_MS } from '../../src/keys/registry-cas.js';
import { RegistryObjects } from '../../src/keys/registry-objects.js';
import { RegistrySource } from '../../src/keys/registry-source.js';
import type { KeyRecord } from '../../src/keys/registry.js';
import { openToken } from '../../src/open-tokens.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// Two RegistrySources, each on its own Token (its own pkcs11js instance and sessions; one SoftHSMv2 library in this
// process, so each sees the other's objects at once) of one real SoftHSMv2 token,
// with no lock between them: two replicas without Redis. A barrier on the look makes both write before either looks,
// the interleaving a race only sometimes gives.
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
let home: string;
const tokens: Token[] = [];
let a: RegistrySource;
let b: RegistrySource;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-cas-'));
  const demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  for (let i = 0; i < 2; i++) tokens.push(openToken('default', loadConfig(demo.configFile, {}).hsm, quiet, { sessions: 1, healthIntervalMs: 0 }));
  a = new RegistrySource({ token: tokens[0]!, log: quiet, hostLock: false });
  b = new RegistrySource({ token: tokens[1]!, log: quiet, hostLock: false });
  await a.load();
  await b.load();
});
afterAll(async () => {
  for (const t of tokens.reverse()) await t.close();
  rmSync(home, { recursive: true, force: true });
});

/**
 * Until released, the look of each of these two sources waits until both have arrived at their look (both have
 * written). `firstDone` given: the second looks only once that (the first's change) has settled.
 */
function bothWriteFirst(sources: [RegistrySource, RegistrySource]): { firstDone: (p: Promise<unknown>) => void; release: () => void } {
  let arrived = 0;
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  let first: Promise<unknown> = Promise.resolve();
  const restore: Array<() => void> = [];
  sources.forEach((source, i) => {
    const objects = (source as unknown as { objects: RegistryObjects }).objects;
    const original = objects.lookAgain;
    restore.push(() => (objects.lookAgain = original));
    objects.lookAgain = (async (...args: Parameters<RegistryObjects['lookAgain']>) => {
      if (++arrived === sources.length) open();
      await Promise.race([gate, new Promise((r) => setTimeout(r, 10_000))]);
      if (i === 1) await first;
      return original.apply(objects, args);
    }) as unknown as RegistryObjects['lookAgain'];
  });
  return { firstDone: (p) => void (first = p), release: () => restore.forEach((r) => r()) };
}

/** Every registry object's label on the token (pending ones included). */
async function labels(): Promise<string[]> {
  return tokens[0]!.admin((p11, session) =>
    findObjects(p11, session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_APPLICATION, value: 'hsm-gateway/registry' },
    ]).map((h) => (p11.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_LABEL }])[0]!.value as Buffer).toString('utf8')),
  );
}

/** The committed records as a fresh reader (another process) reads them. */
async function reread(): Promise<RegistrySource> {
  const fresh = new RegistrySource({ token: tokens[0]!, log: quiet, hostLock: false });
  await fresh.load();
  return fresh;
}

type Outcome = { ok: true } | { ok: false; error: unknown };
const settle = (p: Promise<unknown>): Promise<Outcome> => p.then(() => ({ ok: true }) as const, (error: unknown) => ({ ok: false, error }) as const);
const isConflict = (o: Outcome): boolean => !o.ok && o.error instanceof LifecycleError && o.error.kind === 'conflict';

describe('two replicas without a lock change one key at once (compare-and-swap on the token)', () => {
  it('when both write before either looks, round after round, then at most one is acknowledged, the loser gets a conflict, and the record is the acknowledged one', async () => {
    const keyId = a.current().registry.all()[0]!.keyId;
    let expected = a.current().registry.key(keyId)!.description;
    let won = 0;
    for (let round = 0; round < 8; round++) {
      // Even rounds: both look at once. Odd rounds: a looks (and sees b's write) before b looks.
      const barrier = bothWriteFirst([a, b]);
      const changes = [a, b].map((source, i) =>
        settle(source.change((snapshot, writer) => writer.putKey({ ...(snapshot.registry.key(keyId) as KeyRecord), description: `round ${round} by ${'ab'[i]}` }))),
      );
      if (round % 2 === 1) barrier.firstDone(changes[0]!);
      const outcomes = await Promise.all(changes);
      barrier.release();
      if (round % 2 === 1) expect(outcomes.map((o) => o.ok)).toEqual([false, true]);
      const acknowledged = outcomes.flatMap((o, i) => (o.ok ? [`round ${round} by ${'ab'[i]}`] : []));
      expect(acknowledged.length).toBeLessThanOrEqual(1);
      for (const o of outcomes.filter((x) => !x.ok)) expect(isConflict(o), String((o as { error: unknown }).error)).toBe(true);
      if (acknowledged[0] !== undefined) expected = acknowledged[0];
      won += acknowledged.length;
      expect((await reread()).current().registry.key(keyId)?.description).toBe(expected);
      expect((await labels()).filter((l) => l.endsWith(keyId))).toEqual([`key:${keyId}`]);
    }
    console.log(`forced races: ${won} of 8 rounds had a winner, the rest two 409s`);
    expect(won).toBeGreaterThanOrEqual(4);
    // The loser is not wedged: its next change goes through.
    await a.change((snapshot, writer) => writer.putKey({ ...(snapshot.registry.key(keyId) as KeyRecord), description: 'after the races' }));
    expect((await reread()).current().registry.key(keyId)?.description).toBe('after the races');
  });

  it('when they race unforced, then every acknowledged change is in the final record and no refused one is', async () => {
    const keyId = a.current().registry.all()[1]!.keyId;
    for (let round = 0; round < 10; round++) {
      // Each appends its mark to the description it read: the final text names every change that was made.
      const outcomes = await Promise.all(
        [a, b].map((source, i) =>
          settle(
            source.change((snapshot, writer) => {
              const key = snapshot.registry.key(keyId) as KeyRecord;
              writer.putKey({ ...key, description: `${key.description ?? ''}|${round}${'ab'[i]}` });
            }),
          ),
        ),
      );
      for (const o of outcomes.filter((x) => !x.ok)) expect(isConflict(o), String((o as { error: unknown }).error)).toBe(true);
      const description = (await reread()).current().registry.key(keyId)?.description ?? '';
      outcomes.forEach((o, i) => expect(description.includes(`|${round}${'ab'[i]}`)).toBe(o.ok));
    }
  });

  it('when one removes a key while the other changes it, then at most one is made and the record matches it', async () => {
    const template = a.current().registry.all()[0]! as KeyRecord;
    for (let round = 0; round < 4; round++) {
      const keyId = `cas-remove-${round}`;
      await a.change((_s, writer) => writer.putKey({ ...template, keyId, aliases: [], versions: [{ keyVersionId: `v-${keyId}`, label: `l-${keyId}` }] }));
      await b.refresh();
      // Rounds 0, 1: both look at once; 2: the removal looks first; 3: the change looks first (the removal second).
      const barrier = bothWriteFirst(round === 3 ? [b, a] : [a, b]);
      const removing = settle(a.change((_s, writer) => writer.removeKey(keyId)));
      const changing = settle(b.change((snapshot, writer) => writer.putKey({ ...(snapshot.registry.key(keyId) as KeyRecord), description: 'changed' })));
      if (round === 2) barrier.firstDone(removing);
      if (round === 3) barrier.firstDone(changing);
      const [removed, changed] = await Promise.all([removing, changing]);
      barrier.release();
      if (round === 2) expect([removed.ok, changed.ok]).toEqual([false, true]);
      if (round === 3) expect([removed.ok, changed.ok]).toEqual([true, false]);
      expect(removed.ok && changed.ok).toBe(false);
      const after = (await reread()).current().registry.key(keyId);
      if (removed.ok) expect(after).toBeUndefined();
      else if (changed.ok) expect(after?.description).toBe('changed');
      else expect(after?.description).toBe(template.description);
      expect((await labels()).filter((l) => l.startsWith('pending:'))).toEqual([]);
    }
  });
});

describe('two replicas without a lock bind one alias to two keys at once', () => {
  it('when both write before either looks, then never both are made: the registry never holds a double binding', async () => {
    const [k1, k2] = a.current().registry.all();
    expect(k1!.account ?? 'default').toBe(k2!.account ?? 'default'); // one account: one alias name can bind only one of them
    for (let round = 0; round < 6; round++) {
      const alias = `alias/cas-${round}`;
      const barrier = bothWriteFirst([a, b]);
      const changes = [a, b].map((source, i) =>
        settle(
          source.change((snapshot, writer) => {
            const key = snapshot.registry.key([k1, k2][i]!.keyId) as KeyRecord;
            writer.putKey({ ...key, aliases: [...key.aliases, alias] });
          }),
        ),
      );
      if (round % 2 === 1) barrier.firstDone(changes[0]!);
      const outcomes = await Promise.all(changes);
      barrier.release();
      if (round % 2 === 1) expect(outcomes.map((o) => o.ok)).toEqual([false, true]);
      expect(outcomes.filter((o) => o.ok).length).toBeLessThanOrEqual(1);
      for (const o of outcomes.filter((x) => !x.ok)) expect(isConflict(o), String((o as { error: unknown }).error)).toBe(true);
      const raw = await tokens[0]!.admin((p11, session) => new RegistryObjects().readAll(p11, session).records);
      const bound = raw.filter((r) => r.kind === 'key' && ((r.record as KeyRecord).aliases ?? []).includes(alias)).map((r) => r.id);
      expect(bound).toEqual(outcomes.flatMap((o, i) => (o.ok ? [[k1, k2][i]!.keyId] : [])));
    }
  });
});

describe('a writer that died between its write and its commit', () => {
  /** Leaves a pending object of the next revision, as a process killed after phase (a) does. */
  async function leavePending(keyId: string, writtenAt: number): Promise<void> {
    const stored = (await tokens[0]!.admin((p11, session) => new RegistryObjects().readAll(p11, session).records)).find((r) => r.kind === 'key' && r.id === keyId)!;
    await tokens[0]!.admin((p11, session) =>
      p11.C_CreateObject(session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_APPLICATION, value: 'hsm-gateway/registry' },
        { type: pkcs11js.CKA_LABEL, value: `pending:key:${keyId}` },
        { type: pkcs11js.CKA_VALUE, value: Buffer.from(JSON.stringify({ revision: stored.revision + 1, record: { ...(stored.record as object), description: 'never acknowledged' }, writtenAt })) },
      ]),
    );
  }

  it('when its object is fresh, then readers ignore it and a change of that record gets a conflict; once abandoned, the next change removes it', async () => {
    const keyId = a.current().registry.all()[2]!.keyId;
    const change = (description: string) => a.change((snapshot, writer) => writer.putKey({ ...(snapshot.registry.key(keyId) as KeyRecord), description }));
    await leavePending(keyId, Date.now());
    expect((await reread()).current().registry.key(keyId)?.description).not.toBe('never acknowledged');
    await expect(change('blocked')).rejects.toMatchObject({ kind: 'conflict' });
    // The same object, written long ago: abandoned.
    const old = (await labels()).filter((l) => l === `pending:key:${keyId}`);
    expect(old).toHaveLength(1);
    await tokens[0]!.admin((p11, session) => {
      for (const h of findObjects(p11, session, [{ type: pkcs11js.CKA_LABEL, value: `pending:key:${keyId}` }])) p11.C_DestroyObject(session, h);
    });
    await leavePending(keyId, Date.now() - ABANDONED_MS - 1000);
    await change('after an abandoned write');
    expect((await reread()).current().registry.key(keyId)?.description).toBe('after an abandoned write');
    expect((await labels()).filter((l) => l.endsWith(keyId))).toEqual([`key:${keyId}`]);
  });
});

describe('a second generation marker (made by a process that could not see the first)', () => {
  const markerTemplate = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_APPLICATION, value: 'hsm-gateway/registry-generation' },
  ];

  it('when one appears, then a reader that watched the first notices it within ten reads, and the next write leaves one marker', async () => {
    const objects = new RegistryObjects();
    const before = await tokens[0]!.admin((p11, session) => objects.generation(p11, session));
    expect(before).not.toBe('');
    await tokens[1]!.admin((p11, session) =>
      p11.C_CreateObject(session, [...markerTemplate, { type: pkcs11js.CKA_TOKEN, value: true }, { type: pkcs11js.CKA_PRIVATE, value: true }, { type: pkcs11js.CKA_LABEL, value: 'made-blind' }, { type: pkcs11js.CKA_VALUE, value: Buffer.from('hsm-gateway registry generation marker zz') }]),
    );
    const seen: string[] = [];
    for (let i = 0; i < 10; i++) seen.push(await tokens[0]!.admin((p11, session) => objects.generation(p11, session)));
    // Both markers' labels make the generation once the markers are searched again: a bump of either is a change.
    expect(seen.at(-1)!.split(',').sort()).toEqual([before, 'made-blind'].sort());
    await tokens[0]!.admin((p11, session) => objects.put(p11, session, 'key', 'marker-test', { keyId: 'marker-test' }));
    const markers = await tokens[0]!.admin((p11, session) => findObjects(p11, session, markerTemplate));
    expect(markers).toHaveLength(1);
    await tokens[0]!.admin((p11, session) => objects.remove(p11, session, 'key', 'marker-test'));
  });
});
