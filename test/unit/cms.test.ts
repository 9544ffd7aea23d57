import { createHash, generateKeyPairSync, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import * as asn1js from 'asn1js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildDetachedSignedData, type DetachedSignedDataInput } from '../../src/signing/cms.js';
import { toPem } from '../../src/signing/x509.js';
import { openssl, opensslCmsVerify } from '../helpers/openssl.js';
import { testPki } from '../helpers/test-pki.js';

/* A throwaway RSA PKI: root → intermediate → signer, and a signer issued directly by the root. */
const rsa = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('rsa', { modulusLength: 2048 });
const signerKey = rsa();
const directSignerKey = rsa();
const { root, intermediate, leaf } = testPki('CMS Test');
const signerCert = leaf('cms-signer.example', signerKey.publicKey);
const directSignerCert = leaf('cms-direct-signer.example', directSignerKey.publicKey, 'root');
const rootPem = toPem(root);

const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest();
const DATA = Buffer.from('The quick brown fox signs over the lazy HSM.\n\x00\xff binary too', 'latin1');
const SIGNING_TIME = new Date(Date.UTC(2026, 2, 14, 15, 9, 26));

/** Builds a CMS with the signer's key doing PKCS#1 v1.5 SHA-256 over the signed attributes; records what it was given. */
async function build(over: Partial<DetachedSignedDataInput> = {}, key: KeyObject = signerKey.privateKey) {
  const seen: Buffer[] = [];
  const signatures: Buffer[] = [];
  const cms = await buildDetachedSignedData({
    contentDigest: sha256(DATA),
    signerCertificate: signerCert,
    chain: [intermediate],
    signingTime: SIGNING_TIME,
    sign: async (attrs) => {
      seen.push(Buffer.from(attrs));
      const signature = sign('sha256', attrs, key);
      signatures.push(signature);
      return signature;
    },
    ...over,
  });
  return { cms, seen, signatures };
}

const printed = (cms: Buffer): string => openssl({ 'p7.der': cms }, (p) => ['cms', '-cmsout', '-print', '-inform', 'DER', '-in', p('p7.der')]);

/** The lines of the signerInfos section of `openssl cms -cmsout -print`. */
const signerInfoPart = (print: string): string => print.slice(print.indexOf('signerInfos:'));

/** The bytes of the hex dump that follows `object: <attribute>` in the signedAttrs section. */
function dumpedBytes(print: string, attribute: string): Buffer {
  const section = signerInfoPart(print);
  const lines = section.slice(section.indexOf(`object: ${attribute} `)).split('\n');
  const start = lines.findIndex((l) => /^\s*0000 - /.test(l));
  const bytes: string[] = [];
  for (const line of lines.slice(start)) {
    const m = /^\s*[0-9a-f]{4} - /.exec(line);
    if (!m) break;
    // 13 bytes per line, each "xx " (or "xx-" after the 8th), padded: 39 columns of hex, then the ASCII column.
    bytes.push(...(line.slice(m[0].length, m[0].length + 39).match(/[0-9a-f]{2}/g) ?? []));
  }
  return Buffer.from(bytes.join(''), 'hex');
}

/** Splits a DER SET OF (as the callback receives it) into its elements' encodings. */
function setElements(der: Buffer): Buffer[] {
  const parsed = asn1js.fromBER(new Uint8Array(der));
  expect(parsed.offset).toBe(der.length);
  const set = parsed.result as asn1js.Set;
  return set.valueBlock.value.map((el) => Buffer.from(el.toBER(false)));
}

const certsIn = (cms: Buffer): Buffer[] =>
  (openssl({ 'p7.der': cms }, (p) => ['pkcs7', '-inform', 'DER', '-in', p('p7.der'), '-print_certs']).match(
    /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g,
  ) ?? []).map((pem) => new X509Certificate(pem).raw);

describe('buildDetachedSignedData: verification by openssl cms', () => {
  it('when the signer is under an intermediate that is in chain, then openssl cms -verify accepts it against the root', async () => {
    const { cms } = await build();
    expect(opensslCmsVerify({ cms, content: DATA, rootPem })).toMatch(/Verification successful/);
  });

  it('when the signer is issued by the root and chain is empty, then it verifies too', async () => {
    const { cms } = await build({ signerCertificate: directSignerCert, chain: [] }, directSignerKey.privateKey);
    expect(opensslCmsVerify({ cms, content: DATA, rootPem })).toMatch(/Verification successful/);
  });

  it('when the intermediate is missing from chain, then openssl cannot build the path to the root', async () => {
    const { cms } = await build({ chain: [] });
    expect(() => opensslCmsVerify({ cms, content: DATA, rootPem })).toThrow(/unable to get local issuer certificate/);
  });

  it('when the content is tampered with, then verification fails', async () => {
    const { cms } = await build();
    const tampered = Buffer.from(DATA);
    tampered[0] = tampered[0]! ^ 0x01;
    expect(() => opensslCmsVerify({ cms, content: tampered, rootPem })).toThrow(/Verification failure|digest failure/i);
    expect(() => opensslCmsVerify({ cms, content: Buffer.concat([DATA, Buffer.from('x')]), rootPem })).toThrow(/Verification failure/i);
  });

  it('when contentDigest is the digest of other data, then verification of the real data fails', async () => {
    const { cms } = await build({ contentDigest: sha256(Buffer.from('other data')) });
    expect(() => opensslCmsVerify({ cms, content: DATA, rootPem })).toThrow(/Verification failure|digest failure/i);
    expect(opensslCmsVerify({ cms, content: Buffer.from('other data'), rootPem })).toMatch(/Verification successful/);
  });

  it('when the callback signs with a key other than the signer certificate’s, then verification fails', async () => {
    const { cms } = await build({}, directSignerKey.privateKey);
    expect(() => opensslCmsVerify({ cms, content: DATA, rootPem })).toThrow(/Verification failure|signature failure/i);
  });

  it('when the callback rejects, then buildDetachedSignedData rejects with the same error', async () => {
    const failure = new Error('HSM said CKR_DEVICE_ERROR');
    await expect(
      buildDetachedSignedData({
        contentDigest: sha256(DATA),
        signerCertificate: signerCert,
        chain: [],
        signingTime: SIGNING_TIME,
        sign: () => Promise.reject(failure),
      }),
    ).rejects.toBe(failure);
  });

  it('when any content and a signing time in 1950–2049 are signed, then openssl verifies it', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 0, maxLength: 2048 }),
        fc.date({ min: new Date(Date.UTC(1950, 0, 1)), max: new Date(Date.UTC(2049, 11, 31, 23, 59, 59)), noInvalidDate: true }),
        async (bytes, when) => {
          const content = Buffer.from(bytes);
          const { cms } = await build({ contentDigest: sha256(content), signingTime: when });
          expect(opensslCmsVerify({ cms, content, rootPem })).toMatch(/Verification successful/);
        },
      ),
      { numRuns: 15, seed: 5652 },
    );
  });
});

describe('buildDetachedSignedData: structure, as openssl cms -cmsout -print shows it', () => {
  it('when built, then the content is detached: eContentType pkcs7-data, eContent absent', async () => {
    const print = printed((await build()).cms);
    expect(print).toMatch(/contentType: pkcs7-signedData \(1\.2\.840\.113549\.1\.7\.2\)/);
    expect(print).toMatch(/eContentType: pkcs7-data \(1\.2\.840\.113549\.1\.7\.1\)/);
    expect(print).toMatch(/eContent: <ABSENT>/);
  });

  it('when built, then SignedData and SignerInfo are version 1 with SHA-256 and rsaEncryption', async () => {
    const print = printed((await build()).cms);
    expect(print).toMatch(/d\.signedData: \n\s+version: 1\n/);
    const si = signerInfoPart(print);
    expect(si).toMatch(/^signerInfos:\n\s+version: 1\n/);
    expect(si).toMatch(/digestAlgorithm: \n\s+algorithm: sha256 \(2\.16\.840\.1\.101\.3\.4\.2\.1\)/);
    expect(si).toMatch(/signatureAlgorithm: \n\s+algorithm: rsaEncryption \(1\.2\.840\.113549\.1\.1\.1\)/);
    expect(si).toMatch(/unsignedAttrs:\n\s+<ABSENT>/);
  });

  it('when built, then the signed attributes are contentType (pkcs7-data), signingTime and messageDigest, and nothing else', async () => {
    const si = signerInfoPart(printed((await build()).cms));
    expect([...si.matchAll(/object: (\w+) \(/g)].map((m) => m[1])).toEqual(['contentType', 'signingTime', 'messageDigest']);
    expect(si).toMatch(/object: contentType \(1\.2\.840\.113549\.1\.9\.3\)\n\s+set:\n\s+OBJECT:pkcs7-data \(1\.2\.840\.113549\.1\.7\.1\)/);
  });

  it('when a signing time is given, then signingTime is that time, to the second (milliseconds dropped)', async () => {
    const si = signerInfoPart(printed((await build({ signingTime: new Date(Date.UTC(2031, 6, 4, 5, 6, 7, 890)) })).cms));
    expect(si).toMatch(/object: signingTime \(1\.2\.840\.113549\.1\.9\.5\)\n\s+set:\n\s+UTCTIME:Jul  4 05:06:07 2031 GMT/);
    const si2 = signerInfoPart(printed((await build()).cms));
    expect(si2).toMatch(/UTCTIME:Mar 14 15:09:26 2026 GMT/);
  });

  it('when the signing time is in 2050 or later, then signingTime is a GeneralizedTime of that year (RFC 5652 §11.3)', async () => {
    const si = signerInfoPart(printed((await build({ signingTime: new Date(Date.UTC(2050, 0, 2, 3, 4, 5)) })).cms));
    // Today it is a UTCTime "500102030405Z", which readers take for 2 Jan 1950.
    expect(si).toMatch(/GENERALIZEDTIME:Jan  2 03:04:05 2050 GMT/);
  });

  it('when a content digest is given, then messageDigest holds exactly those bytes', async () => {
    const print = printed((await build()).cms);
    expect(dumpedBytes(print, 'messageDigest').toString('hex')).toBe(sha256(DATA).toString('hex'));
    const other = sha256(Buffer.from('something else'));
    expect(dumpedBytes(printed((await build({ contentDigest: other })).cms), 'messageDigest').equals(other)).toBe(true);
  });

  it('when built, then the signer is identified by its certificate’s issuer and serial number', async () => {
    const cert = new X509Certificate(signerCert);
    const si = signerInfoPart(printed((await build()).cms));
    const m = /d\.issuerAndSerialNumber: \n\s+issuer: (.*)\n\s+serialNumber: (\d+)\n/.exec(si);
    expect(m).not.toBeNull();
    expect(m![1]).toBe('O=CMS Test Org, CN=CMS Test Intermediate');
    expect(cert.issuer).toBe('O=CMS Test Org\nCN=CMS Test Intermediate');
    expect(BigInt(m![2]!)).toBe(BigInt(`0x${cert.serialNumber}`));
  });

  it('when built, then the signature in the SignerInfo is the callback’s return value', async () => {
    const { cms, signatures } = await build();
    expect(signatures).toHaveLength(1);
    expect(dumpedBytes(printed(cms), 'messageDigest')).toHaveLength(32);
    const si = signerInfoPart(printed(cms));
    const sigDump = si.slice(si.indexOf('        signature: \n'));
    const bytes = (sigDump.match(/^\s*[0-9a-f]{4} - .*$/gm) ?? []).flatMap((line) => {
      const head = /^\s*[0-9a-f]{4} - /.exec(line)![0];
      return line.slice(head.length, head.length + 3 * 15).match(/[0-9a-f]{2}/g) ?? [];
    });
    expect(Buffer.from(bytes.join(''), 'hex').equals(signatures[0]!)).toBe(true);
    expect(cms.indexOf(signatures[0]!)).toBeGreaterThan(0);
  });
});

describe('buildDetachedSignedData: what is signed', () => {
  it('when the callback is called, then it gets the DER SET OF signed attributes (0x31), once', async () => {
    const { seen } = await build();
    expect(seen).toHaveLength(1);
    expect(seen[0]![0]).toBe(0x31);
    expect(setElements(seen[0]!)).toHaveLength(3);
  });

  it('when the callback is called, then the attributes are in DER order: re-sorting their encodings changes nothing', async () => {
    for (const over of [{}, { contentDigest: Buffer.alloc(64, 0xee) }, { contentDigest: Buffer.alloc(1, 0) }, { signingTime: new Date(Date.UTC(1999, 11, 31, 23, 59, 59)) }]) {
      const { seen } = await build(over);
      const elements = setElements(seen[0]!);
      const sorted = [...elements].sort(Buffer.compare);
      expect(elements.map((e) => e.toString('hex'))).toEqual(sorted.map((e) => e.toString('hex')));
    }
  });

  it('when a long digest makes messageDigest sort elsewhere, then the order still follows the encodings', async () => {
    // A 200-byte value makes messageDigest's SEQUENCE use a long-form length (30 81 …), which sorts after 30 18 / 30 1c.
    const { seen } = await build({ contentDigest: Buffer.alloc(200, 1) });
    const oids = setElements(seen[0]!).map((el) => ((asn1js.fromBER(new Uint8Array(el)).result as asn1js.Sequence).valueBlock.value[0] as asn1js.ObjectIdentifier).valueBlock.toString());
    const sortedOids = setElements(seen[0]!)
      .sort(Buffer.compare)
      .map((el) => ((asn1js.fromBER(new Uint8Array(el)).result as asn1js.Sequence).valueBlock.value[0] as asn1js.ObjectIdentifier).valueBlock.toString());
    expect(oids).toEqual(sortedOids);
    expect(new Set(oids)).toEqual(new Set(['1.2.840.113549.1.9.3', '1.2.840.113549.1.9.5', '1.2.840.113549.1.9.4']));
  });

  it('when the callback is called, then its bytes are the CMS’s signedAttrs with the [0] tag turned into SET, and the signature verifies over them', async () => {
    const { cms, seen, signatures } = await build();
    const asTagged = Buffer.concat([Buffer.from([0xa0]), seen[0]!.subarray(1)]);
    expect(cms.indexOf(asTagged)).toBeGreaterThan(0);
    expect(verify('sha256', seen[0]!, signerKey.publicKey, signatures[0]!)).toBe(true);
  });
});

describe('buildDetachedSignedData: certificates', () => {
  it('when chain holds the intermediate, then the certificates are the signer’s and the intermediate, as given', async () => {
    const certs = certsIn((await build()).cms);
    expect(certs.map((c) => c.toString('hex'))).toEqual([signerCert, intermediate].map((c) => c.toString('hex')));
  });

  it('when chain is empty, then only the signer’s certificate is included', async () => {
    const certs = certsIn((await build({ signerCertificate: directSignerCert, chain: [] }, directSignerKey.privateKey)).cms);
    expect(certs).toHaveLength(1);
    expect(certs[0]!.equals(directSignerCert)).toBe(true);
  });

  it('when chain holds the intermediate and the root, then all three are included byte for byte and it still verifies', async () => {
    const { cms } = await build({ chain: [intermediate, root] });
    expect(certsIn(cms).map((c) => c.toString('hex'))).toEqual([signerCert, intermediate, root].map((c) => c.toString('hex')));
    expect(opensslCmsVerify({ cms, content: DATA, rootPem })).toMatch(/Verification successful/);
  });
});
