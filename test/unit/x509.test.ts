import { createHash, generateKeyPairSync, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  certificateObjectFields,
  issueCertificate,
  parseCertificate,
  toPem,
  type IssueRequest,
} from '../../src/signing/x509.js';
import { openssl } from '../helpers/openssl.js';

/* Throwaway keys: an RSA root and intermediate, RSA and EC P-256 leaves, and an EC P-256 root for ecdsaWithSHA256. */
const rsa = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rootKey = rsa();
const intermediateKey = rsa();
const leafRsaKey = rsa();
const leafEcKey = ec();
const ecRootKey = ec();

const spkiOf = (key: KeyObject): Buffer => key.export({ type: 'spki', format: 'der' });
/** What an HSM would do: sign the TBSCertificate with SHA-256 (PKCS#1 v1.5 for RSA, DER ECDSA for EC). */
const signerOf = (key: KeyObject) => (tbs: Buffer): Buffer => sign('sha256', tbs, key);

const ORG = 'Example Signing Org';
const VALID_DAYS = { root: 3650, intermediate: 1825, leaf: 825 } as const;

function issue(over: Partial<IssueRequest> & Pick<IssueRequest, 'subject' | 'subjectPublicKeyInfo' | 'sign'>): Buffer {
  return issueCertificate({ validDays: 30, signatureAlgorithm: 'sha256WithRSAEncryption', ...over });
}

const root = issue({
  subject: { commonName: 'Test Root CA', organization: ORG },
  subjectPublicKeyInfo: spkiOf(rootKey.publicKey),
  ca: { pathLength: 1 },
  validDays: VALID_DAYS.root,
  sign: signerOf(rootKey.privateKey),
});
const intermediate = issue({
  subject: { commonName: 'Test Intermediate CA', organization: ORG },
  subjectPublicKeyInfo: spkiOf(intermediateKey.publicKey),
  issuerCertificate: root,
  ca: { pathLength: 0 },
  validDays: VALID_DAYS.intermediate,
  sign: signerOf(rootKey.privateKey),
});
const leafRsa = issue({
  subject: { commonName: 'leaf-rsa.example', organization: ORG },
  subjectPublicKeyInfo: spkiOf(leafRsaKey.publicKey),
  issuerCertificate: intermediate,
  validDays: VALID_DAYS.leaf,
  sign: signerOf(intermediateKey.privateKey),
});
const leafEc = issue({
  subject: { commonName: 'leaf-ec.example', organization: ORG },
  subjectPublicKeyInfo: spkiOf(leafEcKey.publicKey),
  issuerCertificate: intermediate,
  validDays: VALID_DAYS.leaf,
  sign: signerOf(intermediateKey.privateKey),
});
/* An EC P-256 root that signs with ecdsaWithSHA256, and an RSA leaf under it. */
const ecRoot = issue({
  subject: { commonName: 'Test EC Root CA', organization: ORG },
  subjectPublicKeyInfo: spkiOf(ecRootKey.publicKey),
  ca: { pathLength: 0 },
  validDays: VALID_DAYS.root,
  signatureAlgorithm: 'ecdsaWithSHA256',
  sign: signerOf(ecRootKey.privateKey),
});
const leafUnderEcRoot = issue({
  subject: { commonName: 'leaf-under-ec.example' },
  subjectPublicKeyInfo: spkiOf(leafRsaKey.publicKey),
  issuerCertificate: ecRoot,
  validDays: VALID_DAYS.leaf,
  signatureAlgorithm: 'ecdsaWithSHA256',
  sign: signerOf(ecRootKey.privateKey),
});

const x509 = (der: Buffer): X509Certificate => new X509Certificate(der);

/** `openssl verify -CAfile root.pem [-untrusted intermediate.pem] leaf.pem`; returns the output, throws when it fails. */
function opensslVerify(rootDer: Buffer, leafDer: Buffer, untrusted: Buffer[] = []): string {
  const files: Record<string, string> = { 'root.pem': toPem(rootDer), 'leaf.pem': toPem(leafDer) };
  if (untrusted.length) files['untrusted.pem'] = untrusted.map((c) => toPem(c)).join('');
  return openssl(files, (p) => ['verify', '-CAfile', p('root.pem'), ...(untrusted.length ? ['-untrusted', p('untrusted.pem')] : []), p('leaf.pem')]);
}

/** `openssl x509 -noout -ext …` as a map from extension name to its (joined) value lines. */
function extensions(der: Buffer, names: string): Map<string, string> {
  const out = openssl({ 'cert.pem': toPem(der) }, (p) => ['x509', '-in', p('cert.pem'), '-noout', '-ext', names]);
  const map = new Map<string, string>();
  let current: string | undefined;
  for (const line of out.split('\n')) {
    if (/^\S/.test(line)) {
      current = line.replace(/:.*$/, '').trim();
      map.set(current, '');
    } else if (current) {
      map.set(current, `${map.get(current)}${map.get(current) ? '\n' : ''}${line.trim()}`);
    }
  }
  return map;
}

const validityMs = (cert: X509Certificate): number => Date.parse(cert.validTo) - Date.parse(cert.validFrom);

describe('issueCertificate: chains that a third party (openssl verify) accepts', () => {
  it('when a root is self-signed, then openssl verifies it against itself and Node sees it signed by its own key', () => {
    expect(opensslVerify(root, root)).toMatch(/: OK$/);
    expect(x509(root).checkIssued(x509(root))).toBe(true);
    expect(x509(root).verify(rootKey.publicKey)).toBe(true);
  });

  it('when an intermediate (pathLength 0) issues an RSA 2048 leaf, then root → intermediate → leaf verifies', () => {
    expect(opensslVerify(root, leafRsa, [intermediate])).toMatch(/: OK$/);
    expect(x509(leafRsa).verify(intermediateKey.publicKey)).toBe(true);
  });

  it('when an intermediate issues an EC P-256 leaf, then root → intermediate → leaf verifies', () => {
    expect(opensslVerify(root, leafEc, [intermediate])).toMatch(/: OK$/);
    expect(x509(leafEc).publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  });

  it('when the intermediate is left out, then openssl cannot build the chain', () => {
    expect(() => opensslVerify(root, leafRsa)).toThrow(/unable to get local issuer certificate/);
  });

  it('when a certificate is checked against a root that did not issue its chain, then verification fails', () => {
    expect(() => opensslVerify(ecRoot, leafRsa, [intermediate])).toThrow(/unable to get local issuer certificate/);
  });

  it('when an intermediate with pathLength 0 issues another CA, then a leaf under that CA is refused for path length', () => {
    const subCaKey = rsa();
    const subCa = issue({
      subject: { commonName: 'Too Deep CA', organization: ORG },
      subjectPublicKeyInfo: spkiOf(subCaKey.publicKey),
      issuerCertificate: intermediate,
      ca: { pathLength: 0 },
      sign: signerOf(intermediateKey.privateKey),
    });
    const deepLeaf = issue({
      subject: { commonName: 'deep-leaf.example' },
      subjectPublicKeyInfo: spkiOf(leafEcKey.publicKey),
      issuerCertificate: subCa,
      sign: signerOf(subCaKey.privateKey),
    });
    expect(opensslVerify(root, subCa, [intermediate])).toMatch(/: OK$/); // the sub-CA itself is a fine end entity
    expect(() => opensslVerify(root, deepLeaf, [intermediate, subCa])).toThrow(/path length constraint exceeded/);
  });

  it('when the issuer key is EC P-256 and the callback returns DER ECDSA, then the ecdsaWithSHA256 certificates verify', () => {
    expect(opensslVerify(ecRoot, ecRoot)).toMatch(/: OK$/);
    expect(opensslVerify(ecRoot, leafUnderEcRoot)).toMatch(/: OK$/);
    expect(x509(leafUnderEcRoot).verify(ecRootKey.publicKey)).toBe(true);
    const text = openssl({ 'c.pem': toPem(leafUnderEcRoot) }, (p) => ['x509', '-in', p('c.pem'), '-noout', '-text']);
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/);
    expect(text).not.toMatch(/sha256WithRSAEncryption/);
  });

  it('when the algorithm is ecdsaWithSHA256, then its AlgorithmIdentifier has no parameters (RFC 5758), and RSA has NULL', () => {
    const ecdsaAlgId = Buffer.from('300a06082a8648ce3d040302', 'hex');
    const rsaAlgId = Buffer.from('300d06092a864886f70d01010b0500', 'hex');
    const count = (hay: Buffer, needle: Buffer): number => {
      let n = 0;
      for (let i = hay.indexOf(needle); i !== -1; i = hay.indexOf(needle, i + 1)) n++;
      return n;
    };
    expect(count(leafUnderEcRoot, ecdsaAlgId)).toBe(2); // TBSCertificate.signature and Certificate.signatureAlgorithm
    expect(count(leafRsa, rsaAlgId)).toBe(2);
  });

  it('when the sign callback is called, then it receives the exact TBSCertificate, and its return value is the signature', () => {
    const seen: Buffer[] = [];
    const returned: Buffer[] = [];
    const der = issue({
      subject: { commonName: 'callback.example' },
      subjectPublicKeyInfo: spkiOf(leafEcKey.publicKey),
      issuerCertificate: intermediate,
      sign: (tbs) => {
        seen.push(Buffer.from(tbs));
        const sig = sign('sha256', tbs, intermediateKey.privateKey);
        returned.push(sig);
        return sig;
      },
    });
    expect(seen).toHaveLength(1);
    const tbs = seen[0]!;
    expect(tbs[0]).toBe(0x30);
    expect(der.indexOf(tbs)).toBe(4); // Certificate ::= SEQUENCE (30 82 LL LL) { tbsCertificate, … }
    expect(der.subarray(der.length - returned[0]!.length).equals(returned[0]!)).toBe(true); // BIT STRING ends the certificate
    expect(verify('sha256', tbs, intermediateKey.publicKey, returned[0]!)).toBe(true);
    expect(x509(der).verify(intermediateKey.publicKey)).toBe(true);
  });

  it('when the sign callback returns a wrong signature, then the certificate does not verify', () => {
    const der = issue({
      subject: { commonName: 'bad-signature.example' },
      subjectPublicKeyInfo: spkiOf(leafRsaKey.publicKey),
      issuerCertificate: intermediate,
      sign: (tbs) => sign('sha256', Buffer.concat([tbs, Buffer.from([0])]), intermediateKey.privateKey),
    });
    expect(x509(der).verify(intermediateKey.publicKey)).toBe(false);
    expect(() => opensslVerify(root, der, [intermediate])).toThrow(/certificate signature failure/);
  });
});

describe('issueCertificate: what the certificate says', () => {
  it('when a subject has O and CN, then Node shows "O=…\\nCN=…", and they are separate RDNs (RFC 2253 joins them with ",", not "+")', () => {
    expect(x509(root).subject).toBe(`O=${ORG}\nCN=Test Root CA`);
    expect(x509(leafRsa).subject).toBe(`O=${ORG}\nCN=leaf-rsa.example`);
    const subject = openssl({ 'c.pem': toPem(leafRsa) }, (p) => ['x509', '-in', p('c.pem'), '-noout', '-subject', '-nameopt', 'RFC2253']);
    expect(subject).toBe(`subject=CN=leaf-rsa.example,O=${ORG}`);
  });

  it('when a subject has no organization, then the name is the CN alone', () => {
    expect(x509(leafUnderEcRoot).subject).toBe('CN=leaf-under-ec.example');
  });

  it('when a name has non-ASCII characters, then they survive (UTF8String)', () => {
    const der = issue({
      subject: { commonName: '签名网关 Ünïcode', organization: '阿里云 Test' },
      subjectPublicKeyInfo: spkiOf(leafEcKey.publicKey),
      issuerCertificate: intermediate,
      sign: signerOf(intermediateKey.privateKey),
    });
    expect(x509(der).subject).toBe('O=阿里云 Test\nCN=签名网关 Ünïcode');
  });

  it('when a certificate is issued, then its issuer is its issuer’s subject (and a root’s issuer is its own subject)', () => {
    expect(x509(root).issuer).toBe(x509(root).subject);
    expect(x509(intermediate).issuer).toBe(x509(root).subject);
    expect(x509(leafRsa).issuer).toBe(x509(intermediate).subject);
    expect(x509(leafEc).issuer).toBe(x509(intermediate).subject);
    expect(x509(leafUnderEcRoot).issuer).toBe(x509(ecRoot).subject);
    expect(x509(leafRsa).checkIssued(x509(intermediate))).toBe(true);
    expect(x509(intermediate).checkIssued(x509(root))).toBe(true);
  });

  it('when ca is given, then Node reports ca true; when it is not, then ca false', () => {
    expect(x509(root).ca).toBe(true);
    expect(x509(intermediate).ca).toBe(true);
    expect(x509(leafRsa).ca).toBe(false);
    expect(x509(leafEc).ca).toBe(false);
  });

  it.each([
    ['the root', () => root, 'CA:TRUE, pathlen:1'],
    ['the intermediate', () => intermediate, 'CA:TRUE, pathlen:0'],
  ])('when %s is a CA, then keyUsage is "Certificate Sign, CRL Sign" and basicConstraints CA:TRUE, both critical', (_, cert, bc) => {
    const ext = extensions(cert(), 'keyUsage,basicConstraints');
    expect(ext.get('X509v3 Key Usage')).toBe('Certificate Sign, CRL Sign');
    expect(ext.get('X509v3 Basic Constraints')).toBe(bc);
    const text = openssl({ 'c.pem': toPem(cert()) }, (p) => ['x509', '-in', p('c.pem'), '-noout', '-ext', 'keyUsage,basicConstraints']);
    expect(text).toMatch(/X509v3 Key Usage: critical/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical/);
  });

  it.each([
    ['RSA', () => leafRsa],
    ['EC', () => leafEc],
  ])('when the %s leaf is not a CA, then keyUsage is "Digital Signature, Non Repudiation" and basicConstraints CA:FALSE', (_, cert) => {
    const ext = extensions(cert(), 'keyUsage,basicConstraints');
    expect(ext.get('X509v3 Key Usage')).toBe('Digital Signature, Non Repudiation');
    expect(ext.get('X509v3 Basic Constraints')).toBe('CA:FALSE');
  });

  it('when certificates are issued, then each serial number is positive and exactly 16 bytes, and they differ', () => {
    const serials = [root, intermediate, leafRsa, leafEc, ecRoot, leafUnderEcRoot].map((c) => x509(c).serialNumber);
    for (const serial of serials) {
      expect(serial).toMatch(/^[0-9A-F]{32}$/);
      const first = parseInt(serial.slice(0, 2), 16);
      expect(first).toBeGreaterThan(0); // 16 significant bytes: no leading zero byte, …
      expect(first).toBeLessThan(0x80); // … and no sign bit (so no 0x00 pad either)
    }
    expect(new Set(serials).size).toBe(serials.length);
  });

  it('when many certificates are issued, then every serial is a positive 16-byte DER INTEGER (02 10 …)', () => {
    for (let i = 0; i < 200; i++) {
      const der = issue({
        subject: { commonName: `serial-${i}` },
        subjectPublicKeyInfo: spkiOf(leafEcKey.publicKey),
        issuerCertificate: ecRoot,
        signatureAlgorithm: 'ecdsaWithSHA256',
        sign: signerOf(ecRootKey.privateKey),
      });
      const serial = certificateObjectFields(der).serialNumber;
      expect(serial.subarray(0, 2).toString('hex')).toBe('0210');
      expect(serial[2]).toBeGreaterThan(0);
      expect(serial[2]).toBeLessThan(0x80);
    }
  });

  it('when validDays is given, then notAfter − notBefore is exactly that many days and notBefore is not in the future', () => {
    expect(validityMs(x509(root))).toBe(VALID_DAYS.root * 86_400_000);
    expect(validityMs(x509(intermediate))).toBe(VALID_DAYS.intermediate * 86_400_000);
    expect(validityMs(x509(leafRsa))).toBe(VALID_DAYS.leaf * 86_400_000);
    for (const c of [root, intermediate, leafRsa, leafEc]) expect(Date.parse(x509(c).validFrom)).toBeLessThanOrEqual(Date.now());
  });

  it('when validDays is any whole number with notAfter before 2050, then the validity spans exactly that many days', () => {
    const maxDays = Math.floor((Date.UTC(2049, 11, 1) - Date.now()) / 86_400_000);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: maxDays }), (days) => {
        const der = issue({
          subject: { commonName: `days-${days}` },
          subjectPublicKeyInfo: spkiOf(leafEcKey.publicKey),
          issuerCertificate: ecRoot,
          validDays: days,
          signatureAlgorithm: 'ecdsaWithSHA256',
          sign: signerOf(ecRootKey.privateKey),
        });
        expect(validityMs(x509(der))).toBe(days * 86_400_000);
      }),
      { numRuns: 50, seed: 20240601 },
    );
  });

  it('when validDays puts notAfter in 2050 or later, then notAfter is a GeneralizedTime that reads back as that year (RFC 5280 §4.1.2.5)', () => {
    const days = Math.ceil((Date.UTC(2052, 0, 1) - Date.now()) / 86_400_000);
    const der = issue({
      subject: { commonName: 'long-lived.example' },
      subjectPublicKeyInfo: spkiOf(leafEcKey.publicKey),
      issuerCertificate: ecRoot,
      validDays: days,
      signatureAlgorithm: 'ecdsaWithSHA256',
      sign: signerOf(ecRootKey.privateKey),
    });
    // Today the time is encoded as a 2-digit-year UTCTime ("52…Z"), which every reader takes for 1952.
    expect(new Date(Date.parse(x509(der).validTo)).getUTCFullYear()).toBeGreaterThanOrEqual(2052);
    expect(validityMs(x509(der))).toBe(days * 86_400_000);
  });

  it('when a certificate is issued, then its subject key identifier is SHA-1 of its public key bits (RFC 5280 method 1)', () => {
    const ext = extensions(leafRsa, 'subjectKeyIdentifier');
    const rsaBits = leafRsaKey.publicKey.export({ type: 'pkcs1', format: 'der' });
    const hex = (b: Buffer): string => b.toString('hex').toUpperCase().match(/../g)!.join(':');
    expect(ext.get('X509v3 Subject Key Identifier')).toBe(hex(createHash('sha1').update(rsaBits).digest()));
    const ecPoint = spkiOf(leafEcKey.publicKey).subarray(-65); // the uncompressed point, 04 ‖ X ‖ Y
    expect(extensions(leafEc, 'subjectKeyIdentifier').get('X509v3 Subject Key Identifier')).toBe(hex(createHash('sha1').update(ecPoint).digest()));
  });

  it.each([
    ['root → intermediate', () => root, () => intermediate],
    ['intermediate → RSA leaf', () => intermediate, () => leafRsa],
    ['intermediate → EC leaf', () => intermediate, () => leafEc],
    ['EC root → leaf', () => ecRoot, () => leafUnderEcRoot],
    ['root → itself', () => root, () => root],
  ])('when %s, then the child’s authority key identifier is the issuer’s subject key identifier', (_, issuer, child) => {
    const ski = extensions(issuer(), 'subjectKeyIdentifier').get('X509v3 Subject Key Identifier');
    const aki = extensions(child(), 'authorityKeyIdentifier').get('X509v3 Authority Key Identifier');
    expect(ski).toMatch(/^([0-9A-F]{2}:){19}[0-9A-F]{2}$/);
    expect(aki?.replace(/^keyid:/, '')).toBe(ski);
  });

  it('when a root is issued, then the certificate is X.509 v3', () => {
    expect(parseCertificate(root).version).toBe(2);
    expect(openssl({ 'c.pem': toPem(leafEc) }, (p) => ['x509', '-in', p('c.pem'), '-noout', '-text'])).toMatch(/Version: 3 \(0x2\)/);
  });
});

describe('a CA without pathLength', () => {
  const unlimitedRoot = issue({
    subject: { commonName: 'Unlimited Root CA', organization: ORG },
    subjectPublicKeyInfo: spkiOf(rootKey.publicKey),
    ca: {},
    validDays: VALID_DAYS.root,
    sign: signerOf(rootKey.privateKey),
  });

  it('when ca is given without pathLength, then basicConstraints has no pathLenConstraint (no limit), not pathlen:0', () => {
    expect(extensions(unlimitedRoot, 'basicConstraints').get('X509v3 Basic Constraints')).toBe('CA:TRUE');
  });

  it('when a root without pathLength issues an intermediate CA, then a leaf under that intermediate verifies', () => {
    const sub = issue({
      subject: { commonName: 'Sub CA', organization: ORG },
      subjectPublicKeyInfo: spkiOf(intermediateKey.publicKey),
      issuerCertificate: unlimitedRoot,
      ca: { pathLength: 0 },
      sign: signerOf(rootKey.privateKey),
    });
    const leaf = issue({
      subject: { commonName: 'under-unlimited.example' },
      subjectPublicKeyInfo: spkiOf(leafRsaKey.publicKey),
      issuerCertificate: sub,
      sign: signerOf(intermediateKey.privateKey),
    });
    expect(opensslVerify(unlimitedRoot, leaf, [sub])).toMatch(/: OK$/);
  });
});

describe('certificateObjectFields', () => {
  it('when fields are taken from a certificate, then value is the DER itself', () => {
    expect(certificateObjectFields(leafRsa).value.equals(leafRsa)).toBe(true);
  });

  it('when fields are taken from a leaf, then its issuer DER equals the subject DER of its issuer', () => {
    expect(certificateObjectFields(leafRsa).issuer.equals(certificateObjectFields(intermediate).subject)).toBe(true);
    expect(certificateObjectFields(leafEc).issuer.equals(certificateObjectFields(intermediate).subject)).toBe(true);
    expect(certificateObjectFields(intermediate).issuer.equals(certificateObjectFields(root).subject)).toBe(true);
    expect(certificateObjectFields(root).issuer.equals(certificateObjectFields(root).subject)).toBe(true);
    expect(certificateObjectFields(leafRsa).subject.equals(certificateObjectFields(leafEc).subject)).toBe(false);
  });

  it('when fields are taken, then subject and issuer are Name DER found verbatim in the certificate', () => {
    const fields = certificateObjectFields(leafRsa);
    for (const name of [fields.subject, fields.issuer]) {
      expect(name[0]).toBe(0x30);
      expect(leafRsa.indexOf(name)).toBeGreaterThan(0);
    }
  });

  it('when the subject DER is parsed by openssl, then it is a SEQUENCE of two one-element SETs: O, then CN, as UTF8STRING', () => {
    const parsed = openssl({ 'name.der': certificateObjectFields(leafRsa).subject }, (p) => ['asn1parse', '-inform', 'DER', '-in', p('name.der')]);
    const lines = parsed.split('\n').map((l) => l.replace(/^\s*\d+:/, '').trim());
    expect(lines).toEqual([
      expect.stringMatching(/^d=0 .* cons: SEQUENCE$/),
      expect.stringMatching(/^d=1 .* cons: SET$/),
      expect.stringMatching(/^d=2 .* cons: SEQUENCE$/),
      expect.stringMatching(/^d=3 .* prim: OBJECT\s+:organizationName$/),
      expect.stringMatching(new RegExp(`^d=3 .* prim: UTF8STRING\\s+:${ORG}$`)),
      expect.stringMatching(/^d=1 .* cons: SET$/),
      expect.stringMatching(/^d=2 .* cons: SEQUENCE$/),
      expect.stringMatching(/^d=3 .* prim: OBJECT\s+:commonName$/),
      expect.stringMatching(/^d=3 .* prim: UTF8STRING\s+:leaf-rsa\.example$/),
    ]);
  });

  it('when the serial number is taken, then it is the DER INTEGER of the serial Node reports', () => {
    for (const c of [root, leafRsa, leafUnderEcRoot]) {
      const serial = certificateObjectFields(c).serialNumber;
      expect(serial.toString('hex').toUpperCase()).toBe(`0210${x509(c).serialNumber}`);
    }
  });
});

describe('toPem', () => {
  it('when a certificate is wrapped, then it has BEGIN/END CERTIFICATE lines and 64-column base64 lines', () => {
    const pem = toPem(leafRsa);
    const lines = pem.split('\n');
    expect(lines[0]).toBe('-----BEGIN CERTIFICATE-----');
    expect(lines.at(-2)).toBe('-----END CERTIFICATE-----');
    expect(lines.at(-1)).toBe('');
    const body = lines.slice(1, -2);
    for (const line of body.slice(0, -1)) expect(line).toHaveLength(64);
    expect(body.at(-1)!.length).toBeGreaterThan(0);
    expect(body.at(-1)!.length).toBeLessThanOrEqual(64);
    expect(Buffer.from(body.join(''), 'base64').equals(leafRsa)).toBe(true);
  });

  it.each([
    ['RSA root', () => root],
    ['EC leaf', () => leafEc],
    ['ECDSA-signed leaf', () => leafUnderEcRoot],
  ])('when the %s PEM is read back by Node, then it is the same certificate', (_, der) => {
    expect(new X509Certificate(toPem(der())).raw.equals(der())).toBe(true);
  });

  it('when a label is given, then the armor uses it', () => {
    const pem = toPem(spkiOf(leafEcKey.publicKey), 'PUBLIC KEY');
    expect(pem.startsWith('-----BEGIN PUBLIC KEY-----\n')).toBe(true);
    expect(pem.endsWith('\n-----END PUBLIC KEY-----\n')).toBe(true);
  });

  it('when any non-empty bytes are wrapped, then every body line but the last has 64 columns, none is empty, and they decode back', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 600 }), (bytes) => {
        const der = Buffer.from(bytes);
        const lines = toPem(der, 'X').split('\n');
        expect(lines[0]).toBe('-----BEGIN X-----');
        expect(lines.slice(-2)).toEqual(['-----END X-----', '']);
        const body = lines.slice(1, -2);
        body.forEach((line, i) => {
          if (i < body.length - 1) expect(line).toHaveLength(64);
          else expect(line.length).toBeGreaterThan(0);
          expect(line.length).toBeLessThanOrEqual(64);
        });
        expect(Buffer.from(body.join(''), 'base64').equals(der)).toBe(true);
      }),
      { numRuns: 300, seed: 424242 },
    );
  });

  it('when the DER is a multiple of 48 bytes (base64 a multiple of 64), then there is no empty line before END', () => {
    const pem = toPem(Buffer.alloc(96, 0xab));
    expect(pem).not.toMatch(/\n\n/);
    expect(pem.split('\n')).toHaveLength(5);
  });

  it('when openssl reads the PEM, then it parses it as the same certificate', () => {
    const out = openssl({ 'c.pem': toPem(leafEc) }, (p) => ['x509', '-in', p('c.pem'), '-outform', 'DER', '-noout', '-serial']);
    expect(out).toBe(`serial=${x509(leafEc).serialNumber}`);
  });
});
