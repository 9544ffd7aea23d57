import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoCertificate } from '../../src/demo/pki.js';
import { certificatePublicKey, opensslCmsVerify, opensslVerifyDigest, opensslVerifyMessage } from '../helpers/openssl.js';
import { casClient, openApiCall, popCore, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Signing with certificates whose keys are on the token, through the official clients, checked by openssl.
let gw: TestGateway;
let creds: Credentials;
const cert = (keySpec: string): DemoCertificate => gw.demo.certificates.find((c) => c.keySpec === keySpec)!;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();

beforeAll(async () => {
  gw = await startTestGateway();
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

/** Verifies a bare signature over `message` with the certificate's public key (openssl x509 -pubkey). */
function verifyWithCertificate(c: DemoCertificate, message: Buffer, signature: Buffer, pss: boolean): void {
  const publicKeyPem = certificatePublicKey(c.certificatePem);
  expect(opensslVerifyMessage({ publicKeyPem, message, signature, pss })).toBe('Verified OK');
  expect(opensslVerifyDigest({ publicKeyPem, digest: sha256(message), signature, pss })).toContain('Signature Verified Successfully');
}

const KMS_CASES = [
  { keySpec: 'RSA_2048', algorithm: 'RSA_PKCS1_SHA_256', pss: false },
  { keySpec: 'RSA_2048', algorithm: 'RSA_PSS_SHA_256', pss: true },
  { keySpec: 'EC_P256', algorithm: 'ECDSA_SHA_256', pss: false },
] as const;
const SIZES = [1, 100, 4096];

describe('KMS CertificatePrivateKeySign through @alicloud/openapi-client callApi (V3)', () => {
  for (const c of KMS_CASES) {
    for (const size of SIZES) {
      it(`when a ${size}-byte RAW message is signed with ${c.algorithm} (${c.keySpec}), then openssl verifies it`, async () => {
        const message = randomBytes(size);
        const r = await openApiCall(creds, 'CertificatePrivateKeySign', '2016-01-20', {
          CertificateId: cert(c.keySpec).certificateId,
          Algorithm: c.algorithm,
          Message: message.toString('base64'),
          MessageType: 'RAW',
        });
        expect(r.body.CertificateId).toBe(cert(c.keySpec).certificateId);
        expect(r.body.RequestId).toMatch(/^[0-9a-f-]{36}$/);
        verifyWithCertificate(cert(c.keySpec), message, Buffer.from(r.body.SignatureValue, 'base64'), c.pss);
      });
    }
    it(`when a DIGEST is signed with ${c.algorithm} (${c.keySpec}), then openssl verifies it over the message`, async () => {
      const message = randomBytes(10_000);
      const r = await openApiCall(creds, 'CertificatePrivateKeySign', '2016-01-20', {
        CertificateId: cert(c.keySpec).certificateId,
        Algorithm: c.algorithm,
        Message: sha256(message).toString('base64'),
        MessageType: 'DIGEST',
      });
      verifyWithCertificate(cert(c.keySpec), message, Buffer.from(r.body.SignatureValue, 'base64'), c.pss);
    });
  }

  it('when MessageType is left out, then the Message is RAW (the default)', async () => {
    const message = Buffer.from('The quick brown fox jumps over the lazy dog.');
    const r = await openApiCall(creds, 'CertificatePrivateKeySign', '2016-01-20', {
      CertificateId: cert('EC_P256').certificateId,
      Algorithm: 'ECDSA_SHA_256',
      Message: message.toString('base64'),
    });
    verifyWithCertificate(cert('EC_P256'), message, Buffer.from(r.body.SignatureValue, 'base64'), false);
  });
});

describe('KMS CertificatePrivateKeySign through @alicloud/pop-core (V1)', () => {
  for (const method of ['GET', 'POST'] as const) {
    it(`when pop-core sends ${method}, then it signs and openssl verifies`, async () => {
      const message = randomBytes(64);
      const r = await popCore(creds, '2016-01-20').request(
        'CertificatePrivateKeySign',
        { CertificateId: cert('RSA_2048').certificateId, Algorithm: 'RSA_PSS_SHA_256', Message: message.toString('base64'), MessageType: 'RAW' },
        { method },
      );
      verifyWithCertificate(cert('RSA_2048'), message, Buffer.from(r.SignatureValue, 'base64'), true);
    });
  }
});

const CAS_BARE = [
  { keySpec: 'RSA_2048', algorithm: 'SHA256withRSA', pss: false },
  { keySpec: 'RSA_2048', algorithm: 'SHA256withRSA/PSS', pss: true },
  { keySpec: 'EC_P256', algorithm: 'SHA256withECDSA', pss: false },
] as const;

/** The CAS Message for a message type: RAW is the string itself, BASE64 its Base64, DIGEST its SHA-256. */
function casMessage(type: 'RAW' | 'BASE64' | 'DIGEST', text: string): string {
  if (type === 'RAW') return text;
  if (type === 'BASE64') return Buffer.from(text).toString('base64');
  return sha256(Buffer.from(text)).toString('base64');
}

for (const v1 of [false, true]) {
  describe(`CAS Sign through @alicloud/cas20200407 (${v1 ? 'V1' : 'V3'})`, () => {
    for (const c of CAS_BARE) {
      for (const type of ['RAW', 'BASE64', 'DIGEST'] as const) {
        it(`when a ${type} message is signed with ${c.algorithm}, then openssl verifies it`, async () => {
          const text = `hello, 世界 ${randomBytes(4).toString('hex')}`;
          const r = await casClient(creds, { v1 }).sign({
            certIdentifier: cert(c.keySpec).casIdentifier,
            message: casMessage(type, text),
            messageType: type,
            signingAlgorithm: c.algorithm,
          });
          expect(r.statusCode).toBe(200);
          expect(r.body.requestId).toMatch(/^[0-9a-f-]{36}$/);
          verifyWithCertificate(cert(c.keySpec), Buffer.from(text), Buffer.from(r.body.signature, 'base64'), c.pss);
        });
      }
    }

    for (const type of ['RAW', 'BASE64', 'DIGEST'] as const) {
      it(`when a ${type} message is signed with SHA256withRSA/P7, then openssl cms -verify accepts it against the demo root`, async () => {
        const text = `cms ${type} ${randomBytes(4).toString('hex')}`;
        const r = await casClient(creds, { v1 }).sign({
          certIdentifier: cert('RSA_2048').sslIdentifier,
          message: casMessage(type, text),
          messageType: type,
          signingAlgorithm: 'SHA256withRSA/P7',
        });
        expect(opensslCmsVerify({ cms: Buffer.from(r.body.signature, 'base64'), content: Buffer.from(text), rootPem: gw.demo.rootCertificatePem })).toContain(
          'CMS Verification successful',
        );
      });
    }
  });
}

describe('CAS Sign edge sizes and identifiers', () => {
  for (const size of [1, 4096]) {
    it(`when a ${size}-byte BASE64 message is signed with SHA256withRSA/P7, then it verifies`, async () => {
      const content = randomBytes(size);
      const r = await casClient(creds).sign({
        certIdentifier: cert('RSA_2048').casIdentifier,
        message: content.toString('base64'),
        messageType: 'BASE64',
        signingAlgorithm: 'SHA256withRSA/P7',
      });
      expect(opensslCmsVerify({ cms: Buffer.from(r.body.signature, 'base64'), content, rootPem: gw.demo.rootCertificatePem })).toContain('CMS Verification successful');
    });

    it(`when a ${size}-byte RAW string is signed with SHA256withECDSA, then it verifies`, async () => {
      const text = 'a'.repeat(size);
      const r = await casClient(creds).sign({ certIdentifier: cert('EC_P256').casIdentifier, message: text, messageType: 'RAW', signingAlgorithm: 'SHA256withECDSA' });
      verifyWithCertificate(cert('EC_P256'), Buffer.from(text), Buffer.from(r.body.signature, 'base64'), false);
    });
  }

  it('when CustomIdentifier and WarehouseId name the certificate (callApi: the cas SDK drops them), then it signs', async () => {
    const c = cert('EC_P256');
    const r = await openApiCall(creds, 'Sign', '2020-04-07', {
      CustomIdentifier: c.customIdentifier,
      WarehouseId: String(c.warehouseId),
      Message: 'custom',
      MessageType: 'RAW',
      SigningAlgorithm: 'SHA256withECDSA',
    });
    verifyWithCertificate(c, Buffer.from('custom'), Buffer.from(r.body.Signature, 'base64'), false);
  });

  it('when CertIdentifier and CustomIdentifier both name the same certificate, then it signs', async () => {
    const c = cert('RSA_2048');
    const r = await openApiCall(creds, 'Sign', '2020-04-07', {
      CertIdentifier: c.sslIdentifier,
      CustomIdentifier: c.customIdentifier,
      Message: 'both',
      SigningAlgorithm: 'SHA256withRSA',
    });
    verifyWithCertificate(c, Buffer.from('both'), Buffer.from(r.body.Signature, 'base64'), false);
  });
});
