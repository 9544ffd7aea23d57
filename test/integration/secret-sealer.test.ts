import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileSecretSealer, HsmSecretSealer, SealedSecretError, secretsKey } from '../../src/keys/secret-sealer.js';
import { makeSoftHsmToken, SOFTHSM_MODULE } from '../helpers/modules/softhsm.js';

// Access-key secrets sealed for storage outside the token: by an AES-256 key on a real SoftHSMv2 token (CKM_AES_GCM),
// or by a key file where the token has no AES-GCM.
let dir: string;
let p11: pkcs11js.PKCS11;
let session: pkcs11js.Handle;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-sealer-'));
  const token = makeSoftHsmToken(dir, 'sealer-test');
  process.env.SOFTHSM2_CONF = token.conf;
  p11 = new pkcs11js.PKCS11();
  p11.load(SOFTHSM_MODULE);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === 'sealer-test')!;
  session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p11.C_Login(session, pkcs11js.CKU_USER, token.pin);
});

afterAll(() => {
  p11?.C_Finalize();
  rmSync(dir, { recursive: true, force: true });
});

const attribute = (key: pkcs11js.Handle, type: number) => p11.C_GetAttributeValue(session, key, [{ type }])[0]!.value as Buffer;

describe('secrets sealed by the HSM', () => {
  it('when the secrets key is made, then it is AES-256, sensitive, never extractable, and can only encrypt and decrypt; a second call finds it', () => {
    const made = secretsKey(p11, session, 'hsm-gateway-secrets', true)!;
    expect(made.created).toBe(true);
    const yes = (type: number) => attribute(made.key, type)[0] === 1;
    expect(attribute(made.key, pkcs11js.CKA_VALUE_LEN).readUInt32LE(0)).toBe(32);
    expect([pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_ALWAYS_SENSITIVE, pkcs11js.CKA_NEVER_EXTRACTABLE, pkcs11js.CKA_PRIVATE, pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_DECRYPT].map(yes)).toEqual(
      Array(6).fill(true),
    );
    expect([pkcs11js.CKA_EXTRACTABLE, pkcs11js.CKA_SIGN, pkcs11js.CKA_VERIFY, pkcs11js.CKA_WRAP, pkcs11js.CKA_UNWRAP, pkcs11js.CKA_DERIVE].map(yes)).toEqual(Array(6).fill(false));
    expect(() => p11.C_GetAttributeValue(session, made.key, [{ type: pkcs11js.CKA_VALUE }])).toThrow(/CKR_ATTRIBUTE_SENSITIVE/);
    const again = secretsKey(p11, session, 'hsm-gateway-secrets', true)!;
    expect(again.created).toBe(false);
    expect(secretsKey(p11, session, 'absent', false)).toBeUndefined();
  });

  it('when secrets are sealed, then they open for the same access key only, each sealing is different, and an altered byte is refused', () => {
    const sealer = new HsmSecretSealer(p11, session, secretsKey(p11, session, 'hsm-gateway-secrets', true)!.key);
    const secrets = ['first-secret-0123456789abcdef', 'previous-secret-9876543210'];
    const sealed = sealer.seal('LTAIone', secrets);
    expect(sealed.includes(Buffer.from(secrets[0]!))).toBe(false);
    expect(sealer.open('LTAIone', sealed)).toEqual(secrets);
    expect(sealer.seal('LTAIone', secrets).equals(sealed)).toBe(false); // a fresh IV each time
    expect(() => sealer.open('LTAItwo', sealed)).toThrow(SealedSecretError); // the record id is authenticated
    const altered = Buffer.from(sealed);
    altered[altered.length - 1]! ^= 1;
    expect(() => sealer.open('LTAIone', altered)).toThrow(SealedSecretError);
    expect(() => new FileSecretSealer(randomBytes(32)).open('LTAIone', sealed)).toThrow(/another kind of key/);
  });

  it('when another secrets key on the token opens a sealing, then it is refused', () => {
    const other = new HsmSecretSealer(p11, session, secretsKey(p11, session, 'other-secrets', true)!.key);
    const mine = new HsmSecretSealer(p11, session, secretsKey(p11, session, 'hsm-gateway-secrets', true)!.key);
    expect(() => other.open('LTAIone', mine.seal('LTAIone', ['s']))).toThrow(SealedSecretError);
  });
});

describe('secrets sealed by a key file (tokens without AES-GCM)', () => {
  it('when secrets are sealed, then they open with the same key and record only', () => {
    const kek = randomBytes(32);
    const sealer = new FileSecretSealer(kek);
    const sealed = sealer.seal('LTAIone', ['s1']);
    expect(new FileSecretSealer(kek).open('LTAIone', sealed)).toEqual(['s1']);
    expect(() => sealer.open('LTAIother', sealed)).toThrow(SealedSecretError);
    expect(() => new FileSecretSealer(randomBytes(32)).open('LTAIone', sealed)).toThrow(SealedSecretError);
    expect(() => new FileSecretSealer(randomBytes(16))).toThrow(/32 bytes/);
  });
});
