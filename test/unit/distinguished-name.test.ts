import { generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DistinguishedNameError, issueCertificate, parseCertificate, parseDistinguishedName } from '../../src/signing/x509.js';

const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const spki = key.publicKey.export({ type: 'spki', format: 'der' });
const selfSigned = (subject: Parameters<typeof issueCertificate>[0]['subject']) =>
  new X509Certificate(issueCertificate({ subject, subjectPublicKeyInfo: spki, validDays: 1, signatureAlgorithm: 'ecdsaWithSHA256', sign: (tbs) => sign('sha256', tbs, key.privateKey) }));

describe('parseDistinguishedName', () => {
  it('when the name is RFC 4514 text, then its attributes come out root-most first', () => {
    expect(parseDistinguishedName('CN=host.example, O=Example Org,C=CN')).toEqual([
      ['2.5.4.6', 'CN'],
      ['2.5.4.10', 'Example Org'],
      ['2.5.4.3', 'host.example'],
    ]);
  });

  it('when the name is OpenSSL slash text, then its attributes keep their order', () => {
    expect(parseDistinguishedName('/C=CN/ST=Zhejiang/L=Hangzhou/O=Org/OU=Unit/CN=x')).toEqual([
      ['2.5.4.6', 'CN'],
      ['2.5.4.8', 'Zhejiang'],
      ['2.5.4.7', 'Hangzhou'],
      ['2.5.4.10', 'Org'],
      ['2.5.4.11', 'Unit'],
      ['2.5.4.3', 'x'],
    ]);
  });

  it('when a value holds an escaped separator, then it stays in the value', () => {
    expect(parseDistinguishedName('CN=a\\, b,O=c')).toEqual([
      ['2.5.4.10', 'c'],
      ['2.5.4.3', 'a, b'],
    ]);
  });

  for (const bad of ['', 'CN', 'XX=1', 'CN=', 'C=China', 'CN=a,,O=b']) {
    it(`when the name is "${bad}", then it is refused with a reason`, () => {
      expect(() => parseDistinguishedName(bad)).toThrow(DistinguishedNameError);
    });
  }
});

describe('issuing with a full subject', () => {
  it('when the subject is a parsed name, then the certificate carries it (C as PrintableString), readable by Node', () => {
    const cert = selfSigned({ attributes: parseDistinguishedName('CN=host.example,OU=Ops,O=Example,C=CN') });
    expect(cert.subject).toBe('C=CN\nO=Example\nOU=Ops\nCN=host.example');
    expect(cert.verify(key.publicKey)).toBe(true);
  });

  it('when the subject is a DER name, then it is copied as is', async () => {
    const first = selfSigned({ commonName: 'copied', organization: 'Org' });
    const der = Buffer.from(parseCertificate(first.raw).subject.toSchema().toBER(false));
    const copy = await issueCertificate({
      subject: { der },
      subjectPublicKeyInfo: spki,
      validDays: 1,
      signatureAlgorithm: 'ecdsaWithSHA256',
      sign: async (tbs) => sign('sha256', tbs, key.privateKey),
    });
    expect(new X509Certificate(copy).subject).toBe(first.subject);
  });
});
