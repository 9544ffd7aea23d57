import pkcs11js from 'pkcs11js';
import { afterEach, describe, expect, it } from 'vitest';
import { Token } from '../../src/hsm/token.js';
import { KeyRegistry, type CertificateRecord, type KeyRecord } from '../../src/keys/registry.js';
import type { RegistrySnapshot, RegistrySource } from '../../src/keys/registry-source.js';
import { SigningGate, whyTokenCannotStop } from '../../src/keys/signing-gate.js';
import type { DeepCapabilities } from '../../src/hsm/capabilities.js';
import { FAKE_LABEL, FAKE_PIN, FakePkcs11 } from '../helpers/fake-pkcs11.js';

// The order and the fallbacks of signing-gate.ts over the scripted module: CKA_SIGN follows the registry's state.
const quiet = { info: () => {}, warn: () => {}, error: () => {} };
const KEY_ID = '11111111-2222-3333-4444-555555555555';
const MECH = { mechanism: pkcs11js.CKM_ECDSA };
const DATA = Buffer.from('digest');

let token: Token | undefined;
afterEach(async () => {
  await token?.close();
  token = undefined;
});

function open(fake: FakePkcs11): Token {
  token = new Token(
    { name: 'default', modulePath: '/fake.so', tokenLabel: FAKE_LABEL, pin: FAKE_PIN, sessions: 1, acquireTimeoutMs: 1000, healthIntervalMs: 0 },
    quiet,
    fake.asModule(),
    () => fake.asAsync(),
  );
  token.open();
  return token;
}

const keyRecord = (state: KeyRecord['state']): KeyRecord => ({
  keyId: KEY_ID,
  account: 'default',
  keySpec: 'EC_P256',
  usage: 'SIGN/VERIFY',
  state,
  aliases: [],
  token: 'default',
  versions: [{ keyVersionId: 'v1', label: 'k1', id: '01' }],
});

/**
 * A registry whose record of the key is whatever `states` yields next, read by each fresh read (`change` with no
 * writes), so a test can script "Enabled when read first, Disabled when read again".
 */
function registryOf(states: Array<KeyRecord['state']>, certificates: CertificateRecord[] = []): { source: RegistrySource; snapshot: () => RegistrySnapshot; reads: () => number } {
  let reads = 0;
  const snapshotAt = (state: KeyRecord['state']): RegistrySnapshot => ({
    registry: new KeyRegistry({ keys: [keyRecord(state)], certificates }),
    accessKeys: [],
    onToken: { keys: new Set([KEY_ID]), certificates: new Set() },
    generation: 'g',
    store: 'token',
  });
  const source = {
    change: async <T>(work: (s: RegistrySnapshot) => T | Promise<T>): Promise<T> => work(snapshotAt(states[Math.min(reads++, states.length - 1)]!)),
  } as unknown as RegistrySource;
  return { source, snapshot: () => snapshotAt(states[Math.min(reads, states.length - 1)]!), reads: () => reads };
}

function gateOn(t: Token, source: RegistrySource): { gate: SigningGate; waits: number[]; notices: string[] } {
  const waits: number[] = [];
  const notices: string[] = [];
  const gate = new SigningGate(source, () => t, {
    propagationBoundMs: 2000,
    log: quiet,
    notice: (m) => notices.push(m),
    sleep: async (ms) => void waits.push(ms),
  });
  return { gate, waits, notices };
}

const signs = (t: Token): Promise<boolean> => t.sign({ label: 'k1', id: '01' }, MECH, DATA, 64).then(() => true, () => false);

describe('stopping a key: the token refuses it before the change is acknowledged', () => {
  it('when a recorded stop is enforced, then CKA_SIGN is false on the key, nothing waits, and signing is refused', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    const { source, snapshot } = registryOf(['Disabled']);
    const { gate, waits } = gateOn(t, source);
    await expect(gate.stop(keyRecord('Disabled'), snapshot())).resolves.toBe('token');
    expect(waits).toEqual([]);
    expect(await signs(t)).toBe(false);
  });

  it('when the module does not let CKA_SIGN change, then the stop waits the propagation bound and says so', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    fake.setAttributeRefuses = pkcs11js.CKR_ATTRIBUTE_READ_ONLY;
    const { source, snapshot } = registryOf(['Disabled']);
    const { gate, waits, notices } = gateOn(t, source);
    await expect(gate.stop(keyRecord('Disabled'), snapshot())).resolves.toBe('waited');
    expect(waits).toEqual([2000]);
    expect(notices.join()).toMatch(/CKR_ATTRIBUTE_READ_ONLY.*waiting 2000 ms/);
  });

  it('when a certificate names the same private key, then its object is left signing and the stop waits the bound instead', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    const cert = { certificateId: 'c1', account: 'default', keySpec: 'EC_P256', state: 'Enabled', token: 'default', label: 'k1', id: '01', chainLabels: [] } as CertificateRecord;
    const { source, snapshot } = registryOf(['Disabled'], [cert]);
    const { gate, waits } = gateOn(t, source);
    await expect(gate.stop(keyRecord('Disabled'), snapshot())).resolves.toBe('waited');
    expect(waits).toEqual([2000]);
    expect(fake.count('C_SetAttributeValue')).toBe(0);
    expect(await signs(t)).toBe(true);
  });
});

describe('what the capability probe measured decides whether the token alone can stop a key', () => {
  const deep = (sharedObjects: string, stopSigning?: string): DeepCapabilities => ({
    probedAt: '2026-12-03T00:00:00Z',
    keyPairs: { EC_P256: { generate: 'ok', sign: 'ok', ...(stopSigning ? { stopSigning } : {}) } },
    privateData: 'ok',
    certificate: 'ok',
    sharedObjects,
  });

  it.each([
    ['nothing measured', undefined, undefined],
    ['shared view, CKA_SIGN enforced', deep('seen', 'ok'), undefined],
    ['an older probe without the CKA_SIGN step', deep('seen'), undefined],
    ['objects of other processes not seen (tpm2-pkcs11)', deep('not seen'), /other processes/],
    ['CKA_SIGN read-only', deep('seen', 'refused: CKR_ATTRIBUTE_READ_ONLY'), /CKR_ATTRIBUTE_READ_ONLY/],
    ['CKA_SIGN taken but not enforced', deep('seen', 'not enforced: the key still signs with CKA_SIGN false'), /not enforced/],
  ] as const)('when %s, then the answer is %s', (_what, capabilities, expected) => {
    const why = whyTokenCannotStop(capabilities, 'EC_P256');
    if (expected === undefined) expect(why).toBeUndefined();
    else expect(why).toMatch(expected);
  });

  it('when the probe found the module does not show other processes its changes, then the stop sets CKA_SIGN and still waits the bound', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    const { source, snapshot } = registryOf(['Disabled']);
    const waits: number[] = [];
    const gate = new SigningGate(source, () => t, { propagationBoundMs: 2000, log: quiet, sleep: async (ms) => void waits.push(ms), capabilitiesOf: () => deep('not seen') });
    await expect(gate.stop(keyRecord('Disabled'), snapshot())).resolves.toBe('waited');
    expect(waits).toEqual([2000]);
    expect(await signs(t)).toBe(false);
  });
});

describe('letting a key sign again: never on a stale view', () => {
  it('when the fresh record says Enabled, then CKA_SIGN is set true and the key signs', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    await t.setSigning([{ label: 'k1', id: '01' }], false);
    const { gate } = gateOn(t, registryOf(['Enabled']).source);
    await gate.allow(KEY_ID);
    expect(await signs(t)).toBe(true);
  });

  it('when the fresh record already says Disabled (a stop recorded after the enable), then CKA_SIGN stays false', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    await t.setSigning([{ label: 'k1', id: '01' }], false);
    const { gate } = gateOn(t, registryOf(['Disabled']).source);
    await gate.allow(KEY_ID);
    expect(fake.count('C_SetAttributeValue')).toBe(1);
    expect(await signs(t)).toBe(false);
  });

  it('when a stop is recorded between the fresh read and the write, then the read after the write sets CKA_SIGN false again', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    await t.setSigning([{ label: 'k1', id: '01' }], false);
    const registry = registryOf(['Enabled', 'Disabled']);
    const { gate } = gateOn(t, registry.source);
    await gate.allow(KEY_ID);
    expect(registry.reads()).toBe(2);
    expect(await signs(t)).toBe(false);
  });

  it('when the module does not let CKA_SIGN change, then enabling succeeds (it was never set false)', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    await t.setSigning([{ label: 'k1', id: '01' }], true);
    fake.setAttributeRefuses = pkcs11js.CKR_ATTRIBUTE_READ_ONLY;
    const { gate } = gateOn(t, registryOf(['Enabled']).source);
    await expect(gate.allow(KEY_ID)).resolves.toBeUndefined();
    expect(await signs(t)).toBe(true);
  });
});

describe('reconciliation: the registry is the truth', () => {
  it('when a stop was cut off after its record (Disabled, object still signing), then reconcile sets CKA_SIGN false', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    const { source, snapshot } = registryOf(['Disabled']);
    await expect(gateOn(t, source).gate.reconcile(snapshot())).resolves.toEqual({ stopped: 1, allowed: 0, failed: 0 });
    expect(await signs(t)).toBe(false);
  });

  it('when an enable was cut off after its record (Enabled, object refusing), then reconcile lets the key sign again', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    await t.setSigning([{ label: 'k1', id: '01' }], false);
    const { source, snapshot } = registryOf(['Enabled']);
    await expect(gateOn(t, source).gate.reconcile(snapshot())).resolves.toEqual({ stopped: 0, allowed: 1, failed: 0 });
    expect(await signs(t)).toBe(true);
  });

  it('when everything is in line, then reconcile writes nothing', async () => {
    const fake = new FakePkcs11();
    const t = open(fake);
    await t.setSigning([{ label: 'k1', id: '01' }], true);
    const writes = fake.count('C_SetAttributeValue');
    const { source, snapshot } = registryOf(['Enabled']);
    await expect(gateOn(t, source).gate.reconcile(snapshot())).resolves.toEqual({ stopped: 0, allowed: 0, failed: 0 });
    expect(fake.count('C_SetAttributeValue')).toBe(writes);
  });
});
