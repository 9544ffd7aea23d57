import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import pkcs11js from 'pkcs11js';
import { fallbackFor, libraryOf } from './key-generation.js';
import { ckrName, ckrOf, classifyCkr } from './ckr.js';
import { HsmUnavailableError } from './errors.js';
import { destroyQuietly } from './objects.js';

/**
 * What a token can really do, probed rather than assumed from SoftHSMv2 (HSM-FACTS.md: tpm2-pkcs11 lists ECDSA but
 * refuses secp256k1, NSS refuses token CKO_DATA objects, tpm2-pkcs11 and nShield do not show other processes'
 * objects). Two levels:
 *
 * - mechanism facts (C_GetMechanismInfo: flags, key sizes): read-only, read at every open (`readMechanismFacts`);
 * - the deep probe: a session key pair (CKA_TOKEN=false) per candidate, generated and used to sign once; one private
 *   CKO_DATA and one CKO_CERTIFICATE token object, created and destroyed at once; and whether an object another
 *   process writes is seen here. It creates objects (and costs a key generation per candidate), so it runs when
 *   asked (`token info`, a configured cache without this token) and its answer is kept per token identity
 *   (library, model, serial, firmware) in memory and, with `capabilities.cacheFile`, on disk.
 *
 * This layer knows no key specs: callers hand it candidates (name, templates, a mechanism to sign with).
 */

type Handle = pkcs11js.Handle;

/** What the probes need of a Token (token.ts reads the mechanism facts from here, so no import back). */
interface Token {
  admin<T>(work: (p11: pkcs11js.PKCS11, session: Handle) => T | Promise<T>): Promise<T>;
  probe(): Promise<{ ok: boolean }>;
}

/** C_GetMechanismInfo of one mechanism. Key sizes are bits for RSA and EC (PKCS#11 §2.1); 0/0 when not reported. */
export interface MechanismFacts {
  minKeySize: number;
  maxKeySize: number;
  flags: number;
}

/** Mechanism flags by name (CKF_EC_CURVENAME is PKCS#11 3.0; pkcs11js has no constant for it). */
const MECHANISM_FLAGS: ReadonlyArray<readonly [number, string]> = [
  [0x1, 'HW'], [0x100, 'ENCRYPT'], [0x200, 'DECRYPT'], [0x400, 'DIGEST'], [0x800, 'SIGN'], [0x1000, 'SIGN_RECOVER'],
  [0x2000, 'VERIFY'], [0x4000, 'VERIFY_RECOVER'], [0x8000, 'GENERATE'], [0x10000, 'GENERATE_KEY_PAIR'], [0x20000, 'WRAP'],
  [0x40000, 'UNWRAP'], [0x80000, 'DERIVE'], [0x100000, 'EC_F_P'], [0x200000, 'EC_F_2M'], [0x400000, 'EC_ECPARAMETERS'],
  [0x800000, 'EC_NAMEDCURVE'], [0x1000000, 'EC_UNCOMPRESS'], [0x2000000, 'EC_COMPRESS'], [0x4000000, 'EC_CURVENAME'],
];

export const mechanismFlagNames = (flags: number): string[] => MECHANISM_FLAGS.filter(([bit]) => (flags & bit) !== 0).map(([, name]) => name);

/** The mechanism's name as pkcs11js knows it (CKM_…; the current name of 0x1040, not its deprecated alias), vendor ones in hex. */
export function mechanismName(mechanism: number): string {
  const names = Object.entries(pkcs11js).filter(([k, v]) => k.startsWith('CKM_') && v === mechanism).map(([k]) => k);
  return names.find((n) => n !== 'CKM_ECDSA_KEY_PAIR_GEN') ?? names[0] ?? `0x${mechanism.toString(16)}`;
}

/** C_GetMechanismInfo for each mechanism (read-only; a mechanism the module will not describe is left out). */
export function readMechanismFacts(p11: pkcs11js.PKCS11, slot: Handle, mechanisms: Iterable<number>): Map<number, MechanismFacts> {
  const facts = new Map<number, MechanismFacts>();
  for (const mechanism of mechanisms) {
    try {
      const info = p11.C_GetMechanismInfo(slot, mechanism);
      facts.set(mechanism, { minKeySize: info.minKeySize, maxKeySize: info.maxKeySize, flags: info.flags });
    } catch {
      // Listed but not described: the facts say nothing about it, the deep probe still tries it.
    }
  }
  return facts;
}

/**
 * Does the module allow `flag` (e.g. CKF_SIGN) for this mechanism? A module that reports no flags at all (0) is not
 * taken at its word: only a reported set of flags that lacks this one says no.
 */
export function mechanismAllows(facts: ReadonlyMap<number, MechanismFacts>, mechanism: number, flag: number): boolean {
  const info = facts.get(mechanism);
  return info === undefined || info.flags === 0 || (info.flags & flag) !== 0;
}

/**
 * Is an RSA modulus of `bits` within the mechanism's reported range? Sizes under 1,024 are not believed (some
 * modules report bytes, or nothing): only a plausible range in bits excludes a size.
 */
export function rsaSizeAllowed(facts: ReadonlyMap<number, MechanismFacts>, mechanism: number, bits: number): boolean {
  const info = facts.get(mechanism);
  if (info === undefined || info.maxKeySize < 1024) return true;
  return bits >= info.minKeySize && bits <= info.maxKeySize;
}

/** 'ok', the CKR the module answered, or a short reason (`not tried: …`). */
export type ProbeOutcome = string;

/** One key pair to try: generated as session objects, then one signature with it. */
interface KeyPairCandidate {
  name: string;
  mechanism: number;
  publicTemplate: pkcs11js.Template;
  privateTemplate: pkcs11js.Template;
  sign: pkcs11js.Mechanism;
  /** What is signed (a digest of the right length, in a DigestInfo where the mechanism needs it). */
  input: Buffer;
  maxSignatureBytes: number;
}

export interface KeyPairOutcome {
  generate: ProbeOutcome;
  sign: ProbeOutcome;
  /** The documented fallback template the module needed (tpm2-pkcs11's coupled usages), when the strict one was refused. */
  template?: string;
  /** Set when the module refused session key pairs and the probe used token objects (destroyed after it). */
  tokenObjects?: true;
  /**
   * Whether the module lets CKA_SIGN be turned off on such a key and then refuses it (what stops a disabled key on
   * every replica: keys/signing-gate.ts): 'ok', `refused: <CKR>`, or 'not enforced' (it took the change and signed).
   */
  stopSigning?: ProbeOutcome;
}

/** The deep probe's answer for one token. */
export interface DeepCapabilities {
  probedAt: string;
  keyPairs: Record<string, KeyPairOutcome>;
  /** C_CreateObject of a private CKO_DATA token object (what the registry on the token needs). */
  privateData: ProbeOutcome;
  /** C_CreateObject of a CKO_CERTIFICATE token object (certs import / issue). */
  certificate: ProbeOutcome;
  /**
   * Whether a token object written by another process (a child process, the module initialized there) is seen by
   * this process's initialization of the module: 'seen', 'not seen', or why it could not be told.
   */
  sharedObjects: ProbeOutcome;
}

/** Who the token is: the cache key. A firmware or library upgrade is a new identity (probed again). */
export interface TokenIdentity {
  library: string;
  manufacturer: string;
  model: string;
  serialNumber: string;
  firmwareVersion: string;
}

const identityKey = (id: TokenIdentity): string => [id.library, id.manufacturer, id.model, id.serialNumber, id.firmwareVersion].join(' | ');

const errorOutcome = (err: unknown): ProbeOutcome => {
  const ckr = ckrOf(err);
  return ckr === undefined ? `error: ${(err as Error).message}` : ckrName(ckr);
};

/**
 * A device-class answer during a probe is only believed once the token's health check passes (one failed call is
 * not proof either way): otherwise the probe is inconclusive and throws, so nothing wrong is cached.
 */
async function believed(token: Token, err: unknown): Promise<ProbeOutcome> {
  const ckr = ckrOf(err);
  if (ckr !== undefined && classifyCkr(ckr) === 'device' && !(await token.probe()).ok) {
    throw new HsmUnavailableError('the token failed during the capability probe', ckr, { cause: err });
  }
  return errorOutcome(err);
}

const sessionOnly = (template: pkcs11js.Template): pkcs11js.Template => [
  ...template.filter((a) => a.type !== pkcs11js.CKA_TOKEN),
  { type: pkcs11js.CKA_TOKEN, value: false },
];

/** What a module answers when it keeps no session key objects (tpm2-pkcs11: CKR_ATTRIBUTE_VALUE_INVALID, measured). */
const NO_SESSION_KEYS = new Set([pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11js.CKR_TEMPLATE_INCONSISTENT, pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID]);

/**
 * Generates the candidate as session objects (CKA_TOKEN=false: nothing outlives the session) and signs once with it,
 * both off the event loop; the objects are destroyed whatever happens. A module that refuses session key pairs
 * (tpm2-pkcs11) is asked again with the candidate's own token templates: the answer is then about the templates the
 * gateway really uses, and the pair is destroyed after the signature.
 */
export async function probeKeyPair(token: Token, candidate: KeyPairCandidate): Promise<KeyPairOutcome> {
  let outcome: KeyPairOutcome = { generate: 'ok', sign: 'ok' };
  let failure: unknown;
  await token.admin(async (p11, session) => {
    let pair: { publicKey: Handle; privateKey: Handle } | undefined;
    const generate = (publicTemplate: pkcs11js.Template, privateTemplate: pkcs11js.Template) =>
      p11.C_GenerateKeyPairAsync(session, { mechanism: candidate.mechanism }, publicTemplate, privateTemplate);
    try {
      try {
        pair = await generate(sessionOnly(candidate.publicTemplate), sessionOnly(candidate.privateTemplate));
      } catch (err) {
        if (!NO_SESSION_KEYS.has(ckrOf(err) ?? -1)) throw err;
        outcome = { ...outcome, tokenObjects: true };
        try {
          pair = await generate(candidate.publicTemplate, candidate.privateTemplate);
        } catch (strictError) {
          // The module's documented fallback (admin.ts TEMPLATE_FALLBACKS), as key generation itself would try it.
          const fallback = fallbackFor(libraryOf(p11), ckrOf(strictError));
          if (!fallback) throw strictError;
          const without = (t: pkcs11js.Template) => t.filter((a) => !fallback.omit.includes(a.type));
          pair = await generate(without(candidate.publicTemplate), without(candidate.privateTemplate));
          outcome = { ...outcome, template: fallback.name };
        }
      }
    } catch (err) {
      failure = err;
      outcome = { ...outcome, generate: 'failed', sign: 'not tried' };
      return;
    }
    try {
      p11.C_SignInit(session, candidate.sign, pair.privateKey);
      await p11.C_SignAsync(session, candidate.input, Buffer.alloc(candidate.maxSignatureBytes));
      outcome = { ...outcome, stopSigning: await probeStopSigning(p11, session, candidate, pair.privateKey) };
    } catch (err) {
      failure = err;
      outcome = { ...outcome, sign: 'failed' };
    } finally {
      destroyQuietly(p11, session, [pair.privateKey, pair.publicKey]);
    }
  });
  if (failure === undefined) return outcome;
  const reason = await believed(token, failure);
  return outcome.generate === 'failed' ? { ...outcome, generate: reason } : { ...outcome, sign: reason };
}

/** CKA_SIGN off on the probe's key, then a C_SignInit that must be refused (CKR_KEY_FUNCTION_NOT_PERMITTED). */
async function probeStopSigning(p11: pkcs11js.PKCS11, session: Handle, candidate: KeyPairCandidate, key: Handle): Promise<ProbeOutcome> {
  try {
    p11.C_SetAttributeValue(session, key, [{ type: pkcs11js.CKA_SIGN, value: false }]);
  } catch (err) {
    return `refused: ${errorOutcome(err)}`;
  }
  try {
    p11.C_SignInit(session, candidate.sign, key);
  } catch (err) {
    return ckrOf(err) === pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED ? 'ok' : `set, then C_SignInit: ${errorOutcome(err)}`;
  }
  // The module took the change and signs anyway: end the operation it started, so the session is clean.
  await p11.C_SignAsync(session, candidate.input, Buffer.alloc(candidate.maxSignatureBytes)).catch(() => undefined);
  return 'not enforced: the key still signs with CKA_SIGN false';
}

/** Creates a token object from the template and destroys it at once: 'ok' or what the module answered. */
export async function probeTokenObject(token: Token, template: pkcs11js.Template): Promise<ProbeOutcome> {
  let failure: unknown;
  await token.admin((p11, session) => {
    let handle: Handle | undefined;
    try {
      handle = p11.C_CreateObject(session, template);
    } catch (err) {
      failure = err;
    } finally {
      destroyQuietly(p11, session, [handle]);
    }
  });
  return failure === undefined ? 'ok' : believed(token, failure);
}

/** What the child process needs to open the token as the gateway does; sent on its stdin (the PIN never on argv/env). */
interface ChildOrder {
  module: string;
  initArgs?: string;
  tokenLabel: string;
  pin: string;
  /** Tried in turn until the module stores one (NSS refuses CKO_DATA; a certificate then answers the question). */
  templates: pkcs11js.Template[];
}

/**
 * The child: opens the token, writes the first object the module accepts, says so, waits for the parent's word (or
 * the end of its stdin, should the parent die) and destroys the object — the writer cleans up, so nothing is left
 * behind even where the parent cannot see the object.
 */
const CHILD_SCRIPT = `
const pkcs11js = require(process.argv[1]);
const say = (line) => process.stdout.write(line + '\\n');
const revive = (k, v) => (v && v.type === 'Buffer' && Array.isArray(v.data) ? Buffer.from(v.data) : v);
let input = '';
let order;
let cleanup = () => process.exit(0);
process.stdin.on('data', (chunk) => {
  input += chunk;
  const lines = input.split('\\n');
  input = lines.pop();
  for (const line of lines) {
    if (!order) { order = JSON.parse(line, revive); run(); } else if (line === 'done') cleanup();
  }
});
process.stdin.on('end', () => cleanup());
const name = (err) => Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === err.code)?.[0] ?? String(err.message).split(':')[0];
function run() {
  const p11 = new pkcs11js.PKCS11();
  try {
    p11.load(order.module);
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK, ...(order.initArgs ? { libraryParameters: order.initArgs + '\\u0000' } : {}) });
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.replace(/[\\s\\u0000]+$/, '') === order.tokenLabel);
    if (slot === undefined) throw new Error('token not found');
    const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try { p11.C_Login(session, pkcs11js.CKU_USER, order.pin); } catch (err) { if (err.code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err; }
    let handle;
    const refused = [];
    for (const template of order.templates) {
      try { handle = p11.C_CreateObject(session, template); break; } catch (err) { refused.push(name(err)); }
    }
    if (handle === undefined) { say('refused ' + refused.join(', ')); p11.C_Finalize(); process.exit(0); }
    say('written');
    cleanup = () => {
      try { p11.C_DestroyObject(session, handle); say('destroyed'); } catch (err) { say('not destroyed ' + name(err)); }
      try { p11.C_Finalize(); } catch {}
      process.exit(0);
    };
  } catch (err) {
    say('error ' + name(err));
    process.exit(0);
  }
}
`;

const PKCS11JS = createRequire(import.meta.url).resolve('pkcs11js');

/**
 * Does this process see a token object another process writes? A child node process (the module initialized there,
 * with the same environment) writes an object labelled `label`; this process looks for it on a fresh session; then
 * the child destroys it. 'seen', 'not seen', or why it could not be told.
 */
export async function probeSharedObjects(
  token: Token,
  order: { module: string; initArgs?: string; tokenLabel: string; pin: string },
  templates: (label: string) => pkcs11js.Template[],
  timeoutMs = 60_000,
): Promise<ProbeOutcome> {
  const label = `hsm-gateway/capability-probe-${randomBytes(6).toString('hex')}`;
  const child = spawn(process.execPath, ['-e', CHILD_SCRIPT, PKCS11JS], { stdio: ['pipe', 'pipe', 'ignore'], env: process.env });
  const lines: string[] = [];
  let waiting: ((line: string | undefined) => void) | undefined;
  let buffered = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    const parts = buffered.split('\n');
    buffered = parts.pop()!;
    for (const line of parts) {
      if (waiting) {
        const w = waiting;
        waiting = undefined;
        w(line);
      } else lines.push(line);
    }
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const nextLine = (): Promise<string | undefined> =>
    lines.length > 0
      ? Promise.resolve(lines.shift())
      : new Promise((resolve) => {
          const timer = setTimeout(() => resolve(undefined), timeoutMs);
          timer.unref();
          waiting = (line) => {
            clearTimeout(timer);
            resolve(line);
          };
          void exited.then(() => waiting?.(undefined));
        });
  child.stdin.on('error', () => undefined);
  child.stdin.write(`${JSON.stringify({ ...order, templates: templates(label) } satisfies ChildOrder)}\n`);
  try {
    const written = await nextLine();
    if (written !== 'written') return `not told: the other process could not write (${written ?? 'no answer'})`;
    const seen = await token.admin((p11, session) => {
      p11.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_LABEL, value: label }]);
      try {
        return p11.C_FindObjects(session, 1).length > 0;
      } finally {
        p11.C_FindObjectsFinal(session);
      }
    });
    child.stdin.write('done\n');
    const destroyed = await nextLine();
    const residue = destroyed === 'destroyed' ? '' : ` (the probe object "${label}" may be left: ${destroyed ?? 'no answer'})`;
    return `${seen ? 'seen' : 'not seen'}${residue}`;
  } finally {
    child.stdin.end();
    const timer = setTimeout(() => child.kill(), timeoutMs);
    timer.unref();
    await exited;
    clearTimeout(timer);
  }
}

/**
 * The deep probes' answers per token identity, in a JSON file (`capabilities.cacheFile`): a gateway reads it at
 * start and probes only tokens it does not hold. Nothing in it is secret.
 */
export class CapabilityCache {
  private readonly entries: Record<string, DeepCapabilities & { identity: TokenIdentity }>;

  constructor(private readonly file: string | undefined) {
    this.entries = file ? readEntries(file) : {};
  }

  get(identity: TokenIdentity): DeepCapabilities | undefined {
    return this.entries[identityKey(identity)];
  }

  put(identity: TokenIdentity, capabilities: DeepCapabilities): void {
    this.entries[identityKey(identity)] = { identity, ...capabilities };
    if (!this.file) return;
    mkdirSync(dirname(this.file), { recursive: true });
    const temporary = `${this.file}.${process.pid}.tmp`;
    writeFileSync(temporary, `${JSON.stringify({ version: 1, tokens: this.entries }, null, 2)}\n`);
    renameSync(temporary, this.file);
  }
}

function readEntries(file: string): Record<string, DeepCapabilities & { identity: TokenIdentity }> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return {};
  }
  try {
    const parsed = JSON.parse(text) as { version?: number; tokens?: Record<string, DeepCapabilities & { identity: TokenIdentity }> };
    return parsed.version === 1 && parsed.tokens ? parsed.tokens : {};
  } catch {
    // A damaged cache is only a cache: the tokens are probed again and the file rewritten.
    return {};
  }
}
