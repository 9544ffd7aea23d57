import pkcs11js from 'pkcs11js';
import { signingKeyPairTemplates, TEMPLATE_FALLBACKS, type KeyPairParams, type TemplateFallback } from './admin.js';
import { ckrName, ckrOf, classifyCkr } from './ckr.js';
import { HsmOperationError } from './errors.js';
import { describeProtection, protectionFlaws, readKeyProtection, type KeyProtection } from './key-protection.js';
import { destroyQuietly, findObjects } from './objects.js';

/**
 * Generating a signing key pair on a token: the strict template first; after a refusal, only the fallback
 * documented for that module (admin.ts TEMPLATE_FALLBACKS); whatever was made is read back and destroyed again
 * unless it is sensitive and never extractable. A failed generation leaves no object with the key's label behind.
 */

type Handle = pkcs11js.Handle;

interface GeneratedKeyPair {
  privateKey: Handle;
  publicKey: Handle;
  /** 'strict', or the name of the fallback that made it. */
  template: string;
  protection: KeyProtection;
}

/** The module's library name (C_GetInfo manufacturerID), which picks the fallbacks that apply. */
export function libraryOf(p11: pkcs11js.PKCS11): string {
  try {
    return p11.C_GetInfo().manufacturerID.trim();
  } catch {
    return '';
  }
}

/** The fallback this module documents for this refusal of the strict template, if any. */
export function fallbackFor(library: string, ckr: number | undefined): TemplateFallback | undefined {
  if (ckr === undefined) return undefined;
  return TEMPLATE_FALLBACKS.find((f) => f.library.test(library) && f.refusedWith.includes(ckr));
}

/** Destroys every token key object labelled `label` with CKA_ID `id` (what a failed or refused generation left). */
function removeKeyObjects(p11: pkcs11js.PKCS11, session: Handle, label: string, id: Buffer): void {
  for (const cls of [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY]) {
    const template = [
      { type: pkcs11js.CKA_CLASS, value: cls },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_ID, value: id },
    ];
    let handles: Handle[] = [];
    try {
      handles = findObjects(p11, session, template);
    } catch {
      // The search itself failed (the token is in trouble): nothing more can be done here.
    }
    destroyQuietly(p11, session, handles); // the error that matters is the generation's
  }
}

/** The pause before generating again after a device-class answer (a module busy for a moment). */
const AGAIN_AFTER_MS = 25;

export async function generateSigningKeyPair(p11: pkcs11js.PKCS11, session: Handle, params: KeyPairParams, label: string, id: Buffer): Promise<GeneratedKeyPair> {
  const library = libraryOf(p11);
  const once = async (omit: readonly number[]): Promise<pkcs11js.KeyPair> => {
    const { mechanism, publicTemplate, privateTemplate } = signingKeyPairTemplates(params, label, id, omit);
    try {
      return await p11.C_GenerateKeyPairAsync(session, { mechanism }, publicTemplate, privateTemplate);
    } catch (err) {
      removeKeyObjects(p11, session, label, id);
      throw err;
    }
  };
  // A device-class answer that this module does not document as a template refusal is tried once more: it can be
  // a moment's trouble, not a refusal (SoftHSMv2 2.6.1 answers CKR_GENERAL_ERROR when a search in another thread of
  // the process reads the new object's file while it is written: "Could not initialize the attribute"; a throttled
  // CloudHSM answers CKR_DEVICE_ERROR). Answered twice, it stands (the caller's probe then tells refusal from outage).
  const attempt = async (omit: readonly number[] = []): Promise<pkcs11js.KeyPair> => {
    try {
      return await once(omit);
    } catch (err) {
      const ckr = ckrOf(err);
      if (ckr === undefined || classifyCkr(ckr) !== 'device' || fallbackFor(library, ckr) !== undefined) throw err;
      await new Promise((resolve) => setTimeout(resolve, AGAIN_AFTER_MS));
      return once(omit);
    }
  };
  let pair: pkcs11js.KeyPair;
  let template = 'strict';
  try {
    pair = await attempt();
  } catch (strictError) {
    const fallback = fallbackFor(library, ckrOf(strictError));
    if (!fallback) throw strictError;
    try {
      pair = await attempt(fallback.omit);
    } catch (fallbackError) {
      const strictCkr = ckrOf(strictError);
      throw new HsmOperationError(
        `the strict key template was refused (${strictCkr === undefined ? (strictError as Error).message : ckrName(strictCkr)}), and so was the ${fallback.name} fallback`,
        ckrOf(fallbackError),
        { cause: fallbackError },
      );
    }
    template = fallback.name;
  }
  const protection = readKeyProtection(p11, session, pair.privateKey, pair.publicKey);
  const { always, imported } = protectionFlaws(protection);
  if (always.length + imported.length > 0) {
    destroyQuietly(p11, session, [pair.privateKey, pair.publicKey]); // what is left is found again by label below
    removeKeyObjects(p11, session, label, id);
    throw new HsmOperationError(`the token made a key that is not safe to keep, so it was destroyed again: ${[...always, ...imported].join('; ')} (${describeProtection(protection)})`);
  }
  return { privateKey: pair.privateKey, publicKey: pair.publicKey, template, protection };
}
