import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import winston from 'winston';
import { bootstrapDemo } from '../../src/demo/bootstrap.js';
import { generateKey } from '../../src/demo/pki.js';
import { openUserSession } from '../../src/demo/token-work.js';
import { Token } from '../../src/hsm/token.js';
import { findSlotByLabel, initializeModule } from '../../src/hsm/module.js';
import { type KeyRef } from '../../src/hsm/objects.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// Many keys are found by listing the token's objects once (a search per key scans every object: quadratic).
let home: string;
let pin: string;
const refs: KeyRef[] = [];

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-bulk-'));
  bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  pin = readFileSync(join(home, 'secrets', 'user-pin'), 'utf8').trim();
  const p11 = new pkcs11js.PKCS11();
  initializeModule(p11, SOFTHSM_MODULE);
  try {
    const session = openUserSession(p11, findSlotByLabel(p11, 'hsm-gateway-demo')!, pin);
    for (let i = 0; i < 24; i++) {
      const key = generateKey(p11, session, 'EC_P256', `bulk-${i}`);
      refs.push({ label: key.label, id: key.id.toString('hex') });
    }
    // Two objects with one label: ambiguous without its CKA_ID, found with it.
    const twin = generateKey(p11, session, 'EC_P256', 'bulk-0');
    refs.push({ label: twin.label, id: twin.id.toString('hex').toUpperCase() });
  } finally {
    p11.C_Finalize();
  }
}, 60_000);
afterAll(() => rmSync(home, { recursive: true, force: true }));

describe('Token.preload with more keys than the per-key search threshold', () => {
  it('when keys are present, absent, ambiguous or under another CKA_ID, then exactly the unusable ones are missing, and the found ones sign', async () => {
    const token = new Token(
      { name: 'default', modulePath: SOFTHSM_MODULE, tokenLabel: 'hsm-gateway-demo', pin, sessions: 2, acquireTimeoutMs: 1000, healthIntervalMs: 0 },
      winston.createLogger({ silent: true }),
    );
    token.open();
    try {
      const absent = { label: 'no-such-key' };
      const wrongId = { label: 'bulk-1', id: '00' };
      const ambiguous = { label: 'bulk-0' };
      const { missing } = token.preload([...refs, absent, wrongId, ambiguous], 'private');
      expect(missing).toEqual([absent, wrongId, ambiguous]);
      expect(token.preload(refs, 'public').missing).toEqual([]);
      for (const ref of [refs[3]!, refs.at(-1)!]) {
        const signature = await token.sign(ref, { mechanism: pkcs11js.CKM_ECDSA }, Buffer.alloc(32, 7), 64);
        expect(signature.length).toBe(64);
      }
    } finally {
      await token.close();
    }
  });
});
