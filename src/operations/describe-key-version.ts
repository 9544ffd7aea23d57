import type { Operation } from './context.js';
import { keyVersionSummary } from './key-metadata.js';
import { required } from './params.js';
import { resolveKey, resolveVersion } from './resolve-key.js';

/** KMS 2016-01-20 DescribeKeyVersion: one version of a key (GUID or alias), whatever the key's state. */
export const describeKeyVersion: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const keyIdParam = required(params, 'KeyId');
    const keyVersionId = required(params, 'KeyVersionId');

    const key = resolveKey(ctx, keyIdParam);
    const version = resolveVersion(ctx, key, keyVersionId);
    return { KeyVersion: keyVersionSummary(key, version), RequestId: ctx.requestId };
  },
};
