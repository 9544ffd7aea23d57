import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initToken, storeCertificate } from '../../src/hsm/admin.js';
import { ckrName, ckrOf } from '../../src/hsm/ckr.js';
import { Token } from '../../src/hsm/token.js';
import { tokenLabelOf } from '../../src/hsm/module.js';
import { findObjects, readPublicKey } from '../../src/hsm/objects.js';
import { sm2E, sm2Za } from '../../src/signing/sm2.js';
import { certificateObjectFields } from '../../src/signing/x509.js';
import { openssl } from '../helpers/openssl.js';
import {
  buildSm2Token,
  CKA_PUBLIC_KEY_INFO,
  CKK_VENDOR_SM2,
  CKM_VENDOR_SM2_KEY_PAIR_GEN,
  CKM_VENDOR_SM2_SIGN_E,
  CKM_VENDOR_SM2_SIGN_E_DER,
  CKR_CURVE_NOT_SUPPORTED,
  CKS_RW_PUBLIC_SESSION,
  CKS_RW_USER_FUNCTIONS,
  derToRs,
  eOf,
  pemOf,
  pointOfEcPoint,
  ROOT,
  rsToDer,
  SM2_DEFAULT_ID,
  SM2_EC_PARAMS,
  SM2_G,
  SM2_N,
  SM2TOKEN_ASAN_DRIVER,
  SM2TOKEN_ASAN_MODULE,
  SM2TOKEN_CONCURRENCY_SCRIPT,
  SM2TOKEN_MODULE,
  spkiOf,
  za,
} from '../helpers/sm2-token.js';

// The SM2 test token (softhsm/sm2-token), a real PKCS#11 module emulating a vendor SM2 HSM, driven through pkcs11js
// as the gateway drives its tokens. Signatures are checked by OpenSSL (over the message: it computes Z_A and e
// itself) and by sm-crypto-v2, both independent of the module and of the Z_A/e code here.

const smCrypto = createRequire(import.meta.url)('sm-crypto-v2') as {
  sm2: {
    doSignature(msg: Uint8Array, privateKey: string, options: { hash: boolean; der?: boolean; publicKey?: string }): string;
    doVerifySignature(msg: Uint8Array, signHex: string, publicKey: string, options: { hash: boolean; der?: boolean; userId?: string }): boolean;
    getZ(publicKey: string, userId?: string): Uint8Array;
    getHash(message: Uint8Array, publicKey: string, userId?: string): string;
    generateKeyPairHex(): { privateKey: string; publicKey: string };
  };
};

const LABEL = 'sm2-test-token';
const SO_PIN = 'so-pin-2468';
const USER_PIN = 'user-pin-1357';
const KEY_LABEL = 'sm2-signing-key';
const KEY_ID = Buffer.from('5a2e01', 'hex');
const MESSAGE = Buffer.from('hsm-gateway: the message an SM2 signature is over');

let p11: pkcs11js.PKCS11;
let storeDir: string;
let slot: pkcs11js.Handle;
let session: pkcs11js.Handle;
let publicKey: pkcs11js.Handle;
let privateKey: pkcs11js.Handle;
let point: Buffer; // 04 ‖ x ‖ y of the signing key

/** The CKR name a call fails with ('CKR_OK' when it does not). */
function ckrOfCall(call: () => unknown): string {
  try {
    call();
    return 'CKR_OK';
  } catch (err) {
    // Some pkcs11js methods (C_CreateObject) throw a plain Error whose message is "CKR_NAME:code".
    const code = ckrOf(err) || Number(/^CKR_\w+:(\d+)$/.exec((err as Error).message)?.[1] ?? NaN);
    if (!code) throw err;
    return code === CKR_CURVE_NOT_SUPPORTED ? 'CKR_CURVE_NOT_SUPPORTED' : ckrName(code);
  }
}

const attribute = (object: pkcs11js.Handle, type: number): Buffer =>
  p11.C_GetAttributeValue(session, object, [{ type }])[0]!.value as Buffer;
const ulong = (value: Buffer): number => Number(value.readBigUInt64LE(0));
const bool = (value: Buffer): boolean => value.length === 1 && value[0] === 1;

function sign(mechanism: number, data: Buffer, key = privateKey): Buffer {
  p11.C_SignInit(session, { mechanism }, key);
  return p11.C_Sign(session, data, Buffer.alloc(72));
}

function verifyOnToken(mechanism: number, data: Buffer, signature: Buffer, key = publicKey): string {
  p11.C_VerifyInit(session, { mechanism }, key);
  return ckrOfCall(() => p11.C_Verify(session, data, signature));
}

/** OpenSSL verifies an SM2 signature (DER) over the MESSAGE: it computes Z_A (default ID) and e = SM3(Z_A ‖ M) itself. */
function opensslVerifyMessage(pem: string, message: Buffer, derSignature: Buffer): string {
  return openssl({ 'pub.pem': pem, 'msg.bin': message, 'sig.der': derSignature }, (p) => [
    'pkeyutl', '-verify', '-pubin', '-inkey', p('pub.pem'), '-rawin', '-in', p('msg.bin'), '-sigfile', p('sig.der'),
    '-digest', 'sm3', '-pkeyopt', `distid:${SM2_DEFAULT_ID}`,
  ]);
}

/** Without -rawin, OpenSSL takes the input as e itself (no Z_A, no hashing): the check of an e computed here. */
function opensslVerifyE(pem: string, e: Buffer, derSignature: Buffer): string {
  return openssl({ 'pub.pem': pem, 'e.bin': e, 'sig.der': derSignature }, (p) => [
    'pkeyutl', '-verify', '-pubin', '-inkey', p('pub.pem'), '-in', p('e.bin'), '-sigfile', p('sig.der'),
  ]);
}

/** Runs openssl in a temp dir with these files and returns its (binary) stdout. */
function opensslBinary(files: Record<string, string | Buffer>, args: (path: (name: string) => string) => string[]): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-sm2-openssl-'));
  try {
    for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
    return execFileSync('openssl', args((name) => join(dir, name)), { stdio: ['ignore', 'pipe', 'pipe'] });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** OpenSSL signs `message` with an SM2 private key (PEM), computing Z_A (default ID) and e itself; DER signature. */
function opensslSignMessage(keyPem: string, message: Buffer): { point: Buffer; signature: Buffer } {
  const spki = opensslBinary({ 'k.pem': keyPem }, (p) => ['pkey', '-in', p('k.pem'), '-pubout', '-outform', 'DER']);
  const signature = opensslBinary({ 'k.pem': keyPem, 'msg.bin': message }, (p) => [
    'pkeyutl', '-sign', '-inkey', p('k.pem'), '-rawin', '-in', p('msg.bin'), '-digest', 'sm3', '-pkeyopt', `distid:${SM2_DEFAULT_ID}`,
  ]);
  return { point: spki.subarray(spki.length - 65), signature };
}

function generateKeyPair(label: string, extra: { public?: pkcs11js.Template; private?: pkcs11js.Template } = {}): pkcs11js.KeyPair {
  // The shape of src/hsm/admin.ts signingKeyPairTemplates, with the SM2 curve named explicitly.
  const common = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: KEY_ID },
  ];
  return p11.C_GenerateKeyPair(
    session,
    { mechanism: CKM_VENDOR_SM2_KEY_PAIR_GEN },
    [
      ...common,
      { type: pkcs11js.CKA_VERIFY, value: true },
      { type: pkcs11js.CKA_ENCRYPT, value: false },
      { type: pkcs11js.CKA_WRAP, value: false },
      { type: pkcs11js.CKA_EC_PARAMS, value: SM2_EC_PARAMS },
      ...(extra.public ?? []),
    ],
    [
      ...common,
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_DECRYPT, value: false },
      { type: pkcs11js.CKA_UNWRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      ...(extra.private ?? [{ type: pkcs11js.CKA_SENSITIVE, value: true }, { type: pkcs11js.CKA_EXTRACTABLE, value: false }]),
    ],
  );
}

function openUserSession(): pkcs11js.Handle {
  const s = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  try {
    p11.C_Login(s, pkcs11js.CKU_USER, USER_PIN);
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
  }
  return s;
}

function findKey(cls: number, label = KEY_LABEL): pkcs11js.Handle[] {
  return findObjects(p11, session, [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
}

beforeAll(() => {
  buildSm2Token();
  storeDir = mkdtempSync(join(tmpdir(), 'hsm-gateway-sm2token-'));
  process.env.SM2TOKEN_DIR = storeDir; // read by C_Initialize (getenv)
  p11 = new pkcs11js.PKCS11();
  p11.load(SM2TOKEN_MODULE);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  [slot] = p11.C_GetSlotList(true) as [pkcs11js.Handle];
});

afterAll(() => {
  try {
    p11?.C_Finalize();
  } catch {
    // finalized already
  }
  p11?.close();
  if (storeDir) rmSync(storeDir, { recursive: true, force: true });
});

describe('the module', () => {
  it('when it is loaded, then it reports Cryptoki 2.40, one slot with an uninitialized token, and the three vendor SM2 mechanisms', () => {
    const info = p11.C_GetInfo();
    expect(info.cryptokiVersion).toEqual({ major: 2, minor: 40 });
    expect(p11.C_GetSlotList(true)).toHaveLength(1);
    expect(slot.readBigUInt64LE(0)).toBe(0n);
    expect(p11.C_GetTokenInfo(slot).flags & pkcs11js.CKF_TOKEN_INITIALIZED).toBe(0);
    expect(p11.C_GetMechanismList(slot)).toEqual([CKM_VENDOR_SM2_KEY_PAIR_GEN, CKM_VENDOR_SM2_SIGN_E, CKM_VENDOR_SM2_SIGN_E_DER]);
    expect(p11.C_GetMechanismInfo(slot, CKM_VENDOR_SM2_KEY_PAIR_GEN).flags & pkcs11js.CKF_GENERATE_KEY_PAIR).toBeTruthy();
    for (const mechanism of [CKM_VENDOR_SM2_SIGN_E, CKM_VENDOR_SM2_SIGN_E_DER]) {
      const m = p11.C_GetMechanismInfo(slot, mechanism);
      expect([m.minKeySize, m.maxKeySize, m.flags & (pkcs11js.CKF_SIGN | pkcs11js.CKF_VERIFY)]).toEqual([256, 256, pkcs11js.CKF_SIGN | pkcs11js.CKF_VERIFY]);
    }
    expect(ckrOfCall(() => p11.C_GetMechanismInfo(slot, pkcs11js.CKM_ECDSA))).toBe('CKR_MECHANISM_INVALID');
  });

  it('when C_Initialize is called a second time, then it is CKR_CRYPTOKI_ALREADY_INITIALIZED', () => {
    expect(ckrOfCall(() => p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK }))).toBe('CKR_CRYPTOKI_ALREADY_INITIALIZED');
  });

  it('when SM2TOKEN_DIR is not set, then C_Initialize fails with CKR_GENERAL_ERROR', () => {
    p11.C_Finalize();
    delete process.env.SM2TOKEN_DIR;
    try {
      expect(ckrOfCall(() => p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK }))).toBe('CKR_GENERAL_ERROR');
    } finally {
      process.env.SM2TOKEN_DIR = storeDir;
    }
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  });

  it('when a session is opened on the uninitialized token, then it is CKR_TOKEN_NOT_RECOGNIZED', () => {
    expect(ckrOfCall(() => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION))).toBe('CKR_TOKEN_NOT_RECOGNIZED');
  });
});

describe('token set-up and login', () => {
  it('when the gateway’s initToken (src/hsm/admin.ts) sets the token up, then slot 0 holds an initialized, login-required token with its blank-padded label', () => {
    // initToken does what the bootstrap does: C_InitToken, C_Finalize + C_Initialize, find by label, SO login, C_InitPIN.
    const initialized = initToken(p11, LABEL, SO_PIN, USER_PIN);
    expect(initialized.equals(slot)).toBe(true);
    const info = p11.C_GetTokenInfo(slot);
    expect(info.label).toBe(LABEL.padEnd(32, ' '));
    expect(tokenLabelOf(info.label)).toBe(LABEL);
    const wanted = pkcs11js.CKF_TOKEN_INITIALIZED | pkcs11js.CKF_LOGIN_REQUIRED | pkcs11js.CKF_USER_PIN_INITIALIZED;
    expect(info.flags & wanted).toBe(wanted);
    expect(info.serialNumber).toMatch(/^[0-9A-F]{16}$/);
  });

  it('when the user logs in with a wrong PIN, then CKR_PIN_INCORRECT; with the right one, a user session; a second login is CKR_USER_ALREADY_LOGGED_IN', () => {
    session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    expect(p11.C_GetSessionInfo(session).state).toBe(CKS_RW_PUBLIC_SESSION);
    expect(ckrOfCall(() => p11.C_Login(session, pkcs11js.CKU_USER, 'not-the-pin'))).toBe('CKR_PIN_INCORRECT');
    expect(ckrOfCall(() => p11.C_Login(session, pkcs11js.CKU_SO, 'not-the-pin'))).toBe('CKR_PIN_INCORRECT');
    p11.C_Login(session, pkcs11js.CKU_USER, USER_PIN);
    expect(p11.C_GetSessionInfo(session).state).toBe(CKS_RW_USER_FUNCTIONS);
    expect(ckrOfCall(() => p11.C_Login(session, pkcs11js.CKU_USER, USER_PIN))).toBe('CKR_USER_ALREADY_LOGGED_IN');
    expect(ckrOfCall(() => p11.C_Login(session, pkcs11js.CKU_SO, SO_PIN))).toBe('CKR_USER_ANOTHER_ALREADY_LOGGED_IN');
  });

  it('when the user changes the PIN with C_SetPIN, then the old PIN is refused and the new one works', () => {
    expect(ckrOfCall(() => p11.C_SetPIN(session, 'not-the-pin', 'new-user-pin'))).toBe('CKR_PIN_INCORRECT');
    p11.C_SetPIN(session, USER_PIN, 'new-user-pin');
    p11.C_Logout(session);
    expect(ckrOfCall(() => p11.C_Login(session, pkcs11js.CKU_USER, USER_PIN))).toBe('CKR_PIN_INCORRECT');
    p11.C_Login(session, pkcs11js.CKU_USER, 'new-user-pin');
    p11.C_SetPIN(session, 'new-user-pin', USER_PIN);
  });

  it('when the store directory is read, then it holds PIN hashes and never the PINs themselves', () => {
    const listing = execFileSync('sh', ['-c', `cat "${storeDir}/token.conf"; stat -c %a "${storeDir}" "${storeDir}/token.conf"`]).toString();
    expect(listing).not.toContain(Buffer.from(USER_PIN).toString('hex'));
    expect(listing).not.toContain(USER_PIN);
    expect(listing).not.toContain(SO_PIN);
    expect(listing).toMatch(/^user [0-9a-f]{32} [0-9a-f]{64}$/m);
    expect(listing.trim().split('\n').slice(-2)).toEqual(['700', '600']);
  });
});

describe('SM2 key pairs', () => {
  it('when an SM2 key pair is generated, then the public key has the SM2 curve OID and an uncompressed point, and the private key is sensitive, never extractable and local', () => {
    ({ publicKey, privateKey } = generateKeyPair(KEY_LABEL));
    expect(ulong(attribute(publicKey, pkcs11js.CKA_KEY_TYPE))).toBe(CKK_VENDOR_SM2);
    expect(ulong(attribute(privateKey, pkcs11js.CKA_KEY_TYPE))).toBe(CKK_VENDOR_SM2);
    expect(attribute(publicKey, pkcs11js.CKA_EC_PARAMS).toString('hex')).toBe('06082a811ccf5501822d');
    const ecPoint = attribute(publicKey, pkcs11js.CKA_EC_POINT);
    expect(ecPoint).toHaveLength(67);
    expect(ecPoint.subarray(0, 3).toString('hex')).toBe('044104'); // OCTET STRING (65) of 04 ‖ x ‖ y
    point = pointOfEcPoint(ecPoint);
    expect(attribute(publicKey, pkcs11js.CKA_LABEL).toString()).toBe(KEY_LABEL);
    expect(attribute(privateKey, pkcs11js.CKA_ID)).toEqual(KEY_ID);
    for (const type of [pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_ALWAYS_SENSITIVE, pkcs11js.CKA_NEVER_EXTRACTABLE, pkcs11js.CKA_LOCAL, pkcs11js.CKA_SIGN, pkcs11js.CKA_PRIVATE, pkcs11js.CKA_TOKEN]) {
      expect(bool(attribute(privateKey, type)), `private key attribute 0x${type.toString(16)}`).toBe(true);
    }
    for (const type of [pkcs11js.CKA_EXTRACTABLE, pkcs11js.CKA_DECRYPT, pkcs11js.CKA_UNWRAP, pkcs11js.CKA_DERIVE]) {
      expect(bool(attribute(privateKey, type)), `private key attribute 0x${type.toString(16)}`).toBe(false);
    }
    expect(ulong(attribute(privateKey, pkcs11js.CKA_KEY_GEN_MECHANISM))).toBe(CKM_VENDOR_SM2_KEY_PAIR_GEN);
    expect(bool(attribute(publicKey, pkcs11js.CKA_VERIFY))).toBe(true);
    // The gateway's reader takes it as an EC key: parameters and point, as for P-256.
    expect(readPublicKey(p11, session, publicKey)).toEqual({ kind: 'EC', ecParams: SM2_EC_PARAMS, ecPoint });
  });

  it('when the SubjectPublicKeyInfo is built from CKA_EC_POINT, then it is the token’s CKA_PUBLIC_KEY_INFO and OpenSSL reads it as a key on the SM2 curve', () => {
    const spki = spkiOf(point);
    expect(attribute(publicKey, CKA_PUBLIC_KEY_INFO)).toEqual(spki);
    expect(attribute(privateKey, CKA_PUBLIC_KEY_INFO)).toEqual(spki);
    const text = openssl({ 'pub.der': spki }, (p) => ['pkey', '-pubin', '-inform', 'DER', '-in', p('pub.der'), '-text', '-noout']);
    expect(text).toContain('ASN1 OID: SM2');
    expect(text.replace(/[\s:]/g, '')).toContain(point.toString('hex'));
  });

  it('when a private key template asks for CKA_SENSITIVE false and CKA_EXTRACTABLE true, then the key is sensitive and not extractable anyway', () => {
    const pair = generateKeyPair('sm2-asks-extractable', {
      private: [{ type: pkcs11js.CKA_SENSITIVE, value: false }, { type: pkcs11js.CKA_EXTRACTABLE, value: true }],
    });
    expect(bool(attribute(pair.privateKey, pkcs11js.CKA_SENSITIVE))).toBe(true);
    expect(bool(attribute(pair.privateKey, pkcs11js.CKA_EXTRACTABLE))).toBe(false);
    expect(ckrOfCall(() => attribute(pair.privateKey, pkcs11js.CKA_VALUE))).toBe('CKR_ATTRIBUTE_SENSITIVE');
    p11.C_DestroyObject(session, pair.privateKey);
    p11.C_DestroyObject(session, pair.publicKey);
  });

  it('when CKA_VALUE of the private key is read, then CKR_ATTRIBUTE_SENSITIVE; an attribute keys do not have is CKR_ATTRIBUTE_TYPE_INVALID', () => {
    expect(ckrOfCall(() => attribute(privateKey, pkcs11js.CKA_VALUE))).toBe('CKR_ATTRIBUTE_SENSITIVE');
    expect(ckrOfCall(() => attribute(privateKey, pkcs11js.CKA_MODULUS))).toBe('CKR_ATTRIBUTE_TYPE_INVALID');
    expect(ckrOfCall(() => attribute(publicKey, pkcs11js.CKA_SIGN))).toBe('CKR_ATTRIBUTE_TYPE_INVALID');
    // A search on the secret value finds nothing, whatever the value.
    expect(findObjects(p11, session, [{ type: pkcs11js.CKA_VALUE, value: Buffer.alloc(32) }])).toEqual([]);
  });

  it('when a template asks for another curve or key type, or sets what the token sets, then the generation is refused', () => {
    const gen = (pub: pkcs11js.Template, priv: pkcs11js.Template = []) =>
      ckrOfCall(() => p11.C_GenerateKeyPair(session, { mechanism: CKM_VENDOR_SM2_KEY_PAIR_GEN }, pub, priv));
    const p256 = Buffer.from('06082a8648ce3d030107', 'hex');
    expect(gen([{ type: pkcs11js.CKA_EC_PARAMS, value: p256 }])).toBe('CKR_CURVE_NOT_SUPPORTED');
    expect(gen([{ type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC }])).toBe('CKR_TEMPLATE_INCONSISTENT');
    expect(gen([{ type: pkcs11js.CKA_EC_POINT, value: Buffer.alloc(67) }])).toBe('CKR_ATTRIBUTE_READ_ONLY');
    expect(gen([], [{ type: pkcs11js.CKA_VALUE, value: Buffer.alloc(32, 1) }])).toBe('CKR_ATTRIBUTE_READ_ONLY');
    expect(ckrOfCall(() => p11.C_GenerateKeyPair(session, { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN }, [], []))).toBe('CKR_MECHANISM_INVALID');
  });

  it('when keys are searched by class, label, CKA_ID, key type and CKA_TOKEN, then exactly the matching key is found; private keys are hidden after logout', () => {
    const template = (cls: number): pkcs11js.Template => [
      { type: pkcs11js.CKA_CLASS, value: cls },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: KEY_LABEL },
      { type: pkcs11js.CKA_ID, value: KEY_ID },
      { type: pkcs11js.CKA_KEY_TYPE, value: CKK_VENDOR_SM2 },
    ];
    expect(findObjects(p11, session, template(pkcs11js.CKO_PRIVATE_KEY))).toEqual([privateKey]);
    expect(findObjects(p11, session, template(pkcs11js.CKO_PUBLIC_KEY))).toEqual([publicKey]);
    expect(findObjects(p11, session, [{ type: pkcs11js.CKA_LABEL, value: 'no such key' }])).toEqual([]);
    expect(findObjects(p11, session, [{ type: pkcs11js.CKA_KEY_TYPE, value: CKK_VENDOR_SM2 }])).toHaveLength(2);
    p11.C_Logout(session);
    try {
      expect(findObjects(p11, session, template(pkcs11js.CKO_PRIVATE_KEY))).toEqual([]);
      expect(findObjects(p11, session, template(pkcs11js.CKO_PUBLIC_KEY))).toEqual([publicKey]);
      expect(ckrOfCall(() => p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, privateKey))).toBe('CKR_USER_NOT_LOGGED_IN');
    } finally {
      p11.C_Login(session, pkcs11js.CKU_USER, USER_PIN);
    }
  });
});

describe('signing e = SM3(Z_A ‖ M)', () => {
  it('when e is signed with CKM_VENDOR_SM2_SIGN_E, then r ‖ s is 64 bytes and OpenSSL verifies it (as DER) over M, and not over another message', () => {
    const e = eOf(point, MESSAGE);
    const rs = sign(CKM_VENDOR_SM2_SIGN_E, e);
    expect(rs).toHaveLength(64);
    const pem = pemOf(spkiOf(point));
    expect(opensslVerifyMessage(pem, MESSAGE, rsToDer(rs))).toContain('Signature Verified Successfully');
    expect(() => opensslVerifyMessage(pem, Buffer.from('another message'), rsToDer(rs))).toThrow(/Signature Verification Failure/);
  });

  it('when e is signed with CKM_VENDOR_SM2_SIGN_E_DER, then the signature is strict DER and OpenSSL verifies it over M', () => {
    for (let i = 0; i < 8; i++) {
      const message = Buffer.from(`message ${i}`);
      const der = sign(CKM_VENDOR_SM2_SIGN_E_DER, eOf(point, message));
      expect(der.length).toBeLessThanOrEqual(72);
      expect(rsToDer(derToRs(der))).toEqual(der); // minimal, as an independent encoder writes it
      expect(opensslVerifyMessage(pemOf(spkiOf(point)), message, der)).toContain('Signature Verified Successfully');
    }
  });

  it('when the gateway computes e (src/signing/sm2.ts), then it is the e the token signs and OpenSSL accepts', () => {
    const gatewayE = sm2E(sm2Za(point), MESSAGE);
    expect(gatewayE).toEqual(eOf(point, MESSAGE));
    const rs = sign(CKM_VENDOR_SM2_SIGN_E, gatewayE);
    expect(opensslVerifyMessage(pemOf(spkiOf(point)), MESSAGE, rsToDer(rs))).toContain('Signature Verified Successfully');
  });

  it('when sm-crypto-v2 verifies the token’s signatures over M (computing Z_A and e itself), then they verify', () => {
    const pub = point.toString('hex');
    for (let i = 0; i < 4; i++) {
      const message = Buffer.from(`sm-crypto-v2 ${i}`);
      const rs = sign(CKM_VENDOR_SM2_SIGN_E, eOf(point, message));
      const der = sign(CKM_VENDOR_SM2_SIGN_E_DER, eOf(point, message));
      expect(smCrypto.sm2.doVerifySignature(message, rs.toString('hex'), pub, { hash: true })).toBe(true);
      expect(smCrypto.sm2.doVerifySignature(message, der.toString('hex'), pub, { hash: true, der: true })).toBe(true);
      expect(smCrypto.sm2.doVerifySignature(Buffer.from('other'), rs.toString('hex'), pub, { hash: true })).toBe(false);
    }
  });

  it('when r and s are read, then both are in [1, n-1] and differ between two signatures of the same e (k is random)', () => {
    const e = eOf(point, MESSAGE);
    const [a, b] = [sign(CKM_VENDOR_SM2_SIGN_E, e), sign(CKM_VENDOR_SM2_SIGN_E, e)];
    for (const rs of [a!, b!]) {
      for (const half of [rs.subarray(0, 32), rs.subarray(32)]) {
        const v = BigInt(`0x${half.toString('hex')}`);
        expect(v > 0n && v < SM2_N).toBe(true);
      }
    }
    expect(a).not.toEqual(b);
  });

  it('when C_Verify checks the token’s own signatures, then they verify; a changed signature or e is CKR_SIGNATURE_INVALID; wrong lengths are refused', () => {
    const e = eOf(point, MESSAGE);
    const rs = sign(CKM_VENDOR_SM2_SIGN_E, e);
    const der = sign(CKM_VENDOR_SM2_SIGN_E_DER, e);
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, e, rs)).toBe('CKR_OK');
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E_DER, e, der)).toBe('CKR_OK');
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E_DER, e, rsToDer(rs))).toBe('CKR_OK');
    const flipped = Buffer.from(rs);
    flipped[40]! ^= 0x01;
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, e, flipped)).toBe('CKR_SIGNATURE_INVALID');
    const otherE = Buffer.from(e);
    otherE[0]! ^= 0x80;
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, otherE, rs)).toBe('CKR_SIGNATURE_INVALID');
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E_DER, otherE, der)).toBe('CKR_SIGNATURE_INVALID');
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, e, rs.subarray(0, 63))).toBe('CKR_SIGNATURE_LEN_RANGE');
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, e, Buffer.alloc(64))).toBe('CKR_SIGNATURE_INVALID'); // r = s = 0
    // Trailing bytes after the DER: refused (as invalid, or as too long when the DER already had 72 bytes).
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E_DER, e, Buffer.concat([der, Buffer.from([0])]))).toMatch(/^CKR_SIGNATURE_(INVALID|LEN_RANGE)$/);
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, e.subarray(1), rs)).toBe('CKR_DATA_LEN_RANGE');
    // Every failed C_Verify ended its operation: the session is free for the next one.
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, e, rs)).toBe('CKR_OK');
  });

  it('when OpenSSL and sm-crypto-v2 sign M with their own keys and the public keys are imported, then C_Verify accepts their signatures over e', () => {
    const imported = (pointBytes: Buffer): pkcs11js.Handle =>
      p11.C_CreateObject(session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: CKK_VENDOR_SM2 },
        { type: pkcs11js.CKA_EC_PARAMS, value: SM2_EC_PARAMS },
        { type: pkcs11js.CKA_EC_POINT, value: Buffer.concat([Buffer.from([0x04, 65]), pointBytes]) },
        { type: pkcs11js.CKA_LABEL, value: 'imported' },
      ]);
    // OpenSSL: a key of its own, a signature over M (OpenSSL computes Z_A and e).
    const { point: opensslPoint, signature } = opensslSignMessage(openssl({}, () => ['genpkey', '-algorithm', 'SM2']), MESSAGE);
    const key = imported(opensslPoint);
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E_DER, eOf(opensslPoint, MESSAGE), signature, key)).toBe('CKR_OK');
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, eOf(opensslPoint, MESSAGE), derToRs(signature), key)).toBe('CKR_OK');
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E_DER, eOf(opensslPoint, Buffer.from('x')), signature, key)).toBe('CKR_SIGNATURE_INVALID');
    p11.C_DestroyObject(session, key);
    // sm-crypto-v2: r ‖ s over M (it computes Z_A and e).
    const pair = smCrypto.sm2.generateKeyPairHex();
    const sig = Buffer.from(smCrypto.sm2.doSignature(MESSAGE, pair.privateKey, { hash: true, publicKey: pair.publicKey }), 'hex');
    const smPoint = Buffer.from(pair.publicKey, 'hex');
    const smKey = imported(smPoint);
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, eOf(smPoint, MESSAGE), sig, smKey)).toBe('CKR_OK');
    p11.C_DestroyObject(session, smKey);
    // A point that is not on the curve is refused.
    const offCurve = Buffer.from(smPoint);
    offCurve[64]! ^= 1;
    expect(ckrOfCall(() => imported(offCurve))).toBe('CKR_ATTRIBUTE_VALUE_INVALID');
  });
});

describe('Z_A and e known answers', () => {
  // A fixed SM2 key (generated once with `openssl genpkey -algorithm SM2`) and message; the answers were computed
  // with sm-crypto-v2, and the test re-derives them from sm-crypto-v2 and OpenSSL on every run.
  const KAT_KEY = [
    '-----BEGIN PRIVATE KEY-----',
    'MIGHAgEAMBMGByqGSM49AgEGCCqBHM9VAYItBG0wawIBAQQgFgObB9fmbjgp5jVN',
    'PD5dEzZMQoUGFFkYaj2omHTm6AehRANCAASCJx1hlQ4WPZzoeqypw5YTbv2SVYaL',
    'h3gWmNU6DCE1ySvhLHtN/rdWJsctK6AH4PTYrJNmAkPPAabVq1GWOrvt',
    '-----END PRIVATE KEY-----',
    '',
  ].join('\n');
  const KAT_POINT = Buffer.from(
    '0482271d61950e163d9ce87aaca9c396136efd9255868b87781698d53a0c2135c9' +
      '2be12c7b4dfeb75626c72d2ba007e0f4d8ac93660243cf01a6d5ab51963abbed',
    'hex',
  );
  const KAT_MESSAGE = Buffer.from('hsm-gateway SM2 known answer');
  const KAT_ZA = '473effaf6e7b68ae1997a5fc7c56fa0feb6b4f2b4ef1a829fd9b76f3a4141f8e';
  const KAT_E = 'ba76a4761d50d340433fa18deaa7c1347c346679e83296f438a4c11ef045bc6c';

  it('when Z_A and e are computed for the fixed key and message, then they are the known answers, and sm-crypto-v2 agrees', () => {
    const pubText = openssl({ 'k.pem': KAT_KEY }, (p) => ['pkey', '-in', p('k.pem'), '-pubout', '-text', '-noout']);
    expect(pubText.replace(/[\s:]/g, '')).toContain(KAT_POINT.toString('hex'));
    expect(za(KAT_POINT).toString('hex')).toBe(KAT_ZA);
    expect(eOf(KAT_POINT, KAT_MESSAGE).toString('hex')).toBe(KAT_E);
    expect(Buffer.from(smCrypto.sm2.getZ(KAT_POINT.toString('hex'))).toString('hex')).toBe(KAT_ZA);
    expect(smCrypto.sm2.getHash(KAT_MESSAGE, KAT_POINT.toString('hex'))).toBe(KAT_E);
    // The generator G as the public key: the known answer of test/unit/sm2.test.ts, here from this helper.
    expect(za(SM2_G).toString('hex')).toBe('5b32bfe35482899b195d72c09d33ccdb465b2ded883240ff91f120a68bc91de8');
    expect(eOf(SM2_G, Buffer.from('message digest')).toString('hex')).toBe('3f5f058176faaa6f757f5753d338c8e45b3589d4f05277ac8897d287393d795d');
  });

  it('when OpenSSL signs the fixed message (computing Z_A and e itself), then OpenSSL verifies that signature over the e computed here', () => {
    const { point: signer, signature } = opensslSignMessage(KAT_KEY, KAT_MESSAGE);
    expect(signer).toEqual(KAT_POINT);
    const pem = pemOf(spkiOf(KAT_POINT));
    expect(opensslVerifyE(pem, Buffer.from(KAT_E, 'hex'), signature)).toContain('Signature Verified Successfully');
    expect(() => opensslVerifyE(pem, eOf(KAT_POINT, KAT_MESSAGE, '8765432187654321'), signature)).toThrow(/Verification Failure/);
  });
});

describe('single-part operation rules', () => {
  it('when e has 31 or 33 bytes, then C_Sign is CKR_DATA_LEN_RANGE and the operation has ended', () => {
    for (const length of [31, 33]) {
      p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, privateKey);
      expect(ckrOfCall(() => p11.C_Sign(session, Buffer.alloc(length, 7), Buffer.alloc(64)))).toBe('CKR_DATA_LEN_RANGE');
      expect(ckrOfCall(() => p11.C_Sign(session, Buffer.alloc(32, 7), Buffer.alloc(64)))).toBe('CKR_OPERATION_NOT_INITIALIZED');
    }
  });

  it('when C_Sign is called twice after one C_SignInit, then the second is CKR_OPERATION_NOT_INITIALIZED', () => {
    p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, privateKey);
    expect(p11.C_Sign(session, Buffer.alloc(32, 1), Buffer.alloc(64))).toHaveLength(64);
    expect(ckrOfCall(() => p11.C_Sign(session, Buffer.alloc(32, 1), Buffer.alloc(64)))).toBe('CKR_OPERATION_NOT_INITIALIZED');
  });

  it('when C_SignInit is called while a signing operation is open, then CKR_OPERATION_ACTIVE', () => {
    p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, privateKey);
    expect(ckrOfCall(() => p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, privateKey))).toBe('CKR_OPERATION_ACTIVE');
    p11.C_Sign(session, Buffer.alloc(32, 2), Buffer.alloc(64));
  });

  it('when the output buffer is too small, then CKR_BUFFER_TOO_SMALL and the operation stays open for the retry', () => {
    p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, privateKey);
    expect(ckrOfCall(() => p11.C_Sign(session, Buffer.alloc(32, 3), Buffer.alloc(63)))).toBe('CKR_BUFFER_TOO_SMALL');
    expect(p11.C_Sign(session, Buffer.alloc(32, 3), Buffer.alloc(64))).toHaveLength(64);
    p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E_DER }, privateKey);
    expect(ckrOfCall(() => p11.C_Sign(session, Buffer.alloc(32, 3), Buffer.alloc(64)))).toBe('CKR_BUFFER_TOO_SMALL');
    expect(p11.C_Sign(session, Buffer.alloc(32, 3), Buffer.alloc(72)).length).toBeLessThanOrEqual(72);
  });

  it('when the wrong mechanism, a public key or a mechanism parameter is given, then C_SignInit refuses and opens nothing', () => {
    expect(ckrOfCall(() => p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey))).toBe('CKR_MECHANISM_INVALID');
    expect(ckrOfCall(() => p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, publicKey))).toBe('CKR_KEY_TYPE_INCONSISTENT');
    expect(ckrOfCall(() => p11.C_SignInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E, parameter: Buffer.from('1234567812345678') }, privateKey))).toBe(
      'CKR_MECHANISM_PARAM_INVALID',
    );
    expect(ckrOfCall(() => p11.C_VerifyInit(session, { mechanism: CKM_VENDOR_SM2_SIGN_E }, privateKey))).toBe('CKR_KEY_TYPE_INCONSISTENT');
    expect(ckrOfCall(() => p11.C_Sign(session, Buffer.alloc(32), Buffer.alloc(64)))).toBe('CKR_OPERATION_NOT_INITIALIZED');
  });
});

describe('certificates and data objects', () => {
  it('when an SM2 certificate is stored with the gateway’s storeCertificate, then it is found by label and CKA_ID and reads back', () => {
    const keyPem = openssl({}, () => ['genpkey', '-algorithm', 'SM2']);
    const der = opensslBinary({ 'k.pem': keyPem }, (p) => [
      'req', '-x509', '-new', '-key', p('k.pem'), '-subj', '/CN=sm2-token-test', '-sm3', '-sigopt', `distid:${SM2_DEFAULT_ID}`,
      '-days', '1', '-outform', 'DER',
    ]);
    const fields = certificateObjectFields(der);
    const handle = storeCertificate(p11, session, fields, KEY_LABEL, KEY_ID);
    const found = findObjects(p11, session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: KEY_LABEL },
      { type: pkcs11js.CKA_ID, value: KEY_ID },
    ]);
    expect(found).toEqual([handle]);
    expect(attribute(handle, pkcs11js.CKA_VALUE)).toEqual(der);
    expect(attribute(handle, pkcs11js.CKA_SUBJECT)).toEqual(fields.subject);
    expect(attribute(handle, pkcs11js.CKA_ISSUER)).toEqual(fields.issuer);
    expect(attribute(handle, pkcs11js.CKA_SERIAL_NUMBER)).toEqual(fields.serialNumber);
    expect(ulong(attribute(handle, pkcs11js.CKA_CERTIFICATE_TYPE))).toBe(pkcs11js.CKC_X_509);
    expect(bool(attribute(handle, pkcs11js.CKA_PRIVATE))).toBe(false);
  });

  it('when a data object is created and destroyed, then it is found in between and not after', () => {
    const handle = p11.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: 'sm2-data' },
      { type: pkcs11js.CKA_APPLICATION, value: 'hsm-gateway' },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from('payload') },
    ]);
    const byLabel = () => findObjects(p11, session, [{ type: pkcs11js.CKA_LABEL, value: 'sm2-data' }]);
    expect(byLabel()).toEqual([handle]);
    expect(attribute(handle, pkcs11js.CKA_VALUE).toString()).toBe('payload');
    p11.C_DestroyObject(session, handle);
    expect(byLabel()).toEqual([]);
    expect(ckrOfCall(() => attribute(handle, pkcs11js.CKA_VALUE))).toBe('CKR_OBJECT_HANDLE_INVALID');
  });

  it('when a certificate template lacks CKA_VALUE or a read-only session creates a token object, then C_CreateObject refuses', () => {
    const cert = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
      { type: pkcs11js.CKA_CERTIFICATE_TYPE, value: pkcs11js.CKC_X_509 },
      { type: pkcs11js.CKA_SUBJECT, value: Buffer.from('3000', 'hex') },
      { type: pkcs11js.CKA_TOKEN, value: true },
    ];
    expect(ckrOfCall(() => p11.C_CreateObject(session, cert))).toBe('CKR_TEMPLATE_INCOMPLETE');
    const readOnly = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    try {
      expect(ckrOfCall(() => p11.C_CreateObject(readOnly, [...cert, { type: pkcs11js.CKA_VALUE, value: Buffer.from('3000', 'hex') }]))).toBe(
        'CKR_SESSION_READ_ONLY',
      );
    } finally {
      p11.C_CloseSession(readOnly);
    }
  });
});

describe('persistence', () => {
  it('when the module is finalized and initialized again, then after login the key is found by label and signs, and OpenSSL verifies', () => {
    // A session key pair disappears with the module; the token key pair and the certificate stay.
    const sessionKey = [
      { type: pkcs11js.CKA_TOKEN, value: false },
      { type: pkcs11js.CKA_LABEL, value: 'sm2-session-key' },
    ];
    p11.C_GenerateKeyPair(session, { mechanism: CKM_VENDOR_SM2_KEY_PAIR_GEN }, sessionKey, sessionKey);
    expect(findKey(pkcs11js.CKO_PRIVATE_KEY, 'sm2-session-key')).toHaveLength(1);
    p11.C_Finalize();
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    expect(tokenLabelOf(p11.C_GetTokenInfo(slot).label)).toBe(LABEL);
    session = openUserSession();
    const [priv, ...more] = findKey(pkcs11js.CKO_PRIVATE_KEY);
    expect(more).toEqual([]);
    expect(findKey(pkcs11js.CKO_PUBLIC_KEY)).toHaveLength(1);
    expect(findKey(pkcs11js.CKO_PRIVATE_KEY, 'sm2-session-key')).toEqual([]);
    expect(pointOfEcPoint(attribute(findKey(pkcs11js.CKO_PUBLIC_KEY)[0]!, pkcs11js.CKA_EC_POINT))).toEqual(point);
    privateKey = priv!;
    publicKey = findKey(pkcs11js.CKO_PUBLIC_KEY)[0]!;
    const rs = sign(CKM_VENDOR_SM2_SIGN_E, eOf(point, MESSAGE));
    expect(opensslVerifyMessage(pemOf(spkiOf(point)), MESSAGE, rsToDer(rs))).toContain('Signature Verified Successfully');
    expect(findObjects(p11, session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE }])).toHaveLength(1);
    expect(ckrOfCall(() => attribute(privateKey, pkcs11js.CKA_VALUE))).toBe('CKR_ATTRIBUTE_SENSITIVE');
  });

  it('when another process opens the same store, then it sees the key this one generated and signs with it', () => {
    const script = `
      import pkcs11js from 'pkcs11js';
      const p11 = new pkcs11js.PKCS11();
      p11.load(${JSON.stringify(SM2TOKEN_MODULE)});
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
      const [slot] = p11.C_GetSlotList(true);
      const s = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
      p11.C_Login(s, pkcs11js.CKU_USER, ${JSON.stringify(USER_PIN)});
      p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: ${JSON.stringify(KEY_LABEL)} }]);
      const keys = p11.C_FindObjects(s, 10);
      p11.C_FindObjectsFinal(s);
      p11.C_SignInit(s, { mechanism: ${CKM_VENDOR_SM2_SIGN_E} }, keys[0]);
      const rs = p11.C_Sign(s, Buffer.from(process.argv[1], 'hex'), Buffer.alloc(64));
      console.log(JSON.stringify({ keys: keys.length, rs: rs.toString('hex') }));
      p11.C_Finalize();`;
    const e = eOf(point, MESSAGE);
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script, e.toString('hex')], {
      cwd: ROOT,
      env: { ...process.env, SM2TOKEN_DIR: storeDir },
    }).toString();
    const { keys, rs } = JSON.parse(out) as { keys: number; rs: string };
    expect(keys).toBe(1);
    expect(verifyOnToken(CKM_VENDOR_SM2_SIGN_E, e, Buffer.from(rs, 'hex'))).toBe('CKR_OK');
  });

  it('when OpenSC’s pkcs11-tool reads the token, then it lists the slot, the vendor mechanisms and the SM2 key pair', () => {
    const tool = (args: string[]) =>
      execFileSync('pkcs11-tool', ['--module', SM2TOKEN_MODULE, ...args], { env: { ...process.env, SM2TOKEN_DIR: storeDir }, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
    expect(tool(['--list-slots'])).toContain(`token label        : ${LABEL}`);
    expect(tool(['--list-mechanisms'])).toMatch(/mechtype-0x80001002.*sign, verify/);
    const objects = tool(['--login', '--pin', USER_PIN, '--list-objects']);
    expect(objects.match(new RegExp(`label:\\s+${KEY_LABEL}`, 'g'))?.length).toBe(3); // public key, private key, certificate
  });

  it('when the gateway’s Token (src/hsm/token.ts) opens the SM2 token afresh, then it finds the key by label, signs e with the vendor mechanism and verifies', async () => {
    p11.C_Finalize(); // the Token initializes the module itself, reading the store again
    const log = { info: () => {}, warn: () => {}, error: () => {} };
    const token = new Token({ name: 'sm2', modulePath: SM2TOKEN_MODULE, tokenLabel: LABEL, pin: USER_PIN, sessions: 4, acquireTimeoutMs: 5_000 }, log);
    try {
      token.open();
      expect([...token.mechanisms]).toContain(CKM_VENDOR_SM2_SIGN_E);
      const ref = { label: KEY_LABEL, id: KEY_ID.toString('hex') };
      expect(token.preload([ref]).missing).toEqual([]);
      const raw = token.publicKey(ref);
      expect(raw.kind === 'EC' && pointOfEcPoint(raw.ecPoint)).toEqual(point);
      const e = eOf(point, MESSAGE);
      const signatures = await Promise.all(Array.from({ length: 8 }, () => token.sign(ref, { mechanism: CKM_VENDOR_SM2_SIGN_E_DER }, e, 72)));
      for (const der of signatures) {
        expect(opensslVerifyMessage(pemOf(spkiOf(point)), MESSAGE, der)).toContain('Signature Verified Successfully');
        expect(await token.verify(ref, { mechanism: CKM_VENDOR_SM2_SIGN_E_DER }, e, der)).toBe(true);
      }
      expect(await token.verify(ref, { mechanism: CKM_VENDOR_SM2_SIGN_E_DER }, eOf(point, Buffer.from('x')), signatures[0]!)).toBe(false);
      expect(token.certificate(ref)[0]).toBe(0x30);
    } finally {
      await token.close(); // C_Finalize
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
      session = openUserSession();
      [privateKey] = findKey(pkcs11js.CKO_PRIVATE_KEY) as [pkcs11js.Handle];
      [publicKey] = findKey(pkcs11js.CKO_PUBLIC_KEY) as [pkcs11js.Handle];
    }
  });
});

describe('concurrency', () => {
  it('when 8 sessions each sign 50 e values with C_SignAsync at once (own process, UV_THREADPOOL_SIZE=16), then all 400 signatures verify on the token', () => {
    // UV_THREADPOOL_SIZE counts only before the libuv pool starts, which the vitest worker has done already;
    // the script runs in a process of its own, on a fresh store.
    const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-sm2token-conc-'));
    try {
      const run = spawnSync(process.execPath, [SM2TOKEN_CONCURRENCY_SCRIPT, SM2TOKEN_MODULE, '8', '50'], {
        cwd: ROOT,
        env: { ...process.env, SM2TOKEN_DIR: dir, UV_THREADPOOL_SIZE: '16' },
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(run.status, run.stderr + run.stdout).toBe(0);
      const result = JSON.parse(run.stdout) as { signatures: number; verified: number; tamperedRefused: boolean; maxInFlight: number; threadpool: string };
      expect(result).toMatchObject({ signatures: 400, verified: 400, tamperedRefused: true, maxInFlight: 8, threadpool: '16' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when 8 sessions sign in this process at once (C_SignAsync) while others verify, then every signature verifies', async () => {
    const sessions = Array.from({ length: 8 }, () => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION));
    try {
      const results = await Promise.all(
        sessions.map(async (s, i) => {
          const out: { e: Buffer; signature: Buffer; mechanism: number }[] = [];
          const mechanism = i % 2 ? CKM_VENDOR_SM2_SIGN_E_DER : CKM_VENDOR_SM2_SIGN_E;
          for (let n = 0; n < 25; n++) {
            const e = eOf(point, Buffer.from(`in-process ${i}/${n}`));
            p11.C_SignInit(s, { mechanism }, privateKey);
            out.push({ e, mechanism, signature: await p11.C_SignAsync(s, e, Buffer.alloc(72)) });
            p11.C_VerifyInit(s, { mechanism }, publicKey);
            expect(await p11.C_VerifyAsync(s, e, out.at(-1)!.signature)).toBe(true);
          }
          return out;
        }),
      );
      for (const { e, signature, mechanism } of results.flat()) expect(verifyOnToken(mechanism, e, signature)).toBe('CKR_OK');
    } finally {
      for (const s of sessions) p11.C_CloseSession(s);
    }
  });
});

describe('memory checks (AddressSanitizer)', () => {
  beforeAll(() => {
    buildSm2Token({ sanitize: true });
  });

  it('when the C driver runs against the ASan build with leak detection, then every check passes and ASan reports nothing', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-sm2token-asan-'));
    try {
      const run = spawnSync(SM2TOKEN_ASAN_DRIVER, [SM2TOKEN_ASAN_MODULE], {
        env: { ...process.env, SM2TOKEN_DIR: dir, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:exitcode=23' },
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(run.stderr).not.toMatch(/AddressSanitizer|LeakSanitizer/);
      expect(run.status, run.stderr).toBe(0);
      expect(run.stdout).toContain('driver: ok');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when pkcs11js drives the ASan build from Node (libasan preloaded, 8 sessions × 25 signatures), then every signature verifies and ASan reports nothing', () => {
    const libasan = execFileSync('cc', ['-print-file-name=libasan.so']).toString().trim();
    const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-sm2token-asan-'));
    try {
      const run = spawnSync(process.execPath, [SM2TOKEN_CONCURRENCY_SCRIPT, SM2TOKEN_ASAN_MODULE, '8', '25'], {
        cwd: ROOT,
        // Node itself is not built with ASan: the runtime must be preloaded; Node's own allocations at exit are
        // not the module's, so leak detection is left to the C driver above.
        env: { ...process.env, SM2TOKEN_DIR: dir, UV_THREADPOOL_SIZE: '16', LD_PRELOAD: libasan, ASAN_OPTIONS: 'detect_leaks=0:exitcode=23' },
        encoding: 'utf8',
        timeout: 120_000,
      });
      expect(run.stderr).not.toMatch(/AddressSanitizer/);
      expect(run.status, run.stderr + run.stdout).toBe(0);
      expect(JSON.parse(run.stdout)).toMatchObject({ signatures: 200, verified: 200, tamperedRefused: true });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
