import type { Operation } from './context.js';
import { aliasesOf, visibleKeys } from './key-metadata.js';
import { KMS_PAGING, kmsPageAnswer, pageOf, pageRequest } from './paging.js';

/** KMS 2016-01-20 ListAliases: the aliases of the keys this caller may use, by alias name, a page at a time. */
export const listAliases: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const page = pageOf(aliasesOf(ctx, visibleKeys(ctx)), pageRequest(params, KMS_PAGING));
    return kmsPageAnswer(page, 'Aliases', 'Alias', page.items, ctx.requestId);
  },
};
