import type { RawPublicKey } from '../hsm/objects.js';
import { publicKeyPem } from '../signing/public-key.js';
import type { KeyRecord, KeyVersionRecord } from './registry.js';

/**
 * The public key of every key version, read from the token's public key objects once, at start-up (GetPublicKey
 * answers from here, so no PKCS#11 call runs per request). A key spec that does not match the token's key
 * refuses to start; a version without a public key object is left out (and logged by the caller).
 */
export function loadPublicKeys(
  keys: readonly KeyRecord[],
  read: (key: KeyRecord, version: KeyVersionRecord) => RawPublicKey | undefined,
  /** A PEM already known for this version (an earlier snapshot's): no token call. */
  known: (key: KeyRecord, version: KeyVersionRecord) => string | undefined = () => undefined,
): Map<string, string> {
  const pems = new Map<string, string>();
  for (const key of keys) {
    for (const version of key.versions) {
      const pem = known(key, version);
      if (pem !== undefined) {
        pems.set(version.keyVersionId, pem);
        continue;
      }
      const raw = read(key, version);
      if (raw) pems.set(version.keyVersionId, publicKeyPem(raw, key.keySpec));
    }
  }
  return pems;
}
