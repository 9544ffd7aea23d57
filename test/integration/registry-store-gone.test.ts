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
import { RegistrySource } from '../../src/keys/registry-source.js';
import { openToken } from '../../src/open-tokens.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// A token whose registry vanished (SoftHSMv2 whose token directory went away answers searches with nothing for a
// while, before its checks fail: faults.test.ts saw hundreds of 404s for existing keys in that window) must not
// become an empty registry: the loaded one is served, changes are refused, and reading resumes once records are back.
let home: string;
let token: Token;
const warnings: string[] = [];
const log = { info: () => undefined, warn: (message: string) => void warnings.push(message), error: () => undefined, debug: () => undefined };

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-store-gone-'));
  const demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  token = openToken('default', loadConfig(demo.configFile, {}).hsm, log, { sessions: 1, healthIntervalMs: 0 });
});
afterAll(async () => {
  await token?.close();
  rmSync(home, { recursive: true, force: true });
});

/** Takes every registry object (records and marker) off the token; returns their templates, to put them back. */
async function takeRegistryAway(): Promise<pkcs11js.Template[]> {
  return token.admin((p11, session) => {
    const taken: pkcs11js.Template[] = [];
    for (const application of ['hsm-gateway/registry', 'hsm-gateway/registry-generation']) {
      const template = [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_APPLICATION, value: application },
      ];
      for (const handle of findObjects(p11, session, template)) {
        const [label, value] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_VALUE }]);
        taken.push([...template, { type: pkcs11js.CKA_PRIVATE, value: true }, { type: pkcs11js.CKA_LABEL, value: label!.value as Buffer }, { type: pkcs11js.CKA_VALUE, value: value!.value as Buffer }]);
        p11.C_DestroyObject(session, handle);
      }
    }
    return taken;
  });
}

describe('the token store gone from under a running gateway', () => {
  it('when neither a record nor the marker is found any more, then the loaded registry stays, one warning is logged, changes answer unavailable, and it reads again once they are back', async () => {
    const source = new RegistrySource({ token, log });
    const loaded = await source.load();
    const keys = loaded.registry.all().map((k) => k.keyId);
    expect(keys.length).toBeGreaterThan(0);

    const taken = await takeRegistryAway();
    expect(await source.refresh()).toBe(false);
    expect(await source.refresh()).toBe(false);
    expect(source.current().registry.all().map((k) => k.keyId)).toEqual(keys);
    expect(warnings.filter((w) => w.startsWith('no registry record or marker on the token'))).toHaveLength(1);
    const refused = await source.change((_snapshot, writer) => writer.removeKey(keys[0]!)).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LifecycleError);
    expect((refused as LifecycleError).kind).toBe('unavailable');

    // Back (the directory returns): read as usual, and changes work again.
    await token.admin((p11, session) => void taken.forEach((template) => p11.C_CreateObject(session, template)));
    expect(await source.refresh()).toBe(true);
    expect(source.current().registry.all().map((k) => k.keyId).sort()).toEqual([...keys].sort());
    const key = source.current().registry.key(keys[0]!)!;
    await source.change((_snapshot, writer) => writer.putKey({ ...key, description: 'after the return' }));
    expect(source.current().registry.key(keys[0]!)?.description).toBe('after the return');
  });
});
