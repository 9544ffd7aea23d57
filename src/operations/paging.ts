import { invalid } from '../http/error-catalog.js';

/** How an API names and bounds its paging parameters. */
interface PagingRule {
  numberParam: string;
  sizeParam: string;
  defaultSize: number;
  maxSize: number;
}

/** KMS 2016-01-20 lists: PageNumber (default 1), PageSize (default 10, 1..100). */
export const KMS_PAGING: PagingRule = { numberParam: 'PageNumber', sizeParam: 'PageSize', defaultSize: 10, maxSize: 100 };

/** CAS 2020-04-07 ListCert: CurrentPage (default 1), ShowSize (default 50, 1..100). */
export const CAS_PAGING: PagingRule = { numberParam: 'CurrentPage', sizeParam: 'ShowSize', defaultSize: 50, maxSize: 100 };

interface PageRequest {
  pageNumber: number;
  pageSize: number;
}

interface Page<T> extends PageRequest {
  items: T[];
  totalCount: number;
}

/** A positive decimal integer (no sign, no spaces, no fraction), or the fallback when absent or empty. */
function positiveInteger(params: Record<string, string>, name: string, fallback: number, max: number): number {
  const v = params[name];
  if (v === undefined || v === '') return fallback;
  const n = /^\d{1,15}$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= max)) {
    throw invalid(name, max === Number.MAX_SAFE_INTEGER ? 'the value must be an integer of at least 1.' : `the value must be an integer from 1 to ${max}.`);
  }
  return n;
}

/** The page a request asks for, with the API's defaults; a value out of range is InvalidParameter naming it. */
export function pageRequest(params: Record<string, string>, rule: PagingRule): PageRequest {
  return {
    pageNumber: positiveInteger(params, rule.numberParam, 1, Number.MAX_SAFE_INTEGER),
    pageSize: positiveInteger(params, rule.sizeParam, rule.defaultSize, rule.maxSize),
  };
}

/** One page of an already ordered list; a page past the end is empty but still reports the total. */
export function pageOf<T>(all: readonly T[], request: PageRequest): Page<T> {
  const start = (request.pageNumber - 1) * request.pageSize;
  return { ...request, items: all.slice(start, start + request.pageSize), totalCount: all.length };
}

/** A KMS list answer: `{ <List>: { <Item>: [...] }, TotalCount, PageNumber, PageSize, RequestId }`. */
export function kmsPageAnswer<T>(page: Page<unknown>, list: string, item: string, items: T[], requestId: string): Record<string, unknown> {
  return { [list]: { [item]: items }, TotalCount: page.totalCount, PageNumber: page.pageNumber, PageSize: page.pageSize, RequestId: requestId };
}
