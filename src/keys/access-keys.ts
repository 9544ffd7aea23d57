import { randomBytes } from 'node:crypto';
import { LifecycleError } from './errors.js';
import type { PolicyDocument } from './policy.js';
import type { AccessKeyRecord, RegistrySource } from './registry-source.js';

/**
 * The access keys kept on the token (made by the admin CLI; the config file's are the operator's): create, rotate the
 * secret, enable and disable. Every change runs inside RegistrySource.change, like the key lifecycle's.
 */
export class AccessKeys {
  constructor(
    private readonly source: RegistrySource,
    private readonly now: () => Date = () => new Date(),
  ) {}

  async create(input: { account: string; policies?: PolicyDocument[]; description?: string }): Promise<{ accessKey: AccessKeyRecord; secret: string }> {
    const secret = randomSecret(30);
    const accessKey = await this.source.change((_snapshot, writer) => {
      const record = {
        accessKeyId: `LTAI${randomSecret(20)}`,
        account: input.account,
        secrets: [secret],
        enabled: true,
        ...(input.policies ? { policies: input.policies } : {}),
        createdAt: this.now().toISOString(),
        ...(input.description ? { description: input.description } : {}),
      } as AccessKeyRecord;
      writer.putAccessKey(record);
      return record;
    });
    return { accessKey, secret };
  }

  /** A new secret becomes the primary; the previous one stays live until the next rotation (clients move over). */
  async rotateSecret(accessKeyId: string): Promise<{ accessKey: AccessKeyRecord; secret: string }> {
    const secret = randomSecret(30);
    const accessKey = await this.change(accessKeyId, (record) => {
      record.secrets = [secret, record.secrets[0]!];
    });
    return { accessKey, secret };
  }

  setEnabled(accessKeyId: string, enabled: boolean): Promise<AccessKeyRecord> {
    return this.change(accessKeyId, (record) => {
      record.enabled = enabled;
    });
  }

  private change(accessKeyId: string, edit: (record: AccessKeyRecord) => void): Promise<AccessKeyRecord> {
    return this.source.change((snapshot, writer) => {
      const found = snapshot.accessKeys.find((k) => k.accessKeyId === accessKeyId);
      if (!found) throw new LifecycleError('access-key-not-found', `access key ${accessKeyId} is not on the token`);
      const record = structuredClone(found);
      edit(record);
      writer.putAccessKey(record);
      return record;
    });
  }
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** Letters and digits, uniformly (rejection sampling: 256 is not a multiple of 62). */
export function randomSecret(length: number): string {
  let out = '';
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      if (byte < 248 && out.length < length) out += ALPHABET[byte % 62];
    }
  }
  return out;
}
