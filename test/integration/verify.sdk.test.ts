import { createHash, generateKeyPairSync, randomBytes, sign as nodeSign } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoCertificate } from '../../src/demo/pki.js';
import { buildDetachedSignedData } from '../../src/signing/cms.js';
import { issueCertificate } from '../../src/signing/x509.js';
import { opensslVerifyDigest } from '../helpers/openssl.js';
import { casClient, DEMO_SIGN_PAIRS, kmsClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Sign → verify round trips through the official clients; any change to digest, message or signature is false.
const LIMITED = { accessKeyId: 'LTAIverifylimitedve01', secret: 'limited-secret-value', account: 'default' };
let gw: TestGateway;
let creds: Credentials;
const key = (alias: string) => gw.demo.keys.find((k) => k.alias === alias)!;
const cert = (keySpec: string): DemoCertificate => gw.demo.certificates.find((c) => c.keySpec === keySpec)!;
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest();
const flip = (b: Buffer, at = 0) => Buffer.from(b.map((x, i) => (i === at ? x ^ 1 : x)));

beforeAll(async () => {
  gw = await startTestGateway({
    extraAccessKeys: [LIMITED],
    editRegistry(registry, demo) {
      registry.keys.find((k) => k.aliases?.includes('alias/demo-rsa-3072'))!.accessKeyIds = [demo.accessKeyId];
    },
  });
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

const PAIRS = DEMO_SIGN_PAIRS;

describe('KMS GetPublicKey and AsymmetricVerify (@alicloud/kms20160120)', () => {
  for (const p of PAIRS) {
    it(`when ${p.alias} signs with ${p.algorithm}, then GetPublicKey's PEM verifies it in openssl and AsymmetricVerify says true; tampering says false`, async () => {
      const k = key(p.alias);
      const kms = kmsClient(creds);
      const digest = sha256(randomBytes(16));
      const signed = await kms.asymmetricSign({ keyId: k.alias, keyVersionId: k.keyVersionId, algorithm: p.algorithm, digest: digest.toString('base64') });
      const pub = await kms.getPublicKey({ keyId: k.alias, keyVersionId: k.keyVersionId });
      expect(pub.keyId).toBe(k.keyId);
      expect(pub.keyVersionId).toBe(k.keyVersionId);
      expect(pub.publicKey).toBe(k.publicKeyPem);
      const signature = Buffer.from(signed.value, 'base64');
      expect(opensslVerifyDigest({ publicKeyPem: pub.publicKey, digest, signature, pss: p.pss })).toContain('Signature Verified Successfully');

      const verify = (d: Buffer, s: Buffer) =>
        kms.asymmetricVerify({ keyId: k.keyId, keyVersionId: k.keyVersionId, algorithm: p.algorithm, digest: d.toString('base64'), value: s.toString('base64') });
      const ok = await verify(digest, signature);
      expect(ok.value).toBe(true);
      expect(ok.keyId).toBe(k.keyId);
      expect((await verify(flip(digest), signature)).value).toBe(false);
      expect((await verify(digest, flip(signature, signature.length - 1))).value).toBe(false);
      expect((await verify(digest, randomBytes(signature.length))).value).toBe(false);
      expect((await verify(digest, signature.subarray(1))).value).toBe(false);
    });
  }

  it('when a PSS signature is checked as PKCS#1, then it is false', async () => {
    const k = key('alias/demo-rsa-2048');
    const kms = kmsClient(creds);
    const digest = sha256('cross');
    const signed = await kms.asymmetricSign({ keyId: k.keyId, keyVersionId: k.keyVersionId, algorithm: 'RSA_PSS_SHA_256', digest: digest.toString('base64') });
    const r = await kms.asymmetricVerify({ keyId: k.keyId, keyVersionId: k.keyVersionId, algorithm: 'RSA_PKCS1_SHA_256', digest: digest.toString('base64'), value: signed.value });
    expect(r.value).toBe(false);
  });

  it('when the caller may not use the key, then GetPublicKey is Forbidden.NoPermission (403)', async () => {
    const k = key('alias/demo-rsa-3072');
    await expect(kmsClient({ ...creds, accessKeyId: LIMITED.accessKeyId, accessKeySecret: LIMITED.secret }).getPublicKey({ keyId: k.keyId, keyVersionId: k.keyVersionId })).rejects.toMatchObject({
      code: 'Forbidden.NoPermissionError',
    });
  });

  it('when the Value is not Base64, then AsymmetricVerify is InvalidParameter (400)', async () => {
    const k = key('alias/demo-ec-p256');
    await expect(
      kmsClient(creds).asymmetricVerify({ keyId: k.keyId, keyVersionId: k.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: sha256('x').toString('base64'), value: '***' }),
    ).rejects.toMatchObject({ code: 'InvalidParameterError' });
  });
});

describe('KMS CertificatePublicKeyVerify (@alicloud/openapi-client, V3)', () => {
  const CASES = [
    { keySpec: 'RSA_2048', algorithm: 'RSA_PKCS1_SHA_256' },
    { keySpec: 'RSA_2048', algorithm: 'RSA_PSS_SHA_256' },
    { keySpec: 'EC_P256', algorithm: 'ECDSA_SHA_256' },
  ];
  for (const c of CASES) {
    for (const type of ['RAW', 'DIGEST'] as const) {
      it(`when a ${type} ${c.algorithm} signature is checked, then it is true, and false once the message changes`, async () => {
        const id = cert(c.keySpec).certificateId;
        const message = randomBytes(300);
        const payload = (m: Buffer) => (type === 'RAW' ? m : sha256(m)).toString('base64');
        const signed = await openApiCall(creds, 'CertificatePrivateKeySign', '2016-01-20', { CertificateId: id, Algorithm: c.algorithm, Message: payload(message), MessageType: type });
        const verify = (m: Buffer) =>
          openApiCall(creds, 'CertificatePublicKeyVerify', '2016-01-20', {
            CertificateId: id,
            Algorithm: c.algorithm,
            Message: payload(m),
            MessageType: type,
            SignatureValue: signed.body.SignatureValue,
          });
        const ok = await verify(message);
        expect(ok.body).toMatchObject({ CertificateId: id, SignatureValid: true });
        expect((await verify(flip(message))).body.SignatureValid).toBe(false);
      });
    }
  }
});

describe('CAS Verify (@alicloud/cas20200407)', () => {
  const BARE = [
    { keySpec: 'RSA_2048', algorithm: 'SHA256withRSA' },
    { keySpec: 'RSA_2048', algorithm: 'SHA256withRSA/PSS' },
    { keySpec: 'EC_P256', algorithm: 'SHA256withECDSA' },
    { keySpec: 'RSA_2048', algorithm: 'SHA256withRSA/P7' },
  ];
  const message = (type: string, text: string) =>
    type === 'RAW' ? text : type === 'BASE64' ? Buffer.from(text).toString('base64') : sha256(text).toString('base64');
  for (const c of BARE) {
    for (const type of ['RAW', 'BASE64', 'DIGEST']) {
      it(`when a ${type} ${c.algorithm} signature is checked, then it is true, and false for another message`, async () => {
        const cas = casClient(creds);
        const id = cert(c.keySpec).casIdentifier;
        const signed = await cas.sign({ certIdentifier: id, message: message(type, 'verify me'), messageType: type, signingAlgorithm: c.algorithm });
        const verify = (text: string, signatureValue = signed.body.signature) =>
          cas.verify({ certIdentifier: id, message: message(type, text), messageType: type, signingAlgorithm: c.algorithm, signatureValue });
        const ok = await verify('verify me');
        expect(ok.statusCode).toBe(200);
        expect(ok.body.signatureValid).toBe(true);
        expect((await verify('verify mE')).body.signatureValid).toBe(false);
        const sig = Buffer.from(signed.body.signature, 'base64');
        expect((await verify('verify me', flip(sig, sig.length - 3).toString('base64'))).body.signatureValid).toBe(false);
      });
    }
  }

  it('when a P7 signature comes from another certificate, then it is false even though it is a valid CMS', async () => {
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const otherCert = issueCertificate({
      subject: { commonName: 'someone else' },
      subjectPublicKeyInfo: other.publicKey.export({ type: 'spki', format: 'der' }),
      validDays: 30,
      signatureAlgorithm: 'sha256WithRSAEncryption',
      sign: (tbs) => nodeSign('sha256', tbs, other.privateKey),
    });
    const cms = await buildDetachedSignedData({
      contentDigest: sha256('hello'),
      signerCertificate: otherCert,
      chain: [],
      signingTime: new Date(),
      sign: async (attrs) => nodeSign('sha256', attrs, other.privateKey),
    });
    const r = await casClient(creds).verify({
      certIdentifier: cert('RSA_2048').casIdentifier,
      message: 'hello',
      messageType: 'RAW',
      signingAlgorithm: 'SHA256withRSA/P7',
      signatureValue: cms.toString('base64'),
    });
    expect(r.body.signatureValid).toBe(false);
  });

  it('when the P7 signature is not a CMS at all, then it is false', async () => {
    const r = await casClient(creds).verify({
      certIdentifier: cert('RSA_2048').casIdentifier,
      message: 'hello',
      messageType: 'RAW',
      signingAlgorithm: 'SHA256withRSA/P7',
      signatureValue: randomBytes(64).toString('base64'),
    });
    expect(r.body.signatureValid).toBe(false);
  });
});
