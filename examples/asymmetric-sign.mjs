// A first signed request: the official @alicloud/kms20160120 client, pointed at the gateway, signs a SHA-256
// digest with every demo key; openssl verifies each signature with the key's public key from demo.json.
// Usage: node examples/asymmetric-sign.mjs   (HSM_GATEWAY_HOME selects another data directory)
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import KmsModule from '@alicloud/kms20160120';

const Kms = KmsModule.default;
const { AsymmetricSignRequest } = KmsModule;
const home = resolve(process.env.HSM_GATEWAY_HOME ?? join(dirname(fileURLToPath(import.meta.url)), '..', '.data'));
const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));

const kms = new Kms({
  endpoint: demo.endpoint.replace(/^https?:\/\//, ''),
  protocol: 'http',
  regionId: 'cn-hangzhou',
  accessKeyId: demo.accessKeyId,
  accessKeySecret: readFileSync(demo.accessKeySecretFile, 'utf8').trim(),
});

const message = Buffer.from('hello from hsm-gateway');
const digest = createHash('sha256').update(message).digest('base64');
const work = mkdtempSync(join(tmpdir(), 'hsm-gateway-example-'));
writeFileSync(join(work, 'message.bin'), message);

for (const key of demo.keys) {
  const algorithm = key.keySpec.startsWith('RSA') ? 'RSA_PKCS1_SHA_256' : 'ECDSA_SHA_256';
  const r = await kms.asymmetricSign(new AsymmetricSignRequest({ keyId: key.alias, keyVersionId: key.keyVersionId, algorithm, digest }));
  writeFileSync(join(work, 'public.pem'), key.publicKeyPem);
  writeFileSync(join(work, 'signature.bin'), Buffer.from(r.value, 'base64'));
  const verdict = execFileSync('openssl', ['dgst', '-sha256', '-verify', join(work, 'public.pem'), '-signature', join(work, 'signature.bin'), join(work, 'message.bin')])
    .toString()
    .trim();
  console.log(`${key.alias.padEnd(22)} ${algorithm.padEnd(18)} KeyId ${r.keyId}  openssl: ${verdict}`);
}
rmSync(work, { recursive: true, force: true });
