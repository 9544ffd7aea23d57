import pkcs11js from 'pkcs11js';
import { signingKeyPairTemplates, type KeyPairParams } from '../hsm/admin.js';
import { protectionFlaws, readKeyProtection } from '../hsm/key-protection.js';
import { loginUser } from '../hsm/module.js';

/**
 * Synchronous token work of the demo's bootstrap (first start, before the gateway serves): a logged-in session, key
 * pairs, and signatures for the demo's certificates. The gateway's own work goes through Token.
 */
export function openUserSession(p11: pkcs11js.PKCS11, slot: pkcs11js.Handle, pin: string): pkcs11js.Handle {
  const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  loginUser(p11, session, pin);
  return session;
}

/**
 * Generates a key pair ON the token. The private key is sensitive and never extractable: the gateway
 * and everyone else can only ask the token to sign with it.
 */
export function generateSigningKeyPair(
  p11: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  params: KeyPairParams,
  label: string,
  id: Buffer,
): pkcs11js.KeyPair {
  const { mechanism, publicTemplate, privateTemplate } = signingKeyPairTemplates(params, label, id);
  const pair = p11.C_GenerateKeyPair(session, { mechanism }, publicTemplate, privateTemplate);
  // The demo's modules (SoftHSMv2, the SM2 token) take the strict template; what they made is checked all the same.
  const { always, imported } = protectionFlaws(readKeyProtection(p11, session, pair.privateKey, pair.publicKey));
  if (always.length + imported.length > 0) {
    p11.C_DestroyObject(session, pair.privateKey);
    p11.C_DestroyObject(session, pair.publicKey);
    throw new Error(`the token made a demo key that is not safe to keep: ${[...always, ...imported].join('; ')}`);
  }
  return pair;
}

/** A synchronous sign for admin work (issuing certificates at bootstrap); the request path uses Token.sign. */
export function signNow(p11: pkcs11js.PKCS11, session: pkcs11js.Handle, key: pkcs11js.Handle, mechanism: pkcs11js.Mechanism, data: Buffer, maxBytes: number): Buffer {
  p11.C_SignInit(session, mechanism, key);
  return p11.C_Sign(session, data, Buffer.alloc(maxBytes));
}
