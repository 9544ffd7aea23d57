import pkcs11js from 'pkcs11js';
import { Module, Slot } from 'graphene-pk11';
import { AsyncPkcs11, AsyncPkcs11Error, type AsyncOperations } from './async-pkcs11.js';
import { readMechanismFacts, type MechanismFacts } from './capabilities.js';
import { ckrName, ckrOf, classifyCkr } from './ckr.js';
import { HsmBusyError, HsmError, HsmObjectNotFoundError, HsmUnavailableError } from './errors.js';
import { cannotCompute, reactionTo } from './failure-model.js';
import { findSlotByLabel, initializeModule, isLoggedInState, loginUser, tokenLabelOf } from './module.js';
import { findOne, indexByLabel, objectTemplate, pickFromIndex, readPublicKey, type KeyRef, type RawPublicKey } from './objects.js';
import { MainThreadOperations } from './main-thread-operations.js';
import { libraryOf } from './key-generation.js';
import { disturbedByOtherWriters } from './shared-view.js';
import { Pool, PoolClosedError, PoolFullError, PoolTimeoutError } from './pool.js';

export interface TokenOptions {
  /** Name used in logs and in the registry, e.g. "default". */
  name: string;
  modulePath: string;
  /** The module's initialization string (C_Initialize pReserved), e.g. NSS softokn's `configdir='sql:…'`. */
  initArgs?: string;
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

interface TokenDescription {
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

interface TokenStatus {
  ok: boolean;
  detail: string;
}

type Handle = pkcs11js.Handle;

/** Up to this many keys, each is searched by its template; more are found by listing the token's objects once. */
const BULK_LOOKUP_FROM = 16;
const cacheKey = (cls: number, ref: KeyRef): string => `${cls}\u0000${ref.label}\u0000${ref.id ?? ''}`;

/**
 * One PKCS#11 token used for signing: the module, a logged-in anchor session that keeps the login alive,
 * a pool of signing sessions, and key handles found once (at start-up) and cached.
 *
 * Failure model: the rules are in failure-model.ts (session kept / replaced and the operation retried once /
 * handle cache dropped / the token probed); this class applies them. A token that fails its probe (it does not
 * answer, a fresh session does not open, or it cannot compute: failure-model.ts `cannotCompute`) is marked down and
 * re-initialized off the event loop at a bounded rate, with backoff, until it answers and computes again; a probe that
 * finds the login gone logs in again on a fresh anchor session (once, shared by every caller); a PIN error marks it
 * down for good.
 * Requests never wait on a down token: they are answered 503 at once.
 */
/** What a retry needs to know of the failed try: its pool, and (when the session was replaced) when it failed. */
interface Retry {
  pool: Pool<Handle>;
  madeAfter: number | undefined;
}

export class Token {
  private slot: Handle | undefined;
  private anchor: Handle | undefined;
  private pool: Pool<Handle> | undefined;
  private readonly handles = new Map<string, Handle>();
  private mechanismSet = new Set<number>();
  private mechanismInfo = new Map<number, MechanismFacts>();
  private down: string | undefined = 'not opened';
  private permanentlyDown = false;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private recoveryDelayMs: number;
  private healthTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private initCount = 0;
  /** Which implementation of the request path's calls this initialization of the module uses (see chooseOperations). */
  private opsChosen: Promise<AsyncOperations> | undefined;
  /** The async addon's binding of the module, asked again after a recovery when it was not chosen. */
  private addon: AsyncOperations | undefined;
  /** Handle lookups in flight, shared by the requests that miss the cache for the same key at once. */
  private readonly lookups = new Map<string, Promise<Handle>>();
  private probing: Promise<TokenStatus> | undefined;
  /** The login in progress after the token lost it; operations wait for it rather than fail on a public session. */
  private relogging: Promise<void> | undefined;
  /** When the gateway last logged in again by itself (not at start-up or recovery): a login lost again soon after is a failing token. */
  private lastReloginAt: number | undefined;
  /** Moves whenever handles found before may mean nothing: a re-initialization or a new login. */
  private handleEpoch = 0;
  /** The re-initialization in progress (reinitialize()): operations that arrive meanwhile wait for it. */
  private reopening: Promise<void> | undefined;
  /** Admin and read work in flight (admin(), inspect()): a re-initialization waits for it to end. */
  private readonly sideWork = new Set<Promise<unknown>>();
  private libraryName = '';

  constructor(
    readonly options: TokenOptions,
    private readonly log: TokenLogger,
    /** The module binding (start-up, recovery and admin work); a scripted fake in the failure-model tests. */
    private readonly p11: pkcs11js.PKCS11 = new pkcs11js.PKCS11(),
    /** The request path's calls on the same loaded module; the fake's in the failure-model tests. */
    private readonly bindAsync: (modulePath: string) => AsyncOperations = (path) => AsyncPkcs11.bind(path),
  ) {
    this.recoveryDelayMs = options.recoveryMinDelayMs ?? 250;
  }

  /** Connects at start-up; a failure here (no token, wrong PIN) is a start-up error, not a retry loop. */
  open(): void {
    this.connect();
    const interval = this.options.healthIntervalMs ?? 2000;
    if (interval > 0) {
      // Notices a vanished token even without traffic, so /readyz and recovery do not wait for a request.
      this.healthTimer = setInterval(() => void this.probe(), interval);
      this.healthTimer.unref();
    }
  }

  private connect(): void {
    const { modulePath, tokenLabel, pin, sessions } = this.options;
    initializeModule(this.p11, modulePath, this.options.initArgs);
    this.libraryName = libraryOf(this.p11);
    const slot = findSlotByLabel(this.p11, tokenLabel);
    if (slot === undefined) throw new HsmUnavailableError(`no token labelled "${tokenLabel}" in ${modulePath}`);
    this.slot = slot;
    this.mechanismSet = new Set(this.p11.C_GetMechanismList(slot));
    this.mechanismInfo = readMechanismFacts(this.p11, slot, this.mechanismSet);
    this.anchor = this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    loginUser(this.p11, this.anchor, pin);
    const addon = this.bindAsync(modulePath);
    this.addon = addon;
    this.opsChosen = this.chooseOperations(addon, slot);
    // The first sessions open here (start-up); replacements of broken ones, and a recovery's, open off the event loop.
    this.pool = this.newPool(slot, Array.from({ length: sessions }, () => this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION)));
    this.down = undefined;
    this.initCount++;
    this.handleEpoch++;
    this.log.info('token opened', { token: this.options.name, label: tokenLabel, sessions, mechanisms: this.mechanismSet.size });
  }

  private newPool(slot: Handle, initial: Handle[]): Pool<Handle> {
    return new Pool<Handle>(
      {
        create: async () => (await this.operations()).openSession(slot, pkcs11js.CKF_SERIAL_SESSION),
        destroy: async (s) => (await this.operations()).closeSession(s),
      },
      initial,
      this.options.maxWaiting ?? this.options.sessions * 32,
    );
  }

  /**
   * Re-initializes the module so that it shows the token objects other processes wrote after it was initialized
   * (tpm2-pkcs11 reads its store once, at C_Initialize; nShield does under CKNFAST_ASSUME_SINGLE_PROCESS=1): a key the
   * admin CLI made while this process runs. Operations in flight finish first (the pool drains, admin work ends);
   * operations that arrive meanwhile wait for it (within their acquire deadline) rather than being refused; every
   * PKCS#11 call of it runs off the event loop (finalize + initialize + slot lookup, login, sessions: one job each).
   * Key handles are found again on first use. One at a time: callers meanwhile share it. A failure marks the token
   * down, and the recovery, with its backoff, takes over.
   */
  reinitialize(reason: string): Promise<void> {
    if (this.closing) return Promise.reject(new HsmUnavailableError('token is closing'));
    if (this.down !== undefined) return Promise.reject(new HsmUnavailableError(`token is down: ${this.down}`));
    this.reopening ??= this.reopen(reason).finally(() => (this.reopening = undefined));
    return this.reopening;
  }

  private async reopen(reason: string): Promise<void> {
    const started = Date.now();
    try {
      const ops = await this.operations();
      await this.pool?.close();
      // Nothing may run on the module while it is finalized: the health check, a login, admin work.
      await Promise.allSettled([this.probing, this.relogging, ...this.sideWork]);
      const slot = await this.reinitializeAgain(ops);
      this.pool = await this.openPool(ops, slot);
      this.initCount++;
      // A warning, not news: requests were held meanwhile.
      this.log.warn('token re-initialized to see objects other processes wrote', { token: this.options.name, reason, ms: Date.now() - started });
    } catch (err) {
      const ckr = ckrOf(err);
      this.markDown(`re-initialization failed: ${ckr === undefined ? (err as Error).message : ckrName(ckr)}`, ckr !== undefined && classifyCkr(ckr) === 'login');
      throw err;
    }
  }

  /**
   * reinitializeWith, tried up to three times 20 ms apart: SoftHSMv2 answers C_Initialize or the slot's token info with
   * CKR_TOKEN_NOT_PRESENT / CKR_GENERAL_ERROR when another process writes the token at that moment (measured while two
   * replicas changed the registry), and a token working a moment later is not down. A login-class refusal is final.
   */
  private async reinitializeAgain(ops: AsyncOperations): Promise<Handle> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.reinitializeWith(ops);
      } catch (err) {
        const ckr = ckrOf(err);
        if (attempt >= 3 || this.closing || (ckr !== undefined && classifyCkr(ckr) === 'login')) throw err;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }

  /**
   * C_Finalize + C_Initialize and the slot, then the login on a fresh anchor session: each one job off the event loop
   * through `ops`. The addon drives the very module instance pkcs11js initialized (chooseOperations chose it only then),
   * so one re-initialization serves both bindings; where the module gave the addon an instance of its own, `ops` is
   * pkcs11js's. Handles found before mean nothing afterwards: they are found again on first use.
   */
  private async reinitializeWith(ops: AsyncOperations): Promise<Handle> {
    const { tokenLabel, initArgs, pin } = this.options;
    this.handles.clear();
    this.handleEpoch++;
    this.anchor = undefined;
    const slot = await ops.reinitialize(tokenLabel, initArgs);
    this.slot = slot;
    const login = await ops.login(slot, pin);
    this.anchor = login.session;
    if (!isLoggedInState(login.state)) throw new HsmUnavailableError('the login did not hold after the re-initialization');
    return slot;
  }

  /** A new pool of signing sessions, opened off the event loop. */
  private async openPool(ops: AsyncOperations, slot: Handle): Promise<Pool<Handle>> {
    const opened = await Promise.all(Array.from({ length: this.options.sessions }, () => ops.openSession(slot, pkcs11js.CKF_SERIAL_SESSION)));
    return this.newPool(slot, opened);
  }

  /** Waits for a re-initialization in progress, within `ms`; after it the token may be down (its own error then). */
  private async afterReopening(ms: number): Promise<void> {
    if (this.reopening) await withDeadline(this.reopening.catch(() => undefined), ms);
  }

  /**
   * The addon shares pkcs11js's module instance — its sessions, login and handles — when C_GetFunctionList gives
   * every caller the same one (SoftHSMv2, openCryptoki, vendor libraries). p11-kit's client gives each caller a new
   * RPC instance (measured: the addon's calls answered CKR_CRYPTOKI_NOT_INITIALIZED), so a probe through the addon
   * decides; where it does not see the login, the calls go through pkcs11js and the log says so.
   */
  private async chooseOperations(addon: AsyncOperations, slot: Handle): Promise<AsyncOperations> {
    try {
      if (isLoggedInState((await addon.probe(slot)).state)) return addon;
    } catch {
      // Not the same instance, or the token failed just now: pkcs11js serves, and the next initialization asks again.
    }
    this.log.warn('the module gives the async calls an instance of their own (p11-kit client?): C_SignInit runs on the main thread', {
      token: this.options.name,
    });
    return new MainThreadOperations(this.p11);
  }

  private operations(): Promise<AsyncOperations> {
    if (!this.opsChosen) return Promise.reject(new HsmUnavailableError('token not opened'));
    return this.opsChosen;
  }

  get mechanisms(): ReadonlySet<number> {
    return this.mechanismSet;
  }

  /** C_GetMechanismInfo of each listed mechanism (flags, key sizes), read with the list. */
  get mechanismFacts(): ReadonlyMap<number, MechanismFacts> {
    return this.mechanismInfo;
  }

  /**
   * Finds (and caches) the handles of the given keys' private (or public) key objects; call at start-up, off
   * the request path. Returns the ones that are not on the token.
   */
  preload(refs: readonly KeyRef[], kind: 'private' | 'public' = 'private'): { missing: KeyRef[] } {
    const cls = kind === 'private' ? pkcs11js.CKO_PRIVATE_KEY : pkcs11js.CKO_PUBLIC_KEY;
    return { missing: this.findHandles(cls, refs) };
  }

  /**
   * Finds and caches many handles at once, returning the refs not found. Handles already known cost nothing (a
   * registry refresh after one change looks up only the new keys); past a few keys, the token's objects of the
   * class are listed once instead of searched one by one (objects.ts `indexByLabel`).
   */
  private findHandles(cls: number, all: readonly KeyRef[]): KeyRef[] {
    const refs = all.filter((ref) => !this.handles.has(cacheKey(cls, ref)));
    if (refs.length === 0) return [];
    const index = refs.length > BULK_LOOKUP_FROM ? indexByLabel(this.p11, this.requireAnchor(), cls) : undefined;
    const missing: KeyRef[] = [];
    for (const ref of refs) {
      const handle = index ? pickFromIndex(index, ref) : this.tryFindOne(cls, ref);
      if (handle === undefined) missing.push(ref);
      else this.handles.set(cacheKey(cls, ref), handle);
    }
    return missing;
  }

  private tryFindOne(cls: number, ref: KeyRef): Handle | undefined {
    try {
      return findOne(this.p11, this.requireAnchor(), cls, ref);
    } catch (err) {
      if (err instanceof HsmObjectNotFoundError) return undefined;
      throw err;
    }
  }

  /** The cached handle, or a search on the request's own session (off the event loop), shared by concurrent misses. */
  private keyHandle(cls: number, ref: KeyRef, session: Handle): Handle | Promise<Handle> {
    const key = cacheKey(cls, ref);
    const cached = this.handles.get(key);
    if (cached) return cached;
    let lookup = this.lookups.get(key);
    if (!lookup) {
      lookup = this.searchOne(cls, ref, session).finally(() => this.lookups.delete(key));
      this.lookups.set(key, lookup);
    }
    return lookup;
  }

  private async searchOne(cls: number, ref: KeyRef, session: Handle): Promise<Handle> {
    const epoch = this.handleEpoch;
    const found = await (await this.operations()).findObjects(session, objectTemplate(cls, ref), 2);
    if (found.length !== 1) {
      const what = cls === pkcs11js.CKO_PRIVATE_KEY ? 'private key' : 'public key';
      const message = found.length === 0 ? `no ${what} labelled "${ref.label}" on the token` : `several ${what}s labelled "${ref.label}"`;
      // A session without the login sees no private object: before calling the key gone, the probe checks the
      // login (and logs in again if it is gone); a search that crossed a new login is worth one more try.
      // A search that found nothing on a token the probe finds down says nothing about the key (its store went away).
      if (found.length === 0 && epoch === this.handleEpoch) {
        const status = await this.probe();
        if (!status.ok) throw new HsmUnavailableError(`token is down: ${status.detail}`);
      }
      throw new HsmObjectNotFoundError(message, undefined, { retryable: epoch !== this.handleEpoch });
    }
    // A handle found before a re-initialization or a new login means nothing after it.
    if (epoch === this.handleEpoch) this.handles.set(cacheKey(cls, ref), found[0]!);
    return found[0]!;
  }

  /** The public key's attributes (start-up and registry refreshes, not per request). */
  publicKey(ref: KeyRef): RawPublicKey {
    const session = this.requireAnchor();
    const key = cacheKey(pkcs11js.CKO_PUBLIC_KEY, ref);
    const handle = this.handles.get(key) ?? findOne(this.p11, session, pkcs11js.CKO_PUBLIC_KEY, ref);
    this.handles.set(key, handle);
    return readPublicKey(this.p11, session, handle);
  }

  /** The DER of the certificate object with this label (and CKA_ID); read at start-up, not per request. */
  certificate(ref: KeyRef): Buffer {
    const session = this.requireAnchor();
    const [value] = this.p11.C_GetAttributeValue(session, findOne(this.p11, session, pkcs11js.CKO_CERTIFICATE, ref), [{ type: pkcs11js.CKA_VALUE }]);
    return value!.value as Buffer;
  }

  /** Signs `data` with the private key; `maxSignatureBytes` sizes the output buffer. */
  sign(ref: KeyRef, mechanism: pkcs11js.Mechanism, data: Buffer, maxSignatureBytes: number): Promise<Buffer> {
    return this.withSession(async (session, ops) =>
      ops.sign(session, mechanism, await this.keyHandle(pkcs11js.CKO_PRIVATE_KEY, ref, session), data, maxSignatureBytes),
    );
  }

  /** Verifies `signature` over `data` with the public key: false for a wrong signature, never an error. */
  verify(ref: KeyRef, mechanism: pkcs11js.Mechanism, data: Buffer, signature: Buffer): Promise<boolean> {
    // CKR_SIGNATURE_INVALID / _LEN_RANGE answer false (the operation ended; the session is clean).
    return this.withSession(async (session, ops) => ops.verify(session, mechanism, await this.keyHandle(pkcs11js.CKO_PUBLIC_KEY, ref, session), data, signature));
  }

  /**
   * Runs one operation on a pooled session, within the operation deadline; a retryable failure is tried once
   * more on a fresh session. A session whose call outlives the deadline goes back to the pool (or is replaced)
   * only when that call returns: it is never lent twice.
   */
  private async withSession<T>(operation: (session: Handle, ops: AsyncOperations) => Promise<T>, retry?: Retry): Promise<T> {
    // Held, not refused, while the module is re-initialized (reinitialize()).
    if (this.reopening) await this.afterReopening(this.options.acquireTimeoutMs);
    let pool = this.requirePool();
    const ops = await this.operations();
    let session: Handle;
    try {
      session = await this.acquire(pool, retry);
    } catch (err) {
      // Waiting for a session when a re-initialization closed the pool: wait for it, then take one of the new pool.
      if (!(err instanceof HsmUnavailableError && err.cause instanceof PoolClosedError && this.reopening)) throw err;
      await this.afterReopening(this.options.acquireTimeoutMs);
      pool = this.requirePool();
      session = await this.acquire(pool, retry);
    }
    if (this.relogging) {
      // The login is being restored: an operation now would meet a public session (no private objects). The wait
      // counts against the operation's deadline: a login that hangs on the network answers 503, as a sign would.
      try {
        await withDeadline(this.relogging.catch(() => undefined), this.options.operationTimeoutMs ?? 10_000);
        if (this.down !== undefined) throw new HsmUnavailableError(`token is down: ${this.down}`);
      } catch (err) {
        pool.release(session);
        throw err;
      }
    }
    const settled = operation(session, ops).then(
      (value) => {
        pool.release(session);
        return { value } as const;
      },
      async (err: unknown) => {
        const failedAt = pool.made;
        const { error, replaced } = await this.react(err, session, pool);
        // A replaced session: the retry runs on one made after this failure (the idle ones may have died with it).
        return { error, next: { pool, madeAfter: replaced ? failedAt : undefined } } as const;
      },
    );
    const outcome = await withDeadline(settled, this.options.operationTimeoutMs ?? 10_000);
    if ('value' in outcome) return outcome.value;
    if (!outcome.error.retryable) throw outcome.error;
    if (!retry && this.down === undefined) return this.withSession(operation, outcome.next);
    // Failing again on a fresh session (or with the token now down): the token cannot serve this right now.
    throw new HsmUnavailableError(outcome.error.message, outcome.error.ckr, { cause: outcome.error });
  }

  private requirePool(): Pool<Handle> {
    if (this.down !== undefined || !this.pool) throw new HsmUnavailableError(`token is down: ${this.down}`);
    return this.pool;
  }

  /** A pooled session; for a retry after a replaced session, one made after that failure. */
  private async acquire(pool: Pool<Handle>, retry?: Retry): Promise<Handle> {
    try {
      const madeAfter = retry?.pool === pool ? retry.madeAfter : undefined;
      return madeAfter === undefined ? await pool.acquire(this.options.acquireTimeoutMs) : await pool.acquireMadeAfter(madeAfter, this.options.acquireTimeoutMs);
    } catch (err) {
      if (err instanceof PoolFullError) throw new HsmBusyError(err.message, undefined, { cause: err });
      if (err instanceof PoolTimeoutError || err instanceof PoolClosedError) throw new HsmUnavailableError(err.message, undefined, { cause: err });
      const ckr = ckrOf(err);
      if (ckr !== undefined) throw new HsmUnavailableError(`could not open a session (${ckrName(ckr)})`, ckr, { cause: err });
      throw err;
    }
  }

  /** Applies the failure model to a failed operation's session, handles and token; returns the error to throw. */
  private async react(err: unknown, session: Handle, pool: Pool<Handle>): Promise<{ error: HsmError; replaced: boolean }> {
    const reaction = reactionTo(err);
    const replaced = reaction.session === 'replace';
    if (replaced) pool.discard(session);
    else pool.release(session);
    if (reaction.dropHandles) this.handles.clear();
    if (reaction.token === 'probe' && !(await this.probe()).ok) return { error: new HsmUnavailableError(reaction.error.message, reaction.error.ckr, { cause: err }), replaced };
    if (reaction.token === 'down-for-good') this.markDown(ckrName(reaction.error.ckr ?? -1), true);
    return { error: reaction.error, replaced };
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

  /**
   * Drains the old pool, re-initializes the module and logs in (off the event loop: reinitializeWith), checks that the
   * token computes again (a library whose backend is still away may initialize and log in all the same), opens the
   * sessions, and serves again; key handles are found again on first use, off the event loop. A failure: the next
   * try after the backoff.
   */
  private async recover(): Promise<void> {
    if (this.closing) return;
    try {
      await this.pool?.close();
      // No job may run on the module while it is finalized.
      await Promise.allSettled([this.probing, this.relogging, ...this.sideWork]);
      let ops = await this.operations();
      const slot = await this.reinitializeWith(ops);
      if (ops instanceof MainThreadOperations && this.addon) {
        // Not chosen at the last initialization (perhaps the token was failing then): asked again, as at start-up.
        this.opsChosen = this.chooseOperations(this.addon, slot);
        ops = await this.opsChosen;
      }
      const seen = await ops.probe(slot);
      if (cannotCompute(seen.randomRv)) throw cannotComputeError(seen.randomRv);
      const pool = await this.openPool(ops, slot);
      if (this.closing) {
        await pool.close();
        return;
      }
      this.pool = pool;
      this.initCount++;
      this.down = undefined;
      this.recoveryDelayMs = this.options.recoveryMinDelayMs ?? 250;
      this.log.info('token recovered', { token: this.options.name });
    } catch (err) {
      this.recoveryFailed(err);
    }
  }

  private recoveryFailed(err: unknown): void {
    const ckr = ckrOf(err);
    this.down = `recovering: ${ckr === undefined ? (err as Error).message : ckrName(ckr)}`;
    if (ckr !== undefined && classifyCkr(ckr) === 'login') {
      this.permanentlyDown = true;
      this.log.error('token recovery stopped: the PIN was refused', { token: this.options.name });
      return;
    }
    this.scheduleRecovery();
  }

  /**
   * Administrative work (registry records, key generation, key destruction) on a fresh read/write session of the
   * logged-in token: never on a signing session (those are read-only and busy). Work that needs the token to
   * compute (key generation) should use the module's async calls so the event loop keeps serving. A failure is
   * the caller's, unless the token then fails its probe (503).
   */
  async admin<T>(work: (p11: pkcs11js.PKCS11, session: Handle, ops: AsyncOperations) => T | Promise<T>): Promise<T> {
    // Without a re-initialization in progress, the work starts at once (counted before anything else can begin one).
    if (this.reopening) await this.afterReopening(this.options.operationTimeoutMs ?? 10_000);
    return this.tracked(this.adminNow(work));
  }

  /** Counts work that a re-initialization must wait for. */
  private tracked<T>(work: Promise<T>): Promise<T> {
    this.sideWork.add(work);
    return work.finally(() => this.sideWork.delete(work));
  }

  private async adminNow<T>(work: (p11: pkcs11js.PKCS11, session: Handle, ops: AsyncOperations) => T | Promise<T>): Promise<T> {
    if (this.down !== undefined || this.slot === undefined) throw new HsmUnavailableError(`token is down: ${this.down}`);
    const ops = await this.operations();
    let session: Handle;
    try {
      session = await ops.openSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    } catch (err) {
      return await this.adminFailed(err);
    }
    try {
      return await work(this.p11, session, ops);
    } catch (err) {
      return await this.adminFailed(err);
    } finally {
      // The session died with the token, if this fails; recovery opens new ones.
      await ops.closeSession(session).catch(() => undefined);
    }
  }

  /**
   * Read-only work on a fresh session, every call through the async calls (the registry's poll, once a second on
   * every replica): none of it waits on the event loop. Failures as for admin().
   */
  async inspect<T>(work: (ops: AsyncOperations, session: Handle, another: () => Promise<Handle | undefined>) => Promise<T>): Promise<T> {
    // Without a re-initialization in progress, the work starts at once (counted before anything else can begin one).
    if (this.reopening) await this.afterReopening(this.options.operationTimeoutMs ?? 10_000);
    return this.tracked(this.inspectNow(work));
  }

  private async inspectNow<T>(work: (ops: AsyncOperations, session: Handle, another: () => Promise<Handle | undefined>) => Promise<T>): Promise<T> {
    if (this.down !== undefined || this.slot === undefined) throw new HsmUnavailableError(`token is down: ${this.down}`);
    const slot = this.slot;
    const ops = await this.operations();
    const sessions: Handle[] = [];
    // PKCS#11 forbids concurrent calls on one session: work that reads in parallel asks for more sessions, and does
    // with fewer (undefined) where the module has none to spare (a YubiHSM holds 16 in all).
    const another = (): Promise<Handle | undefined> =>
      ops.openSession(slot, 0).then(
        (session) => (sessions.push(session), session),
        () => undefined,
      );
    try {
      const session = await ops.openSession(slot, 0);
      sessions.push(session);
      return await work(ops, session, another);
    } catch (err) {
      return await this.adminFailed(err);
    } finally {
      for (const session of sessions) await ops.closeSession(session).catch(() => undefined);
    }
  }

  /**
   * Brings CKA_SIGN of these keys' private key objects (every object each ref matches) to `allowed`, on a fresh
   * read/write session, every call one job off the event loop (the API's DisableKey runs on a serving gateway). Each
   * object is read first and written only when it differs, so a module that refuses the change (CKA_SIGN read-only:
   * CKR_ATTRIBUTE_READ_ONLY, CKR_ACTION_PROHIBITED, …) is asked only when something must change. A key without a
   * private key object on this token counts as `missing`. Failures as for admin() (the raw error is rethrown).
   */
  async setSigning(refs: readonly KeyRef[], allowed: boolean): Promise<{ changed: number; unchanged: number; missing: number }> {
    if (this.down !== undefined || this.slot === undefined) throw new HsmUnavailableError(`token is down: ${this.down}`);
    const ops = await this.operations();
    const outcome = { changed: 0, unchanged: 0, missing: 0 };
    let session: Handle | undefined;
    try {
      session = await ops.openSession(this.slot, pkcs11js.CKF_RW_SESSION);
      for (const ref of refs) {
        const objects = await ops.findObjects(session, objectTemplate(pkcs11js.CKO_PRIVATE_KEY, ref));
        if (objects.length === 0) outcome.missing++;
        for (const object of objects) {
          const [sign] = await ops.getAttributeValue(session, object, [pkcs11js.CKA_SIGN]);
          if (sign !== undefined && sign.length > 0 && (sign[0] !== 0) === allowed) {
            outcome.unchanged++;
            continue;
          }
          await ops.setAttributeValue(session, object, [{ type: pkcs11js.CKA_SIGN, value: allowed }]);
          outcome.changed++;
        }
      }
      return outcome;
    } catch (err) {
      return await this.adminFailed(err);
    } finally {
      if (session) await ops.closeSession(session).catch(() => undefined);
    }
  }

  /** Whether each key's private key objects may sign (CKA_SIGN true on all of them; a key without one: true). Off the event loop. */
  async signingAllowed(refs: readonly KeyRef[]): Promise<boolean[]> {
    return this.inspect(async (ops, session) => {
      const allowed: boolean[] = [];
      for (const ref of refs) {
        let all = true;
        for (const object of await ops.findObjects(session, objectTemplate(pkcs11js.CKO_PRIVATE_KEY, ref))) {
          const [sign] = await ops.getAttributeValue(session, object, [pkcs11js.CKA_SIGN]);
          if (sign !== undefined && sign.length > 0 && sign[0] === 0) all = false;
        }
        allowed.push(all);
      }
      return allowed;
    });
  }

  /** A failed admin or read call: the caller's error, unless the token then fails its probe (503) or refused the PIN. */
  private async adminFailed(err: unknown): Promise<never> {
    const reaction = reactionTo(err);
    if (reaction.token === 'probe' && !(await this.probe()).ok) throw new HsmUnavailableError(reaction.error.message, reaction.error.ckr, { cause: err });
    if (reaction.token === 'down-for-good') this.markDown(ckrName(reaction.error.ckr ?? -1), true);
    throw err;
  }

  /** Drops the cached handle of a key that no longer exists (its objects were destroyed). */
  forget(ref: KeyRef): void {
    for (const cls of [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY]) this.handles.delete(cacheKey(cls, ref));
  }

  /** What the module and the token say about themselves (admin tooling); nothing secret. */
  describe(): TokenDescription {
    if (this.slot === undefined) throw new HsmUnavailableError(`token is down: ${this.down}`);
    // graphene-pk11 over the same binding (no second load or C_Initialize): its objects read the info structures.
    const module = new BoundModule(this.p11);
    const slot = new Slot(this.slot, module, this.p11);
    const token = slot.getToken();
    const version = (v: { major: number; minor: number }): string => `${v.major}.${v.minor}`;
    return {
      module: this.options.modulePath,
      library: { manufacturer: module.manufacturerID, description: module.libraryDescription, version: version(module.libraryVersion) },
      slot: (this.slot.length >= 8 ? this.slot.readBigUInt64LE(0) : BigInt(this.slot.readUInt32LE(0))).toString(),
      label: tokenLabelOf(token.label).trim(),
      manufacturer: token.manufacturerID.trim(),
      model: token.model.trim(),
      serialNumber: token.serialNumber.trim(),
      firmwareVersion: version(token.firmwareVersion),
      mechanisms: this.mechanismSet.size,
    };
  }

  /** The module's library (C_GetInfo manufacturerID, e.g. "SoftHSM"): what its documented quirks are keyed by. */
  get library(): string {
    return this.libraryName;
  }

  /** How many times the module was (re-)initialized. */
  get initializations(): number {
    return this.initCount;
  }

  /** Moves at every (re-)initialization and every new login: object handles read before mean nothing after it. */
  get handleGeneration(): number {
    return this.handleEpoch;
  }

  /** The token's state as last seen; makes no PKCS#11 call (metrics scrapes read this). */
  status(): TokenStatus {
    if (this.down !== undefined) return { ok: false, detail: `down: ${this.down}${this.permanentlyDown ? ' (not retried)' : ''}` };
    return { ok: true, detail: 'ok' };
  }

  /**
   * The health check, off the event loop: the token answers, a fresh session opens and is logged in, and the token
   * computes (C_GenerateRandom: what tpm2-pkcs11 fails, alone with signing, once its backend went away). A failed
   * check marks the token down (and starts its recovery); this, not one failed operation, decides that a token is
   * down. One check at a time: callers during a check share its answer.
   */
  probe(): Promise<TokenStatus> {
    // During a re-initialization the module has no sessions to check: it reports for itself when it ends.
    if (this.down !== undefined || this.slot === undefined || !this.opsChosen || this.reopening) return Promise.resolve(this.status());
    const slot = this.slot;
    this.probing ??= this.operations()
      .then((ops) => this.check(ops, slot))
      .finally(() => (this.probing = undefined));
    return this.probing;
  }

  private async check(ops: AsyncOperations, slot: Handle, confirming = false): Promise<TokenStatus> {
    try {
      // The token info is read first: SoftHSMv2 notices a vanished token store there, not in its sessions.
      const seen = await ops.probe(slot);
      if (cannotCompute(seen.randomRv)) throw cannotComputeError(seen.randomRv);
      if (!isLoggedInState(seen.state)) {
        this.relogging = this.relogin(ops, slot);
        await this.relogging.finally(() => (this.relogging = undefined));
      }
      return this.status();
    } catch (err) {
      const ckr = ckrOf(err);
      const login = ckr !== undefined && classifyCkr(ckr) === 'login';
      if (!confirming && !login && !this.closing && disturbedByOtherWriters(this.libraryName)) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        return this.check(ops, slot, true);
      }
      const detail = ckr === undefined ? (err instanceof HsmError ? err.message : 'unreachable') : ckrName(ckr);
      this.markDown(detail, login);
      return { ok: false, detail };
    }
  }

  /**
   * The token lost the login (it restarted, or dropped every session: the login is the application's and goes with
   * its last session): log in once on a fresh session, which becomes the anchor that holds the login. Runs inside
   * the probe, so one login at a time serves every caller. Handles found before mean nothing now (SoftHSMv2 forgets
   * private objects' handles at logout), and the pool's idle sessions likely died with the login: both are renewed.
   * A refused PIN ends here for good (check() marks the token down; no second try); any other failure, or a login
   * lost again within the recovery backoff's ceiling, makes the token down and the recovery, with its backoff, takes
   * over: never a login storm.
   */
  private async relogin(ops: AsyncOperations, slot: Handle): Promise<void> {
    const now = Date.now();
    const minIntervalMs = this.options.recoveryMaxDelayMs ?? 5000;
    if (this.lastReloginAt !== undefined && now - this.lastReloginAt < minIntervalMs) {
      throw new HsmUnavailableError(`the login was lost again within ${minIntervalMs} ms of the last login`);
    }
    this.lastReloginAt = now;
    // Searches from here on run while the login is gone or new: none of what they or earlier ones found is kept.
    this.handles.clear();
    this.handleEpoch++;
    const { session, state } = await ops.login(slot, this.options.pin);
    const closeQuietly = (s: Handle): void => void ops.closeSession(s).catch(() => undefined);
    if (this.closing) {
      closeQuietly(session);
      return;
    }
    if (!isLoggedInState(state)) {
      closeQuietly(session);
      throw new HsmUnavailableError('the login did not hold');
    }
    const previous = this.anchor;
    this.anchor = session;
    if (previous) closeQuietly(previous);
    this.pool?.renewIdle();
    this.log.warn('token: the login was lost; logged in again', { token: this.options.name });
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

/** A graphene Module over an already loaded and initialized binding: reads the library info, initializes nothing. */
class BoundModule extends Module {
  constructor(p11: pkcs11js.PKCS11) {
    super(p11);
    this.getInfo();
  }
}

/** The probe's C_GenerateRandom failed as a token that cannot compute fails (failure-model.ts `cannotCompute`). */
const cannotComputeError = (rv: number): AsyncPkcs11Error => new AsyncPkcs11Error(`C_GenerateRandom: ${ckrName(rv)}`, rv, 'C_GenerateRandom');

/** Resolves with the promise, or rejects with a 503-class error when the deadline passes first. */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new HsmUnavailableError(`the token did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

