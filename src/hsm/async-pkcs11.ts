import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type pkcs11js from 'pkcs11js';

/**
 * Token operations that run whole off the event loop: each is ONE job on the libuv thread pool (the native addon
 * native/async-pkcs11), so the main thread makes no PKCS#11 call on the request path. pkcs11js has no async
 * C_SignInit / C_VerifyInit / C_FindObjects / C_OpenSession; on a network HSM each of those is a round trip that
 * the event loop would wait out (bench/README.md, "Off the event loop: init+sign as one job").
 *
 *   const p11 = new pkcs11js.PKCS11(); p11.load(path); p11.C_Initialize(…);   // as today: pkcs11js owns the module
 *   const hsm = AsyncPkcs11.bind(path);                                          // the same loaded copy
 *   const signature = await hsm.sign(session, mechanism, key, digest, 64);      // C_SignInit + C_Sign, one job
 *
 * The module must already be loaded and initialized by pkcs11js in this process: bind() finds that copy
 * (dlopen RTLD_NOLOAD), so a re-initialization through pkcs11js is seen here at once (and one by reinitialize() there),
 * and handles are shared both ways (pkcs11js's Handle: a Buffer of sizeof(CK_ULONG) bytes).
 *
 * Each job holds a libuv pool thread for all of its calls: UV_THREADPOOL_SIZE bounds how many run at once.
 * A session runs one operation at a time (PKCS#11): two jobs on one session at once answer CKR_OPERATION_ACTIVE
 * (the Pool lends a session to one user at a time; keep it that way).
 */

/** A PKCS#11 handle as pkcs11js gives it (8 bytes, native byte order); what every method here returns. */
type Handle = Buffer;
/** What the methods accept for a handle: pkcs11js's Buffer, or its value as a bigint or a number. */
type HandleLike = Buffer | bigint | number;

/** Where scripts/build-async-pkcs11.sh puts the addon (relative to this file in src/hsm or dist/hsm). */
export const ASYNC_PKCS11_ADDON = fileURLToPath(new URL('../../native/async-pkcs11/build/async_pkcs11.node', import.meta.url));

/** A PKCS#11 call that failed: `code` is the CK_RV (what ckrOf() reads), `method` the function that answered it. */
export class AsyncPkcs11Error extends Error {
  override readonly name = 'AsyncPkcs11Error';
  constructor(
    message: string,
    readonly code: number,
    readonly method: string,
  ) {
    super(message);
  }
}

/** The addon is not built (or cannot be loaded): scripts/setup.sh builds it. */
export class AsyncPkcs11NotBuiltError extends Error {
  override readonly name = 'AsyncPkcs11NotBuiltError';
}

/** What probe() saw: the fresh session's state (CKS_*) and flags, and the token's flags and label. */
interface TokenProbe {
  /** CK_SESSION_INFO.state of a fresh session: 1 (CKS_RO_USER_FUNCTIONS) or 3 when the user's login is alive. */
  state: number;
  sessionFlags: number;
  deviceError: number;
  /** CK_TOKEN_INFO.flags */
  tokenFlags: number;
  /** What C_GenerateRandom answered on the fresh session (0: it computed); failure-model.ts `cannotCompute` reads it. */
  randomRv: number;
  /** CK_TOKEN_INFO.label without its padding. */
  label: string;
}

/** What login() gives: the fresh session that holds the login, and its state (CKS_*) after C_Login. */
interface LoginResult {
  session: Handle;
  state: number;
}

/** A mechanism as pkcs11js takes it; the parameter may be RSA-PSS ({ hashAlg, mgf, saltLen }) or a Buffer, or none. */
type AsyncMechanism = pkcs11js.Mechanism | number;

/** A search template as pkcs11js takes it; values: number (CK_ULONG), boolean, string (UTF-8), Buffer. */
type SearchTemplate = readonly pkcs11js.Attribute[];

type ModuleRef = object;
interface Addon {
  handleBytes: number;
  bind(path: string): ModuleRef;
  setErrorClass(cls: new (message: string, code: number, method: string) => Error): void;
  sign(m: ModuleRef, session: HandleLike, mechanism: AsyncMechanism, key: HandleLike, data: Buffer, maxSignatureBytes?: number): Promise<Buffer>;
  verify(m: ModuleRef, session: HandleLike, mechanism: AsyncMechanism, key: HandleLike, data: Buffer, signature: Buffer): Promise<boolean>;
  findObjects(m: ModuleRef, session: HandleLike, template: SearchTemplate, atMost?: number): Promise<Buffer[]>;
  getAttributeValue(m: ModuleRef, session: HandleLike, object: HandleLike, types: readonly number[]): Promise<Array<Buffer | undefined>>;
  setAttributeValue(m: ModuleRef, session: HandleLike, object: HandleLike, template: SearchTemplate): Promise<void>;
  openSession(m: ModuleRef, slot: HandleLike, flags: number): Promise<Buffer>;
  closeSession(m: ModuleRef, session: HandleLike): Promise<void>;
  probe(m: ModuleRef, slot: HandleLike): Promise<TokenProbe>;
  login(m: ModuleRef, slot: HandleLike, pin: string): Promise<LoginResult>;
  reinitialize(m: ModuleRef, tokenLabel: string, initArgs?: string): Promise<Buffer>;
  createObject(m: ModuleRef, session: HandleLike, template: SearchTemplate): Promise<Buffer>;
  destroyObject(m: ModuleRef, session: HandleLike, object: HandleLike): Promise<void>;
  lockFile(path: string): number | null;
  unlockFile(fd: number): void;
}

const loaded = new Map<string, Addon>();

/** Loads the addon once per path (per thread: worker threads load their own instance). */
function loadAddon(path: string): Addon {
  const cached = loaded.get(path);
  if (cached) return cached;
  if (!existsSync(path)) {
    throw new AsyncPkcs11NotBuiltError(`the async PKCS#11 addon is not built (${path} is missing): run \`bash scripts/build-async-pkcs11.sh\` (scripts/setup.sh runs it)`);
  }
  let addon: Addon;
  try {
    addon = createRequire(import.meta.url)(path) as Addon;
  } catch (err) {
    throw new AsyncPkcs11NotBuiltError(`the async PKCS#11 addon ${path} does not load (${(err as Error).message}): rebuild it with \`bash scripts/build-async-pkcs11.sh\``, { cause: err });
  }
  addon.setErrorClass(AsyncPkcs11Error);
  loaded.set(path, addon);
  return addon;
}

/**
 * The addon's exclusive flock(2) on a file, no PKCS#11 (src/keys/host-lock.ts): `lock` answers the descriptor that holds
 * it, or null while another holds it (it never waits); `unlock` releases it. Throws an Error saying why when the file
 * cannot be opened.
 */
export function fileLocks(addonPath = ASYNC_PKCS11_ADDON): { lock(path: string): number | null; unlock(fd: number): void } {
  const addon = loadAddon(addonPath);
  return { lock: (path) => addon.lockFile(path), unlock: (fd) => addon.unlockFile(fd) };
}

/** Turns a synchronous TypeError (a bad argument) into a rejection, so every method only ever rejects. */
function call<T>(run: () => Promise<T>): Promise<T> {
  try {
    return run();
  } catch (err) {
    return Promise.reject(err);
  }
}

/** One loaded PKCS#11 module, driven off the event loop. */
export class AsyncPkcs11 {
  private constructor(
    private readonly addon: Addon,
    private readonly module: ModuleRef,
    /** The path bind() was given. */
    readonly modulePath: string,
  ) {}

  /**
   * The module at `modulePath` as this process already loaded it through pkcs11js (load() it first; C_Initialize
   * before the first call). Throws AsyncPkcs11NotBuiltError when the addon is not built, an Error when the module is
   * not loaded. Binding the same module again is cheap and gives an equivalent object.
   */
  static bind(modulePath: string, options: { addonPath?: string } = {}): AsyncPkcs11 {
    const addon = loadAddon(options.addonPath ?? ASYNC_PKCS11_ADDON);
    return new AsyncPkcs11(addon, addon.bind(modulePath), modulePath);
  }

  /**
   * C_SignInit + C_Sign in one job. `maxSignatureBytes` sizes the output buffer (omitted: 64 KiB, never a length
   * query). When it is too small the call rejects with CKR_BUFFER_TOO_SMALL after ending the operation (one more
   * C_Sign into a scratch buffer), so the session is clean.
   */
  sign(session: HandleLike, mechanism: AsyncMechanism, key: HandleLike, data: Buffer, maxSignatureBytes?: number): Promise<Buffer> {
    return call(() => this.addon.sign(this.module, session, mechanism, key, data, maxSignatureBytes));
  }

  /** C_VerifyInit + C_Verify in one job: false for a wrong signature (CKR_SIGNATURE_INVALID / _LEN_RANGE). */
  verify(session: HandleLike, mechanism: AsyncMechanism, key: HandleLike, data: Buffer, signature: Buffer): Promise<boolean> {
    return call(() => this.addon.verify(this.module, session, mechanism, key, data, signature));
  }

  /**
   * C_FindObjectsInit + C_FindObjects (batches of ≤ 1,024) + C_FindObjectsFinal in one job: the objects matching
   * the template, or the first `atMost` (2 tells "none / one / several"). The search is always finalized.
   */
  findObjects(session: HandleLike, template: SearchTemplate, atMost?: number): Promise<Handle[]> {
    return call(() => this.addon.findObjects(this.module, session, template, atMost));
  }

  /**
   * The attributes' values (two C_GetAttributeValue calls, lengths then values, in one job); a sensitive or
   * unknown attribute is `undefined` rather than an error.
   */
  getAttributeValue(session: HandleLike, object: HandleLike, types: readonly number[]): Promise<Array<Buffer | undefined>> {
    return call(() => this.addon.getAttributeValue(this.module, session, object, types));
  }

  /**
   * C_SetAttributeValue as one job (a private key's CKA_SIGN, when a lifecycle change stops or restores signing); the
   * template's values as findObjects takes them.
   */
  setAttributeValue(session: HandleLike, object: HandleLike, template: SearchTemplate): Promise<void> {
    return call(() => this.addon.setAttributeValue(this.module, session, object, template));
  }

  /** C_CreateObject as one job (a registry record on the token); the template's values as findObjects takes them. */
  createObject(session: HandleLike, template: SearchTemplate): Promise<Handle> {
    return call(() => this.addon.createObject(this.module, session, template));
  }

  /** C_DestroyObject as one job. */
  destroyObject(session: HandleLike, object: HandleLike): Promise<void> {
    return call(() => this.addon.destroyObject(this.module, session, object));
  }

  /** C_OpenSession; CKF_SERIAL_SESSION is always added. No notification callback. */
  openSession(slot: HandleLike, flags = 0): Promise<Handle> {
    return call(() => this.addon.openSession(this.module, slot, flags));
  }

  closeSession(session: HandleLike): Promise<void> {
    return call(() => this.addon.closeSession(this.module, session));
  }

  /**
   * The health check as one job: C_GetTokenInfo, C_OpenSession, C_GetSessionInfo, C_GenerateRandom, C_CloseSession
   * (closed whatever the info call answered). Rejects with the first failure of the others; resolves with what the
   * token said, C_GenerateRandom's answer included (`randomRv`: a module without a generator is no failure).
   */
  probe(slot: HandleLike): Promise<TokenProbe> {
    return call(() => this.addon.probe(this.module, slot));
  }

  /**
   * Logs the user in on a fresh session, as one job: C_OpenSession, C_Login (CKR_USER_ALREADY_LOGGED_IN counts as
   * success), C_GetSessionInfo. Resolves with the session, left open to hold the login, and its state; on a failure
   * the session is closed and the call rejects with the CKR (method C_Login for a refused PIN).
   */
  login(slot: HandleLike, pin: string): Promise<LoginResult> {
    return call(() => this.addon.login(this.module, slot, pin));
  }

  /**
   * C_Finalize + C_Initialize (OS locking; `initArgs` as pReserved) and the slot of the token labelled `tokenLabel`
   * (rejects with CKR_TOKEN_NOT_PRESENT when none is), as one job. Every session, login and handle of the module is
   * gone afterwards, for pkcs11js too: call it only once nothing else runs on the module.
   */
  reinitialize(tokenLabel: string, initArgs?: string): Promise<Handle> {
    return call(() => this.addon.reinitialize(this.module, tokenLabel, initArgs));
  }
}

/**
 * The calls of the request path, each one job off the event loop (C_SignInit + C_Sign together, and so on): on a
 * network HSM every PKCS#11 call is a round trip, and one on the main thread stalls every request.
 */
export type AsyncOperations = Pick<
  AsyncPkcs11,
  | 'sign'
  | 'verify'
  | 'findObjects'
  | 'getAttributeValue'
  | 'setAttributeValue'
  | 'createObject'
  | 'destroyObject'
  | 'openSession'
  | 'closeSession'
  | 'probe'
  | 'login'
  | 'reinitialize'
>;
