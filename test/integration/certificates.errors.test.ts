import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoCertificate } from '../../src/demo/pki.js';
import { certificatePublicKey, opensslVerifyMessage } from '../helpers/openssl.js';
import { casClient, openApiCall, type Credentials } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Refusals of CertificatePrivateKeySign and CAS Sign: each with its Alibaba code and HTTP status, seen by the SDKs.
const LIMITED = { accessKeyId: 'LTAIcertlimitedcert01', secret: 'limited-secret-value', account: 'default' };
const OUTSIDER = { accessKeyId: 'LTAIcertoutsidercer01', secret: 'outsider-secret-value', account: 'other-account' };
const COMPAT = { accessKeyId: 'LTAIcertcompatcompa01', secret: 'compat-secret-value', account: 'legacy-2024' };
const DISABLED_CERT_ID = randomUUID();

let gw: TestGateway;
let creds: Credentials;
const cert = (keySpec: string): DemoCertificate => gw.demo.certificates.find((c) => c.keySpec === keySpec)!;

beforeAll(async () => {
  gw = await startTestGateway({
    extraAccessKeys: [LIMITED, OUTSIDER, { ...COMPAT }],
    editRegistry(registry, demo) {
      const certificates = registry.certificates!;
      const ec = certificates.find((c) => c.keySpec === 'EC_P256')!;
      ec.accessKeyIds = [demo.accessKeyId];
      const rsa = certificates.find((c) => c.keySpec === 'RSA_2048')!;
      // The compatibility account owns a copy of the RSA certificate (same token objects, other ids).
      certificates.push({ ...rsa, certificateId: randomUUID(), casIdentifier: 'compat-rsa', sslIdentifier: undefined, customIdentifier: undefined, account: COMPAT.account });
      certificates.push({ ...rsa, certificateId: DISABLED_CERT_ID, casIdentifier: 'disabled-rsa', sslIdentifier: undefined, customIdentifier: undefined, state: 'Disabled' });
    },
    editConfig(config) {
      config.cas.rawMessageIsBase64Accounts = [COMPAT.account];
    },
  });
  creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
});
afterAll(async () => {
  await gw?.close();
});

type Failure = { code?: string; statusCode?: number; data?: Record<string, unknown>; message?: string };

async function failureOf(call: Promise<unknown>): Promise<Failure> {
  try {
    await call;
  } catch (err) {
    const e = err as Failure;
    expect(String(e.message)).not.toMatch(/\n\s+at\s|CKR_|pkcs11/);
    expect(String(e.message)).not.toContain(gw.pin);
    return e;
  }
  throw new Error('the call succeeded but should have failed');
}

const kmsSign = (query: Record<string, string>, c = creds) => openApiCall(c, 'CertificatePrivateKeySign', '2016-01-20', query);
const b64 = (n: number, fill = 1) => Buffer.alloc(n, fill).toString('base64');

describe('KMS CertificatePrivateKeySign refusals (openapi-client, V3)', () => {
  const base = () => ({ CertificateId: cert('RSA_2048').certificateId, Algorithm: 'RSA_PKCS1_SHA_256', Message: b64(10), MessageType: 'RAW' });
  const cases: Array<{ when: string; query: () => Record<string, string>; code: string; status: number; c?: () => Credentials }> = [
    { when: 'a RAW message is 4,097 bytes', query: () => ({ ...base(), Message: b64(4097) }), code: 'InvalidParameter', status: 400 },
    { when: 'a DIGEST is 31 bytes', query: () => ({ ...base(), Message: b64(31), MessageType: 'DIGEST' }), code: 'InvalidParameter', status: 400 },
    { when: 'a DIGEST is 33 bytes', query: () => ({ ...base(), Message: b64(33), MessageType: 'DIGEST' }), code: 'InvalidParameter', status: 400 },
    { when: 'the CertificateId is unknown', query: () => ({ ...base(), CertificateId: randomUUID() }), code: 'Certificate.NotFound', status: 404 },
    { when: 'the algorithm does not fit the key', query: () => ({ ...base(), Algorithm: 'ECDSA_SHA_256' }), code: 'InvalidParameter', status: 400 },
    { when: 'the algorithm is unknown', query: () => ({ ...base(), Algorithm: 'RSA_PKCS1_SHA_1' }), code: 'InvalidParameter', status: 400 },
    { when: 'the Message is not Base64', query: () => ({ ...base(), Message: 'hello world!' }), code: 'InvalidParameter', status: 400 },
    { when: 'the MessageType is unknown', query: () => ({ ...base(), MessageType: 'HEX' }), code: 'InvalidParameter', status: 400 },
    { when: 'the CertificateId is missing', query: () => ({ Algorithm: 'RSA_PKCS1_SHA_256', Message: b64(10) }), code: 'MissingParameter', status: 400 },
    { when: 'the Message is missing', query: () => ({ CertificateId: cert('RSA_2048').certificateId, Algorithm: 'RSA_PKCS1_SHA_256' }), code: 'MissingParameter', status: 400 },
    { when: 'the certificate is disabled', query: () => ({ ...base(), CertificateId: DISABLED_CERT_ID }), code: 'Rejected.Disabled', status: 409 },
    {
      when: 'this access key is not in the certificate ACL',
      query: () => ({ ...base(), CertificateId: cert('EC_P256').certificateId, Algorithm: 'ECDSA_SHA_256' }),
      c: () => ({ ...creds, accessKeyId: LIMITED.accessKeyId, accessKeySecret: LIMITED.secret }),
      code: 'Forbidden.NoPermission',
      status: 403,
    },
    {
      when: 'the certificate belongs to another account',
      query: () => base(),
      c: () => ({ ...creds, accessKeyId: OUTSIDER.accessKeyId, accessKeySecret: OUTSIDER.secret }),
      code: 'Certificate.NotFound',
      status: 404,
    },
  ];
  for (const c of cases) {
    it(`when ${c.when}, then it is ${c.code} (${c.status})`, async () => {
      const e = await failureOf(kmsSign(c.query(), c.c?.()));
      expect(e.code).toBe(c.code);
      expect(e.statusCode).toBe(c.status);
    });
  }

  it('when a 4,096-byte RAW message is sent, then it is accepted (the limit is inclusive)', async () => {
    const r = await kmsSign({ ...base(), Message: b64(4096) });
    expect(r.body.SignatureValue).toBeTruthy();
  });
});

describe('CAS Sign refusals (cas20200407 SDK and callApi)', () => {
  const sign = (req: Record<string, string>, c = creds) => casClient(c).sign(req);
  const base = () => ({ certIdentifier: cert('RSA_2048').casIdentifier, message: 'hello', messageType: 'RAW', signingAlgorithm: 'SHA256withRSA' });
  const cases: Array<{ when: string; req: () => Record<string, string>; code: string; status: number; c?: () => Credentials }> = [
    { when: 'a RAW message is 4,097 bytes', req: () => ({ ...base(), message: 'x'.repeat(4097) }), code: 'InvalidParameter', status: 400 },
    { when: 'a BASE64 message decodes to 4,097 bytes', req: () => ({ ...base(), message: b64(4097), messageType: 'BASE64' }), code: 'InvalidParameter', status: 400 },
    { when: 'a DIGEST is 31 bytes', req: () => ({ ...base(), message: b64(31), messageType: 'DIGEST' }), code: 'InvalidParameter', status: 400 },
    { when: 'a P7 DIGEST is 31 bytes', req: () => ({ ...base(), message: b64(31), messageType: 'DIGEST', signingAlgorithm: 'SHA256withRSA/P7' }), code: 'InvalidParameter', status: 400 },
    { when: 'a BASE64 message is not Base64', req: () => ({ ...base(), message: 'not base64 at all', messageType: 'BASE64' }), code: 'InvalidParameter', status: 400 },
    { when: 'the CertIdentifier is unknown', req: () => ({ ...base(), certIdentifier: 'no-such-certificate' }), code: 'Certificate.NotFound', status: 404 },
    { when: 'the SSL identifier is unknown', req: () => ({ ...base(), certIdentifier: '99999999-cn-hangzhou' }), code: 'Certificate.NotFound', status: 404 },
    { when: 'the algorithm does not fit the key', req: () => ({ ...base(), signingAlgorithm: 'SHA256withECDSA' }), code: 'InvalidParameter', status: 400 },
    { when: 'P7 is asked of an EC certificate', req: () => ({ ...base(), certIdentifier: cert('EC_P256').casIdentifier, signingAlgorithm: 'SHA256withRSA/P7' }), code: 'InvalidParameter', status: 400 },
    { when: 'the algorithm is unknown', req: () => ({ ...base(), signingAlgorithm: 'SHA1withRSA' }), code: 'InvalidParameter', status: 400 },
    { when: 'MessageType is BLIND', req: () => ({ ...base(), messageType: 'BLIND' }), code: 'InvalidParameter', status: 400 },
    { when: 'no identifier is given', req: () => ({ message: 'hello', messageType: 'RAW', signingAlgorithm: 'SHA256withRSA' }), code: 'MissingParameter', status: 400 },
    { when: 'the certificate is disabled', req: () => ({ ...base(), certIdentifier: 'disabled-rsa' }), code: 'Rejected.Disabled', status: 409 },
    {
      when: 'the certificate belongs to another account',
      req: () => base(),
      c: () => ({ ...creds, accessKeyId: OUTSIDER.accessKeyId, accessKeySecret: OUTSIDER.secret }),
      code: 'Certificate.NotFound',
      status: 404,
    },
  ];
  for (const c of cases) {
    it(`when ${c.when}, then it is ${c.code} (${c.status})`, async () => {
      const e = await failureOf(sign(c.req(), c.c?.()));
      expect(e.code).toBe(c.code);
      expect(e.statusCode).toBe(c.status);
    });
  }

  const callApiCases: Array<{ when: string; query: () => Record<string, string>; code: string; status: number }> = [
    { when: 'the CustomIdentifier is unknown', query: () => ({ CustomIdentifier: 'nope', Message: 'm', SigningAlgorithm: 'SHA256withECDSA' }), code: 'Certificate.NotFound', status: 404 },
    {
      when: 'the identifier is in another WarehouseId',
      query: () => ({ CustomIdentifier: cert('EC_P256').customIdentifier, WarehouseId: '999', Message: 'm', SigningAlgorithm: 'SHA256withECDSA' }),
      code: 'Certificate.NotFound',
      status: 404,
    },
    {
      when: 'the WarehouseId is not a number',
      query: () => ({ CustomIdentifier: cert('EC_P256').customIdentifier, WarehouseId: 'one', Message: 'm', SigningAlgorithm: 'SHA256withECDSA' }),
      code: 'InvalidParameter',
      status: 400,
    },
    {
      when: 'CertIdentifier and CustomIdentifier name different certificates',
      query: () => ({ CertIdentifier: cert('RSA_2048').casIdentifier, CustomIdentifier: cert('EC_P256').customIdentifier, Message: 'm', SigningAlgorithm: 'SHA256withRSA' }),
      code: 'Certificate.NotFound',
      status: 404,
    },
    { when: 'the SigningAlgorithm is missing', query: () => ({ CertIdentifier: cert('RSA_2048').casIdentifier, Message: 'm' }), code: 'MissingParameter', status: 400 },
    { when: 'the Message is missing', query: () => ({ CertIdentifier: cert('RSA_2048').casIdentifier, SigningAlgorithm: 'SHA256withRSA' }), code: 'MissingParameter', status: 400 },
  ];
  for (const c of callApiCases) {
    it(`when ${c.when}, then it is ${c.code} (${c.status})`, async () => {
      const e = await failureOf(openApiCall(creds, 'Sign', '2020-04-07', c.query()));
      expect(e.code).toBe(c.code);
      expect(e.statusCode).toBe(c.status);
    });
  }
});

describe('CAS Sign: the 2024 compatibility switch (RAW Message read as Base64)', () => {
  it('when the switch is off (default), then a RAW Message is signed as the string itself', async () => {
    const r = await casClient(creds).sign({ certIdentifier: cert('RSA_2048').casIdentifier, message: 'MTIzNA==', messageType: 'RAW', signingAlgorithm: 'SHA256withRSA' });
    const publicKeyPem = certificatePublicKey(cert('RSA_2048').certificatePem);
    expect(opensslVerifyMessage({ publicKeyPem, message: Buffer.from('MTIzNA=='), signature: Buffer.from(r.body.signature, 'base64') })).toBe('Verified OK');
  });

  it('when the switch is on for the caller’s account, then a RAW Message is Base64-decoded before signing', async () => {
    const compat = { ...creds, accessKeyId: COMPAT.accessKeyId, accessKeySecret: COMPAT.secret };
    const r = await casClient(compat).sign({ certIdentifier: 'compat-rsa', message: 'MTIzNA==', messageType: 'RAW', signingAlgorithm: 'SHA256withRSA' });
    const publicKeyPem = certificatePublicKey(cert('RSA_2048').certificatePem);
    expect(opensslVerifyMessage({ publicKeyPem, message: Buffer.from('1234'), signature: Buffer.from(r.body.signature, 'base64') })).toBe('Verified OK');
  });

  it('when the switch is on and the RAW Message is not Base64, then it is InvalidParameter (400)', async () => {
    const compat = { ...creds, accessKeyId: COMPAT.accessKeyId, accessKeySecret: COMPAT.secret };
    const e = await failureOf(casClient(compat).sign({ certIdentifier: 'compat-rsa', message: 'plain text', messageType: 'RAW', signingAlgorithm: 'SHA256withRSA' }));
    expect(e.code).toBe('InvalidParameter');
  });
});

describe('XML answers', () => {
  it('when CertificatePrivateKeySign is asked for XML, then the fields come under a KMS root as in the seed', async () => {
    const message = Buffer.from('xml');
    const r = await openApiCall(
      creds,
      'CertificatePrivateKeySign',
      '2016-01-20',
      { CertificateId: cert('EC_P256').certificateId, Algorithm: 'ECDSA_SHA_256', Message: message.toString('base64'), Format: 'XML' },
      { bodyType: 'string' },
    );
    expect(String(r.body)).toMatch(
      new RegExp(`^<\\?xml version="1.0" encoding="UTF-8"\\?><KMS><CertificateId>${cert('EC_P256').certificateId}</CertificateId><SignatureValue>[A-Za-z0-9+/=]+</SignatureValue><RequestId>[0-9a-f-]{36}</RequestId></KMS>$`),
    );
    const value = /<SignatureValue>([^<]+)</.exec(String(r.body))![1]!;
    const publicKeyPem = certificatePublicKey(cert('EC_P256').certificatePem);
    expect(opensslVerifyMessage({ publicKeyPem, message, signature: Buffer.from(value, 'base64') })).toBe('Verified OK');
  });
});
