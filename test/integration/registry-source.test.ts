import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pkcs11js from 'pkcs11js';
import { CKA_LABEL } from 'pkcs11js';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { bootstrapDemo } from '../../src/demo/bootstrap.js';
import type { AsyncOperations } from '../../src/hsm/async-pkcs11.js';
import type { Token } from '../../src/hsm/token.js';
import { LifecycleError } from '../../src/keys/errors.js';
import { RegistryObjects } from '../../src/keys/registry-objects.js';
import { RegistrySource } from '../../src/keys/registry-source.js';
import { openToken } from '../../src/open-tokens.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// RegistrySource on a real SoftHSMv2 token: a change is checked as a whole before anything is written.
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
let home: string;
let token: Token;
let source: RegistrySource;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-source-'));
  const demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  token = openToken('default', loadConfig(demo.configFile, {}).hsm, quiet, { sessions: 1, healthIntervalMs: 0 });
  source = new RegistrySource({ token, log: quiet });
  await source.load();
});
afterAll(async () => {
  await token?.close();
  rmSync(home, { recursive: true, force: true });
});

describe('RegistrySource.change', () => {
  it('when a change would give two certificates one CAS identifier, then it is refused and nothing reaches the token', async () => {
    const [first, second] = source.current().registry.certificates();
    const before = source.current().generation;
    const error = await source
      .change((_snapshot, writer) => {
        writer.putCertificate({ ...second!, description: 'written first, must not stay' });
        writer.putCertificate({ ...first!, casIdentifier: second!.casIdentifier });
      })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LifecycleError);
    expect((error as Error).message).toMatch(/names two certificates/);
    await source.refresh();
    expect(source.current().generation).toBe(before);
    expect(source.current().registry.certificate(second!.certificateId)?.description).not.toBe('written first, must not stay');
  });

  it('when a change is valid, then every write of it lands and the generation moves', async () => {
    const [key] = source.current().registry.all();
    const before = source.current().generation;
    const calls = await bindingCallsDuring(() => source.change((_snapshot, writer) => writer.putKey({ ...key!, description: 'changed' })));
    // Its reads and its writes (the pending object, its relabelling, the older revision's removal, the marker) alike
    // are jobs off the event loop: on a network HSM each is a round trip.
    expect(calls).toEqual([]);
    expect(source.current().generation).not.toBe(before);
    const reread = new RegistrySource({ token, log: quiet });
    expect((await reread.load()).registry.key(key!.keyId)?.description).toBe('changed');
  });
});

describe('aliases on the token belong to the account of their key', () => {
  /** Writes key records straight onto the token, as a gateway of an earlier release (or a writer outside the lock) did. */
  async function writeRaw(records: Array<Record<string, unknown>>): Promise<void> {
    const objects = new RegistryObjects();
    await token.admin((p11, session) => {
      for (const record of records) objects.put(p11, session, 'key', record.keyId as string, record);
    });
    await source.refresh();
  }
  const version = (n: number) => [{ keyVersionId: `old-version-${n}`, label: `old-label-${n}` }];

  it('when records written before aliases were per account are loaded, then each alias resolves in its key\'s account only', async () => {
    await writeRaw([
      { keyId: 'old-key-1', account: 'legacy', keySpec: 'EC_P256', aliases: ['alias/legacy-signing'], versions: version(1), createdAt: '2020-01-01T00:00:00Z' },
      // Older still: no account at all, which has always meant "default".
      { keyId: 'old-key-2', keySpec: 'EC_P256', aliases: ['alias/old-default'], versions: version(2), createdAt: '2020-01-01T00:00:00Z' },
    ]);
    const { registry } = source.current();
    expect(registry.find('alias/legacy-signing', 'legacy')?.keyId).toBe('old-key-1');
    expect(registry.find('alias/legacy-signing', 'default')).toBeUndefined();
    expect(registry.find('alias/old-default', 'default')?.keyId).toBe('old-key-2');
    expect(registry.find('alias/old-default', 'legacy')).toBeUndefined();
  });

  it('when two accounts\' keys on the token carry one alias name, then both are kept, each in its account; in one account the older binding still wins', async () => {
    const demoEc = source.current().registry.find('alias/demo-ec-p256', 'default')!;
    await writeRaw([
      { keyId: 'old-key-3', account: 'legacy', keySpec: 'EC_P256', aliases: ['alias/demo-ec-p256'], versions: version(3), createdAt: '2999-01-01T00:00:00Z' },
      // Same account as old-key-1 and the same alias, newer: a conflict inside one account, the older binding is kept.
      { keyId: 'old-key-4', account: 'legacy', keySpec: 'EC_P256', aliases: ['alias/legacy-signing'], versions: version(4), createdAt: '2999-01-01T00:00:00Z' },
    ]);
    const { registry } = source.current();
    expect(registry.find('alias/demo-ec-p256', 'default')?.keyId).toBe(demoEc.keyId);
    expect(registry.find('alias/demo-ec-p256', 'legacy')?.keyId).toBe('old-key-3');
    expect(registry.find('alias/legacy-signing', 'legacy')?.keyId).toBe('old-key-1');
    expect(registry.key('old-key-4')?.aliases).toEqual([]);
    // The double binding left on the token does not wedge the registry (#17): an unrelated change goes through …
    await source.change((_s, writer) => writer.putKey({ ...registry.key(demoEc.keyId)!, description: 'still changeable' }));
    expect(source.current().registry.key(demoEc.keyId)?.description).toBe('still changeable');
    // … the key whose binding wins stays changeable (disable it, describe it) …
    await source.change((_s, writer) => writer.putKey({ ...source.current().registry.key('old-key-1')!, description: 'the winner changed' }));
    expect(source.current().registry.find('alias/legacy-signing', 'legacy')?.description).toBe('the winner changed');
    // … and a change to the losing key that keeps both bindings is refused, naming them.
    const raw = source.current().registry.key('old-key-4')!;
    await expect(source.change((_s, writer) => writer.putKey({ ...raw, aliases: ['alias/legacy-signing'], description: 'x' }))).rejects.toThrow(
      /alias alias\/legacy-signing of account legacy would be bound to two keys \(old-key-1, old-key-4\)/,
    );
  });
});

/** Counts the calls made through the token's pkcs11js binding (synchronous ones run on the event loop) while `work` runs. */
async function bindingCallsDuring(work: () => Promise<unknown>): Promise<string[]> {
  const binding = (token as unknown as { p11: pkcs11js.PKCS11 }).p11 as unknown as Record<string, unknown>;
  const names = new Set<string>();
  for (let proto = Object.getPrototypeOf(binding) as object | null; proto; proto = Object.getPrototypeOf(proto) as object | null) {
    for (const n of Object.getOwnPropertyNames(proto)) if (n.startsWith('C_') && typeof binding[n] === 'function') names.add(n);
  }
  const calls: string[] = [];
  for (const name of names) {
    const original = binding[name] as (...args: unknown[]) => unknown;
    binding[name] = (...args: unknown[]) => {
      calls.push(name);
      return original.apply(binding, args);
    };
  }
  try {
    await work();
  } finally {
    for (const name of names) delete binding[name];
  }
  return calls;
}

describe('RegistrySource.refresh (the poll)', () => {
  it('when nothing changed, then a poll answers false and makes no call through pkcs11js: its calls run off the event loop', async () => {
    await source.refresh();
    let changed: boolean | undefined;
    const calls = await bindingCallsDuring(async () => {
      changed = await source.refresh();
    });
    expect(changed).toBe(false);
    expect(calls).toEqual([]);
  });

  it('when another writer changed the records, then the poll sees it and publishes the change, with no call through pkcs11js', async () => {
    const other = new RegistrySource({ token, log: quiet });
    await other.load();
    const key = other.current().registry.find('alias/demo-ec-p256', 'default');
    await other.change((_snapshot, writer) => writer.putKey({ ...key!, description: 'written by another process' }));
    let changed: boolean | undefined;
    const calls = await bindingCallsDuring(async () => {
      changed = await source.refresh();
    });
    expect(changed).toBe(true);
    // Another writer's change is read off the event loop too: at 10,000 records a read on it held it for seconds.
    expect(calls).toEqual([]);
    expect(source.current().registry.key(key!.keyId)?.description).toBe('written by another process');
    expect(await source.refresh()).toBe(false);
  });
});

describe('RegistrySource on SoftHSMv2, whose searches can hide an object another process rewrote', () => {
  afterEach(() => vi.restoreAllMocks());

  /**
   * What SoftHSMv2 does to a reader of an object file its writer was rewriting: the object stays out of every search in
   * the reader until the module is initialized again (shared-view.ts). Here: the records labelled `label`, in the
   * reads through `via` (inspect: a refresh; admin: a change), until `reinitializations` re-initializations.
   */
  function hideRecord(label: string, reinitializations = 1, via: 'inspect' | 'admin' = 'inspect'): { reinitialized: () => number } {
    let reinitialized = 0;
    const reinitialize = token.reinitialize.bind(token);
    vi.spyOn(token, 'reinitialize').mockImplementation(async (reason) => {
      reinitialized++;
      return reinitialize(reason);
    });
    const hiding = (ops: AsyncOperations): AsyncOperations => {
      const findObjects = async (on: pkcs11js.Handle, template: pkcs11js.Template): Promise<pkcs11js.Handle[]> => {
        const kept: pkcs11js.Handle[] = [];
        for (const handle of await ops.findObjects(on, template)) {
          const [value] = await ops.getAttributeValue(on, handle, [CKA_LABEL]);
          if (reinitialized >= reinitializations || value?.toString('utf8') !== label) kept.push(handle);
        }
        return kept;
      };
      return new Proxy(ops, { get: (target, name) => (name === 'findObjects' ? findObjects : (Reflect.get(target, name) as unknown)) });
    };
    if (via === 'inspect') {
      const inspect = token.inspect.bind(token);
      vi.spyOn(token, 'inspect').mockImplementation((work) => inspect((ops, session, another) => work(hiding(ops), session, another)));
    } else {
      const admin = token.admin.bind(token);
      vi.spyOn(token, 'admin').mockImplementation((work) => admin((p11, session, ops) => work(p11, session, hiding(ops))));
    }
    return { reinitialized: () => reinitialized };
  }

  /** A copy of a demo key under new ids and without aliases: a record another writer may remove. */
  const throwawayKey = (other: RegistrySource) => {
    const demoKey = other.current().registry.find('alias/demo-ec-p256', 'default')!;
    return { ...demoKey, keyId: randomUUID(), aliases: [], versions: demoKey.versions.map((v) => ({ ...v, keyVersionId: randomUUID() })) };
  };

  it('when the read of another writer\'s change lacks a record that is on the token, then that read is never served: the record is read again after a re-initialization', async () => {
    const other = new RegistrySource({ token, log: quiet });
    await other.load();
    await source.refresh();
    const key = other.current().registry.find('alias/demo-rsa-2048', 'default')!;
    await other.change((_snapshot, writer) => writer.putKey({ ...key, description: 'rewritten while another process read' }));
    const hidden = hideRecord(`key:${key.keyId}`);
    const served: string[] = [];
    source.onChange((snapshot) => served.push(snapshot.registry.key(key.keyId)?.description ?? 'no such key'));
    expect(await source.refresh()).toBe(true);
    expect(served).toEqual(['rewritten while another process read']);
    expect(hidden.reinitialized()).toBe(1);
  });

  it('when another writer really removed a record, then the removal is served once a second re-initialization confirms it', async () => {
    const other = new RegistrySource({ token, log: quiet });
    await other.load();
    await source.refresh();
    const key = throwawayKey(other);
    await other.change((_snapshot, writer) => writer.putKey(key));
    await source.refresh();
    const hidden = hideRecord(`key:${key.keyId}`, Infinity);
    await other.change((_snapshot, writer) => writer.removeKey(key.keyId));
    expect(await source.refresh()).toBe(true);
    expect(source.current().registry.key(key.keyId)).toBeUndefined();
    expect(hidden.reinitialized()).toBe(2);
  });

  it('when the read a change starts from lacks the key it changes, then the change is made from a read after a re-initialization (no 404)', async () => {
    const other = new RegistrySource({ token, log: quiet });
    await other.load();
    await source.refresh();
    const key = other.current().registry.find('alias/demo-rsa-2048', 'default')!;
    await other.change((_snapshot, writer) => writer.putKey({ ...key, description: 'first by the other writer' }));
    const hidden = hideRecord(`key:${key.keyId}`, 1, 'admin');
    await source.change((snapshot, writer) => {
      const found = snapshot.registry.key(key.keyId);
      if (!found) throw new LifecycleError('key-not-found', `key ${key.keyId} does not exist`);
      writer.putKey({ ...found, description: 'then by this one' });
    });
    expect(hidden.reinitialized()).toBeGreaterThanOrEqual(1);
    expect(source.current().registry.key(key.keyId)?.description).toBe('then by this one');
  });

  it('when the key a change needs was really removed by another writer, then the change still answers that it does not exist', async () => {
    const other = new RegistrySource({ token, log: quiet });
    await other.load();
    const key = throwawayKey(other);
    await other.change((_snapshot, writer) => writer.putKey(key));
    await source.refresh();
    await other.change((_snapshot, writer) => writer.removeKey(key.keyId));
    const error = await source
      .change((snapshot, writer) => {
        const found = snapshot.registry.key(key.keyId);
        if (!found) throw new LifecycleError('key-not-found', `key ${key.keyId} does not exist`);
        writer.putKey(found);
      })
      .catch((e: unknown) => e);
    expect((error as LifecycleError).kind).toBe('key-not-found');
    expect(source.current().registry.key(key.keyId)).toBeUndefined();
  });
});

describe('RegistrySource.notified (a change another process announced)', () => {
  it('when a change is announced, then catchingUp() holds requests until its snapshot is published, and is undefined otherwise', async () => {
    const other = new RegistrySource({ token, log: quiet });
    await other.load();
    const key = other.current().registry.find('alias/demo-ec-p256', 'default');
    await other.change((_snapshot, writer) => writer.putKey({ ...key!, description: 'announced by another process' }));
    expect(source.catchingUp()).toBeUndefined();
    const refreshed = source.notified();
    const waiting = source.catchingUp();
    expect(waiting).toBeInstanceOf(Promise);
    await waiting;
    // Whoever waited reads the announced change, never the registry it replaced.
    expect(source.current().registry.key(key!.keyId)?.description).toBe('announced by another process');
    expect(source.catchingUp()).toBeUndefined();
    // true, unless a re-read of this process's own (SoftHSMv2's second re-initialization, 3 s after the previous
    // test's change) published the change a moment before the announcement.
    await refreshed;
  });

  it('when two announcements come close together, then a request waits for the later refresh, which runs after the first', async () => {
    const first = source.notified();
    const second = source.notified();
    await source.catchingUp();
    const order: string[] = [];
    await Promise.all([first.then(() => order.push('first')), second.then(() => order.push('second'))]);
    expect(order).toEqual(['first', 'second']);
    expect(source.catchingUp()).toBeUndefined();
  });
});

describe('RegistrySource.notified when the token hangs', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('when the announced refresh does not finish within the token operation deadline, then requests stop waiting and a warning says so', async () => {
    vi.useFakeTimers();
    const warnings: string[] = [];
    const hanging = new Promise<never>(() => undefined);
    const stuck = {
      options: { operationTimeoutMs: 5_000 },
      handleGeneration: 0,
      inspect: () => hanging,
      admin: () => hanging,
    } as unknown as Token;
    const hung = new RegistrySource({ token: stuck, log: { ...quiet, warn: (m: string) => void warnings.push(m) } });
    void hung.notified();
    const waiting = hung.catchingUp()!;
    let released = false;
    void waiting.then(() => (released = true));
    await vi.advanceTimersByTimeAsync(4_999);
    expect(released).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(released).toBe(true);
    expect(hung.catchingUp()).toBeUndefined();
    expect(warnings).toEqual([expect.stringMatching(/still being read; requests go on with the previous registry/)]);
  });
});
