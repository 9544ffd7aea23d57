// Sign with a certificate whose key is on the HSM: the official @alicloud/cas20200407 client asks the gateway for
// a SHA256withRSA/P7 (CMS) signature, and `openssl cms -verify` checks it against the demo root CA.
// Usage: node examples/cas-sign.mjs   (HSM_GATEWAY_HOME selects another data directory)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const Cas = require('@alicloud/cas20200407');
const { $OpenApiUtil } = require('@alicloud/openapi-core');

const home = resolve(process.env.HSM_GATEWAY_HOME ?? join(dirname(fileURLToPath(import.meta.url)), '..', '.data'));
const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));
const cert = demo.certificates.find((c) => c.keySpec === 'RSA_2048');

const cas = new Cas.default(
  new $OpenApiUtil.Config({
    endpoint: demo.endpoint.replace(/^https?:\/\//, ''),
    protocol: 'http',
    regionId: 'cn-hangzhou',
    accessKeyId: demo.accessKeyId,
    accessKeySecret: readFileSync(demo.accessKeySecretFile, 'utf8').trim(),
  }),
);

const message = 'hello from hsm-gateway';
const r = await cas.sign(new Cas.SignRequest({ certIdentifier: cert.casIdentifier, message, messageType: 'RAW', signingAlgorithm: 'SHA256withRSA/P7' }));

const work = mkdtempSync(join(tmpdir(), 'hsm-gateway-example-'));
writeFileSync(join(work, 'data.bin'), message);
writeFileSync(join(work, 'p7.der'), Buffer.from(r.body.signature, 'base64'));
writeFileSync(join(work, 'root.pem'), demo.rootCertificatePem);
// execFileSync throws when openssl refuses the signature.
execFileSync('openssl', ['cms', '-verify', '-binary', '-inform', 'DER', '-in', join(work, 'p7.der'), '-content', join(work, 'data.bin'),
  '-CAfile', join(work, 'root.pem'), '-out', '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
console.log(`CAS Sign SHA256withRSA/P7 with certificate ${cert.casIdentifier}: ${r.body.signature.length} Base64 chars; openssl: CMS Verification successful`);
rmSync(work, { recursive: true, force: true });
