import pkcs11js from 'pkcs11js';
import { SESSION_STATE } from '../../src/hsm/module.js';
import type { AsyncOperations } from '../../src/hsm/async-pkcs11.js';

/**
 * A scripted stand-in for pkcs11js.PKCS11, for unit tests of the failure model: one slot with one token, one EC key
 * pair, sessions and logins tracked, and failures injected per function ("the next C_SignInit answers
 * CKR_SESSION_HANDLE_INVALID"), a device that stops answering, objects renumbered under the caller (stale
 * handles), and calls that hang until released; key generation scripted per module (FakeKeyGeneration). Only what
 * Token and key generation use is implemented.
 */
export const FAKE_LABEL = 'fake-token';
export const FAKE_PIN = '1234';
const SLOT = handle(7);

function handle(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}
const num = (h: Buffer): number => Number(h.readBigUInt64LE(0));

export function ckrError(code: number): Error {
  const name = Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === code)?.[0] ?? `CKR_${code}`;
  return Object.assign(new Error(name), { code });
}

interface FakeObject {
  cls: number;
  label: string;
  id: Buffer;
  /** Session objects (CKA_TOKEN=false) belong to the session that made them. */
  session?: number;
  /** CK_BBOOL attributes the object answers (CKA_SIGN, CKA_SENSITIVE, …); others answer CKR_ATTRIBUTE_TYPE_INVALID. */
  flags?: Map<number, boolean>;
}

/**
 * How the fake's C_GenerateKeyPair(Async) behaves: refuse a template (and leave half-made objects behind, as some
 * modules do), or change what the templates asked for (a module that couples usages or ignores CKA_EXTRACTABLE).
 */
interface FakeKeyGeneration {
  /** A CKR to answer for these templates, or undefined to generate. */
  refuse?(publicTemplate: pkcs11js.Template, privateTemplate: pkcs11js.Template): number | undefined;
  /** A refused generation still leaves its objects on the token. */
  leaveObjectsOnRefusal?: boolean;
  /** Attributes the module sets on the private / public key whatever the template said. */
  forcePrivate?: Record<number, boolean>;
  forcePublic?: Record<number, boolean>;
}

/** pkcs11js 2.1.7's errors from C_CreateObject / C_SetAttributeValue: no `code`, the message "CKR_NAME:number". */
function codelessError(code: number): Error {
  const name = Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === code)?.[0] ?? `CKR_${code}`;
  return new Error(`${name}:${code}`);
}

const attr = (template: pkcs11js.Template, type: number): unknown => template.find((a) => a.type === type)?.value;

export class FakePkcs11 {
  /** Every call, by function name, in order. */
  readonly calls: string[] = [];
  /** CKR codes to answer on the next calls of a function, in order. */
  private readonly script = new Map<string, number[]>();
  /** While set, every call but C_Finalize answers this code (a device that is gone). */
  deviceError: number | undefined;
  pin = FAKE_PIN;
  private initialized = false;
  private loggedIn = false;
  private nextSession = 100;
  private readonly sessions = new Set<number>();
  private readonly operations = new Map<number, 'sign' | 'verify'>();
  private readonly finds = new Map<number, Buffer[]>();
  private objects = new Map<number, FakeObject>();
  private nextObject = 1;
  private hangs: Array<{ fn: string; release: Promise<void> }> = [];
  /** What C_GetMechanismList answers, and C_GetMechanismInfo for each (absent: CKR_MECHANISM_INVALID). */
  mechanismList: number[] = [pkcs11js.CKM_ECDSA];
  readonly mechanismInfo = new Map<number, { minKeySize: number; maxKeySize: number; flags: number }>();
  /** C_GenerateKeyPair's templates, in order (what the capability probe and key generation asked for). */
  readonly generated: Array<{ mechanism: number; publicTemplate: pkcs11js.Template; privateTemplate: pkcs11js.Template }> = [];
  /** C_CreateObject answers this code, the way pkcs11js throws it (no `code` on the error). */
  createObjectRefuses: number | undefined;
  /** Labels of objects destroyed with C_DestroyObject. */
  readonly destroyed: string[] = [];
  /** C_GetInfo's manufacturerID: what module-specific code keys on (tpm2-pkcs11: 'tpm2-software.github.io'). */
  library = 'fake';
  keyGeneration: FakeKeyGeneration = {};
  /** Calls waiting in hangNext's hold now. */
  hanging = 0;
  /** loseBackend(): while away, C_Initialize fails; while stuck (until a C_Initialize that works), computing fails. */
  private backend: { away: boolean; stuck: number } | undefined;

  constructor() {
    this.addKeyPair('k1', Buffer.from('01', 'hex'));
  }

  /** Objects another process wrote: shown only after this instance's next C_Initialize (tpm2-pkcs11 reads its store then). */
  private unseen: FakeObject[] = [];

  addKeyPairFromAnotherProcess(label: string, id: Buffer): void {
    this.unseen.push({ cls: pkcs11js.CKO_PRIVATE_KEY, label, id }, { cls: pkcs11js.CKO_PUBLIC_KEY, label, id });
  }

  addKeyPair(label: string, id: Buffer): void {
    this.objects.set(this.nextObject++, { cls: pkcs11js.CKO_PRIVATE_KEY, label, id });
    this.objects.set(this.nextObject++, { cls: pkcs11js.CKO_PUBLIC_KEY, label, id });
  }

  /** Objects on the token with this label (any class). */
  objectsLabelled(label: string): number {
    return [...this.objects.values()].filter((o) => o.label === label).length;
  }

  /** Adds an object with these CK_BBOOL attributes; returns its handle. */
  addObject(cls: number, label: string, id: Buffer, flags: Record<number, boolean> = {}, session?: number): Buffer {
    const n = this.nextObject++;
    this.objects.set(n, { cls, label, id, flags: new Map(Object.entries(flags).map(([k, v]) => [Number(k), v])), ...(session === undefined ? {} : { session }) });
    return handle(n);
  }

  /** The next `times` calls of `fn` answer `ckr`. */
  failNext(fn: string, ckr: number, times = 1): void {
    this.script.set(fn, [...(this.script.get(fn) ?? []), ...Array<number>(times).fill(ckr)]);
  }

  /** The next call of `fn` (C_Sign, or C_Login through the async login) waits until the returned function is called. */
  hangNext(fn: string): () => void {
    let release!: () => void;
    this.hangs.push({ fn, release: new Promise<void>((r) => (release = r)) });
    return release;
  }

  /** The token's objects get new handles (a restore, a reload by another process): cached handles go stale. */
  renumberObjects(): void {
    const renumbered = new Map<number, FakeObject>();
    for (const o of this.objects.values()) renumbered.set(this.nextObject++, o);
    this.objects = renumbered;
  }

  /** Every session is gone (CKR_SESSION_HANDLE_INVALID) while the login stays (a network HSM that dropped its connections). */
  dropSessions(): void {
    this.sessions.clear();
    // The login stays with the HSM: modelled as a session that no handle reaches, so closing the last real one keeps it.
    this.sessions.add(-1);
    this.operations.clear();
    this.finds.clear();
  }

  /** The token forgets the login (as after a reset), while sessions stay open: private objects are out of reach. */
  dropLogin(): void {
    this.loggedIn = false;
  }

  /**
   * A network HSM that restarted (or a YubiHSM after idle): every session is gone (CKR_SESSION_HANDLE_INVALID), the
   * login with them, and the objects come back under new handles (as SoftHSMv2 forgets private objects' handles at
   * logout).
   */
  restart(): void {
    this.sessions.clear();
    this.operations.clear();
    this.finds.clear();
    this.loggedIn = false;
    this.renumberObjects();
  }

  /**
   * The backend behind the library goes away (tpm2-abrmd behind tpm2-pkcs11): C_Sign and C_GenerateRandom answer
   * `ckr`; info, sessions, login and searches still work; C_Initialize fails until restoreBackend(), and only a
   * C_Initialize after that ends the errors.
   */
  loseBackend(ckr: number = pkcs11js.CKR_GENERAL_ERROR): void {
    this.backend = { away: true, stuck: ckr };
  }

  restoreBackend(): void {
    if (this.backend) this.backend.away = false;
  }

  private computing(): void {
    if (this.backend) throw ckrError(this.backend.stuck);
  }

  get isLoggedIn(): boolean {
    return this.loggedIn;
  }

  count(fn: string): number {
    return this.calls.filter((c) => c === fn).length;
  }

  get openSessions(): number {
    return this.sessions.size;
  }

  private enter(fn: string): void {
    this.calls.push(fn);
    if (this.deviceError !== undefined && fn !== 'C_Finalize' && fn !== 'load') throw ckrError(this.deviceError);
    const queued = this.script.get(fn);
    if (queued && queued.length > 0) throw ckrError(queued.shift()!);
    if (fn !== 'load' && fn !== 'C_Initialize' && !this.initialized) throw ckrError(pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED);
  }

  private session(fn: string, s: Buffer): number {
    this.enter(fn);
    const n = num(s);
    if (!this.sessions.has(n)) throw ckrError(pkcs11js.CKR_SESSION_HANDLE_INVALID);
    return n;
  }

  private object(h: Buffer): FakeObject {
    const o = this.objects.get(num(h));
    if (!o) throw ckrError(pkcs11js.CKR_OBJECT_HANDLE_INVALID);
    return o;
  }

  private async maybeHang(fn: string): Promise<void> {
    const i = this.hangs.findIndex((h) => h.fn === fn);
    if (i < 0) return;
    const [hang] = this.hangs.splice(i, 1);
    this.hanging++;
    await hang!.release;
    this.hanging--;
  }

  load(_path: string): void {
    this.enter('load');
  }
  C_Initialize(_options?: unknown): void {
    this.enter('C_Initialize');
    if (this.initialized) throw ckrError(pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED);
    if (this.backend?.away) throw ckrError(pkcs11js.CKR_GENERAL_ERROR);
    this.backend = undefined;
    this.initialized = true;
    for (const o of this.unseen.splice(0)) this.objects.set(this.nextObject++, o);
  }
  C_Finalize(): void {
    this.enter('C_Finalize');
    this.initialized = false;
    this.loggedIn = false;
    this.sessions.clear();
  }
  C_GetInfo(): pkcs11js.ModuleInfo {
    this.enter('C_GetInfo');
    return {
      cryptokiVersion: { major: 2, minor: 40 },
      manufacturerID: this.library.padEnd(32),
      flags: 0,
      libraryDescription: 'scripted fake'.padEnd(32),
      libraryVersion: { major: 1, minor: 0 },
    };
  }
  C_GetSlotList(_present?: boolean): Buffer[] {
    this.enter('C_GetSlotList');
    return [SLOT];
  }
  C_GetTokenInfo(_slot: Buffer): pkcs11js.TokenInfo {
    this.enter('C_GetTokenInfo');
    return { label: FAKE_LABEL.padEnd(32), manufacturerID: 'fake', model: 'fake', serialNumber: '1', flags: pkcs11js.CKF_TOKEN_INITIALIZED } as unknown as pkcs11js.TokenInfo;
  }
  C_GetMechanismList(_slot: Buffer): number[] {
    this.enter('C_GetMechanismList');
    return [...this.mechanismList];
  }
  C_GetMechanismInfo(_slot: Buffer, mechanism: number): pkcs11js.MechanismInfo {
    this.enter('C_GetMechanismInfo');
    const info = this.mechanismInfo.get(mechanism);
    if (!info) throw ckrError(pkcs11js.CKR_MECHANISM_INVALID);
    return { ...info };
  }
  C_CreateObject(s: Buffer, template: pkcs11js.Template): Buffer {
    const n = this.session('C_CreateObject', s);
    if (this.createObjectRefuses !== undefined) throw codelessError(this.createObjectRefuses);
    const h = this.nextObject++;
    this.objects.set(h, { cls: Number(attr(template, pkcs11js.CKA_CLASS)), label: String(attr(template, pkcs11js.CKA_LABEL) ?? ''), id: Buffer.alloc(0), session: attr(template, pkcs11js.CKA_TOKEN) === true ? undefined : n });
    return handle(h);
  }
  async C_SignAsync(s: Buffer, data: Buffer, _out: Buffer): Promise<Buffer> {
    return this.C_Sign(s, data);
  }
  /** Objects still on the token (or in an open session), by label. */
  labels(): string[] {
    return [...this.objects.values()].map((o) => o.label);
  }
  C_OpenSession(_slot: Buffer, _flags: number): Buffer {
    this.enter('C_OpenSession');
    const n = this.nextSession++;
    this.sessions.add(n);
    return handle(n);
  }
  C_CloseSession(s: Buffer): void {
    const n = this.session('C_CloseSession', s);
    this.sessions.delete(n);
    for (const [h, o] of this.objects) if (o.session === n) this.objects.delete(h);
    this.operations.delete(n);
    if (this.sessions.size === 0) this.loggedIn = false;
  }
  C_CloseAllSessions(_slot: Buffer): void {
    this.enter('C_CloseAllSessions');
    this.sessions.clear();
    this.loggedIn = false;
  }
  C_Login(s: Buffer, _type: number, pin: string): void {
    this.session('C_Login', s);
    if (pin !== this.pin) throw ckrError(pkcs11js.CKR_PIN_INCORRECT);
    if (this.loggedIn) throw ckrError(pkcs11js.CKR_USER_ALREADY_LOGGED_IN);
    this.loggedIn = true;
  }
  C_Logout(s: Buffer): void {
    this.session('C_Logout', s);
    this.loggedIn = false;
  }
  C_GetSessionInfo(s: Buffer): pkcs11js.SessionInfo {
    this.session('C_GetSessionInfo', s);
    return { slotID: SLOT, state: this.loggedIn ? SESSION_STATE.roUser : SESSION_STATE.roPublic, flags: 0, deviceError: 0 } as unknown as pkcs11js.SessionInfo;
  }
  C_FindObjectsInit(s: Buffer, template: pkcs11js.Template): void {
    const n = this.session('C_FindObjectsInit', s);
    const want = (o: FakeObject): boolean =>
      template.every((a) => {
        if (a.type === pkcs11js.CKA_CLASS) return a.value === o.cls;
        if (a.type === pkcs11js.CKA_LABEL) return a.value === o.label;
        if (a.type === pkcs11js.CKA_ID) return Buffer.isBuffer(a.value) && a.value.equals(o.id);
        return true;
      });
    // Private objects exist for a session only while the user is logged in (PKCS#11 §4.4.1).
    const visible = (o: FakeObject): boolean => o.cls !== pkcs11js.CKO_PRIVATE_KEY || this.loggedIn;
    this.finds.set(n, [...this.objects].filter(([, o]) => visible(o) && want(o)).map(([h]) => handle(h)));
  }
  C_FindObjects(s: Buffer, max: number): Buffer[] {
    const n = this.session('C_FindObjects', s);
    return (this.finds.get(n) ?? []).splice(0, max);
  }
  C_FindObjectsFinal(s: Buffer): void {
    this.finds.delete(this.session('C_FindObjectsFinal', s));
  }
  C_GetAttributeValue(s: Buffer, h: Buffer, template: pkcs11js.Template): pkcs11js.Template {
    this.session('C_GetAttributeValue', s);
    const o = this.object(h);
    return template.map((a) => {
      if (a.type === pkcs11js.CKA_LABEL) return { type: a.type, value: Buffer.from(o.label) };
      if (a.type === pkcs11js.CKA_ID) return { type: a.type, value: o.id };
      const flag = o.flags?.get(a.type);
      if (flag !== undefined) return { type: a.type, value: Buffer.from([flag ? 1 : 0]) };
      if (o.flags) throw ckrError(pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID);
      return { type: a.type, value: Buffer.alloc(0) };
    });
  }
  /** CKA_SIGN answers this code instead of changing (a module where it is read-only), the way pkcs11js throws it. */
  setAttributeRefuses: number | undefined;
  C_SetAttributeValue(s: Buffer, h: Buffer, template: pkcs11js.Template): void {
    this.session('C_SetAttributeValue', s);
    const o = this.object(h);
    if (this.setAttributeRefuses !== undefined) throw codelessError(this.setAttributeRefuses);
    o.flags ??= new Map();
    for (const a of template) if (typeof a.value === 'boolean') o.flags.set(a.type, a.value);
  }
  C_DestroyObject(s: Buffer, h: Buffer): void {
    this.session('C_DestroyObject', s);
    this.destroyed.push(this.object(h).label);
    this.objects.delete(num(h));
  }
  C_GenerateKeyPair(s: Buffer, mechanism: pkcs11js.Mechanism, publicTemplate: pkcs11js.Template, privateTemplate: pkcs11js.Template): pkcs11js.KeyPair {
    const n = this.session('C_GenerateKeyPair', s);
    this.generated.push({ mechanism: mechanism.mechanism, publicTemplate, privateTemplate });
    const g = this.keyGeneration;
    const refused = g.refuse?.(publicTemplate, privateTemplate);
    if (refused !== undefined && !g.leaveObjectsOnRefusal) throw ckrError(refused);
    const value = (t: pkcs11js.Template, type: number): unknown => t.find((a) => a.type === type)?.value;
    const bools = (t: pkcs11js.Template): Record<number, boolean> => Object.fromEntries(t.filter((a) => typeof a.value === 'boolean').map((a) => [a.type, a.value as boolean]));
    const label = String(value(privateTemplate, pkcs11js.CKA_LABEL) ?? '');
    const id = (value(privateTemplate, pkcs11js.CKA_ID) as Buffer | undefined) ?? Buffer.alloc(0);
    const priv: Record<number, boolean> = { [pkcs11js.CKA_SIGN]: true, [pkcs11js.CKA_DECRYPT]: true, [pkcs11js.CKA_UNWRAP]: true, [pkcs11js.CKA_DERIVE]: false, ...bools(privateTemplate), ...g.forcePrivate };
    priv[pkcs11js.CKA_SENSITIVE] ??= false;
    priv[pkcs11js.CKA_EXTRACTABLE] ??= true;
    priv[pkcs11js.CKA_ALWAYS_SENSITIVE] = priv[pkcs11js.CKA_SENSITIVE]!;
    priv[pkcs11js.CKA_NEVER_EXTRACTABLE] = !priv[pkcs11js.CKA_EXTRACTABLE];
    const pub: Record<number, boolean> = { [pkcs11js.CKA_VERIFY]: true, [pkcs11js.CKA_ENCRYPT]: true, [pkcs11js.CKA_WRAP]: true, ...bools(publicTemplate), ...g.forcePublic };
    // Session objects (CKA_TOKEN=false) belong to the session that made them.
    const session = value(privateTemplate, pkcs11js.CKA_TOKEN) === false ? n : undefined;
    const pair = { privateKey: this.addObject(pkcs11js.CKO_PRIVATE_KEY, label, id, priv, session), publicKey: this.addObject(pkcs11js.CKO_PUBLIC_KEY, label, id, pub, session) };
    if (refused !== undefined) throw ckrError(refused);
    return pair;
  }
  async C_GenerateKeyPairAsync(s: Buffer, mechanism: pkcs11js.Mechanism, publicTemplate: pkcs11js.Template, privateTemplate: pkcs11js.Template): Promise<pkcs11js.KeyPair> {
    return this.C_GenerateKeyPair(s, mechanism, publicTemplate, privateTemplate);
  }
  C_SignInit(s: Buffer, _mechanism: pkcs11js.Mechanism, key: Buffer): void {
    const n = this.session('C_SignInit', s);
    if (this.operations.has(n)) throw ckrError(pkcs11js.CKR_OPERATION_ACTIVE);
    const o = this.objects.get(num(key));
    if (!o) throw ckrError(pkcs11js.CKR_KEY_HANDLE_INVALID);
    if (o.cls === pkcs11js.CKO_PRIVATE_KEY && !this.loggedIn) throw ckrError(pkcs11js.CKR_USER_NOT_LOGGED_IN);
    if (o.flags?.get(pkcs11js.CKA_SIGN) === false) throw ckrError(pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED);
    this.operations.set(n, 'sign');
  }
  async C_Sign(s: Buffer, data: Buffer): Promise<Buffer> {
    const n = num(s);
    try {
      this.session('C_Sign', s);
      this.computing();
      await this.maybeHang('C_Sign');
      if (this.operations.get(n) !== 'sign') throw ckrError(pkcs11js.CKR_OPERATION_NOT_INITIALIZED);
      return Buffer.concat([Buffer.from('sig:'), data]);
    } finally {
      this.operations.delete(n);
    }
  }
  C_GenerateRandom(s: Buffer, out: Buffer): Buffer {
    this.session('C_GenerateRandom', s);
    this.computing();
    return out.fill(7);
  }
  C_VerifyInit(s: Buffer, _mechanism: pkcs11js.Mechanism, key: Buffer): void {
    const n = this.session('C_VerifyInit', s);
    if (this.operations.has(n)) throw ckrError(pkcs11js.CKR_OPERATION_ACTIVE);
    if (!this.objects.has(num(key))) throw ckrError(pkcs11js.CKR_KEY_HANDLE_INVALID);
    this.operations.set(n, 'verify');
  }
  async C_Verify(s: Buffer, data: Buffer, signature: Buffer): Promise<boolean> {
    const n = num(s);
    try {
      this.session('C_Verify', s);
      if (!signature.equals(Buffer.concat([Buffer.from('sig:'), data]))) throw ckrError(pkcs11js.CKR_SIGNATURE_INVALID);
      return true;
    } finally {
      this.operations.delete(n);
    }
  }

  // The request path's calls (async-pkcs11.ts), each one job, built from the calls above.
  async sign(s: Buffer, mechanism: pkcs11js.Mechanism, key: Buffer, data: Buffer, _max?: number): Promise<Buffer> {
    this.C_SignInit(s, mechanism, key);
    return this.C_Sign(s, data);
  }
  async verify(s: Buffer, mechanism: pkcs11js.Mechanism, key: Buffer, data: Buffer, signature: Buffer): Promise<boolean> {
    this.C_VerifyInit(s, mechanism, key);
    try {
      return await this.C_Verify(s, data, signature);
    } catch (err) {
      if ((err as { code?: number }).code === pkcs11js.CKR_SIGNATURE_INVALID) return false;
      throw err;
    }
  }
  async findObjects(s: Buffer, template: pkcs11js.Template, atMost = Number.POSITIVE_INFINITY): Promise<Buffer[]> {
    this.C_FindObjectsInit(s, template);
    try {
      return this.C_FindObjects(s, Math.min(atMost, 1024));
    } finally {
      this.C_FindObjectsFinal(s);
    }
  }
  async getAttributeValue(s: Buffer, h: Buffer, types: readonly number[]): Promise<Array<Buffer | undefined>> {
    return this.C_GetAttributeValue(s, h, types.map((type) => ({ type }))).map((a) => a.value as Buffer);
  }
  async setAttributeValue(s: Buffer, h: Buffer, template: pkcs11js.Template): Promise<void> {
    this.C_SetAttributeValue(s, h, template);
  }
  async createObject(s: Buffer, template: pkcs11js.Template): Promise<Buffer> {
    return this.C_CreateObject(s, template);
  }
  async destroyObject(s: Buffer, h: Buffer): Promise<void> {
    this.C_DestroyObject(s, h);
  }
  async openSession(slot: Buffer, flags = 0): Promise<Buffer> {
    await this.maybeHang('openSession');
    return this.C_OpenSession(slot, flags);
  }
  async closeSession(s: Buffer): Promise<void> {
    this.C_CloseSession(s);
  }
  async login(slot: Buffer, pin: string): Promise<{ session: Buffer; state: number }> {
    const s = this.C_OpenSession(slot, 0);
    await this.maybeHang('C_Login');
    try {
      try {
        this.C_Login(s, pkcs11js.CKU_USER, pin);
      } catch (err) {
        if ((err as { code?: number }).code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
      }
      return { session: s, state: this.C_GetSessionInfo(s).state };
    } catch (err) {
      if (this.sessions.has(num(s))) this.C_CloseSession(s);
      throw err;
    }
  }
  /** The addon's reinitialize: C_Finalize + C_Initialize and the slot, as one job (waits in hangNext('reinitialize')). */
  async reinitialize(tokenLabel: string, _initArgs?: string): Promise<Buffer> {
    this.calls.push('reinitialize');
    await this.maybeHang('reinitialize');
    try {
      this.C_Finalize();
    } catch (err) {
      // As the addon: not initialized (an earlier attempt failed) is what C_Finalize is for.
      if ((err as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED) throw err;
    }
    this.C_Initialize();
    if (tokenLabel !== FAKE_LABEL) throw ckrError(pkcs11js.CKR_TOKEN_NOT_PRESENT);
    return SLOT;
  }
  async probe(slot: Buffer): Promise<{ state: number; sessionFlags: number; deviceError: number; tokenFlags: number; randomRv: number; label: string }> {
    this.C_GetTokenInfo(slot);
    const s = this.C_OpenSession(slot, 0);
    try {
      const state = this.C_GetSessionInfo(s).state;
      let randomRv = 0;
      try {
        this.C_GenerateRandom(s, Buffer.alloc(8));
      } catch (err) {
        randomRv = (err as { code: number }).code;
      }
      return { state, sessionFlags: 0, deviceError: 0, tokenFlags: 0, randomRv, label: FAKE_LABEL };
    } finally {
      this.C_CloseSession(s);
    }
  }

  /** As a pkcs11js.PKCS11 for the Token's constructor. */
  asModule(): pkcs11js.PKCS11 {
    return this as unknown as pkcs11js.PKCS11;
  }

  /** As the Token's off-the-event-loop calls. */
  asAsync(): AsyncOperations {
    return this as unknown as AsyncOperations;
  }
}
