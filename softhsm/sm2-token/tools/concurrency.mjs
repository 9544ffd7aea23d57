// Parallel signing through pkcs11js, the way the gateway signs: SESSIONS sessions, each signing SIGNATURES random e
// values one after another with C_SignAsync (libuv worker threads), all sessions at once; then every signature
// is checked with C_Verify on the token. Prints one JSON line; exit status 0 when every signature verified.
//
//   SM2TOKEN_DIR=<empty dir> UV_THREADPOOL_SIZE=16 node concurrency.mjs <libsm2token.so> [sessions] [signatures]
//
// Run in its own process because UV_THREADPOOL_SIZE only counts before the libuv pool first starts, which a
// vitest worker has long done by the time a test file runs. The ASan check runs this script under
// LD_PRELOAD=libasan.so with build/libsm2token-asan.so.
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';

const [modulePath, sessionsArg = '8', signaturesArg = '50'] = process.argv.slice(2);
if (!modulePath || !process.env.SM2TOKEN_DIR) {
  console.error('usage: SM2TOKEN_DIR=<empty dir> node concurrency.mjs <libsm2token.so> [sessions] [signatures]');
  process.exit(2);
}
const SESSIONS = Number(sessionsArg);
const SIGNATURES = Number(signaturesArg);
// sm2-vendor.h
const CKM_VENDOR_SM2_KEY_PAIR_GEN = 0x80001001;
const CKM_VENDOR_SM2_SIGN_E = 0x80001002;
const CKM_VENDOR_SM2_SIGN_E_DER = 0x80001003;

const p11 = new pkcs11js.PKCS11();
p11.load(modulePath);
p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
const [slot] = p11.C_GetSlotList(true);
p11.C_InitToken(slot, 'so-pin-1', 'concurrency'.padEnd(32, ' '));
const admin = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
p11.C_Login(admin, pkcs11js.CKU_SO, 'so-pin-1');
p11.C_InitPIN(admin, 'user-pin');
p11.C_Logout(admin);
p11.C_Login(admin, pkcs11js.CKU_USER, 'user-pin');
const common = [
  { type: pkcs11js.CKA_TOKEN, value: true },
  { type: pkcs11js.CKA_LABEL, value: 'concurrency' },
];
const { publicKey, privateKey } = p11.C_GenerateKeyPair(
  admin,
  { mechanism: CKM_VENDOR_SM2_KEY_PAIR_GEN },
  [...common, { type: pkcs11js.CKA_VERIFY, value: true }],
  [...common, { type: pkcs11js.CKA_SIGN, value: true }, { type: pkcs11js.CKA_PRIVATE, value: true }],
);

const started = Date.now();
const sessions = Array.from({ length: SESSIONS }, () => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION));
let inFlight = 0;
let maxInFlight = 0;
const signed = await Promise.all(
  sessions.map(async (session, i) => {
    // Even sessions ask for r || s, odd ones for DER: both output paths run concurrently.
    const mechanism = i % 2 === 0 ? CKM_VENDOR_SM2_SIGN_E : CKM_VENDOR_SM2_SIGN_E_DER;
    const out = [];
    for (let n = 0; n < SIGNATURES; n++) {
      const e = randomBytes(32);
      p11.C_SignInit(session, { mechanism }, privateKey);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      const signature = await p11.C_SignAsync(session, e, Buffer.alloc(72));
      inFlight--;
      out.push({ mechanism, e, signature });
    }
    return out;
  }),
);
const signMs = Date.now() - started;

let verified = 0;
const failures = [];
for (const { mechanism, e, signature } of signed.flat()) {
  p11.C_VerifyInit(admin, { mechanism }, publicKey);
  try {
    p11.C_Verify(admin, e, signature);
    verified++;
  } catch (err) {
    failures.push({ e: e.toString('hex'), signature: signature.toString('hex'), error: String(err) });
  }
}
// A changed e must not verify (the verifier is not simply saying yes).
const first = signed[0][0];
const tampered = Buffer.from(first.e);
tampered[0] ^= 1;
p11.C_VerifyInit(admin, { mechanism: first.mechanism }, publicKey);
let tamperedRefused = false;
try {
  p11.C_Verify(admin, tampered, first.signature);
} catch (err) {
  tamperedRefused = err.code === pkcs11js.CKR_SIGNATURE_INVALID;
}
for (const s of sessions) p11.C_CloseSession(s);
p11.C_Finalize();
p11.close();

const total = SESSIONS * SIGNATURES;
console.log(
  JSON.stringify({
    sessions: SESSIONS,
    signatures: total,
    verified,
    tamperedRefused,
    maxInFlight,
    signMs,
    threadpool: process.env.UV_THREADPOOL_SIZE ?? '4 (default)',
    failures: failures.slice(0, 3),
  }),
);
process.exit(verified === total && tamperedRefused ? 0 : 1);
