import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { bootstrapDemo } from '../../src/demo/bootstrap.js';
import type { Token } from '../../src/hsm/token.js';
import { LifecycleError } from '../../src/keys/errors.js';
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
    await source.change((_snapshot, writer) => writer.putKey({ ...key!, description: 'changed' }));
    expect(source.current().generation).not.toBe(before);
    const reread = new RegistrySource({ token, log: quiet });
    expect((await reread.load()).registry.find(key!.keyId)?.description).toBe('changed');
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

  it('when another writer changed the records, then the poll sees it and publishes the change', async () => {
    const other = new RegistrySource({ token, log: quiet });
    await other.load();
    const [key] = other.current().registry.all();
    await other.change((_snapshot, writer) => writer.putKey({ ...key!, description: 'written by another process' }));
    let changed: boolean | undefined;
    const calls = await bindingCallsDuring(async () => {
      changed = await source.refresh();
    });
    expect(changed).toBe(true);
    // A change is read through admin() (pkcs11js): the counting above sees calls when there are some.
    expect(calls).toContain('C_OpenSession');
    expect(source.current().registry.find(key!.keyId)?.description).toBe('written by another process');
    expect(await source.refresh()).toBe(false);
  });
});
