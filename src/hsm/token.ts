import pkcs11js from 'pkcs11js';
import { ckrOf, classifyCkr, ckrName } from './ckr.js';
import { HsmBusyError, HsmError, HsmObjectNotFoundError, HsmOperationError, HsmUnavailableError } from './errors.js';
import { Pool, PoolClosedError, PoolFullError, PoolTimeoutError } from './pool.js';

export interface TokenOptions {
  /** Name used in logs and (later) in the registry, e.g. "default". */
  name: string;
  modulePath: string;
  tokenLabel: string;
  pin: string;
  /** Sessions used for signing, in parallel (besides the one that holds the login). */
  sessions: number;
  /** How long a request may wait for a free session before it is answered 503. */
  acquireTimeoutMs: number;
  /** Requests allowed to wait for a session; more are answered 503 at once. Default: sessions × 32. */
  maxWaiting?: number;
  /** Deadline of one token operation; later, the client gets 503 (the session returns when the call does). */
  operationTimeoutMs?: number;
  /** Probe interval of the token's health (0: only on demand). */
  healthIntervalMs?: number;
  /** Re-initialization backoff after a token-level failure. */
  recoveryMinDelayMs?: number;
  recoveryMaxDelayMs?: number;
}

/** A private key on the token, named the way the registry names it. */
export interface KeyRef {
  label: string;
  /** CKA_ID (hex); when given it must match too. */
  id?: string;
}

export type RawPublicKey =
  | { kind: 'RSA'; modulus: Buffer; publicExponent: Buffer }
  | { kind: 'EC'; ecParams: Buffer; ecPoint: Buffer };

export interface TokenDescription {
  module: string;
  library: { manufacturer: string; description: string; version: string };
  /** The slot id (SoftHSMv2 gives random ones). */
  slot: string;
  label: string;
  manufacturer: string;
  model: string;
  serialNumber: string;
  firmwareVersion: string;
  /** How many mechanisms the token offers. */
  mechanisms: number;
}

export interface TokenLogger {
  info(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
  error(message: string, meta?: Record<string, unknown>): void;
}

type Handle = pkcs11js.Handle;
/** Up to this many keys, each is searched by its template; more are found by listing the token's objects once. */
const BULK_LOOKUP_FROM = 16;
const refKey = (ref: KeyRef): string => `${ref.label}\u0000${ref.id ?? ''}`;

/** Token labels are 32 bytes, blank-padded by the standard, NUL-padded by some writers. */
export const tokenLabelOf = (raw: string): string => raw.replace(/[\s\u0000]+$/, '');

/** Finds a PKCS#11 slot by its token label (SoftHSMv2 slot ids are random). */
export function findSlotByLabel(p11: pkcs11js.PKCS11, label: string): Handle | undefined {
  return p11.C_GetSlotList(true).find((slot) => tokenLabelOf(p11.C_GetTokenInfo(slot).label) === label);
}

/** C_Initialize with OS locking; "already initialized" is a success (another user of the module did it). */
export function initializeModule(p11: pkcs11js.PKCS11, modulePath: string): void {
  p11.load(modulePath);
  try {
    // Without CKF_OS_LOCKING_OK SoftHSMv2 corrupts its heap under concurrent async calls (measured).
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
  }
}

export function loginUser(p11: pkcs11js.PKCS11, session: Handle, pin: string): void {
  try {
    p11.C_Login(session, pkcs11js.CKU_USER, pin);
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
  }
}

/** Every object matching the template (in batches: a caller counting matches must see them all). */
export function findObjects(p11: pkcs11js.PKCS11, session: Handle, template: pkcs11js.Template): Handle[] {
  p11.C_FindObjectsInit(session, template);
  try {
    const found: Handle[] = [];
    for (let batch = p11.C_FindObjects(session, 256); batch.length > 0; batch = p11.C_FindObjects(session, 256)) found.push(...batch);
    return found;
  } finally {
    p11.C_FindObjectsFinal(session);
  }
}

export function keyTemplate(cls: number, ref: KeyRef): pkcs11js.Template {
  const t: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: ref.label },
  ];
  if (ref.id) t.push({ type: pkcs11js.CKA_ID, value: Buffer.from(ref.id, 'hex') });
  return t;
}

export function readPublicKey(p11: pkcs11js.PKCS11, session: Handle, handle: Handle): RawPublicKey {
  const [keyType] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_KEY_TYPE }]);
  const type = (keyType!.value as Buffer).readUInt32LE(0);
  if (type === pkcs11js.CKK_RSA) {
    const [n, e] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]);
    return { kind: 'RSA', modulus: n!.value as Buffer, publicExponent: e!.value as Buffer };
  }
  const [params, point] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_EC_POINT }]);
  return { kind: 'EC', ecParams: params!.value as Buffer, ecPoint: point!.value as Buffer };
}

/**
 * One PKCS#11 token used for signing: the module, a logged-in anchor session that keeps the login alive,
 * a pool of signing sessions, and key handles found once (at start-up) and cached.
 *
 * Failure model (see ckr.ts): a data error keeps the session; a session error replaces it and the operation is
 * retried once on a fresh one (signing and verifying are idempotent); a stale handle (the object store changed
 * under us) drops the handle cache and retries once; a token-level error marks the token down and re-initializes
 * the module at a bounded rate, with backoff, until the token answers again; a PIN error marks it down for good
 * (retrying a login would lock the token). Requests never wait on a down token: they are answered 503 at once.
 */
export class Token {
  private readonly p11 = new pkcs11js.PKCS11();
  private slot: Handle | undefined;
  private anchor: Handle | undefined;
  private pool: Pool<Handle> | undefined;
  private readonly handles = new Map<string, Handle>();
  /** Everything ever preloaded, so a recovery can find the handles again before serving. */
  private readonly knownRefs = new Map<string, { cls: number; ref: KeyRef }>();
  private mechanismSet = new Set<number>();
  private down: string | undefined = 'not opened';
  private permanentlyDown = false;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private recoveryDelayMs: number;
  private healthTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private connects = 0;

  constructor(
    readonly options: TokenOptions,
    private readonly log: TokenLogger,
  ) {
    this.recoveryDelayMs = options.recoveryMinDelayMs ?? 250;
  }

  /** Connects at start-up; a failure here (no token, wrong PIN) is a start-up error, not a retry loop. */
  open(): void {
    this.connect();
    const interval = this.options.healthIntervalMs ?? 2000;
    if (interval > 0) {
      // Notices a vanished token even without traffic, so /readyz and recovery do not wait for a request.
      this.healthTimer = setInterval(() => this.ready(), interval);
      this.healthTimer.unref();
    }
  }

  private connect(): void {
    const { modulePath, tokenLabel, pin, sessions } = this.options;
    initializeModule(this.p11, modulePath);
    const slot = findSlotByLabel(this.p11, tokenLabel);
    if (slot === undefined) throw new HsmUnavailableError(`no token labelled "${tokenLabel}" in ${modulePath}`);
    this.slot = slot;
    this.mechanismSet = new Set(this.p11.C_GetMechanismList(slot));
    this.anchor = this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    loginUser(this.p11, this.anchor, pin);
    this.pool = new Pool<Handle>(
      {
        create: () => this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION),
        destroy: (s) => this.p11.C_CloseSession(s),
      },
      sessions,
      this.options.maxWaiting ?? sessions * 32,
    );
    this.down = undefined;
    this.connects++;
    this.log.info('token opened', { token: this.options.name, label: tokenLabel, sessions, mechanisms: this.mechanismSet.size });
  }

  get mechanisms(): ReadonlySet<number> {
    return this.mechanismSet;
  }

  /**
   * Finds (and caches) the handles of the given keys' private (or public) key objects; call at start-up, off
   * the request path. Returns the ones that are not on the token.
   */
  preload(refs: readonly KeyRef[], kind: 'private' | 'public' = 'private'): { missing: KeyRef[] } {
    const cls = kind === 'private' ? pkcs11js.CKO_PRIVATE_KEY : pkcs11js.CKO_PUBLIC_KEY;
    for (const ref of refs) this.knownRefs.set(`${cls}\u0000${refKey(ref)}`, { cls, ref });
    return this.findHandles(cls, refs);
  }

  /**
   * Finds and caches many handles at once. A search by label costs a scan of every object on the token (SoftHSMv2:
   * ~12 µs per object, measured), so one search per key is quadratic: 300 keys took 5.6 s to start, 10,000 would
   * take hours. Past a few keys, every object of the class is listed once and its CKA_LABEL / CKA_ID read instead.
   */
  private findHandles(cls: number, all: readonly KeyRef[]): { missing: KeyRef[] } {
    const missing: KeyRef[] = [];
    // Handles already known cost nothing: a registry refresh after one change looks up only the new keys.
    const refs = all.filter((ref) => !this.handles.has(`${cls}\u0000${refKey(ref)}`));
    if (refs.length <= BULK_LOOKUP_FROM) {
      for (const ref of refs) {
        try {
          this.keyHandle(cls, ref);
        } catch (err) {
          if (!(err instanceof HsmObjectNotFoundError)) throw err;
          missing.push(ref);
        }
      }
      return { missing };
    }
    const session = this.requireAnchor();
    const byLabel = new Map<string, Array<{ handle: Handle; id: string }>>();
    this.p11.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: cls },
      { type: pkcs11js.CKA_TOKEN, value: true },
    ]);
    try {
      for (let batch = this.p11.C_FindObjects(session, 1024); batch.length > 0; batch = this.p11.C_FindObjects(session, 1024)) {
        for (const handle of batch) {
          const [label, id] = this.p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_ID }]);
          const name = (label!.value as Buffer).toString('utf8');
          if (!byLabel.has(name)) byLabel.set(name, []);
          byLabel.get(name)!.push({ handle, id: (id!.value as Buffer).toString('hex') });
        }
      }
    } finally {
      this.p11.C_FindObjectsFinal(session);
    }
    for (const ref of refs) {
      // The same rule as a search by template: the label, and the CKA_ID when the ref names one; exactly one match.
      const id = ref.id === undefined ? undefined : Buffer.from(ref.id, 'hex').toString('hex');
      const found = (byLabel.get(ref.label) ?? []).filter((o) => !id || o.id === id);
      if (found.length === 1) this.handles.set(`${cls}\u0000${refKey(ref)}`, found[0]!.handle);
      else missing.push(ref);
    }
    return { missing };
  }

  private keyHandle(cls: number, ref: KeyRef): Handle {
    const cacheKey = `${cls}\u0000${refKey(ref)}`;
    const cached = this.handles.get(cacheKey);
    if (cached) return cached;
    const what = cls === pkcs11js.CKO_PRIVATE_KEY ? 'private key' : 'public key';
    const found = findObjects(this.p11, this.requireAnchor(), keyTemplate(cls, ref));
    if (found.length !== 1) {
      throw new HsmObjectNotFoundError(
        found.length === 0 ? `no ${what} labelled "${ref.label}" on the token` : `${found.length} ${what}s labelled "${ref.label}"`,
      );
    }
    this.handles.set(cacheKey, found[0]!);
    return found[0]!;
  }

  publicKey(ref: KeyRef): RawPublicKey {
    return readPublicKey(this.p11, this.requireAnchor(), this.keyHandle(pkcs11js.CKO_PUBLIC_KEY, ref));
  }

  /** The DER of the certificate object with this label (and CKA_ID); read at start-up, not per request. */
  certificate(ref: KeyRef): Buffer {
    const found = findObjects(this.p11, this.requireAnchor(), keyTemplate(pkcs11js.CKO_CERTIFICATE, ref));
    if (found.length !== 1) throw new HsmObjectNotFoundError(`no single certificate labelled "${ref.label}" on the token`);
    const [value] = this.p11.C_GetAttributeValue(this.requireAnchor(), found[0]!, [{ type: pkcs11js.CKA_VALUE }]);
    return value!.value as Buffer;
  }

  /** Signs `data` with the private key; `maxSignatureBytes` sizes the output buffer. */
  sign(ref: KeyRef, mechanism: pkcs11js.Mechanism, data: Buffer, maxSignatureBytes: number): Promise<Buffer> {
    return this.withSession(async (session) => {
      this.p11.C_SignInit(session, mechanism, this.keyHandle(pkcs11js.CKO_PRIVATE_KEY, ref));
      return this.p11.C_SignAsync(session, data, Buffer.alloc(maxSignatureBytes));
    });
  }

  /** Verifies `signature` over `data` with the public key: false for a wrong signature, never an error. */
  verify(ref: KeyRef, mechanism: pkcs11js.Mechanism, data: Buffer, signature: Buffer): Promise<boolean> {
    return this.withSession(async (session) => {
      this.p11.C_VerifyInit(session, mechanism, this.keyHandle(pkcs11js.CKO_PUBLIC_KEY, ref));
      try {
        return await this.p11.C_VerifyAsync(session, data, signature);
      } catch (err) {
        // A verify that fails on the signature itself has ended the operation; the session stays clean.
        if (ckrOf(err) === pkcs11js.CKR_SIGNATURE_INVALID || ckrOf(err) === pkcs11js.CKR_SIGNATURE_LEN_RANGE) return false;
        throw err;
      }
    });
  }

  /**
   * Runs one operation on a pooled session, within the operation deadline. A session whose call outlives the
   * deadline goes back to the pool (or is replaced) only when that call returns: it is never lent twice.
   */
  private async withSession<T>(operation: (session: Handle) => Promise<T>, retried = false): Promise<T> {
    if (this.down !== undefined || !this.pool) throw new HsmUnavailableError(`token is down: ${this.down}`);
    const pool = this.pool;
    let session: Handle;
    try {
      session = await pool.acquire(this.options.acquireTimeoutMs);
    } catch (err) {
      if (err instanceof PoolFullError) throw new HsmBusyError(err.message, undefined, { cause: err });
      if (err instanceof PoolTimeoutError || err instanceof PoolClosedError) throw new HsmUnavailableError(err.message, undefined, { cause: err });
      throw err;
    }
    const settled = operation(session).then(
      (value) => {
        pool.release(session);
        return { value } as const;
      },
      (err: unknown) => ({ error: this.failed(err, session, pool) }) as const,
    );
    const outcome = await withDeadline(settled, this.options.operationTimeoutMs ?? 10_000);
    if ('value' in outcome) return outcome.value;
    if (!outcome.error.retryable) throw outcome.error;
    if (!retried && this.down === undefined) return this.withSession(operation, true);
    // Failing again on a fresh session (or with the token now down): the token cannot serve this right now.
    throw new HsmUnavailableError(outcome.error.message, outcome.error.ckr, { cause: outcome.error });
  }

  /** Puts the session back or replaces it, per the failure model, and returns the typed error to throw. */
  private failed(err: unknown, session: Handle, pool: Pool<Handle>): HsmError {
    const ckr = ckrOf(err);
    if (err instanceof HsmObjectNotFoundError) {
      pool.release(session);
      return err;
    }
    if (ckr === undefined) {
      pool.discard(session);
      return new HsmOperationError('PKCS#11 call failed', undefined, { cause: err });
    }
    const kind = classifyCkr(ckr);
    if (kind === 'data') {
      // A failed C_SignInit/C_VerifyInit starts no operation and a failed C_Sign/C_Verify ends it
      // (PKCS#11 §5.2), so the session is clean. (CKR_BUFFER_TOO_SMALL keeps it open: it is classed 'session'.)
      pool.release(session);
      return new HsmOperationError('token refused the operation', ckr, { cause: err });
    }
    pool.discard(session);
    if (ckr === pkcs11js.CKR_OBJECT_HANDLE_INVALID || ckr === pkcs11js.CKR_KEY_HANDLE_INVALID) {
      // The token's objects changed under us (reloaded, restored, replaced): find them again, once. If the token
      // itself is gone, the probe marks it down and the retry is not made.
      this.handles.clear();
      this.ready();
      return new HsmOperationError('stale object handle', ckr, { cause: err, retryable: true });
    }
    if (kind === 'fatal' || kind === 'login') {
      this.markDown(ckrName(ckr), kind === 'login');
      return new HsmUnavailableError('token failure', ckr, { cause: err });
    }
    return new HsmOperationError('session failure', ckr, { cause: err, retryable: true });
  }

  private markDown(reason: string, permanently = false): void {
    if (this.closing || this.down !== undefined) return;
    this.down = reason;
    this.handles.clear();
    if (permanently) {
      this.permanentlyDown = true;
      this.log.error('token down: the PIN was refused; not retrying (a retry loop would lock the token)', { token: this.options.name, reason });
      return;
    }
    this.log.error('token down: re-initializing', { token: this.options.name, reason });
    this.scheduleRecovery();
  }

  private scheduleRecovery(): void {
    if (this.recoveryTimer || this.closing) return;
    const delay = this.recoveryDelayMs;
    this.recoveryDelayMs = Math.min(delay * 2, this.options.recoveryMaxDelayMs ?? 5000);
    this.recoveryTimer = setTimeout(() => {
      this.recoveryTimer = undefined;
      void this.recover();
    }, delay);
    this.recoveryTimer.unref();
  }

  /** Drains the old pool, finalizes, initializes again, logs in, finds the handles, and serves again. */
  private async recover(): Promise<void> {
    if (this.closing) return;
    try {
      await this.pool?.close();
      try {
        this.p11.C_Finalize();
      } catch {
        // Already finalized or broken: initializing again is what matters.
      }
      this.connect();
      for (const cls of [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY]) {
        this.findHandles(cls, [...this.knownRefs.values()].filter((k) => k.cls === cls).map((k) => k.ref));
      }
      this.recoveryDelayMs = this.options.recoveryMinDelayMs ?? 250;
      this.log.info('token recovered', { token: this.options.name });
    } catch (err) {
      this.down = `recovering: ${ckrOf(err) === undefined ? (err as Error).message : ckrName(ckrOf(err)!)}`;
      if (ckrOf(err) !== undefined && classifyCkr(ckrOf(err)!) === 'login') {
        this.permanentlyDown = true;
        this.log.error('token recovery stopped: the PIN was refused', { token: this.options.name });
        return;
      }
      this.scheduleRecovery();
    }
  }

  /**
   * Administrative work (registry records, key generation, key destruction) on a fresh read/write session of the
   * logged-in token: never on a signing session (those are read-only and busy). Work that needs the token to
   * compute (key generation) should use the module's async calls so the event loop keeps serving.
   */
  async admin<T>(work: (p11: pkcs11js.PKCS11, session: Handle) => T | Promise<T>): Promise<T> {
    if (this.down !== undefined || this.slot === undefined) throw new HsmUnavailableError(`token is down: ${this.down}`);
    const session = this.p11.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      return await work(this.p11, session);
    } catch (err) {
      const ckr = ckrOf(err);
      if (ckr !== undefined && classifyCkr(ckr) === 'fatal') this.markDown(ckrName(ckr));
      throw err;
    } finally {
      try {
        this.p11.C_CloseSession(session);
      } catch {
        // The session died with the token; recovery opens new ones.
      }
    }
  }

  /** Drops the cached handle of a key that no longer exists (its objects were destroyed). */
  forget(ref: KeyRef): void {
    for (const cls of [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY]) {
      this.handles.delete(`${cls}\u0000${refKey(ref)}`);
      this.knownRefs.delete(`${cls}\u0000${refKey(ref)}`);
    }
  }

  /** What the module and the token say about themselves (admin tooling); nothing secret. */
  describe(): TokenDescription {
    if (this.slot === undefined) throw new HsmUnavailableError(`token is down: ${this.down}`);
    const library = this.p11.C_GetInfo();
    const info = this.p11.C_GetTokenInfo(this.slot);
    const text = (s: string): string => tokenLabelOf(s).trim();
    const version = (v: { major: number; minor: number }): string => `${v.major}.${v.minor}`;
    return {
      module: this.options.modulePath,
      library: { manufacturer: text(library.manufacturerID), description: text(library.libraryDescription), version: version(library.libraryVersion) },
      slot: (this.slot.length >= 8 ? this.slot.readBigUInt64LE(0) : BigInt(this.slot.readUInt32LE(0))).toString(),
      label: text(info.label),
      manufacturer: text(info.manufacturerID),
      model: text(info.model),
      serialNumber: text(info.serialNumber),
      firmwareVersion: version(info.firmwareVersion),
      mechanisms: this.mechanismSet.size,
    };
  }

  /** How many times the module was (re-)initialized: handles from an older generation mean nothing. */
  get generation(): number {
    return this.connects;
  }

  /** Readiness: the token answers and the login session is alive. A failed probe marks the token down. */
  ready(): { ok: boolean; detail: string } {
    if (this.down !== undefined) return { ok: false, detail: `down: ${this.down}${this.permanentlyDown ? ' (not retried)' : ''}` };
    try {
      this.p11.C_GetTokenInfo(this.slot!);
      this.p11.C_GetSessionInfo(this.requireAnchor());
      return { ok: true, detail: 'ok' };
    } catch (err) {
      const ckr = ckrOf(err);
      const detail = ckr === undefined ? 'unreachable' : ckrName(ckr);
      this.markDown(detail);
      return { ok: false, detail };
    }
  }

  stats(): { inUse: number; idle: number; waiting: number } {
    const inUse = this.pool?.inUse ?? 0;
    return { inUse, idle: (this.pool?.size ?? 0) - inUse, waiting: this.pool?.waiting ?? 0 };
  }

  /** Waits for in-flight signs, closes every session and finalizes the module. */
  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.healthTimer);
    clearTimeout(this.recoveryTimer);
    this.down = 'closing';
    await this.pool?.close();
    try {
      if (this.anchor) this.p11.C_Logout(this.anchor);
    } catch {
      // Logged out already.
    }
    try {
      if (this.slot !== undefined) this.p11.C_CloseAllSessions(this.slot);
      this.p11.C_Finalize();
    } catch (err) {
      this.log.warn('token finalize failed', { token: this.options.name, ckr: ckrName(ckrOf(err) ?? -1) });
    }
    this.handles.clear();
    this.down = 'closed';
  }

  private requireAnchor(): Handle {
    if (!this.anchor) throw new HsmUnavailableError('token not opened');
    return this.anchor;
  }
}

/** Resolves with the promise, or rejects with a 503-class error when the deadline passes first. */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new HsmUnavailableError(`the token did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
