import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CertificateStoreError, loadCertificates } from '../../src/keys/certificate-store.js';
import { KeyRegistry, type CertificateRecord, type RegistryFile } from '../../src/keys/registry.js';
import { testPki } from '../helpers/test-pki.js';

/* Throwaway keys of every shape the store must tell apart, with certificates from a throwaway PKI. */
const rsa2048 = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsa3072 = generateKeyPairSync('rsa', { modulusLength: 3072 });
const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const secp256k1 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' });
const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
const { root, intermediate, leaf } = testPki('Store');
const LEAVES = {
  'leaf-rsa2048': leaf('rsa2048', rsa2048.publicKey),
  'leaf-rsa3072': leaf('rsa3072', rsa3072.publicKey),
  'leaf-p256': leaf('p256', p256.publicKey),
  'leaf-secp256k1': leaf('secp256k1', secp256k1.publicKey),
  'leaf-p384': leaf('p384', p384.publicKey),
} as const;
/** The token, as the fake `read` sees it: DER by label. */
const TOKEN: Record<string, Buffer> = { ...LEAVES, intermediate, root };

/** Certificate records with the schema's defaults, as the registry hands them to loadCertificates. */
function records(...certs: object[]): CertificateRecord[] {
  return new KeyRegistry({ keys: [], certificates: certs } as RegistryFile).certificates();
}
const cert = (certificateId: string, keySpec: string, label: string, extra: object = {}): object => ({ certificateId, keySpec, label, ...extra });

/** A fake token read: DER by label; records every call. */
function fakeRead(token: Record<string, Buffer> = TOKEN) {
  const calls: Array<{ certificateId: string; label: string; id?: string }> = [];
  const read = (record: CertificateRecord, label: string, id?: string): Buffer => {
    calls.push({ certificateId: record.certificateId, label, ...(id === undefined ? {} : { id }) });
    const der = token[label];
    if (!der) throw new Error(`no certificate object labelled ${label}`);
    return der;
  };
  return { read, calls };
}

function storeErrorOf(fn: () => unknown): CertificateStoreError {
  try {
    fn();
  } catch (err) {
    if (err instanceof CertificateStoreError) return err;
    throw err;
  }
  throw new Error('expected a CertificateStoreError, but the call succeeded');
}

describe('loadCertificates: what it returns', () => {
  it('when certificates are registered, then each certificateId maps to its DER and its chain in chainLabels order', () => {
    const { read } = fakeRead();
    const store = loadCertificates(
      records(
        cert('c-rsa', 'RSA_2048', 'leaf-rsa2048', { chainLabels: ['intermediate', 'root'] }),
        cert('c-ec', 'EC_P256', 'leaf-p256', { chainLabels: ['root', 'intermediate'] }),
      ),
      read,
    );
    expect([...store.keys()]).toEqual(['c-rsa', 'c-ec']);
    expect(store.get('c-rsa')!.der.equals(LEAVES['leaf-rsa2048'])).toBe(true);
    expect(store.get('c-rsa')!.chain.map((c) => c.toString('hex'))).toEqual([intermediate, root].map((c) => c.toString('hex')));
    expect(store.get('c-ec')!.der.equals(LEAVES['leaf-p256'])).toBe(true);
    expect(store.get('c-ec')!.chain.map((c) => c.toString('hex'))).toEqual([root, intermediate].map((c) => c.toString('hex')));
  });

  it('when a certificate has no chainLabels, then its chain is empty', () => {
    const store = loadCertificates(records(cert('c', 'RSA_3072', 'leaf-rsa3072')), fakeRead().read);
    expect(store.get('c')!.chain).toEqual([]);
    expect(store.get('c')!.der.equals(LEAVES['leaf-rsa3072'])).toBe(true);
  });

  it('when nothing is registered, then the store is empty and nothing is read', () => {
    const { read, calls } = fakeRead();
    expect(loadCertificates([], read).size).toBe(0);
    expect(calls).toEqual([]);
  });

  it('when certificates are read, then read gets the record, its label and CKA_ID for the certificate, and each chain label without an id', () => {
    const { read, calls } = fakeRead();
    loadCertificates(records(cert('c1', 'RSA_2048', 'leaf-rsa2048', { id: '0a0b', chainLabels: ['intermediate', 'root'] }), cert('c2', 'EC_P256', 'leaf-p256')), read);
    expect(calls).toEqual([
      { certificateId: 'c1', label: 'leaf-rsa2048', id: '0a0b' },
      { certificateId: 'c1', label: 'intermediate' },
      { certificateId: 'c1', label: 'root' },
      { certificateId: 'c2', label: 'leaf-p256' },
    ]);
  });

  it.each([
    ['RSA_2048', 'leaf-rsa2048'],
    ['RSA_3072', 'leaf-rsa3072'],
    ['EC_P256', 'leaf-p256'],
    ['EC_P256K', 'leaf-secp256k1'],
  ] as const)('when a %s certificate holds a key of that spec, then it loads', (keySpec, label) => {
    expect(loadCertificates(records(cert('c', keySpec, label)), fakeRead().read).get('c')!.der.equals(LEAVES[label])).toBe(true);
  });
});

describe('loadCertificates: the key must fit the key spec', () => {
  it.each([
    ['RSA_2048', 'an EC P-256 key', 'leaf-p256'],
    ['EC_P256', 'an RSA 2048 key', 'leaf-rsa2048'],
    ['RSA_3072', 'an RSA 2048 key', 'leaf-rsa2048'],
    ['RSA_2048', 'an RSA 3072 key', 'leaf-rsa3072'],
    ['EC_P256', 'a secp256k1 key', 'leaf-secp256k1'],
    ['EC_P256K', 'a P-256 key', 'leaf-p256'],
    ['EC_P256', 'a P-384 key', 'leaf-p384'],
  ] as const)('when a registered %s certificate holds %s, then it throws CertificateStoreError naming the certificate and spec', (keySpec, _, label) => {
    const err = storeErrorOf(() => loadCertificates(records(cert('mismatch-1', keySpec, label)), fakeRead().read));
    expect(err.message).toContain('mismatch-1');
    expect(err.message).toContain(label);
    expect(err.message).toContain(keySpec);
  });

  it('when a mismatching certificate follows good ones, then the whole load fails (no partial store)', () => {
    expect(() =>
      loadCertificates(records(cert('ok', 'RSA_2048', 'leaf-rsa2048'), cert('bad', 'EC_P256', 'leaf-rsa3072')), fakeRead().read),
    ).toThrow(CertificateStoreError);
  });

  it('when the certificate fits but its chain holds keys of other types, then only the certificate itself is checked', () => {
    const store = loadCertificates(records(cert('c', 'EC_P256', 'leaf-p256', { chainLabels: ['intermediate'] })), fakeRead().read);
    expect(store.get('c')!.chain[0]!.equals(intermediate)).toBe(true);
  });
});

describe('loadCertificates: failures of read', () => {
  it('when read returns bytes that are not a certificate, then loading fails', () => {
    expect(() => loadCertificates(records(cert('c', 'RSA_2048', 'junk')), fakeRead({ junk: Buffer.from('not a certificate') }).read)).toThrow();
  });

  it('when read throws for the certificate, then that error propagates unchanged', () => {
    const failure = new Error('CKR_TOKEN_NOT_PRESENT');
    expect(() =>
      loadCertificates(records(cert('c', 'RSA_2048', 'leaf-rsa2048')), () => {
        throw failure;
      }),
    ).toThrow(failure);
  });

  it('when read throws for a chain label, then that error propagates unchanged', () => {
    const { read } = fakeRead({ 'leaf-rsa2048': LEAVES['leaf-rsa2048'] });
    expect(() => loadCertificates(records(cert('c', 'RSA_2048', 'leaf-rsa2048', { chainLabels: ['missing-issuer'] })), read)).toThrow(
      'no certificate object labelled missing-issuer',
    );
  });
});
