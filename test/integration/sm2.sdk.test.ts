import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoCertificate } from '../../src/demo/pki.js';
import { sm2E, sm2Za } from '../../src/signing/sm2.js';
import { parseCertificate } from '../../src/signing/x509.js';
import { certificatePublicKey, opensslVerifySm2 } from '../helpers/openssl.js';
import { casClient, kmsClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// SM2 through the official clients, on the SM2 test token (a vendor-style PKCS#11 module); OpenSSL verifies.
let gw: TestGateway;
let creds: Credentials;
const sm2Key = () => gw.demo.keys.find((k) => k.keySpec === 'EC_SM2')!;
const sm2Cert = (): DemoCertificate => gw.demo.certificates.find((c) => c.keySpec === 'EC_SM2')!;
/** The uncompressed point at the end of an SM2 SubjectPublicKeyInfo PEM. */
const pointOf = (pem: string) => {
  const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  return der.subarray(der.length - 65);
};
const eOf = (pem: string, message: Buffer) => sm2E(sm2Za(pointOf(pem)), message);

beforeAll(async () => {
  gw = await startTestGateway();
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
  if (!sm2Key()) throw new Error('the demo has no SM2 key: is softhsm/sm2-token built (scripts/build-sm2-token.sh)?');
});
afterAll(async () => {
  await gw?.close();
});

describe('KMS AsymmetricSign / AsymmetricVerify / GetPublicKey with SM2DSA', () => {
  it('when the client sends e = SM3(Z_A ‖ M) as Digest, then the signature verifies with openssl over M (distid 1234567812345678)', async () => {
    const key = sm2Key();
    const message = randomBytes(200);
    const digest = eOf(key.publicKeyPem, message).toString('base64');
    const kms = kmsClient(creds);
    const r = await kms.asymmetricSign({ keyId: key.alias, keyVersionId: key.keyVersionId, algorithm: 'SM2DSA', digest });
    expect(r.keyId).toBe(key.keyId);
    const signature = Buffer.from(r.value, 'base64');
    expect(signature[0]).toBe(0x30);
    expect(opensslVerifySm2({ publicKeyPem: key.publicKeyPem, message, signature })).toContain('Signature Verified Successfully');
    const v = await kms.asymmetricVerify({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'SM2DSA', digest, value: r.value });
    expect(v.value).toBe(true);
    const tampered = await kms.asymmetricVerify({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'SM2DSA', digest: eOf(key.publicKeyPem, Buffer.from('other')).toString('base64'), value: r.value });
    expect(tampered.value).toBe(false);
    expect((await kms.getPublicKey({ keyId: key.alias, keyVersionId: key.keyVersionId })).publicKey).toBe(key.publicKeyPem);
  });

  const refusals = [
    { when: 'SM2DSA is asked of an RSA key', req: () => ({ ...gw.demo.keys[0]!, algorithm: 'SM2DSA' }), code: 'InvalidParameterError' },
    { when: 'ECDSA is asked of the SM2 key', req: () => ({ ...sm2Key(), algorithm: 'ECDSA_SHA_256' }), code: 'InvalidParameterError' },
  ];
  for (const r of refusals) {
    it(`when ${r.when}, then it is InvalidParameter (400)`, async () => {
      const k = r.req();
      await expect(kmsClient(creds).asymmetricSign({ keyId: k.keyId, keyVersionId: k.keyVersionId, algorithm: k.algorithm, digest: randomBytes(32).toString('base64') })).rejects.toMatchObject({ code: r.code });
    });
  }

  it('when e has the wrong length, then it is InvalidParameter (400)', async () => {
    const k = sm2Key();
    await expect(kmsClient(creds).asymmetricSign({ keyId: k.keyId, keyVersionId: k.keyVersionId, algorithm: 'SM2DSA', digest: randomBytes(31).toString('base64') })).rejects.toMatchObject({
      code: 'InvalidParameterError',
    });
  });
});

describe('KMS CertificatePrivateKeySign with SM2DSA (openapi-client, V3)', () => {
  for (const type of ['RAW', 'DIGEST'] as const) {
    it(`when a ${type} message is signed, then openssl verifies it over the message with the certificate's key`, async () => {
      const cert = sm2Cert();
      const publicKeyPem = certificatePublicKey(cert.certificatePem);
      const message = randomBytes(1000);
      const payload = type === 'RAW' ? message : eOf(publicKeyPem, message);
      const r = await openApiCall(creds, 'CertificatePrivateKeySign', '2016-01-20', {
        CertificateId: cert.certificateId,
        Algorithm: 'SM2DSA',
        Message: payload.toString('base64'),
        MessageType: type,
      });
      expect(opensslVerifySm2({ publicKeyPem, message, signature: Buffer.from(r.body.SignatureValue, 'base64') })).toContain('Signature Verified Successfully');
    });
  }
});

describe('CAS Sign with SM3withSM2 (cas20200407)', () => {
  for (const type of ['RAW', 'BASE64', 'DIGEST'] as const) {
    it(`when a ${type} message is signed, then openssl verifies it over the message`, async () => {
      const cert = sm2Cert();
      const publicKeyPem = certificatePublicKey(cert.certificatePem);
      const text = `国密 SM2 ${randomBytes(4).toString('hex')}`;
      const message = Buffer.from(text);
      const payload = type === 'RAW' ? text : type === 'BASE64' ? message.toString('base64') : eOf(publicKeyPem, message).toString('base64');
      const r = await casClient(creds).sign({ certIdentifier: cert.casIdentifier, message: payload, messageType: type, signingAlgorithm: 'SM3withSM2' });
      expect(opensslVerifySm2({ publicKeyPem, message, signature: Buffer.from(r.body.signature, 'base64') })).toContain('Signature Verified Successfully');
      const v = await casClient(creds).verify({ certIdentifier: cert.casIdentifier, message: payload, messageType: type, signingAlgorithm: 'SM3withSM2', signatureValue: r.body.signature });
      expect(v.body.signatureValid).toBe(true);
    });
  }

  it('when the SM2 certificate is checked, then its SM2-with-SM3 signature verifies with the SM2 root CA key', () => {
    // OpenSSL 3.0's `verify` cannot check SM2 certificate chains (it fails on its own SM2 certificates too), so the
    // signature is checked directly: TBS, signature and the root's key, with the default SM2 user id.
    const der = (pem: string) => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const leaf = parseCertificate(der(sm2Cert().certificatePem));
    expect(leaf.signatureAlgorithm.algorithmId).toBe('1.2.156.10197.1.501');
    const rootPublicKeyPem = certificatePublicKey(gw.demo.sm2RootCertificatePem!);
    expect(
      opensslVerifySm2({ publicKeyPem: rootPublicKeyPem, message: Buffer.from(leaf.tbsView), signature: Buffer.from(leaf.signatureValue.valueBlock.valueHexView) }),
    ).toContain('Signature Verified Successfully');
  });
});

describe('a token profile without SM2', () => {
  it('when a CAS SM3withSM2 request names an RSA certificate, then it is InvalidParameter (400)', async () => {
    const rsa = gw.demo.certificates.find((c) => c.keySpec === 'RSA_2048')!;
    await expect(casClient(creds).sign({ certIdentifier: rsa.casIdentifier, message: 'm', messageType: 'RAW', signingAlgorithm: 'SM3withSM2' })).rejects.toMatchObject({
      code: 'InvalidParameter',
    });
  });
});
