import type { Operation } from './context.js';
import { keyVersionSummary } from './key-metadata.js';
import { KMS_PAGING, kmsPageAnswer, pageOf, pageRequest } from './paging.js';
import { required } from './params.js';
import { resolveKey } from './resolve-key.js';

/** KMS 2016-01-20 ListKeyVersions: a key's versions in registry order (oldest first), a page at a time. */
export const listKeyVersions: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const keyIdParam = required(params, 'KeyId');
    const request = pageRequest(params, KMS_PAGING);

    const key = resolveKey(ctx, keyIdParam);
    const page = pageOf(key.versions, request);
    return kmsPageAnswer(page, 'KeyVersions', 'KeyVersion', page.items.map((version) => keyVersionSummary(key, version)), ctx.requestId);
  },
};
