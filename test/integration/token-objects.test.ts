import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openssl } from '../helpers/openssl.js';
import { SOFTHSM_MODULE, startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// What the bootstrap put on the token, seen by an independent PKCS#11 client (OpenSC's pkcs11-tool).
let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway();
});
afterAll(async () => {
  await gw?.close();
});

function pkcs11Tool(args: string[]): Buffer {
  return execFileSync('pkcs11-tool', ['--module', SOFTHSM_MODULE, '--token-label', 'hsm-gateway-demo', ...args], {
    env: { ...process.env, SOFTHSM2_CONF: join(gw.home, 'softhsm', 'softhsm2.conf') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

describe('the demo keys on the token', () => {
  it('when pkcs11-tool reads each public key from the token, then it is the key demo.json publishes', () => {
    // SM2 keys live on the SM2 test token, not on SoftHSM.
    for (const key of gw.demo.keys.filter((k) => k.keySpec !== 'EC_SM2')) {
      const label = `${key.alias.slice('alias/'.length)}/${key.keyVersionId}`;
      const out = join(gw.home, 'pub.der');
      pkcs11Tool(['--read-object', '--type', 'pubkey', '--label', label, '-o', out]);
      const der = readFileSync(out);
      const pem = openssl({ 'pub.der': der }, (p) => ['pkey', '-pubin', '-inform', 'DER', '-in', p('pub.der')]);
      expect(pem).toBe(key.publicKeyPem.trim());
    }
  });

  it('when the private keys are listed, then each is sensitive, never extractable, generated on the token, and signs only', () => {
    const listing = pkcs11Tool(['--login', '--pin', gw.pin, '--list-objects', '--type', 'privkey']).toString();
    const objects = listing.split('Private Key Object').slice(1);
    // The KMS keys, the root and intermediate CA keys, and one key per leaf certificate.
    const softhsmKeys = gw.demo.keys.filter((k) => k.keySpec !== 'EC_SM2').length;
    const softhsmCerts = gw.demo.certificates.filter((c) => c.keySpec !== 'EC_SM2').length;
    expect(objects).toHaveLength(softhsmKeys + 2 + softhsmCerts);
    for (const o of objects) {
      expect(o).toMatch(/Access:\s+sensitive, always sensitive, never extractable, local/);
      expect(o).toMatch(/Usage:\s+sign\s*\n/);
    }
  });
});

describe('the demo certificates on the token', () => {
  it('when the certificate objects are listed, then each demo certificate is there and shares its CKA_ID with a private key', () => {
    const certs = pkcs11Tool(['--list-objects', '--type', 'cert']).toString().split('Certificate Object').slice(1);
    const keys = pkcs11Tool(['--login', '--pin', gw.pin, '--list-objects', '--type', 'privkey']).toString();
    const keyIds = new Set([...keys.matchAll(/ID:\s+([0-9a-f]+)/g)].map((m) => m[1]));
    // Root, intermediate and the leaves.
    expect(certs).toHaveLength(2 + gw.demo.certificates.filter((c) => c.keySpec !== 'EC_SM2').length);
    for (const c of certs) expect(keyIds.has(/ID:\s+([0-9a-f]+)/.exec(c)![1])).toBe(true);
  });
});
