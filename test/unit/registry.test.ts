import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RegistryError } from '../../src/keys/errors.js';
import { accessOf, KeyRegistry, RegistryFileSchema, type KeyRecord } from '../../src/keys/registry.js';

const RSA_KEY = {
  keyId: '0b4d2c3e-1111-4a4a-9b9b-000000000001',
  keySpec: 'RSA_2048',
  aliases: ['alias/rsa', 'alias/signing'],
  versions: [{ keyVersionId: 'v-rsa-1', label: 'rsa-1' }],
};
const EC_KEY = {
  keyId: '0b4d2c3e-1111-4a4a-9b9b-000000000002',
  account: 'tenant-b',
  keySpec: 'EC_P256',
  aliases: ['alias/ec'],
  accessKeyIds: ['ak-b1'],
  versions: [
    { keyVersionId: 'v-ec-1', label: 'ec-1', id: '0a0b' },
    { keyVersionId: 'v-ec-2', label: 'ec-2' },
  ],
};

/** A registry from plain objects, with the schema's defaults filled in (as fromFile does). */
const registryOf = (...keys: object[]): KeyRegistry => new KeyRegistry(RegistryFileSchema.parse({ keys }));

function registryErrorOf(fn: () => unknown): RegistryError {
  try {
    fn();
  } catch (err) {
    if (err instanceof RegistryError) return err;
    throw err;
  }
  throw new Error('expected a RegistryError, but the call succeeded');
}

const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-registry-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeRegistry(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('KeyRegistry lookups', () => {
  const registry = registryOf(RSA_KEY, EC_KEY);

  it('when a key is looked up by its GUID, then it is found with the schema defaults filled in', () => {
    expect(registry.find(RSA_KEY.keyId, 'default')).toMatchObject({
      keyId: RSA_KEY.keyId,
      account: 'default',
      usage: 'SIGN/VERIFY',
      state: 'Enabled',
      token: 'default',
    });
  });

  it('when a key is looked up by any of its aliases in its account, then the same key is found', () => {
    expect(registry.find('alias/rsa', 'default')).toBe(registry.find(RSA_KEY.keyId, 'default'));
    expect(registry.find('alias/signing', 'default')).toBe(registry.find(RSA_KEY.keyId, 'default'));
    expect(registry.find('alias/ec', 'tenant-b')?.keyId).toBe(EC_KEY.keyId);
  });

  it.each(['0b4d2c3e-ffff-4a4a-9b9b-000000000009', 'alias/none', '', 'rsa', 'ALIAS/rsa'])(
    'when %j is looked up and nothing has that id or alias, then the answer is undefined',
    (what) => {
      expect(registry.find(what, 'default')).toBeUndefined();
    },
  );

  it('when another account looks up a key or alias, then it finds nothing (aliases are per account)', () => {
    expect(registry.find('alias/ec', 'default')).toBeUndefined();
    expect(registry.find('alias/rsa', 'tenant-b')).toBeUndefined();
    expect(registry.find(EC_KEY.keyId, 'default')).toBeUndefined();
    expect(registry.key(EC_KEY.keyId)?.account).toBe('tenant-b');
  });

  it('when a version is looked up on its key, then it is found; a version of another key is not', () => {
    const ec = registry.key(EC_KEY.keyId)!;
    expect(registry.version(ec, 'v-ec-2')?.label).toBe('ec-2');
    expect(registry.version(ec, 'v-rsa-1')).toBeUndefined();
  });

  it('when all keys are listed, then both are there', () => {
    expect(registry.all().map((k) => k.keyId)).toEqual([RSA_KEY.keyId, EC_KEY.keyId]);
  });
});

describe('KeyRegistry consistency', () => {
  it('when two keys share a keyId, then it throws RegistryError', () => {
    const err = registryErrorOf(() => registryOf(RSA_KEY, { ...EC_KEY, keyId: RSA_KEY.keyId }));
    expect(err.message).toContain(RSA_KEY.keyId);
  });

  it('when two keys of one account share an alias, then it throws RegistryError', () => {
    const err = registryErrorOf(() => registryOf(RSA_KEY, { ...EC_KEY, account: 'default', aliases: ['alias/signing'] }));
    expect(err.message).toContain('alias/signing');
  });

  it('when keys of two accounts have an alias of the same name, then they are two aliases, each naming its own key', () => {
    const registry = registryOf(RSA_KEY, { ...EC_KEY, aliases: ['alias/signing'] });
    expect(registry.find('alias/signing', 'default')?.keyId).toBe(RSA_KEY.keyId);
    expect(registry.find('alias/signing', 'tenant-b')?.keyId).toBe(EC_KEY.keyId);
    expect(registry.accountsWithAlias('alias/signing')).toEqual(['default', 'tenant-b']);
    expect(registry.accountsWithAlias('alias/rsa')).toEqual(['default']);
  });

  it('when two keys share a keyVersionId, then it throws RegistryError', () => {
    const err = registryErrorOf(() => registryOf(RSA_KEY, { ...EC_KEY, versions: [{ keyVersionId: 'v-rsa-1', label: 'x' }] }));
    expect(err.message).toContain('v-rsa-1');
  });

  it('when one key lists the same keyVersionId twice, then it throws RegistryError', () => {
    registryErrorOf(() => registryOf({ ...RSA_KEY, versions: [RSA_KEY.versions[0], RSA_KEY.versions[0]] }));
  });
});

describe('KeyRegistry.fromFile', () => {
  it('when the file is a valid registry, then it loads', () => {
    const path = writeRegistry('ok.json', JSON.stringify({ keys: [RSA_KEY, EC_KEY] }));
    expect(KeyRegistry.fromFile(path).find('alias/ec', 'tenant-b')?.keySpec).toBe('EC_P256');
  });

  it('when the file does not exist, then it throws RegistryError naming the path', () => {
    const path = join(dir, 'absent.json');
    expect(registryErrorOf(() => KeyRegistry.fromFile(path)).message).toContain(path);
  });

  it('when the file is not JSON, then it throws RegistryError naming the path', () => {
    const path = writeRegistry('broken.json', '{ "keys": [ ');
    expect(registryErrorOf(() => KeyRegistry.fromFile(path)).message).toContain(path);
  });

  it('when a key has an unknown key spec, then the RegistryError names the field path and the allowed values', () => {
    const path = writeRegistry('spec.json', JSON.stringify({ keys: [{ ...RSA_KEY, keySpec: 'RSA_1024' }] }));
    const err = registryErrorOf(() => KeyRegistry.fromFile(path));
    expect(err.message).toContain('invalid key registry');
    expect(err.message).toContain('keys[0].keySpec');
    expect(err.message).toContain('RSA_2048');
  });

  it('when an alias does not start with alias/, then the RegistryError explains the alias form', () => {
    const path = writeRegistry('alias.json', JSON.stringify({ keys: [{ ...RSA_KEY, aliases: ['rsa'] }] }));
    expect(registryErrorOf(() => KeyRegistry.fromFile(path)).message).toContain('an alias is "alias/"');
  });

  it('when a key has no version, then it throws RegistryError naming versions', () => {
    const path = writeRegistry('versions.json', JSON.stringify({ keys: [{ ...RSA_KEY, versions: [] }] }));
    expect(registryErrorOf(() => KeyRegistry.fromFile(path)).message).toContain('versions');
  });

  it('when a CKA_ID is not hex bytes, then it throws RegistryError', () => {
    const path = writeRegistry('id.json', JSON.stringify({ keys: [{ ...RSA_KEY, versions: [{ keyVersionId: 'v', label: 'l', id: 'abc' }] }] }));
    registryErrorOf(() => KeyRegistry.fromFile(path));
  });

  it('when the file is valid JSON but duplicates an alias of one account, then it throws RegistryError', () => {
    const path = writeRegistry('dup.json', JSON.stringify({ keys: [RSA_KEY, { ...EC_KEY, account: 'default', aliases: ['alias/rsa'] }] }));
    registryErrorOf(() => KeyRegistry.fromFile(path));
  });
});

describe('accessOf', () => {
  const registry = registryOf(RSA_KEY, EC_KEY);
  const openKey = registry.key(RSA_KEY.keyId) as KeyRecord;
  const aclKey = registry.key(EC_KEY.keyId) as KeyRecord;

  it('when the caller belongs to another account, then the key is invisible', () => {
    expect(accessOf(openKey, { account: 'tenant-b', accessKeyId: 'ak-b1' })).toBe('invisible');
    expect(accessOf(aclKey, { account: 'default', accessKeyId: 'ak-b1' })).toBe('invisible');
  });

  it('when the key lists accessKeyIds without the caller, then access is forbidden', () => {
    expect(accessOf(aclKey, { account: 'tenant-b', accessKeyId: 'ak-b2' })).toBe('forbidden');
  });

  it('when the key lists accessKeyIds with the caller, then access is allowed', () => {
    expect(accessOf(aclKey, { account: 'tenant-b', accessKeyId: 'ak-b1' })).toBe('allowed');
  });

  it('when the key has no accessKeyIds, then every access key of the account is allowed', () => {
    expect(accessOf(openKey, { account: 'default', accessKeyId: 'anyone' })).toBe('allowed');
  });

  it('when the key has an empty accessKeyIds list, then every caller of the account is forbidden', () => {
    const closed = registryOf({ ...RSA_KEY, accessKeyIds: [] }).key(RSA_KEY.keyId)!;
    expect(accessOf(closed, { account: 'default', accessKeyId: 'anyone' })).toBe('forbidden');
  });
});
