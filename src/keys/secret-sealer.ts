import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { findObjects } from '../hsm/objects.js';

/**
 * Access-key secrets at rest outside the token (the registry in PostgreSQL) are AES-256-GCM ciphertext: a dump of the
 * database alone lets nobody sign. The key that seals them is an AES-256 key on the HSM (sensitive, never
 * extractable, usable only to encrypt and decrypt), so sealing and opening are C_Encrypt / C_Decrypt on the token;
 * where the token has no AES-GCM, a key-encryption key read from a file (the operator's choice, logged as weaker).
 *
 * Sealed form: one byte naming the sealer (1: the HSM, 2: a key file), the 12-byte IV (fresh per record), then the
 * ciphertext with its 16-byte tag. The additional authenticated data binds the ciphertext to its record: a sealed
 * value copied onto another access key does not open.
 */
export interface SecretSealer {
  readonly kind: 'hsm' | 'file';
  seal(accessKeyId: string, secrets: readonly string[]): Buffer;
  open(accessKeyId: string, sealed: Buffer): string[];
}

const FORMAT = { hsm: 1, file: 2 } as const;
const IV_BYTES = 12;
const TAG_BITS = 128;

export class SealedSecretError extends Error {
  constructor(accessKeyId: string, why: string) {
    super(`the sealed secrets of access key ${accessKeyId} do not open: ${why}`);
    this.name = 'SealedSecretError';
  }
}

const aadOf = (accessKeyId: string): Buffer => Buffer.from(`hsm-gateway/accessKey/${accessKeyId}`, 'utf8');

function parseSecrets(accessKeyId: string, plain: Buffer): string[] {
  const value: unknown = JSON.parse(plain.toString('utf8'));
  if (!Array.isArray(value) || !value.every((s) => typeof s === 'string')) throw new SealedSecretError(accessKeyId, 'not a list of secrets');
  return value;
}

function split(accessKeyId: string, sealed: Buffer, format: number): { iv: Buffer; body: Buffer } {
  if (sealed.length < 1 + IV_BYTES + TAG_BITS / 8) throw new SealedSecretError(accessKeyId, 'too short');
  if (sealed[0] !== format) throw new SealedSecretError(accessKeyId, `sealed by another kind of key (format ${sealed[0]})`);
  return { iv: sealed.subarray(1, 1 + IV_BYTES), body: sealed.subarray(1 + IV_BYTES) };
}

/** The template of the secrets key: AES-256 on the token, private, sensitive, never extractable, encrypt/decrypt only. */
function secretsKeyTemplate(label: string): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
  ];
}

/** Finds the secrets key by label, or (`create`) generates it on the token. `created` tells which. */
export function secretsKey(p11: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string, create: boolean): { key: pkcs11js.Handle; created: boolean } | undefined {
  const search: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_LABEL, value: label },
  ];
  const found = findObjects(p11, session, search, 2);
  if (found.length > 1) throw new Error(`several secret keys are labelled "${label}" on the token: the registry cannot tell which seals its secrets`);
  if (found[0]) return { key: found[0], created: false };
  if (!create) return undefined;
  return { key: p11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, secretsKeyTemplate(label)), created: true };
}

/** Seals with the AES-256 key on the token (CKM_AES_GCM). Calls the token synchronously: admin and load paths only. */
export class HsmSecretSealer implements SecretSealer {
  readonly kind = 'hsm';

  constructor(
    private readonly p11: pkcs11js.PKCS11,
    private readonly session: pkcs11js.Handle,
    private readonly key: pkcs11js.Handle,
  ) {}

  seal(accessKeyId: string, secrets: readonly string[]): Buffer {
    const iv = randomBytes(IV_BYTES);
    const plain = Buffer.from(JSON.stringify(secrets), 'utf8');
    this.p11.C_EncryptInit(this.session, this.mechanism(iv, accessKeyId), this.key);
    const body = this.p11.C_Encrypt(this.session, plain, Buffer.alloc(plain.length + TAG_BITS / 8 + 16));
    return Buffer.concat([Buffer.from([FORMAT.hsm]), iv, body]);
  }

  open(accessKeyId: string, sealed: Buffer): string[] {
    const { iv, body } = split(accessKeyId, sealed, FORMAT.hsm);
    this.p11.C_DecryptInit(this.session, this.mechanism(iv, accessKeyId), this.key);
    let plain: Buffer;
    try {
      plain = this.p11.C_Decrypt(this.session, body, Buffer.alloc(body.length));
    } catch {
      // CKR_ENCRYPTED_DATA_INVALID on a wrong tag: altered, or sealed for another record or with another key.
      throw new SealedSecretError(accessKeyId, 'the token refused the ciphertext (altered, moved from another record, or another secrets key)');
    }
    return parseSecrets(accessKeyId, plain);
  }

  private mechanism(iv: Buffer, accessKeyId: string): pkcs11js.Mechanism {
    const parameter: pkcs11js.AesGCM = { type: pkcs11js.CK_PARAMS_AES_GCM, iv, ivBits: IV_BYTES * 8, aad: aadOf(accessKeyId), tagBits: TAG_BITS };
    return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
  }
}

/** Seals with a 32-byte key-encryption key from a file: for tokens without AES-GCM, weaker (the key is on disk). */
export class FileSecretSealer implements SecretSealer {
  readonly kind = 'file';

  constructor(private readonly kek: Buffer) {
    if (kek.length !== 32) throw new Error(`the key-encryption key must be 32 bytes (AES-256), not ${kek.length}`);
  }

  seal(accessKeyId: string, secrets: readonly string[]): Buffer {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.kek, iv).setAAD(aadOf(accessKeyId));
    const body = Buffer.concat([cipher.update(JSON.stringify(secrets), 'utf8'), cipher.final(), cipher.getAuthTag()]);
    return Buffer.concat([Buffer.from([FORMAT.file]), iv, body]);
  }

  open(accessKeyId: string, sealed: Buffer): string[] {
    const { iv, body } = split(accessKeyId, sealed, FORMAT.file);
    const tag = body.subarray(body.length - TAG_BITS / 8);
    const decipher = createDecipheriv('aes-256-gcm', this.kek, iv).setAAD(aadOf(accessKeyId)).setAuthTag(tag);
    try {
      return parseSecrets(accessKeyId, Buffer.concat([decipher.update(body.subarray(0, body.length - TAG_BITS / 8)), decipher.final()]));
    } catch (err) {
      if (err instanceof SealedSecretError) throw err;
      throw new SealedSecretError(accessKeyId, 'altered, moved from another record, or sealed with another key');
    }
  }
}
