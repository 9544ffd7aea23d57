import { X509Certificate } from 'node:crypto';
import type { CertificateMaterial } from '../keys/certificate-store.js';
import { type CertificateRecord } from '../keys/registry.js';
import { accessTo } from './authorize.js';
import type { Operation, OperationContext } from './context.js';
import { compare } from './key-metadata.js';
import { CAS_PAGING, pageOf, pageRequest } from './paging.js';
import { optionalInteger, optionalParam } from './params.js';

/** What ListCert says about a certificate's X.509 content: read once per certificate, then kept. */
interface X509Details {
  commonName?: string;
  issuer?: string;
  beforeDate: number;
  afterDate: number;
  sans: string;
}

/** The CN of a Node distinguished-name string (`C=…\nO=…\nCN=…`), else the whole name on one line. */
function commonNameOf(dn: string): string {
  const lines = dn.split('\n');
  const cn = lines.find((line) => line.startsWith('CN='));
  // Node escapes DN specials with a backslash: `CN=a\, b` is the name "a, b".
  return cn ? cn.slice(3).replace(/\\(.)/g, '$1') : lines.join(', ');
}

/** `DNS:a.example, IP Address:10.0.0.1` → `a.example,10.0.0.1` (CAS joins SANs with commas). */
function sansOf(subjectAltName: string | undefined): string {
  if (!subjectAltName) return '';
  return subjectAltName
    .split(/, (?=[A-Za-z ]+:)/)
    .map((entry) => entry.slice(entry.indexOf(':') + 1))
    .map((value) => (value.startsWith('"') ? (JSON.parse(value) as string) : value))
    .join(',');
}

const details = new WeakMap<CertificateMaterial, X509Details>();
function detailsOf(material: CertificateMaterial): X509Details {
  let d = details.get(material);
  if (!d) {
    const x509 = new X509Certificate(material.der);
    d = {
      commonName: commonNameOf(x509.subject),
      issuer: commonNameOf(x509.issuer),
      beforeDate: Date.parse(x509.validFrom),
      afterDate: Date.parse(x509.validTo),
      sans: sansOf(x509.subjectAltName),
    };
    details.set(material, d);
  }
  return d;
}

/** One CertList entry (the SDK's ListCertResponseBodyCertList). */
function certEntry(ctx: OperationContext, cert: CertificateRecord) {
  const material = ctx.certificates.get(cert.certificateId);
  const x509 = material ? detailsOf(material) : undefined;
  return {
    Identifier: cert.casIdentifier ?? cert.sslIdentifier ?? cert.certificateId,
    CommonName: x509?.commonName,
    Issuer: x509?.issuer,
    BeforeDate: x509?.beforeDate,
    AfterDate: x509?.afterDate,
    CertType: 'CERT',
    ExistPrivateKey: true,
    Sans: x509?.sans,
    SourceType: 'upload',
    // The certificate itself is issued; whether the gateway signs with it (state) is not a PKI revocation.
    Status: 'ISSUE',
    WhId: cert.warehouseId,
    WhInstanceId: cert.warehouseId === undefined ? undefined : `hsm-gateway-warehouse-${cert.warehouseId}`,
  };
}
type CertEntry = ReturnType<typeof certEntry>;

/** KeyWord: a case-insensitive substring of the common name, the identifier or a SAN. */
const matchesKeyWord = (entry: CertEntry, keyWord: string): boolean =>
  [entry.CommonName, entry.Identifier, entry.Sans].some((field) => field?.toLowerCase().includes(keyWord.toLowerCase()));

/** CAS 2020-04-07 ListCert: the certificates this caller may use, filtered, by Identifier, a page at a time. */
export const casListCert: Operation = {
  xmlRoot: 'ListCertResponse',
  async handle(params, ctx) {
    const request = pageRequest(params, CAS_PAGING);
    const warehouseId = optionalInteger(params, 'WarehouseId');
    const keyWord = optionalParam(params, 'KeyWord');
    const status = optionalParam(params, 'Status');
    const certType = optionalParam(params, 'CertType');
    const sourceType = optionalParam(params, 'SourceType');

    const entries = ctx.registry
      .certificates()
      .filter((cert) => accessTo(ctx, cert) === 'allowed')
      .filter((cert) => warehouseId === undefined || cert.warehouseId === warehouseId)
      .map((cert) => certEntry(ctx, cert))
      .filter((entry) => keyWord === undefined || matchesKeyWord(entry, keyWord))
      .filter((entry) => status === undefined || entry.Status === status)
      .filter((entry) => certType === undefined || entry.CertType === certType)
      .filter((entry) => sourceType === undefined || entry.SourceType === sourceType)
      .sort((a, b) => compare(a.Identifier, b.Identifier));
    const page = pageOf(entries, request);
    return {
      CertList: page.items,
      CurrentPage: page.pageNumber,
      ShowSize: page.pageSize,
      TotalCount: page.totalCount,
      RequestId: ctx.requestId,
    };
  },
};
