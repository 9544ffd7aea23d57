import type { Operation } from './context.js';
import { keyMetadata } from './key-metadata.js';
import { required } from './params.js';
import { resolveKey } from './resolve-key.js';

/** KMS 2016-01-20 DescribeKey: a key's metadata, by GUID or alias, whatever its state. */
export const describeKey: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const key = resolveKey(ctx, required(params, 'KeyId'));
    return { KeyMetadata: keyMetadata(ctx, key), RequestId: ctx.requestId };
  },
};
