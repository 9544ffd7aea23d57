/** One access key as the gateway knows it: the secret is already resolved from its reference. */
export interface AccessKey {
  accessKeyId: string;
  secret: string;
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
}
