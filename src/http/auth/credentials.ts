import type { Policy } from '../../keys/policy.js';

/**
 * One access key as the gateway knows it: its secrets are already resolved from their references. Two secrets can
 * be live at once, so a secret is rotated without a failed request.
 */
export interface AccessKey {
  accessKeyId: string;
  secrets: readonly string[];
  /** What this access key may do (RAM-style); absent: everything on its account's keys. */
  policy?: Policy;
  account: string;
  enabled: boolean;
}

export class CredentialStore {
  private readonly byId: Map<string, AccessKey>;

  constructor(keys: readonly AccessKey[]) {
    this.byId = new Map(keys.map((k) => [k.accessKeyId, k]));
  }

  find(accessKeyId: string): AccessKey | undefined {
    return this.byId.get(accessKeyId);
  }

  /** The accounts that hold at least one access key. */
  accounts(): Set<string> {
    return new Set([...this.byId.values()].map((k) => k.account));
  }
}
