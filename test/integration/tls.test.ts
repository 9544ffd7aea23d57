import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// TLS on the listener, with client certificates required (mTLS); certificates made by the openssl CLI.
let gw: TestGateway;
let dir: string;
const file = (name: string) => join(dir, name);
const sh = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-tls-'));
  sh('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', file('ca.key'), '-out', file('ca.pem'), '-subj', '/CN=test CA', '-days', '2');
  for (const [name, ext] of [
    ['server', 'subjectAltName=IP:127.0.0.1'],
    ['client', 'extendedKeyUsage=clientAuth'],
  ] as const) {
    sh('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', file(`${name}.key`), '-out', file(`${name}.csr`), '-subj', `/CN=${name}`);
    writeFileSync(file(`${name}.ext`), ext);
    sh('x509', '-req', '-in', file(`${name}.csr`), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`));
  }
  gw = await startTestGateway({
    editConfig(config) {
      config.server.tls = { cert: file('server.pem'), key: { file: file('server.key') }, clientCa: file('ca.pem'), requireClientCertificate: true };
    },
  });
});
afterAll(async () => {
  await gw?.close();
  rmSync(dir, { recursive: true, force: true });
});

function get(path: string, withClientCertificate: boolean): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(
      `${gw.url}${path}`,
      {
        ca: readFileSync(file('ca.pem')),
        ...(withClientCertificate ? { cert: readFileSync(file('client.pem')), key: readFileSync(file('client.key')) } : {}),
      },
      (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
  });
}

describe('TLS listener with client certificates', () => {
  it('when a client presents a certificate from the configured CA, then a signed request is answered over https', async () => {
    expect(gw.url.startsWith('https://')).toBe(true);
    const key = gw.demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    const params = v1Params(gw.demo.accessKeyId, { KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: createHash('sha256').update('tls').digest('base64') });
    const r = await get(`/?${toQuery(signV1(params, gw.secret))}`, true);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body).KeyId).toBe(key.keyId);
  });

  it('when a client has no certificate, then the TLS handshake is refused before any HTTP', async () => {
    await expect(get('/healthz', false)).rejects.toThrow();
  });
});
