import pkcs11js from 'pkcs11js';
import type { Config } from '../config/schema.js';
import { ckrName, ckrOf } from '../hsm/ckr.js';
import { initToken } from '../hsm/admin.js';
import { mechanismFlagNames, mechanismName, type DeepCapabilities } from '../hsm/capabilities.js';
import { findSlotByLabel, initializeModule } from '../hsm/module.js';
import { cannotMake } from '../keys/lifecycle.js';
import { tokenConfigs, type ProbedHome } from '../open-tokens.js';
import { KEY_SPEC_NAMES } from '../signing/key-specs.js';
import { secretFrom, stringOption, type Command } from './command.js';
import { details, RefusedError, UnavailableError, UsageError } from './output.js';

/** `token …`: initialize a token, describe the configured ones. */

/** The mechanisms the gateway uses (signing plans, key generation), shown with their flags in the text output. */
const GATEWAY_MECHANISMS = [
  pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11js.CKM_EC_KEY_PAIR_GEN, pkcs11js.CKM_RSA_PKCS, pkcs11js.CKM_SHA256_RSA_PKCS,
  pkcs11js.CKM_RSA_PKCS_PSS, pkcs11js.CKM_SHA256_RSA_PKCS_PSS, pkcs11js.CKM_ECDSA, pkcs11js.CKM_ECDSA_SHA256,
];

interface CapabilityReport {
  /** Per key spec: 'yes', or why the gateway will not make such keys on this token. */
  keySpecs: Record<string, string>;
  keyPairs: DeepCapabilities['keyPairs'];
  privateData: string;
  certificate: string;
  sharedObjects: string;
  probedAt: string;
  fromCache: boolean;
  mechanisms: Array<{ mechanism: string; flags: string[]; minKeySize: number; maxKeySize: number }>;
}

async function capabilitiesOf(home: ProbedHome, fresh: boolean): Promise<CapabilityReport> {
  const deep = await home.capabilities.probe(fresh);
  return {
    keySpecs: Object.fromEntries(KEY_SPEC_NAMES.map((spec) => [spec, cannotMake(home, spec) ?? 'yes'])),
    keyPairs: deep.keyPairs,
    privateData: deep.privateData,
    certificate: deep.certificate,
    sharedObjects: deep.sharedObjects,
    probedAt: deep.probedAt,
    fromCache: home.capabilities.fromCache,
    mechanisms: [...home.token.mechanismFacts].map(([m, f]) => ({ mechanism: mechanismName(m), flags: mechanismFlagNames(f.flags), minKeySize: f.minKeySize, maxKeySize: f.maxKeySize })),
  };
}

function capabilityLines(c: CapabilityReport): Array<[string, string]> {
  const makes = Object.entries(c.keySpecs).filter(([, v]) => v === 'yes').map(([spec]) => spec);
  const refused = Object.entries(c.keySpecs).filter(([, v]) => v !== 'yes');
  const used = c.mechanisms.filter((m) => GATEWAY_MECHANISMS.some((g) => mechanismName(g) === m.mechanism));
  return [
    ...used.map((m): [string, string] => [`  ${m.mechanism}`, `${m.flags.join(' ') || '(no flags reported)'}; key sizes ${m.minKeySize}–${m.maxKeySize}`]),
    ['Makes keys', makes.join(' ') || 'none'],
    ...refused.map(([spec, why]): [string, string] => [`  not ${spec}`, why]),
    ['Stops a key by CKA_SIGN', stopSigningLine(c.keyPairs)],
    ['Private data objects', c.privateData],
    ['Certificates', c.certificate],
    ["Other processes' objects", c.sharedObjects],
    ['Probed', `${c.probedAt}${c.fromCache ? ' (from capabilities.cacheFile)' : ''}`],
  ];
}

/** What the probe found of CKA_SIGN = false per key spec (a disabled key refused by the token: keys/signing-gate.ts). */
function stopSigningLine(keyPairs: CapabilityReport['keyPairs']): string {
  const tried = Object.entries(keyPairs).filter(([, o]) => o.stopSigning !== undefined);
  if (tried.length === 0) return 'not tried (no key pair could be made and used)';
  const ok = tried.filter(([, o]) => o.stopSigning === 'ok').map(([spec]) => spec);
  const not = tried.filter(([, o]) => o.stopSigning !== 'ok').map(([spec, o]) => `${spec}: ${o.stopSigning}`);
  return [ok.length > 0 ? `yes (${ok.join(' ')})` : '', ...not].filter(Boolean).join('; ') + (not.length > 0 ? '; a stop of such keys waits registry.refreshIntervalMs + 1 s' : '');
}

const DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

/**
 * registry.store: postgres — where the registry lives, as an operator reads it: never the password. A key file
 * sealing the secrets is also warned about on stderr, by the store's opening (open-registry.ts), as by the gateway.
 */
interface PostgresLocation {
  host: string;
  port: number;
  database: string;
  user?: string;
  tls: boolean;
  secretsSealedBy: { label?: string; kekFile?: string };
}

function postgresLocation(config: Config): PostgresLocation | undefined {
  const { store, postgres, secretsKey } = config.registry;
  if (store !== 'postgres' || !postgres) return undefined;
  const url = new URL(postgres.url);
  return {
    host: url.hostname,
    port: Number(url.port || 5432),
    database: decodeURIComponent(url.pathname.slice(1)) || decodeURIComponent(url.username),
    ...(url.username ? { user: decodeURIComponent(url.username) } : {}),
    tls: postgres.tls !== undefined,
    secretsSealedBy: secretsKey.kekFile ? { kekFile: secretsKey.kekFile } : { label: secretsKey.label },
  };
}

export const TOKEN_COMMANDS: Command[] = [
  {
    words: ['token', 'init'],
    synopsis: '--label <label> [--so-pin-file <file>] [--pin-file <file>] [--module <path>]',
    summary: 'initialize a new token in the first free slot, with its SO and user PINs',
    help: [
      '--label <label>              the token label (1–32 characters); the config names the token by it (hsm.tokenLabel)',
      '--so-pin-file <file>         the security officer PIN, from a file (or $HSM_GATEWAY_SO_PIN)',
      '--pin-file <file>            the user PIN the gateway logs in with, from a file (or $HSM_GATEWAY_PIN)',
      '--module <path>              the PKCS#11 module; default: hsm.module of a config given with --config or',
      '                             $HSM_GATEWAY_CONFIG, else $HSM_GATEWAY_PKCS11_MODULE, else ' + DEFAULT_MODULE,
      'PINs are never taken on the command line. SoftHSMv2 finds its token directory through $SOFTHSM2_CONF',
      '(or the config\'s hsm.softhsmConf).',
    ],
    options: { label: { type: 'string' }, 'so-pin-file': { type: 'string' }, 'pin-file': { type: 'string' }, module: { type: 'string' } },
    async run({ values, context, env }) {
      const label = stringOption(values, 'label');
      if (label === undefined) throw new UsageError('--label is required');
      if (Buffer.byteLength(label) > 32) throw new UsageError('--label is at most 32 bytes (a PKCS#11 token label)');
      const soPin = secretFrom(values, 'so-pin-file', env, 'HSM_GATEWAY_SO_PIN', 'the SO PIN');
      const userPin = secretFrom(values, 'pin-file', env, 'HSM_GATEWAY_PIN', 'the user PIN');
      let modulePath = stringOption(values, 'module');
      let initArgs: string | undefined;
      if (modulePath === undefined && context.explicitConfig) {
        const hsm = context.config().hsm;
        modulePath = hsm.module;
        initArgs = hsm.initArgs;
        if (hsm.softhsmConf) process.env.SOFTHSM2_CONF = hsm.softhsmConf;
        for (const [variable, value] of Object.entries(hsm.environment)) process.env[variable] = value;
      }
      modulePath ??= env.HSM_GATEWAY_PKCS11_MODULE || DEFAULT_MODULE;
      const p11 = new pkcs11js.PKCS11();
      try {
        initializeModule(p11, modulePath, initArgs);
      } catch (err) {
        throw new UnavailableError(`cannot load the PKCS#11 module ${modulePath}: ${ckrOf(err) === undefined ? (err as Error).message : ckrName(ckrOf(err)!)}`);
      }
      try {
        if (findSlotByLabel(p11, label) !== undefined) throw new RefusedError(`a token labelled "${label}" already exists in ${modulePath}`);
        let slot: pkcs11js.Handle;
        try {
          slot = initToken(p11, label, soPin, userPin, initArgs);
        } catch (err) {
          if (ckrOf(err) === undefined && /no uninitialized slot/.test((err as Error).message)) throw new RefusedError(`no free slot in ${modulePath} to initialize a token in`);
          throw err;
        }
        const slotId = (slot.length >= 8 ? slot.readBigUInt64LE(0) : BigInt(slot.readUInt32LE(0))).toString();
        return {
          data: { label, slot: slotId, module: modulePath },
          text: [`Token "${label}" initialized in slot ${slotId} (${modulePath}).`, `Name it in the config: hsm.tokenLabel: ${label}, and hsm.pin referring to the user PIN.`],
        };
      } finally {
        try {
          p11.C_Finalize();
        } catch {
          // Finalized already.
        }
      }
    },
  },
  {
    words: ['token', 'info'],
    synopsis: '[--probe]',
    summary: 'describe the configured tokens (module, slot, label, model, serial, mechanisms, what they can make) and where the registry lives',
    help: [
      '--probe    run the capability probe again even when capabilities.cacheFile holds an answer for the token',
      'The capability probe makes, per key spec, a session key pair (CKA_TOKEN=false) and signs once with it, creates and',
      'destroys a private data object and a certificate, and has another process write an object this one looks for',
      '(and then destroys). Its answer is kept in capabilities.cacheFile when configured (the gateway reads it at start).',
    ],
    options: { probe: { type: 'boolean' } },
    async run({ context, values }) {
      const tokens = [];
      const text: string[] = [];
      for (const [name] of tokenConfigs(context.config())) {
        const home = context.home(name);
        const description = home.token.describe();
        const capabilities = await capabilitiesOf(home, values.probe === true);
        let registry: Record<string, unknown> | undefined;
        let postgres: PostgresLocation | undefined;
        if (name === 'default') {
          const snapshot = await context.snapshot();
          const fileKeys = snapshot.registry.all().length - snapshot.onToken.keys.size;
          const fileCertificates = snapshot.registry.certificates().length - snapshot.onToken.certificates.size;
          postgres = postgresLocation(context.config());
          const counts = { keys: snapshot.onToken.keys.size, certificates: snapshot.onToken.certificates.size, accessKeys: snapshot.accessKeys.length };
          registry = {
            store: snapshot.store,
            ...(postgres ? { postgres, inDatabase: counts } : { onToken: counts }),
            ...(context.config().registry.file ? { file: { path: context.config().registry.file, keys: fileKeys, certificates: fileCertificates } } : {}),
            generation: snapshot.generation,
          };
        }
        tokens.push({ name, ...description, capabilities, ...(registry ? { registry } : {}) });
        const counts = (registry?.onToken ?? registry?.inDatabase) as { keys: number; certificates: number; accessKeys: number } | undefined;
        const where = postgres ? `in PostgreSQL at ${postgres.host}:${postgres.port}/${postgres.database}${postgres.user ? ` (user ${postgres.user})` : ''}` : 'on the token';
        text.push(
          `Token ${name}`,
          ...details([
            ['Module', `${description.module} (${description.library.manufacturer} ${description.library.description} ${description.library.version})`],
            ['Slot', description.slot],
            ['Label', description.label],
            ['Manufacturer', description.manufacturer],
            ['Model', description.model],
            ['Serial', description.serialNumber],
            ['Firmware', description.firmwareVersion],
            ['Mechanisms', description.mechanisms],
            ...capabilityLines(capabilities),
            ['Registry', counts && `${counts.keys} keys, ${counts.certificates} certificates, ${counts.accessKeys} access keys ${where}`],
            [
              'Secrets sealed by',
              postgres &&
                (postgres.secretsSealedBy.kekFile
                  ? `a key-encryption key file (${postgres.secretsSealedBy.kekFile}), NOT by the HSM`
                  : `the AES-256 key "${postgres.secretsSealedBy.label}" on this token`),
            ],
            ['Registry file', registry?.file ? `${(registry.file as { path: string }).path} (read-only)` : undefined],
            ['Generation', registry ? (registry.generation as string) || '(nothing written yet)' : undefined],
          ]).map((line) => `  ${line}`),
          '',
        );
      }
      return { data: { tokens }, text: text.slice(0, -1) };
    },
  },
];
