// A first signed request: the official @alicloud/kms20160120 client, pointed at the gateway, signs a message with
// every demo key, in each algorithm its key spec takes; openssl verifies each signature over the message with the
// key's public key from demo.json.
//   RSA_2048, RSA_3072  RSA_PKCS1_SHA_256 and RSA_PSS_SHA_256 (salt length 32), Digest = SHA-256(M)
//   EC_P256, EC_P256K   ECDSA_SHA_256, Digest = SHA-256(M)
//   EC_SM2              SM2DSA, Digest = e = SM3(Z_A ‖ M) (GB/T 32918.2): AsymmetricSign takes a digest only, so the
//                       client computes Z_A from the key's public key (GetPublicKey) and the default user id
// Usage: node examples/asymmetric-sign.mjs   (HSM_GATEWAY_HOME selects another data directory)
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import KmsModule from '@alicloud/kms20160120';

const Kms = KmsModule.default;
const { AsymmetricSignRequest, GetPublicKeyRequest } = KmsModule;
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

// SM2 (GB/T 32918.2-2016 §5.5): Z_A = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA), with the default user id that
// the gateway and `openssl … -pkeyopt distid:1234567812345678` use; curve parameters from GB/T 32918.5-2017.
const SM2_USER_ID = '1234567812345678';
const SM2_CURVE = Buffer.from(
  'FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC' + // a
    '28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93' + // b
    '32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7' + // xG
    'BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0', // yG
  'hex',
);
/** xA ‖ yA: the end of the SubjectPublicKeyInfo, a BIT STRING (03 42 00) holding the uncompressed point 04 ‖ x ‖ y. */
function sm2Point(publicKeyPem) {
  const der = Buffer.from(publicKeyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const bitString = der.subarray(der.length - 68);
  if (bitString.toString('hex', 0, 4) !== '03420004') throw new Error('not an SM2 public key (uncompressed point expected)');
  return bitString.subarray(4);
}
function sm2Digest(publicKeyPem, message) {
  const id = Buffer.from(SM2_USER_ID, 'ascii');
  const entl = Buffer.alloc(2);
  entl.writeUInt16BE(id.length * 8);
  const za = createHash('sm3').update(entl).update(id).update(SM2_CURVE).update(sm2Point(publicKeyPem)).digest();
  return createHash('sm3').update(za).update(message).digest();
}

/** The algorithms a key spec takes in AsymmetricSign, with how to make the digest and how openssl verifies. */
function algorithmsFor(keySpec) {
  const sha256 = async () => createHash('sha256').update(message).digest();
  const dgst = (...sigopts) => (f) => ['dgst', '-sha256', '-verify', f('public.pem'), '-signature', f('signature.bin'), ...sigopts, f('message.bin')];
  if (keySpec.startsWith('RSA_')) {
    return [
      { algorithm: 'RSA_PKCS1_SHA_256', digest: sha256, verify: dgst() },
      { algorithm: 'RSA_PSS_SHA_256', digest: sha256, verify: dgst('-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32') },
    ];
  }
  if (keySpec === 'EC_P256' || keySpec === 'EC_P256K') return [{ algorithm: 'ECDSA_SHA_256', digest: sha256, verify: dgst() }];
  if (keySpec === 'EC_SM2') {
    return [
      {
        algorithm: 'SM2DSA',
        // The public key as any client gets it: GetPublicKey.
        digest: async (key) => sm2Digest((await kms.getPublicKey(new GetPublicKeyRequest({ keyId: key.alias, keyVersionId: key.keyVersionId }))).publicKey, message),
        verify: (f) => ['pkeyutl', '-verify', '-pubin', '-inkey', f('public.pem'), '-rawin', '-in', f('message.bin'), '-sigfile', f('signature.bin'),
          '-digest', 'sm3', '-pkeyopt', `distid:${SM2_USER_ID}`],
      },
    ];
  }
  throw new Error(`no AsymmetricSign algorithm for key spec ${keySpec}`);
}

const work = mkdtempSync(join(tmpdir(), 'hsm-gateway-example-'));
const file = (name) => join(work, name);
try {
  writeFileSync(file('message.bin'), message);
  for (const key of demo.keys) {
    writeFileSync(file('public.pem'), key.publicKeyPem);
    for (const { algorithm, digest, verify } of algorithmsFor(key.keySpec)) {
      const d = (await digest(key)).toString('base64');
      const r = await kms.asymmetricSign(new AsymmetricSignRequest({ keyId: key.alias, keyVersionId: key.keyVersionId, algorithm, digest: d }));
      writeFileSync(file('signature.bin'), Buffer.from(r.value, 'base64'));
      // execFileSync throws (and the example exits 1) when openssl refuses the signature.
      const verdict = execFileSync('openssl', verify(file), { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
      console.log(`${key.alias.padEnd(22)} ${algorithm.padEnd(18)} KeyId ${r.keyId}  openssl: ${verdict}`);
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
