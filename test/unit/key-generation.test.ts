import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import { ckrOf } from '../../src/hsm/ckr.js';
import { generateSigningKeyPair } from '../../src/hsm/key-generation.js';
import { describeProtection, protectionFlaws } from '../../src/hsm/key-protection.js';
import { acceptedFlaws } from '../../src/keys/lifecycle.js';
import { FAKE_PIN, FakePkcs11 } from '../helpers/fake-pkcs11.js';

// Issue #15 item 4: key templates that fit the module without weakening a key. Generation over a scripted module:
// the strict template first, the documented fallback only for the module it is documented for, the result read back,
// and nothing left on the token when a generation fails or makes a key that is not safe to keep.

const P256 = { kind: 'EC' as const, ecParams: Buffer.from('06082a8648ce3d030107', 'hex') };

/** A module that couples usages as tpm2-pkcs11 1.9 does (measured: an explicit false for a partner is CKR_GENERAL_ERROR). */
function tpm2Like(library = 'tpm2-software.github.io'): FakePkcs11 {
  const fake = new FakePkcs11();
  fake.library = library;
  fake.keyGeneration = {
    refuse: (pub, priv) =>
      priv.some((a) => a.type === pkcs11js.CKA_DECRYPT) || pub.some((a) => a.type === pkcs11js.CKA_ENCRYPT) ? pkcs11js.CKR_GENERAL_ERROR : undefined,
    forcePrivate: { [pkcs11js.CKA_DECRYPT]: true },
    forcePublic: { [pkcs11js.CKA_ENCRYPT]: true },
  };
  return fake;
}

function opened(fake: FakePkcs11): { p11: pkcs11js.PKCS11; session: Buffer } {
  const p11 = fake.asModule();
  p11.C_Initialize();
  const session = p11.C_OpenSession(Buffer.alloc(8), pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
  // Logged in, as the gateway's admin sessions are: private key objects are visible only then.
  p11.C_Login(session, pkcs11js.CKU_USER, FAKE_PIN);
  return { p11, session };
}

const has = (template: pkcs11js.Template, type: number): boolean => template.some((a) => a.type === type);

describe('generating a signing key pair', () => {
  it('when the module takes the strict template, then it is used once and the key reads back sensitive, never extractable, sign-only', async () => {
    const fake = new FakePkcs11();
    const { p11, session } = opened(fake);
    const made = await generateSigningKeyPair(p11, session, P256, 'k-strict', randomBytes(8));
    expect(made.template).toBe('strict');
    expect(fake.generated).toHaveLength(1);
    expect(made.protection).toMatchObject({ sign: true, decrypt: false, unwrap: false, derive: false, sensitive: true, extractable: false, neverExtractable: true, alwaysSensitive: true });
    expect(made.protection.public).toEqual({ verify: true, encrypt: false, wrap: false });
  });

  it('when tpm2-pkcs11 refuses the strict template with CKR_GENERAL_ERROR, then the coupled-usages fallback leaves CKA_DECRYPT and CKA_ENCRYPT out (never sets them true) and the key is made', async () => {
    const fake = tpm2Like();
    const { p11, session } = opened(fake);
    const made = await generateSigningKeyPair(p11, session, P256, 'k-tpm2', randomBytes(8));
    expect(made.template).toBe('tpm2-coupled-usages');
    expect(fake.generated).toHaveLength(2);
    const [, fallback] = fake.generated;
    expect(has(fallback!.privateTemplate, pkcs11js.CKA_DECRYPT)).toBe(false);
    expect(has(fallback!.publicTemplate, pkcs11js.CKA_ENCRYPT)).toBe(false);
    // Everything else of the strict template is still asked for.
    for (const type of [pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_EXTRACTABLE, pkcs11js.CKA_UNWRAP, pkcs11js.CKA_DERIVE, pkcs11js.CKA_SIGN]) expect(has(fallback!.privateTemplate, type)).toBe(true);
    expect(made.protection).toMatchObject({ sign: true, decrypt: true, sensitive: true, extractable: false, neverExtractable: true });
    expect(describeProtection(made.protection)).toBe('sensitive, not extractable, never extractable, always sensitive; private key may SIGN DECRYPT; public key may VERIFY ENCRYPT');
  });

  it('when another module refuses the strict template the same way, then no fallback is tried: the same template is tried once more, and the second refusal is the answer', async () => {
    const fake = tpm2Like('SoftHSM');
    const { p11, session } = opened(fake);
    const refused = await generateSigningKeyPair(p11, session, P256, 'k-other', randomBytes(8)).catch((err: unknown) => err);
    expect(ckrOf(refused)).toBe(pkcs11js.CKR_GENERAL_ERROR);
    expect(fake.generated).toHaveLength(2);
    expect(fake.generated[1]!.privateTemplate).toEqual(fake.generated[0]!.privateTemplate);
    expect(fake.objectsLabelled('k-other')).toBe(0);
  });

  it('when the module answers CKR_GENERAL_ERROR once (SoftHSMv2 while another thread searches its store), then the second try makes the key with the strict template', async () => {
    const fake = new FakePkcs11();
    fake.library = 'SoftHSM';
    let answered = 0;
    fake.keyGeneration.refuse = () => (answered++ === 0 ? pkcs11js.CKR_GENERAL_ERROR : undefined);
    const { p11, session } = opened(fake);
    const made = await generateSigningKeyPair(p11, session, P256, 'k-busy', randomBytes(8));
    expect(made.template).toBe('strict');
    expect(fake.generated).toHaveLength(2);
    expect(fake.objectsLabelled('k-busy')).toBe(2);
  });

  it('when the module refuses with a data-class code (a template it does not take), then it is not tried again', async () => {
    const fake = new FakePkcs11();
    fake.keyGeneration.refuse = () => pkcs11js.CKR_TEMPLATE_INCONSISTENT;
    const { p11, session } = opened(fake);
    const refused = await generateSigningKeyPair(p11, session, P256, 'k-data', randomBytes(8)).catch((err: unknown) => err);
    expect(ckrOf(refused)).toBe(pkcs11js.CKR_TEMPLATE_INCONSISTENT);
    expect(fake.generated).toHaveLength(1);
  });

  it('when tpm2-pkcs11 refuses with another code (an unsupported curve), then no fallback is tried', async () => {
    const fake = tpm2Like();
    fake.keyGeneration.refuse = () => 0x140; // CKR_CURVE_NOT_SUPPORTED, as for secp256k1
    const { p11, session } = opened(fake);
    const refused = await generateSigningKeyPair(p11, session, P256, 'k-curve', randomBytes(8)).catch((err: unknown) => err);
    expect(ckrOf(refused)).toBe(0x140);
    expect(fake.generated).toHaveLength(1);
  });

  it('when a refused generation leaves half-made objects behind, then they are destroyed: nothing with the key label stays on the token', async () => {
    const fake = tpm2Like();
    fake.keyGeneration.leaveObjectsOnRefusal = true;
    fake.keyGeneration.refuse = () => pkcs11js.CKR_GENERAL_ERROR; // the fallback is refused too
    const { p11, session } = opened(fake);
    const refused = await generateSigningKeyPair(p11, session, P256, 'k-leftovers', randomBytes(8)).catch((err: unknown) => err as Error);
    expect(refused).toBeInstanceOf(Error);
    expect((refused as Error).message).toMatch(/strict key template was refused \(CKR_GENERAL_ERROR\), and so was the tpm2-coupled-usages fallback/);
    expect(fake.generated).toHaveLength(2);
    expect(fake.objectsLabelled('k-leftovers')).toBe(0);
  });

  it.each([
    ['extractable', { [pkcs11js.CKA_EXTRACTABLE]: true }, /it is extractable \(CKA_EXTRACTABLE is true\)/],
    ['not sensitive', { [pkcs11js.CKA_SENSITIVE]: false }, /it is not sensitive \(CKA_SENSITIVE is false\)/],
  ])('when the module makes a key that is %s although the template said otherwise, then it is destroyed again and the generation fails saying why', async (_what, force, why) => {
    const fake = new FakePkcs11();
    fake.keyGeneration.forcePrivate = force;
    const { p11, session } = opened(fake);
    const refused = await generateSigningKeyPair(p11, session, P256, 'k-weak', randomBytes(8)).catch((err: unknown) => err as Error);
    expect((refused as Error).message).toMatch(why);
    expect(fake.objectsLabelled('k-weak')).toBe(0);
  });
});

describe('what a key brought to the gateway must be (keys import, certs register)', () => {
  const strong = { sign: true, sensitive: true, extractable: false, neverExtractable: true, alwaysSensitive: true };
  const now = new Date('2026-12-03T10:00:00Z');

  it('when the key was generated on the HSM, sensitive and never extractable, then it is accepted with no override recorded', () => {
    expect(acceptedFlaws(protectionFlaws(strong), false, now)).toBeUndefined();
  });

  it.each([
    ['extractable', { extractable: true }, /it is extractable \(CKA_EXTRACTABLE is true\)/],
    ['not sensitive', { sensitive: false }, /it is not sensitive \(CKA_SENSITIVE is false\)/],
    ['not allowed to sign', { sign: false }, /it may not sign \(CKA_SIGN is false\)/],
    ['silent about CKA_EXTRACTABLE', { extractable: undefined }, /CKA_EXTRACTABLE unreadable/],
  ])('when the key is %s, then it is refused even with the operator override, and the refusal says why', (_what, change, why) => {
    const flaws = protectionFlaws({ ...strong, ...change });
    expect(() => acceptedFlaws(flaws, true, now)).toThrow(why);
  });

  it('when the key was imported into the HSM (CKA_NEVER_EXTRACTABLE false), then it is refused naming the override, and accepted with it, recording what was accepted', () => {
    const flaws = protectionFlaws({ ...strong, neverExtractable: false, alwaysSensitive: false });
    expect(() => acceptedFlaws(flaws, false, now)).toThrow(/CKA_NEVER_EXTRACTABLE is false.*--accept-imported-key/);
    expect(acceptedFlaws(flaws, true, now)).toEqual({
      accepted: ['it was extractable or made outside the HSM once (CKA_NEVER_EXTRACTABLE is false)', 'it was not always sensitive (CKA_ALWAYS_SENSITIVE is false)'],
      at: '2026-12-03T10:00:00.000Z',
    });
  });
});

describe('ckrOf', () => {
  it('when pkcs11js throws without a code (C_CreateObject, C_SetAttributeValue: message "CKR_NAME:n"), then the code is read from the message', () => {
    expect(ckrOf(new Error('CKR_ATTRIBUTE_VALUE_INVALID:19'))).toBe(0x13);
    expect(ckrOf(Object.assign(new Error('x'), { code: 5 }))).toBe(5);
    expect(ckrOf(new Error('no free slot'))).toBeUndefined();
  });
});
