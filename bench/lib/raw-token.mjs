// The raw token: pkcs11js C_SignInit + C_SignAsync straight on the token, no gateway, N sessions each keeping one
// sign in flight. The same keys and the same mechanisms the gateway uses for the same request.
import pkcs11js from 'pkcs11js';
import { join } from 'node:path';
import { DIGEST, ROOT } from './common.mjs';

const label = (raw) => raw.replace(/[\s\0]+$/, '');

/**
 * Opens a token (by label) with `sessions` sessions, logged in; returns a sign loop factory. `signer`: how each sign
 * is made — pkcs11js (C_SignInit on this thread + C_SignAsync, the default: SoftHSMv2's best), or the gateway's
 * native addon (C_SignInit + C_Sign as one job off the thread: on an emulated network HSM a C_SignInit round trip on
 * this thread would cap the token at 1 / delay).
 */
export async function openRawToken({ module, tokenLabel, pin, environment = {}, sessions, signer = 'pkcs11js' }) {
  for (const [k, v] of Object.entries(environment)) process.env[k] = v;
  const p11 = new pkcs11js.PKCS11();
  p11.load(module);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p11.C_GetSlotList(true).find((s) => label(p11.C_GetTokenInfo(s).label) === tokenLabel);
  if (slot === undefined) throw new Error(`no token ${tokenLabel}`);
  const all = Array.from({ length: sessions }, () => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION));
  p11.C_Login(all[0], pkcs11js.CKU_USER, pin);
  let signOnce = (session, c, key, data) => {
    p11.C_SignInit(session, c.mechanism, key);
    return p11.C_SignAsync(session, data, Buffer.alloc(c.out));
  };
  if (signer === 'addon') {
    const { AsyncPkcs11 } = await import(join(ROOT, 'dist/hsm/async-pkcs11.js'));
    const offThread = AsyncPkcs11.bind(module);
    signOnce = (session, c, key, data) => offThread.sign(session, c.mechanism, key, data, c.out);
  }
  const findKey = (keyLabel) => {
    p11.C_FindObjectsInit(all[0], [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: keyLabel }]);
    const [key] = p11.C_FindObjects(all[0], 1);
    p11.C_FindObjectsFinal(all[0]);
    if (key === undefined) throw new Error(`no private key ${keyLabel}`);
    return key;
  };
  return {
    p11,
    findKey,
    /** Signs for `seconds` with `n` sessions, each one sign at a time; ops/s and latency percentiles (ms). */
    async measure(c, key, n, seconds) {
      const data = c.input(DIGEST);
      const latencies = [];
      let count = 0;
      let errors = 0;
      const end = performance.now() + seconds * 1000;
      const started = performance.now();
      await Promise.all(
        all.slice(0, n).map(async (session) => {
          while (performance.now() < end) {
            const t = performance.now();
            try {
              await signOnce(session, c, key, data);
              count++;
              latencies.push(performance.now() - t);
            } catch {
              errors++;
            }
          }
        }),
      );
      const elapsed = (performance.now() - started) / 1000;
      latencies.sort((a, b) => a - b);
      const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? NaN;
      return { sessions: n, opsPerSecond: count / elapsed, errors, latencyMs: { p50: q(50), p99: q(99), p999: q(99.9) } };
    },
    close() {
      try {
        p11.C_Logout(all[0]);
      } catch {}
      p11.C_Finalize();
    },
  };
}
