import { X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { HsmObjectNotFoundError } from '../hsm/errors.js';
import type { RegistrySnapshot } from '../keys/registry-source.js';
import type { CertificateRecord } from '../keys/registry.js';
import { DistinguishedNameError, parseDistinguishedName, toPem } from '../signing/x509.js';
import type { AdminContext } from './admin-context.js';
import { accountOption, integerOption, keySpecOption, readInput, requiredOption, stringOption, type Command, type OptionValues } from './command.js';
import { asFileEntry, details, table, UsageError } from './output.js';

/** `certs …`: the certificate lifecycle of src/keys/certificate-lifecycle.ts. */

interface CertificateView extends Record<string, unknown> {
  certificateId: string;
  source: 'token' | 'postgres' | 'file';
  subject?: string;
  issuer?: string;
  serialNumber?: string;
  notBefore?: string;
  notAfter?: string;
  certificatePem?: string;
}

const oneLine = (dn: string): string => dn.split('\n').join(', ');

/** The record, where it is kept, and what its certificate on the token says (public data only). */
function viewOf(context: AdminContext, snapshot: RegistrySnapshot, record: CertificateRecord): CertificateView {
  const view: CertificateView = { ...record, source: snapshot.onToken.certificates.has(record.certificateId) ? snapshot.store : 'file' };
  try {
    const der = context.token(record.token).certificate({ label: record.label, id: record.id });
    const x509 = new X509Certificate(der);
    Object.assign(view, {
      subject: oneLine(x509.subject),
      issuer: oneLine(x509.issuer),
      serialNumber: x509.serialNumber,
      notBefore: new Date(x509.validFrom).toISOString(),
      notAfter: new Date(x509.validTo).toISOString(),
      certificatePem: toPem(der),
    });
  } catch (err) {
    if (!(err instanceof HsmObjectNotFoundError)) throw err;
  }
  return view;
}

function certificateLines(view: CertificateView): string[] {
  return details([
    ['CertificateId', view.certificateId],
    ['CAS Identifier', view.casIdentifier as string | undefined],
    ['SSL Identifier', view.sslIdentifier as string | undefined],
    ['CustomIdentifier', view.customIdentifier as string | undefined],
    ['WarehouseId', view.warehouseId as number | undefined],
    ['KeySpec', view.keySpec as string],
    ['State', view.state as string],
    ['Account', view.account as string],
    ['Token', view.token as string],
    ['CKA_LABEL', view.label as string],
    ['CKA_ID', view.id as string | undefined],
    ['Chain', (view.chainLabels as string[]).join(' → ')],
    ['Subject', view.subject],
    ['Issuer', view.issuer],
    ['Serial', view.serialNumber],
    ['Valid', view.notBefore && `${view.notBefore} … ${view.notAfter}`],
    ['Description', view.description as string | undefined],
  ]);
}

/** The options of a new certificate's record. */
function recordOptions(values: OptionValues): { account?: string; warehouseId?: number; customIdentifier?: string; description?: string } {
  const account = accountOption(values, null);
  const warehouseId = integerOption(values, 'warehouse-id', { min: 0, max: 2_147_483_647 });
  const customIdentifier = stringOption(values, 'custom-identifier');
  const description = stringOption(values, 'description');
  return {
    ...(account !== undefined ? { account } : {}),
    ...(warehouseId !== undefined ? { warehouseId } : {}),
    ...(customIdentifier !== undefined ? { customIdentifier } : {}),
    ...(description !== undefined ? { description } : {}),
  };
}

const RECORD_HELP = [
  '--account <name>             the account that may use it (default: default; for issue, the CA\'s account)',
  '--warehouse-id <n>           its CAS WarehouseId (default: none)',
  '--custom-identifier <id>     its CAS CustomIdentifier (default: a random one)',
  '--description <text>         free text',
];
const RECORD_OPTIONS = {
  account: { type: 'string' },
  'warehouse-id': { type: 'string' },
  'custom-identifier': { type: 'string' },
  description: { type: 'string' },
} as const;

async function shown(context: AdminContext, record: CertificateRecord): Promise<{ data: CertificateView; text: string[] }> {
  const snapshot = await context.snapshot();
  const view = viewOf(context, snapshot, snapshot.registry.certificate(record.certificateId) ?? record);
  return { data: view, text: certificateLines(view) };
}

export const CERTIFICATE_COMMANDS: Command[] = [
  {
    words: ['certs', 'list'],
    synopsis: '[--account <name>]',
    summary: 'list the registered certificates (with --json: their PEM too)',
    options: { account: { type: 'string' } },
    async run({ values, context }) {
      const account = accountOption(values, null);
      const snapshot = await context.snapshot();
      const views = snapshot.registry
        .certificates()
        .filter((c) => account === undefined || c.account === account)
        .map((c) => viewOf(context, snapshot, c));
      return {
        data: views,
        text: table(views, [
          ['CERTIFICATE ID', (c) => c.certificateId],
          ['SPEC', (c) => c.keySpec as string],
          ['STATE', (c) => c.state as string],
          ['ACCOUNT', (c) => c.account as string],
          ['CAS IDENTIFIER', (c) => c.casIdentifier as string | undefined],
          ['SSL IDENTIFIER', (c) => c.sslIdentifier as string | undefined],
          ['WAREHOUSE', (c) => c.warehouseId as number | undefined],
          ['NOT AFTER', (c) => c.notAfter?.slice(0, 10)],
          ['SUBJECT', (c) => c.subject],
        ]),
      };
    },
  },
  {
    words: ['certs', 'import'],
    synopsis: '--key <key.pem> --cert <cert.pem> [--chain <chain.pem>] [--key-pass-file <file>] [--token <name>] [--account <name>] [--warehouse-id <n>] [--custom-identifier <id>] [--description <text>]',
    summary: 'put a certificate\'s private key (sensitive, not extractable), the certificate and its chain on the token; register it',
    help: [
      '--key <key.pem>              the private key, PEM (PKCS#8; PKCS#1 and SEC1 are read too): RSA 2048/3072, P-256, secp256k1',
      '--cert <cert.pem>            its certificate, PEM (issuer certificates may follow it)',
      '--chain <chain.pem>          issuer certificates, PEM, any order (the root may be left out)',
      '--key-pass-file <file>       the passphrase of an encrypted key, from a file',
      '--token <name>               the configured token to put it on (default: the first that signs its key spec)',
      ...RECORD_HELP,
    ],
    options: { key: { type: 'string' }, cert: { type: 'string' }, chain: { type: 'string' }, 'key-pass-file': { type: 'string' }, token: { type: 'string' }, ...RECORD_OPTIONS },
    async run({ values, context }) {
      const privateKeyPem = readInput(requiredOption(values, 'key'), 'the key file');
      const certificatePem = readInput(requiredOption(values, 'cert'), 'the certificate file');
      const chainFile = stringOption(values, 'chain');
      const passFile = stringOption(values, 'key-pass-file');
      const tokenName = stringOption(values, 'token');
      if (tokenName !== undefined && tokenName !== 'default' && !context.config().tokens[tokenName]) throw new UsageError(`--token: no token "${tokenName}" in the config`);
      const options = recordOptions(values);
      const { record } = await (await context.certificates()).importCertificate({
        ...options,
        account: options.account ?? 'default',
        privateKeyPem,
        certificatePem,
        ...(chainFile !== undefined ? { chainPem: readInput(chainFile, 'the chain file') } : {}),
        ...(passFile !== undefined ? { passphrase: readInput(passFile, 'the passphrase file').replace(/\r?\n$/, '') } : {}),
        ...(tokenName !== undefined ? { tokenName } : {}),
      });
      return shown(context, record);
    },
  },
  {
    words: ['certs', 'register'],
    synopsis:
      '(--label <CKA_LABEL> | --id <CKA_ID hex>) --cert <cert.pem> [--chain <chain.pem>] [--token <name>] [--accept-imported-key] [--account <name>] [--warehouse-id <n>] [--custom-identifier <id>] [--description <text>]',
    summary: 'register a certificate for a key pair already on the token (no private key is created); store the certificate and its chain beside it',
    help: [
      "--label <CKA_LABEL>          the private key's label (its public key must be on the token too)",
      "--id <hex>                   the private key's CKA_ID, hex; with --label both must match",
      "--cert <cert.pem>            the key's certificate, PEM (issuer certificates may follow it)",
      '--chain <chain.pem>          issuer certificates, PEM, any order (the root may be left out)',
      '--token <name>               the configured token that holds the key (default: the default token)',
      '--accept-imported-key        accept a key that existed outside the HSM (CKA_NEVER_EXTRACTABLE false), as for keys import',
      ...RECORD_HELP,
    ],
    options: {
      label: { type: 'string' },
      id: { type: 'string' },
      cert: { type: 'string' },
      chain: { type: 'string' },
      token: { type: 'string' },
      'accept-imported-key': { type: 'boolean' },
      ...RECORD_OPTIONS,
    },
    async run({ values, context }) {
      const label = stringOption(values, 'label');
      const id = stringOption(values, 'id');
      if (label === undefined && id === undefined) throw new UsageError("name the certificate's key with --label, --id, or both");
      if (id !== undefined && !/^([0-9a-fA-F]{2})+$/.test(id)) throw new UsageError(`--id is the CKA_ID in hex, an even number of hex digits (got "${id}")`);
      const certificatePem = readInput(requiredOption(values, 'cert'), 'the certificate file');
      const chainFile = stringOption(values, 'chain');
      const tokenName = stringOption(values, 'token');
      if (tokenName !== undefined && tokenName !== 'default' && !context.config().tokens[tokenName]) throw new UsageError(`--token: no token "${tokenName}" in the config`);
      const options = recordOptions(values);
      const { record } = await (await context.certificates()).registerCertificate({
        ...options,
        account: options.account ?? 'default',
        ...(label !== undefined ? { label } : {}),
        ...(id !== undefined ? { id: id.toLowerCase() } : {}),
        ...(tokenName !== undefined ? { tokenName } : {}),
        certificatePem,
        ...(chainFile !== undefined ? { chainPem: readInput(chainFile, 'the chain file') } : {}),
        acceptImported: values['accept-imported-key'] === true,
        fileEntry: context.fileStore(),
      });
      if (record.importOverride) context.log.warn('operator override: certificate registered for a key that existed outside the HSM', { certificateId: record.certificateId, accepted: record.importOverride.accepted });
      const out = await shown(context, record);
      return context.fileStore() ? asFileEntry(out, 'certificates', record, context.config().registry.file!) : out;
    },
  },
  {
    words: ['certs', 'issue'],
    synopsis: '--ca <certificateId> (--subject <dn> --spec <spec> | --csr <req.pem>) [--days <n>] [--out <cert.pem>] [--account <name>] [--warehouse-id <n>] [--custom-identifier <id>] [--description <text>]',
    summary: 'issue a certificate with a CA on the token: for a key pair made on the token (registered), or for a CSR',
    help: [
      '--ca <certificateId>         a registered CA certificate (basicConstraints cA) whose key is on the token',
      '--subject <dn>               "CN=host,O=Org,C=CN" (RFC 4514, most specific first) or "/C=CN/O=Org/CN=host" (OpenSSL)',
      '--spec <spec>                the new key\'s spec, generated on the CA\'s token',
      '--csr <req.pem>              sign this PKCS#10 request instead: its subject and subjectAltName are kept',
      '--days <n>                   validity (default: 365; within the CA\'s own validity)',
      '--out <cert.pem>             also write the certificate there (with --csr and no --out, the PEM goes to stdout)',
      ...RECORD_HELP.map((line) => `${line} (not with --csr)`),
    ],
    options: { ca: { type: 'string' }, subject: { type: 'string' }, spec: { type: 'string' }, csr: { type: 'string' }, days: { type: 'string' }, out: { type: 'string' }, ...RECORD_OPTIONS },
    async run({ values, context }) {
      const caCertificateId = requiredOption(values, 'ca');
      const validDays = integerOption(values, 'days', { min: 1, max: 36_500 }) ?? 365;
      const out = stringOption(values, 'out');
      const csrFile = stringOption(values, 'csr');
      const write = (pem: string): void => {
        if (out === undefined) return;
        try {
          writeFileSync(out, pem);
        } catch (err) {
          throw new UsageError(`cannot write ${out}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        }
      };
      if (csrFile !== undefined) {
        for (const name of ['subject', 'spec', 'account', 'warehouse-id', 'custom-identifier', 'description']) {
          if (values[name] !== undefined) throw new UsageError(`--${name} does not go with --csr (the CSR names its subject; nothing is registered)`);
        }
        const csrPem = readInput(csrFile, 'the CSR file');
        const issued = await (await context.certificates()).signCsr({ caCertificateId, csrPem, validDays });
        write(issued.certificatePem);
        const x509 = new X509Certificate(issued.certificatePem);
        return {
          data: { ...issued, subject: oneLine(x509.subject), serialNumber: x509.serialNumber, notAfter: new Date(x509.validTo).toISOString(), ...(out ? { out } : {}) },
          text: out === undefined ? issued.certificatePem.trimEnd().split('\n') : [`Certificate for ${oneLine(x509.subject)} written to ${out}.`],
        };
      }
      const subjectText = requiredOption(values, 'subject');
      let attributes: Array<[string, string]>;
      try {
        attributes = parseDistinguishedName(subjectText);
      } catch (err) {
        if (err instanceof DistinguishedNameError) throw new UsageError(`--subject: ${err.message}`);
        throw err;
      }
      const keySpec = keySpecOption(values);
      const { record, certificatePem } = await (await context.certificates()).issueCertificate({
        ...recordOptions(values),
        caCertificateId,
        subject: { attributes },
        keySpec,
        validDays,
      });
      write(certificatePem);
      return shown(context, record);
    },
  },
];
