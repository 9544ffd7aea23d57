import type { Operation } from './context.js';
import { keyArn, visibleKeys } from './key-metadata.js';
import { KMS_PAGING, kmsPageAnswer, pageOf, pageRequest } from './paging.js';

/** KMS 2016-01-20 ListKeys: the keys this caller may use, by keyId, a page at a time. */
export const listKeys: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const page = pageOf(visibleKeys(ctx), pageRequest(params, KMS_PAGING));
    return kmsPageAnswer(page, 'Keys', 'Key', page.items.map((key) => ({ KeyId: key.keyId, KeyArn: keyArn(ctx, key) })), ctx.requestId);
  },
};
