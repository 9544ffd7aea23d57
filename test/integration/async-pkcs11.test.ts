import { execFileSync } from 'node:child_process';
import { createHash, createPublicKey, constants, verify, type KeyObject } from 'node:crypto';
import { rmSync } from 'node:fs';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AsyncPkcs11, AsyncPkcs11Error, AsyncPkcs11NotBuiltError, ASYNC_PKCS11_ADDON } from '../../src/hsm/async-pkcs11.js';
import { ckrOf } from '../../src/hsm/ckr.js';
import { createSoftHsmToken, NETSIM_MODULE, ROOT, type SoftHsmToken } from '../helpers/netsim.js';
import { opensslVerifyDigest } from '../helpers/openssl.js';

// The async PKCS#11 addon (native/async-pkcs11) on SoftHSMv2 in process, next to pkcs11js on the same module, as
// the gateway's Token will use them: pkcs11js loads, initializes and logs in; the addon signs, verifies, searches,
// opens and closes sessions and probes, each operation one job off the event loop. Its behaviour on a network HSM
// (delays, invalidated sessions, injected faults) is in async-pkcs11.netsim.test.ts.

const SOFTHSM = '/usr/lib/softhsm/libsofthsm2.so';
const P256 = Buffer.from('06082a8648ce3d030107', 'hex');
const MESSAGE = Buffer.from('hsm-gateway: signed off the event loop');
const DIGEST = createHash('sha256').update(MESSAGE).digest();
const PSS_SHA256: pkcs11js.RsaPSS = { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 };
const PSS: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: PSS_SHA256 };
const ECDSA: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_ECDSA };
const CKS_RO_PUBLIC_SESSION = 0;
const CKS_RO_USER_FUNCTIONS = 1;
const CKS_RW_USER_FUNCTIONS = 3;

let token: SoftHsmToken;
let p11: pkcs11js.PKCS11;
let hsm: AsyncPkcs11;
let slot: pkcs11js.Handle;
let anchor: pkcs11js.Handle;
const sessions: pkcs11js.Handle[] = [];
interface KeyPair {
  private: pkcs11js.Handle;
  public: pkcs11js.Handle;
  spki: KeyObject;
}
const keys = {} as { ec: KeyPair; rsa: KeyPair };

async function rejection(promise: Promise<unknown>): Promise<AsyncPkcs11Error> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'the call should have failed').toBeInstanceOf(AsyncPkcs11Error);
  return err as AsyncPkcs11Error;
}

/** pkcs11js's own search, for comparison. */
function findSync(session: pkcs11js.Handle, template: pkcs11js.Template): pkcs11js.Handle[] {
  p11.C_FindObjectsInit(session, template);
  const found = p11.C_FindObjects(session, 10_000);
  p11.C_FindObjectsFinal(session);
  return found;
}

function login(session: pkcs11js.Handle): void {
  try {
    p11.C_Login(session, pkcs11js.CKU_USER, token.pin);
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
  }
}

function keyPair(label: string, rsa: boolean): { private: Buffer; public: Buffer } {
  const common = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: Buffer.from(label) },
  ];
  const pair = p11.C_GenerateKeyPair(
    anchor,
    { mechanism: rsa ? pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN : pkcs11js.CKM_EC_KEY_PAIR_GEN },
    [
      ...common,
      { type: pkcs11js.CKA_VERIFY, value: true },
      ...(rsa
        ? [
            { type: pkcs11js.CKA_MODULUS_BITS, value: 2048 },
            { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
          ]
        : [{ type: pkcs11js.CKA_EC_PARAMS, value: P256 }]),
    ],
    [...common, { type: pkcs11js.CKA_PRIVATE, value: true }, { type: pkcs11js.CKA_SENSITIVE, value: true }, { type: pkcs11js.CKA_SIGN, value: true }],
  );
  return { private: pair.privateKey, public: pair.publicKey };
}

beforeAll(async () => {
  token = createSoftHsmToken({ label: 'async-pkcs11' });
  process.env.SOFTHSM2_CONF = token.conf;
  p11 = new pkcs11js.PKCS11();
  p11.load(SOFTHSM);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === token.label)!;
  anchor = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  login(anchor);
  hsm = AsyncPkcs11.bind(SOFTHSM);
  for (let i = 0; i < 8; i++) sessions.push(await hsm.openSession(slot));

  const ec = keyPair('p256', false);
  const [point] = await hsm.getAttributeValue(anchor, ec.public, [pkcs11js.CKA_EC_POINT]);
  // CKA_EC_POINT: DER OCTET STRING 04 41 ‖ 04 ‖ x ‖ y.
  expect(point!.subarray(0, 3).toString('hex')).toBe('044104');
  keys.ec = {
    ...ec,
    spki: createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: point!.subarray(3, 35).toString('base64url'), y: point!.subarray(35, 67).toString('base64url') }, format: 'jwk' }),
  };
  const rsa = keyPair('rsa2048', true);
  const [n, e] = await hsm.getAttributeValue(anchor, rsa.public, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT]);
  keys.rsa = { ...rsa, spki: createPublicKey({ key: { kty: 'RSA', n: n!.toString('base64url'), e: e!.toString('base64url') }, format: 'jwk' }) };
});

afterAll(() => {
  if (p11) {
    try {
      p11.C_Finalize();
    } catch {
      // already finalized by a failed test
    }
  }
  if (token) rmSync(token.dir, { recursive: true, force: true });
});

describe('loading', () => {
  it('when the addon is built, then it sits where scripts/build-async-pkcs11.sh puts it, and a rebuild is a no-op', () => {
    expect(ASYNC_PKCS11_ADDON).toBe(`${ROOT}/native/async-pkcs11/build/async_pkcs11.node`);
    const out = execFileSync('bash', ['scripts/build-async-pkcs11.sh'], { cwd: ROOT, encoding: 'utf8' });
    expect(out).toBe('');
  });

  it('when the addon file is missing, then bind throws AsyncPkcs11NotBuiltError naming the build script', () => {
    expect(() => AsyncPkcs11.bind(SOFTHSM, { addonPath: '/nonexistent/async_pkcs11.node' })).toThrow(AsyncPkcs11NotBuiltError);
    expect(() => AsyncPkcs11.bind(SOFTHSM, { addonPath: '/nonexistent/async_pkcs11.node' })).toThrow(/scripts\/build-async-pkcs11\.sh/);
  });

  it('when a module is not loaded in this process, then bind refuses it (it never loads or initializes one)', () => {
    expect(() => AsyncPkcs11.bind(NETSIM_MODULE)).toThrow(/is not loaded in this process/);
  });

  it('when the same module is bound again, then both bindings drive the same initialized module', async () => {
    const again = AsyncPkcs11.bind(SOFTHSM);
    expect((await again.probe(slot)).label).toBe(token.label);
  });
});

describe('sign and verify', () => {
  it('when P-256 ECDSA signs a digest, then the r‖s signature verifies with Node (OpenSSL) and on the token', async () => {
    const signature = await hsm.sign(sessions[0]!, ECDSA, keys.ec.private, DIGEST, 64);
    expect(signature.length).toBe(64);
    expect(verify('sha256', MESSAGE, { key: keys.ec.spki, dsaEncoding: 'ieee-p1363' }, signature)).toBe(true);
    expect(await hsm.verify(sessions[1]!, ECDSA, keys.ec.public, DIGEST, signature)).toBe(true);
  });

  it('when RSA-2048 PSS (SHA-256, MGF1-SHA-256, salt 32) signs a digest, then openssl and Node verify it', async () => {
    const signature = await hsm.sign(sessions[0]!, PSS, keys.rsa.private, DIGEST, 256);
    expect(signature.length).toBe(256);
    expect(opensslVerifyDigest({ publicKeyPem: keys.rsa.spki.export({ type: 'spki', format: 'pem' }).toString(), digest: DIGEST, signature, pss: true })).toMatch(
      /Signature Verified Successfully/,
    );
    expect(verify('sha256', MESSAGE, { key: keys.rsa.spki, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature)).toBe(true);
    expect(await hsm.verify(sessions[1]!, PSS, keys.rsa.public, DIGEST, signature)).toBe(true);
  });

  it('when a hash-and-sign mechanism (CKM_SHA256_RSA_PKCS_PSS) signs the message, then Node verifies it', async () => {
    const signature = await hsm.sign(sessions[0]!, { ...PSS, mechanism: pkcs11js.CKM_SHA256_RSA_PKCS_PSS }, keys.rsa.private, MESSAGE, 256);
    expect(verify('sha256', MESSAGE, { key: keys.rsa.spki, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature)).toBe(true);
  });

  it('when no output size is given, then the signature comes back whole (a 64 KiB buffer, no length query)', async () => {
    expect((await hsm.sign(sessions[0]!, PSS, keys.rsa.private, DIGEST)).length).toBe(256);
    expect((await hsm.sign(sessions[0]!, ECDSA, keys.ec.private, DIGEST)).length).toBe(64);
  });

  it('when a signature or its data is wrong, then verify answers false, not an error, and the session stays usable', async () => {
    const signature = await hsm.sign(sessions[0]!, ECDSA, keys.ec.private, DIGEST, 64);
    const tampered = Buffer.from(signature);
    tampered[10]! ^= 1;
    expect(await hsm.verify(sessions[1]!, ECDSA, keys.ec.public, DIGEST, tampered)).toBe(false);
    expect(await hsm.verify(sessions[1]!, ECDSA, keys.ec.public, DIGEST, signature.subarray(0, 63))).toBe(false);
    expect(await hsm.verify(sessions[1]!, ECDSA, keys.ec.public, createHash('sha256').update('other').digest(), signature)).toBe(false);
    expect(await hsm.verify(sessions[1]!, ECDSA, keys.ec.public, DIGEST, signature)).toBe(true);
  });

  it('when 8 sessions each sign 8 times at once, then all 64 signatures verify', async () => {
    const all = await Promise.all(
      sessions.map(async (s, i) => {
        const out: Buffer[] = [];
        for (let k = 0; k < 8; k++) out.push(await hsm.sign(s, i % 2 ? PSS : ECDSA, i % 2 ? keys.rsa.private : keys.ec.private, DIGEST, i % 2 ? 256 : 64));
        return out.map((signature) => ({ signature, rsa: i % 2 === 1 }));
      }),
    );
    for (const { signature, rsa } of all.flat()) {
      const ok = rsa
        ? verify('sha256', MESSAGE, { key: keys.rsa.spki, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature)
        : verify('sha256', MESSAGE, { key: keys.ec.spki, dsaEncoding: 'ieee-p1363' }, signature);
      expect(ok).toBe(true);
    }
  });

  it('when handles are given as bigint or number, then they mean the same objects as pkcs11js Buffers', async () => {
    const s = sessions[0]!.readBigUInt64LE(0);
    const k = Number(keys.ec.private.readBigUInt64LE(0));
    expect((await hsm.sign(s, pkcs11js.CKM_ECDSA, k, DIGEST, 64)).length).toBe(64);
  });

  it('when the caller reuses its data Buffer right after the call, then the job signed what was passed (inputs are copied)', async () => {
    const data = Buffer.from(DIGEST);
    const pending = hsm.sign(sessions[0]!, ECDSA, keys.ec.private, data, 64);
    data.fill(0);
    expect(verify('sha256', MESSAGE, { key: keys.ec.spki, dsaEncoding: 'ieee-p1363' }, await pending)).toBe(true);
  });
});

describe('errors', () => {
  it('when C_SignInit fails, then the rejection carries the CKR as .code (what ckrOf reads) and names the function', async () => {
    const err = await rejection(hsm.sign(sessions[0]!, ECDSA, Buffer.alloc(8), DIGEST, 64));
    // SoftHSMv2 answers an unknown key handle with CKR_OBJECT_HANDLE_INVALID (others: CKR_KEY_HANDLE_INVALID).
    expect([pkcs11js.CKR_KEY_HANDLE_INVALID, pkcs11js.CKR_OBJECT_HANDLE_INVALID]).toContain(err.code);
    expect(ckrOf(err)).toBe(err.code);
    expect(err.method).toBe('C_SignInit');
    expect(err.message).toMatch(/^C_SignInit: CKR_(OBJECT|KEY)_HANDLE_INVALID$/);
    expect(err.name).toBe('AsyncPkcs11Error');
  });

  it('when the mechanism does not exist, then the CKR says so', async () => {
    // (Not an RSA mechanism on the EC key: SoftHSMv2 2.6.1 crashes on C_SignInit(CKM_RSA_PKCS_PSS, EC key), through
    // pkcs11js as well.)
    const unknown = await rejection(hsm.sign(sessions[0]!, { mechanism: 0x8000_7777 }, keys.ec.private, DIGEST, 64));
    expect(unknown.code).toBe(pkcs11js.CKR_MECHANISM_INVALID);
    expect(unknown.message).toBe('C_SignInit: CKR_MECHANISM_INVALID');
  });

  it('when the session handle is not a session, then every operation rejects with CKR_SESSION_HANDLE_INVALID', async () => {
    const bogus = 0xdead_beefn;
    const codes = await Promise.all([
      rejection(hsm.sign(bogus, ECDSA, keys.ec.private, DIGEST, 64)),
      rejection(hsm.verify(bogus, ECDSA, keys.ec.public, DIGEST, Buffer.alloc(64))),
      rejection(hsm.findObjects(bogus, [])),
      rejection(hsm.getAttributeValue(bogus, keys.ec.public, [pkcs11js.CKA_LABEL])),
      rejection(hsm.closeSession(bogus)),
    ]);
    expect(codes.map((e) => e.code)).toEqual(Array(5).fill(pkcs11js.CKR_SESSION_HANDLE_INVALID));
    expect(codes.map((e) => e.method)).toEqual(['C_SignInit', 'C_VerifyInit', 'C_FindObjectsInit', 'C_GetAttributeValue', 'C_CloseSession']);
  });

  it('when the slot does not exist, then openSession and probe reject with CKR_SLOT_ID_INVALID', async () => {
    expect((await rejection(hsm.openSession(987_654n))).code).toBe(pkcs11js.CKR_SLOT_ID_INVALID);
    const probe = await rejection(hsm.probe(987_654n));
    expect(probe.code).toBe(pkcs11js.CKR_SLOT_ID_INVALID);
    expect(probe.method).toBe('C_GetTokenInfo');
  });

  it('when an argument is of the wrong kind, then the call rejects with a TypeError before any PKCS#11 call', async () => {
    await expect(hsm.sign(Buffer.alloc(4), ECDSA, keys.ec.private, DIGEST, 64)).rejects.toThrow(TypeError);
    await expect(hsm.sign(sessions[0]!, ECDSA, keys.ec.private, 'digest' as unknown as Buffer, 64)).rejects.toThrow(/data must be a Buffer/);
    await expect(hsm.sign(sessions[0]!, { mechanism: pkcs11js.CKM_AES_GCM, parameter: { type: pkcs11js.CK_PARAMS_AES_GCM } as never }, keys.ec.private, DIGEST, 64)).rejects.toThrow(
      /only RSA-PSS parameters/,
    );
    await expect(hsm.sign(sessions[0]!, ECDSA, keys.ec.private, DIGEST, 0)).rejects.toThrow(TypeError);
    await expect(hsm.findObjects(sessions[0]!, [{ type: pkcs11js.CKA_LABEL, value: new Date() as never }])).rejects.toThrow(TypeError);
  });

  it('when the output buffer is too small, then it rejects with CKR_BUFFER_TOO_SMALL and the session is clean for the next operation', async () => {
    const s = sessions[2]!;
    for (const [mechanism, key, size] of [
      [ECDSA, keys.ec.private, 10],
      [PSS, keys.rsa.private, 255],
    ] as const) {
      const err = await rejection(hsm.sign(s, mechanism, key, DIGEST, size));
      expect(err.code).toBe(pkcs11js.CKR_BUFFER_TOO_SMALL);
      expect(err.method).toBe('C_Sign');
      // No CKR_OPERATION_ACTIVE: neither for pkcs11js's own C_SignInit nor for the addon's.
      p11.C_SignInit(s, ECDSA, keys.ec.private);
      expect(verify('sha256', MESSAGE, { key: keys.ec.spki, dsaEncoding: 'ieee-p1363' }, p11.C_Sign(s, DIGEST, Buffer.alloc(64)))).toBe(true);
      expect(verify('sha256', MESSAGE, { key: keys.ec.spki, dsaEncoding: 'ieee-p1363' }, await hsm.sign(s, ECDSA, keys.ec.private, DIGEST, 64))).toBe(true);
    }
  });

  it('when C_Sign fails for another reason (data too long for the key), then the operation has ended and the session is clean', async () => {
    const s = sessions[3]!;
    const err = await rejection(hsm.sign(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, keys.rsa.private, Buffer.alloc(300, 1), 256));
    // The standard says CKR_DATA_LEN_RANGE; SoftHSMv2 answers CKR_GENERAL_ERROR. Either way C_Sign ended the operation.
    expect([pkcs11js.CKR_DATA_LEN_RANGE, pkcs11js.CKR_GENERAL_ERROR]).toContain(err.code);
    expect(err.method).toBe('C_Sign');
    expect((await hsm.sign(s, PSS, keys.rsa.private, DIGEST, 256)).length).toBe(256);
  });
});

describe('object search and attributes', () => {
  it('when searching by class and label (and CKA_ID), then it finds the handles pkcs11js finds', async () => {
    const template: pkcs11js.Template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: 'p256' },
      { type: pkcs11js.CKA_ID, value: Buffer.from('p256') },
    ];
    const found = await hsm.findObjects(sessions[0]!, template);
    expect(found).toHaveLength(1);
    expect(found[0]!.equals(keys.ec.private)).toBe(true);
    expect(found[0]!.equals(findSync(anchor, template)[0]!)).toBe(true);
    expect(await hsm.findObjects(sessions[0]!, [{ type: pkcs11js.CKA_LABEL, value: 'no such key' }])).toEqual([]);
    // Both halves of the pair carry the label: atMost stops early.
    expect(await hsm.findObjects(sessions[0]!, [{ type: pkcs11js.CKA_LABEL, value: 'p256' }])).toHaveLength(2);
    expect(await hsm.findObjects(sessions[0]!, [{ type: pkcs11js.CKA_LABEL, value: 'p256' }], 1)).toHaveLength(1);
  });

  it('when more objects match than one C_FindObjects batch (1,024), then all are returned and the search is finalized', async () => {
    const s = sessions[4]!;
    const label = 'many-data-objects';
    for (let i = 0; i < 1030; i++) {
      p11.C_CreateObject(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_VALUE, value: Buffer.from([i & 0xff]) },
      ]);
    }
    const template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_LABEL, value: label },
    ];
    const found = await hsm.findObjects(s, template);
    expect(found).toHaveLength(1030);
    expect(new Set(found.map((h) => h.toString('hex'))).size).toBe(1030);
    expect(await hsm.findObjects(s, template, 1025)).toHaveLength(1025);
    // Finalized: pkcs11js can start a search on the same session.
    expect(findSync(s, template)).toHaveLength(1030);
  });

  it('when reading attributes, then values come back as Buffers and a sensitive one as undefined', async () => {
    const [label, id, value, keyType] = await hsm.getAttributeValue(sessions[0]!, keys.ec.private, [
      pkcs11js.CKA_LABEL,
      pkcs11js.CKA_ID,
      pkcs11js.CKA_VALUE,
      pkcs11js.CKA_KEY_TYPE,
    ]);
    expect(label!.toString()).toBe('p256');
    expect(id!.toString()).toBe('p256');
    expect(value).toBeUndefined();
    expect(keyType!.readBigUInt64LE(0)).toBe(BigInt(pkcs11js.CKK_EC));
    expect(await hsm.getAttributeValue(sessions[0]!, keys.ec.private, [])).toEqual([]);
  });

  it('when the object handle is unknown, then getAttributeValue rejects with CKR_OBJECT_HANDLE_INVALID', async () => {
    expect((await rejection(hsm.getAttributeValue(sessions[0]!, 0x7777_7777n, [pkcs11js.CKA_LABEL]))).code).toBe(pkcs11js.CKR_OBJECT_HANDLE_INVALID);
  });

  it('when a private token data object is created and destroyed through the addon, then pkcs11js finds it with its values, and then no more', async () => {
    const template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_APPLICATION, value: 'hsm-gateway/addon-test' },
      { type: pkcs11js.CKA_LABEL, value: 'record:1' },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from('{"revision":1}') },
    ];
    const handle = await hsm.createObject(anchor, template);
    const search = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_APPLICATION, value: 'hsm-gateway/addon-test' },
    ];
    expect(findSync(anchor, search)).toEqual([handle]);
    const [label, value, isPrivate] = p11.C_GetAttributeValue(anchor, handle, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_VALUE }, { type: pkcs11js.CKA_PRIVATE }]);
    expect([label!.value!.toString(), value!.value!.toString(), (isPrivate!.value as Buffer)[0]]).toEqual(['record:1', '{"revision":1}', 1]);
    await hsm.destroyObject(anchor, handle);
    expect(findSync(anchor, search)).toEqual([]);
    expect((await rejection(hsm.destroyObject(anchor, handle))).code).toBe(pkcs11js.CKR_OBJECT_HANDLE_INVALID);
  });

  it('when the token refuses the template, then createObject rejects with its CKR from C_CreateObject and creates nothing', async () => {
    // A data object without CKA_CLASS is incomplete (PKCS#11 v2.40 §4.1.3: CKR_TEMPLATE_INCOMPLETE).
    const err = await rejection(hsm.createObject(anchor, [{ type: pkcs11js.CKA_LABEL, value: 'no class' }]));
    expect(err.method).toBe('C_CreateObject');
    expect(err.code).toBe(pkcs11js.CKR_TEMPLATE_INCOMPLETE);
    expect(findSync(anchor, [{ type: pkcs11js.CKA_LABEL, value: 'no class' }])).toEqual([]);
  });
});

describe('sessions and the probe', () => {
  it('when a session is opened and closed through the addon, then pkcs11js sees it open (R/W, logged in) and then gone', async () => {
    const s = await hsm.openSession(slot, pkcs11js.CKF_RW_SESSION);
    expect(s.length).toBe(8);
    const info = p11.C_GetSessionInfo(s);
    expect(info.flags & pkcs11js.CKF_RW_SESSION).toBe(pkcs11js.CKF_RW_SESSION);
    expect(info.flags & pkcs11js.CKF_SERIAL_SESSION).toBe(pkcs11js.CKF_SERIAL_SESSION);
    await hsm.closeSession(s);
    expect(() => p11.C_GetSessionInfo(s)).toThrow(/CKR_SESSION_HANDLE_INVALID/);
  });

  it('when the token is logged in, then probe reports a user session and the token; after a logout, a public one', async () => {
    const before = p11.C_GetSessionInfo(anchor);
    const probe = await hsm.probe(slot);
    expect(probe).toMatchObject({ state: CKS_RO_USER_FUNCTIONS, label: token.label, deviceError: 0, randomRv: 0 });
    expect(probe.tokenFlags & pkcs11js.CKF_TOKEN_INITIALIZED).toBe(pkcs11js.CKF_TOKEN_INITIALIZED);
    // The probe's session was closed: the anchor is untouched and no session was left behind.
    expect(p11.C_GetSessionInfo(anchor)).toEqual(before);
    p11.C_Logout(anchor);
    try {
      expect((await hsm.probe(slot)).state).toBe(CKS_RO_PUBLIC_SESSION);
    } finally {
      login(anchor);
    }
  });

  it('when the login is gone, then login logs in again on a fresh session that it leaves open, and every session of the application is a user session again', async () => {
    p11.C_Logout(anchor);
    try {
      expect((await hsm.probe(slot)).state).toBe(CKS_RO_PUBLIC_SESSION);
      const { session, state } = await hsm.login(slot, token.pin);
      expect(state).toBe(CKS_RO_USER_FUNCTIONS);
      // Left open (it holds the login), and the login is the application's: the anchor sees it too.
      expect(p11.C_GetSessionInfo(session).state).toBe(CKS_RO_USER_FUNCTIONS);
      expect(p11.C_GetSessionInfo(anchor).state).toBe(CKS_RW_USER_FUNCTIONS);
      await hsm.closeSession(session);
    } finally {
      login(anchor);
    }
  });

  it('when the user is logged in already, then login answers a user session (CKR_USER_ALREADY_LOGGED_IN is a success)', async () => {
    const { session, state } = await hsm.login(slot, token.pin);
    expect(state).toBe(CKS_RO_USER_FUNCTIONS);
    await hsm.closeSession(session);
  });

  it('when the PIN is wrong, then login rejects with CKR_PIN_INCORRECT from C_Login and leaves no session open', async () => {
    p11.C_Logout(anchor);
    try {
      const open = p11.C_GetTokenInfo(slot).sessionCount;
      const err = await rejection(hsm.login(slot, 'not-the-pin'));
      expect(err.code).toBe(pkcs11js.CKR_PIN_INCORRECT);
      expect(err.method).toBe('C_Login');
      expect(err.message).not.toContain('not-the-pin');
      // The session login opened for it was closed again.
      expect(p11.C_GetTokenInfo(slot).sessionCount).toBe(open);
      expect((await hsm.probe(slot)).state).toBe(CKS_RO_PUBLIC_SESSION);
    } finally {
      login(anchor);
    }
  });

  it('when the PIN is not a string, then login rejects with a TypeError and calls nothing', async () => {
    await expect(hsm.login(slot, 1234 as unknown as string)).rejects.toThrow(TypeError);
  });

  it('when pkcs11js finalizes and initializes the module again (the gateway recovery), then the binding works on the new state', async () => {
    p11.C_Finalize();
    expect((await rejection(hsm.probe(slot))).code).toBe(pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED);
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    anchor = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    login(anchor);
    const s = await hsm.openSession(slot);
    sessions.splice(0, sessions.length, s);
    const [key] = await hsm.findObjects(s, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_LABEL, value: 'p256' },
    ]);
    expect(key).toBeDefined();
    expect(verify('sha256', MESSAGE, { key: keys.ec.spki, dsaEncoding: 'ieee-p1363' }, await hsm.sign(s, ECDSA, key!, DIGEST, 64))).toBe(true);
  });
  it('when the addon re-initializes the module (reinitialize), then every old session is gone for pkcs11js too, the slot of the label comes back, and a login there signs', async () => {
    const old = sessions[0]!;
    const found = await hsm.reinitialize(token.label);
    expect(found.equals(slot)).toBe(true);
    expect(() => p11.C_GetSessionInfo(old)).toThrow(/CKR_SESSION_HANDLE_INVALID/);
    const { session, state } = await hsm.login(found, token.pin);
    expect(state).toBe(CKS_RO_USER_FUNCTIONS);
    anchor = session;
    sessions.splice(0, sessions.length, session);
    const [key] = await hsm.findObjects(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_LABEL, value: 'p256' },
    ]);
    expect(verify('sha256', MESSAGE, { key: keys.ec.spki, dsaEncoding: 'ieee-p1363' }, await hsm.sign(session, ECDSA, key!, DIGEST, 64))).toBe(true);
    expect((await rejection(hsm.reinitialize('no such token'))).code).toBe(pkcs11js.CKR_TOKEN_NOT_PRESENT);
    expect((await hsm.reinitialize(token.label)).equals(slot)).toBe(true);
    anchor = (await hsm.login(slot, token.pin)).session;
    sessions.splice(0, sessions.length, anchor);
  });
});
