import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { RegistryError } from '../../src/keys/errors.js';
import { accessOf, KeyRegistry, type RegistryFile } from '../../src/keys/registry.js';

const KEY = {
  keyId: 'key-0000-0000-0000-000000000001',
  keySpec: 'RSA_2048',
  aliases: ['alias/signing'],
  versions: [{ keyVersionId: 'kv-1', label: 'rsa-1' }],
};

/** A private certificate (CAS Identifier), with only what the schema requires besides. */
const CAS_CERT = {
  certificateId: '11111111-aaaa-4bbb-8ccc-000000000001',
  casIdentifier: '1234567',
  keySpec: 'RSA_2048',
  label: 'cert-rsa',
};
/** An SSL-style certificate with a custom identifier, another account and an ACL. */
const SSL_CERT = {
  certificateId: '11111111-aaaa-4bbb-8ccc-000000000002',
  sslIdentifier: '9876543-cn-hangzhou',
  customIdentifier: 'my-signing-cert',
  warehouseId: 7,
  account: 'tenant-b',
  keySpec: 'EC_P256',
  state: 'Disabled',
  accessKeyIds: ['ak-b1'],
  token: 'hsm-2',
  label: 'cert-ec',
  id: '0a0b',
  chainLabels: ['intermediate', 'root'],
};
/** Both identifiers on one certificate. */
const BOTH_CERT = {
  certificateId: '11111111-aaaa-4bbb-8ccc-000000000003',
  casIdentifier: '555',
  sslIdentifier: '555-cn-hangzhou',
  keySpec: 'RSA_3072',
  label: 'cert-both',
};

const registryOf = (certificates: object[], keys: object[] = [KEY]): KeyRegistry =>
  new KeyRegistry({ keys, certificates } as RegistryFile);

function registryErrorOf(fn: () => unknown): RegistryError {
  try {
    fn();
  } catch (err) {
    if (err instanceof RegistryError) return err;
    throw err;
  }
  throw new Error('expected a RegistryError, but the call succeeded');
}

const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-registry-certs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
function writeRegistry(name: string, data: unknown): string {
  const path = join(dir, name);
  writeFileSync(path, typeof data === 'string' ? data : JSON.stringify(data));
  return path;
}

describe('KeyRegistry certificate lookups', () => {
  const registry = registryOf([CAS_CERT, SSL_CERT, BOTH_CERT]);

  it('when a certificate is looked up by certificateId, then it is found', () => {
    expect(registry.certificate(CAS_CERT.certificateId)?.label).toBe('cert-rsa');
    expect(registry.certificate(SSL_CERT.certificateId)?.label).toBe('cert-ec');
    expect(registry.certificate(BOTH_CERT.certificateId)?.label).toBe('cert-both');
  });

  it('when certificateByCertIdentifier gets a casIdentifier, then that certificate is found', () => {
    expect(registry.certificateByCertIdentifier('1234567')).toBe(registry.certificate(CAS_CERT.certificateId));
  });

  it('when certificateByCertIdentifier gets an sslIdentifier, then that certificate is found', () => {
    expect(registry.certificateByCertIdentifier('9876543-cn-hangzhou')).toBe(registry.certificate(SSL_CERT.certificateId));
  });

  it('when a certificate has both identifiers, then either finds it', () => {
    const both = registry.certificate(BOTH_CERT.certificateId);
    expect(both).toBeDefined();
    expect(registry.certificateByCertIdentifier('555')).toBe(both);
    expect(registry.certificateByCertIdentifier('555-cn-hangzhou')).toBe(both);
  });

  it('when a certificate is looked up by customIdentifier, then it is found', () => {
    expect(registry.certificateByCustomIdentifier('my-signing-cert')).toBe(registry.certificate(SSL_CERT.certificateId));
  });

  it.each([
    ['certificate', (r: KeyRegistry, v: string) => r.certificate(v), ['no-such-id', '', '1234567', 'my-signing-cert', KEY.keyId, '11111111-AAAA-4BBB-8CCC-000000000001']],
    ['certificateByCertIdentifier', (r: KeyRegistry, v: string) => r.certificateByCertIdentifier(v), ['7654321', '', CAS_CERT.certificateId, 'my-signing-cert', '9876543', '1234567-cn-hangzhou']],
    ['certificateByCustomIdentifier', (r: KeyRegistry, v: string) => r.certificateByCustomIdentifier(v), ['other', '', '1234567', '9876543-cn-hangzhou', SSL_CERT.certificateId, 'MY-SIGNING-CERT']],
  ] as const)('when %s gets something unknown (or of another kind), then the answer is undefined', (_, lookup, values) => {
    for (const v of values) expect(lookup(registry, v)).toBeUndefined();
  });

  it('when a certificate gives only what is required, then the defaults are filled in', () => {
    expect(registry.certificate(CAS_CERT.certificateId)).toEqual({
      ...CAS_CERT,
      account: 'default',
      state: 'Enabled',
      token: 'default',
      chainLabels: [],
    });
  });

  it('when a certificate gives every field, then they are kept as given', () => {
    expect(registry.certificate(SSL_CERT.certificateId)).toEqual(SSL_CERT);
  });

  it('when certificates are listed, then all are there in file order', () => {
    expect(registry.certificates().map((c) => c.certificateId)).toEqual([CAS_CERT.certificateId, SSL_CERT.certificateId, BOTH_CERT.certificateId]);
  });

  it('when certificates are registered, then the keys are unaffected', () => {
    expect(registry.find(KEY.keyId, 'default')?.keyId).toBe(KEY.keyId);
    expect(registry.find('alias/signing', 'default')?.keyId).toBe(KEY.keyId);
    expect(registry.all()).toHaveLength(1);
  });

  it('when any certificates with distinct identifiers are registered, then each is found by each of its identifiers', () => {
    const ids = fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), { minLength: 12, maxLength: 12 });
    fc.assert(
      fc.property(ids, fc.array(fc.boolean(), { minLength: 9, maxLength: 9 }), (names, present) => {
        // names: 3 certificateIds, then 3 × (casIdentifier, sslIdentifier, customIdentifier) drawn from one pool,
        // so no value is reused across CertIdentifier/custom (which is what the rules require).
        const certs = [0, 1, 2].map((i) => ({
          certificateId: names[i]!,
          ...(present[3 * i] ? { casIdentifier: names[3 + 3 * i]! } : {}),
          ...(present[3 * i + 1] ? { sslIdentifier: names[4 + 3 * i]! } : {}),
          ...(present[3 * i + 2] ? { customIdentifier: names[5 + 3 * i]! } : {}),
          keySpec: 'EC_P256',
          label: `label-${i}`,
        }));
        const r = registryOf(certs, []);
        for (const c of certs) {
          const record = r.certificate(c.certificateId);
          expect(record?.label).toBe(c.label);
          if (c.casIdentifier) expect(r.certificateByCertIdentifier(c.casIdentifier)).toBe(record);
          if (c.sslIdentifier) expect(r.certificateByCertIdentifier(c.sslIdentifier)).toBe(record);
          if (c.customIdentifier) expect(r.certificateByCustomIdentifier(c.customIdentifier)).toBe(record);
        }
      }),
      { numRuns: 200, seed: 8086 },
    );
  });
});

describe('KeyRegistry certificate uniqueness', () => {
  it('when two certificates share a certificateId, then it throws RegistryError', () => {
    const err = registryErrorOf(() => registryOf([CAS_CERT, { ...SSL_CERT, certificateId: CAS_CERT.certificateId }]));
    expect(err.message).toContain(CAS_CERT.certificateId);
  });

  it('when two certificates share a casIdentifier, then it throws RegistryError', () => {
    expect(registryErrorOf(() => registryOf([CAS_CERT, { ...BOTH_CERT, casIdentifier: CAS_CERT.casIdentifier }])).message).toContain('1234567');
  });

  it('when two certificates share an sslIdentifier, then it throws RegistryError', () => {
    expect(registryErrorOf(() => registryOf([SSL_CERT, { ...BOTH_CERT, sslIdentifier: SSL_CERT.sslIdentifier }])).message).toContain('9876543-cn-hangzhou');
  });

  it('when one certificate’s casIdentifier is another’s sslIdentifier, then it throws RegistryError (one CertIdentifier namespace)', () => {
    const err = registryErrorOf(() => registryOf([SSL_CERT, { ...CAS_CERT, casIdentifier: SSL_CERT.sslIdentifier }]));
    expect(err.message).toContain('9876543-cn-hangzhou');
    // … in either order.
    registryErrorOf(() => registryOf([{ ...CAS_CERT, casIdentifier: SSL_CERT.sslIdentifier }, SSL_CERT]));
  });

  it('when two certificates share a customIdentifier, then it throws RegistryError', () => {
    const err = registryErrorOf(() => registryOf([SSL_CERT, { ...CAS_CERT, customIdentifier: SSL_CERT.customIdentifier }]));
    expect(err.message).toContain('my-signing-cert');
  });

  it('when a customIdentifier equals another certificate’s casIdentifier, then it is allowed (a separate namespace)', () => {
    const r = registryOf([CAS_CERT, { ...SSL_CERT, customIdentifier: CAS_CERT.casIdentifier }]);
    expect(r.certificateByCertIdentifier('1234567')?.certificateId).toBe(CAS_CERT.certificateId);
    expect(r.certificateByCustomIdentifier('1234567')?.certificateId).toBe(SSL_CERT.certificateId);
  });

  it('when a certificateId equals a keyId, then it is allowed (keys and certificates are looked up separately)', () => {
    const r = registryOf([{ ...CAS_CERT, certificateId: KEY.keyId }]);
    expect(r.key(KEY.keyId)?.keySpec).toBe('RSA_2048');
    expect(r.certificate(KEY.keyId)?.label).toBe('cert-rsa');
  });

  it('when identifiers are absent on several certificates, then absence is not a clash', () => {
    const r = registryOf([
      { certificateId: 'a', keySpec: 'RSA_2048', label: 'a' },
      { certificateId: 'b', keySpec: 'RSA_2048', label: 'b' },
    ]);
    expect(r.certificates()).toHaveLength(2);
  });
});

describe('KeyRegistry certificates in a registry file', () => {
  it('when the file has no "certificates" key, then it is still valid and has no certificates', () => {
    const r = KeyRegistry.fromFile(writeRegistry('keys-only.json', { keys: [KEY] }));
    expect(r.certificates()).toEqual([]);
    expect(r.certificate(CAS_CERT.certificateId)).toBeUndefined();
    expect(r.key(KEY.keyId)?.keyId).toBe(KEY.keyId);
    expect(new KeyRegistry({ keys: [] }).certificates()).toEqual([]);
  });

  it('when the file has certificates, then fromFile loads them with defaults', () => {
    const r = KeyRegistry.fromFile(writeRegistry('with-certs.json', { keys: [KEY], certificates: [CAS_CERT, SSL_CERT] }));
    expect(r.certificateByCertIdentifier('1234567')).toMatchObject({ account: 'default', state: 'Enabled', token: 'default', chainLabels: [] });
    expect(r.certificateByCustomIdentifier('my-signing-cert')?.chainLabels).toEqual(['intermediate', 'root']);
  });

  it('when the file duplicates a certificate identifier, then fromFile throws RegistryError', () => {
    const path = writeRegistry('dup-cert.json', { keys: [], certificates: [SSL_CERT, { ...CAS_CERT, sslIdentifier: SSL_CERT.sslIdentifier }] });
    expect(() => KeyRegistry.fromFile(path)).toThrow(RegistryError);
  });

  it.each([
    ['an unknown keySpec', { keySpec: 'RSA_1024' }, 'keySpec'],
    ['a CKA_ID that is not hex bytes', { id: 'abc' }, 'id'],
    ['a negative warehouseId', { warehouseId: -1 }, 'warehouseId'],
    ['an empty chain label', { chainLabels: ['root', ''] }, 'chainLabels'],
    ['an unknown state', { state: 'Revoked' }, 'state'],
    ['an empty label', { label: '' }, 'label'],
  ])('when a certificate has %s, then fromFile throws RegistryError naming the field', (_, change, field) => {
    const path = writeRegistry(`bad-${field}.json`, { keys: [], certificates: [{ ...CAS_CERT, ...change }] });
    const err = registryErrorOf(() => KeyRegistry.fromFile(path));
    expect(err.message).toContain('certificates');
    expect(err.message).toContain(field);
  });

  it('when a certificate has no label, then fromFile throws RegistryError', () => {
    const { label: _label, ...noLabel } = CAS_CERT;
    expect(() => KeyRegistry.fromFile(writeRegistry('no-label.json', { keys: [], certificates: [noLabel] }))).toThrow(RegistryError);
  });
});

describe('accessOf for a certificate record', () => {
  const registry = registryOf([CAS_CERT, SSL_CERT]);
  const open = registry.certificate(CAS_CERT.certificateId)!;
  const guarded = registry.certificate(SSL_CERT.certificateId)!;

  it('when the caller belongs to another account, then the certificate is invisible', () => {
    expect(accessOf(open, { account: 'tenant-b', accessKeyId: 'ak-b1' })).toBe('invisible');
    expect(accessOf(guarded, { account: 'default', accessKeyId: 'ak-b1' })).toBe('invisible');
  });

  it('when the certificate lists accessKeyIds without the caller, then access is forbidden', () => {
    expect(accessOf(guarded, { account: 'tenant-b', accessKeyId: 'ak-b2' })).toBe('forbidden');
  });

  it('when the certificate lists the caller’s access key, then access is allowed', () => {
    expect(accessOf(guarded, { account: 'tenant-b', accessKeyId: 'ak-b1' })).toBe('allowed');
  });

  it('when the certificate has no accessKeyIds, then any access key of its account is allowed', () => {
    expect(accessOf(open, { account: 'default', accessKeyId: 'anyone' })).toBe('allowed');
  });
});
