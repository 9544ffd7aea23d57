import pkcs11js from 'pkcs11js';
import { ckrOf } from './ckr.js';
import { findSlotByLabel, initializeOptions, loginUser, tokenLabelOf } from './module.js';
import { findObjects } from './objects.js';
import type { AsyncOperations } from './async-pkcs11.js';

type Handle = pkcs11js.Handle;

/**
 * The request path's calls through pkcs11js itself: C_SignInit / C_VerifyInit / searches on the main thread, C_Sign /
 * C_Verify on the libuv pool. Only for modules that give every C_GetFunctionList caller an instance of its own
 * (p11-kit's client opens a new RPC connection per call, measured), where the async addon cannot share pkcs11js's
 * sessions and login; every other module runs these calls off the event loop (async-pkcs11.ts).
 */
export class MainThreadOperations implements AsyncOperations {
  constructor(private readonly p11: pkcs11js.PKCS11) {}

  async sign(session: Handle, mechanism: pkcs11js.Mechanism, key: Handle, data: Buffer, maxSignatureBytes = 1024): Promise<Buffer> {
    this.p11.C_SignInit(session, mechanism, key);
    return this.p11.C_SignAsync(session, data, Buffer.alloc(maxSignatureBytes));
  }

  async verify(session: Handle, mechanism: pkcs11js.Mechanism, key: Handle, data: Buffer, signature: Buffer): Promise<boolean> {
    this.p11.C_VerifyInit(session, mechanism, key);
    try {
      return await this.p11.C_VerifyAsync(session, data, signature);
    } catch (err) {
      // A verify that fails on the signature itself has ended the operation; the session stays clean.
      if (ckrOf(err) === pkcs11js.CKR_SIGNATURE_INVALID || ckrOf(err) === pkcs11js.CKR_SIGNATURE_LEN_RANGE) return false;
      throw err;
    }
  }

  async findObjects(session: Handle, template: readonly pkcs11js.Attribute[], atMost?: number): Promise<Handle[]> {
    return findObjects(this.p11, session, [...template], atMost);
  }

  async getAttributeValue(session: Handle, object: Handle, types: readonly number[]): Promise<Array<Buffer | undefined>> {
    return this.p11.C_GetAttributeValue(session, object, types.map((type) => ({ type }))).map((a) => a.value as Buffer | undefined);
  }

  async setAttributeValue(session: Handle, object: Handle, template: readonly pkcs11js.Attribute[]): Promise<void> {
    this.p11.C_SetAttributeValue(session, object, [...template]);
  }

  async createObject(session: Handle, template: readonly pkcs11js.Attribute[]): Promise<Handle> {
    return this.p11.C_CreateObject(session, [...template]);
  }

  async destroyObject(session: Handle, object: Handle): Promise<void> {
    this.p11.C_DestroyObject(session, object);
  }

  async openSession(slot: Handle, flags = 0): Promise<Handle> {
    return this.p11.C_OpenSession(slot, flags | pkcs11js.CKF_SERIAL_SESSION);
  }

  async closeSession(session: Handle): Promise<void> {
    this.p11.C_CloseSession(session);
  }

  async login(slot: Handle, pin: string): Promise<{ session: Handle; state: number }> {
    const session = this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    try {
      loginUser(this.p11, session, pin);
      return { session, state: this.p11.C_GetSessionInfo(session).state };
    } catch (err) {
      try {
        this.p11.C_CloseSession(session);
      } catch {
        // The session went with the failure; the login's error is the one to report.
      }
      throw err;
    }
  }

  async reinitialize(tokenLabel: string, initArgs?: string): Promise<Handle> {
    try {
      this.p11.C_Finalize();
    } catch (err) {
      if (ckrOf(err) !== pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED) throw err;
    }
    this.p11.C_Initialize(initializeOptions(initArgs));
    const slot = findSlotByLabel(this.p11, tokenLabel);
    if (slot === undefined) throw Object.assign(new Error(`C_GetTokenInfo: CKR_TOKEN_NOT_PRESENT (no token labelled "${tokenLabel}")`), { code: pkcs11js.CKR_TOKEN_NOT_PRESENT });
    return slot;
  }

  async probe(slot: Handle): Promise<{ state: number; sessionFlags: number; deviceError: number; tokenFlags: number; randomRv: number; label: string }> {
    const info = this.p11.C_GetTokenInfo(slot);
    const session = this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    try {
      const s = this.p11.C_GetSessionInfo(session);
      let randomRv = 0;
      try {
        this.p11.C_GenerateRandom(session, Buffer.alloc(8));
      } catch (err) {
        randomRv = ckrOf(err) ?? pkcs11js.CKR_GENERAL_ERROR;
      }
      return { state: s.state, sessionFlags: s.flags, deviceError: s.deviceError, tokenFlags: info.flags, randomRv, label: tokenLabelOf(info.label) };
    } finally {
      this.p11.C_CloseSession(session);
    }
  }
}
