import type { Operation } from './context.js';
import { aliasesOf } from './key-metadata.js';
import { KMS_PAGING, kmsPageAnswer, pageOf, pageRequest } from './paging.js';
import { required } from './params.js';
import { resolveKey } from './resolve-key.js';

/** KMS 2016-01-20 ListAliasesByKeyId: the aliases of one key (GUID or alias), by alias name, a page at a time. */
export const listAliasesByKeyId: Operation = {
  xmlRoot: 'KMS',
  async handle(params, ctx) {
    const keyIdParam = required(params, 'KeyId');
    const request = pageRequest(params, KMS_PAGING);

    const key = resolveKey(ctx, keyIdParam);
    const page = pageOf(aliasesOf(ctx, [key]), request);
    return kmsPageAnswer(page, 'Aliases', 'Alias', page.items, ctx.requestId);
  },
};
