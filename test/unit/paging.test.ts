import { describe, expect, it } from 'vitest';
import { ApiError } from '../../src/http/error-catalog.js';
import { CAS_PAGING, KMS_PAGING, pageOf, pageRequest } from '../../src/operations/paging.js';

/** The InvalidParameter a call throws (the test fails when it does not throw one). */
function invalidParameter(call: () => unknown): ApiError {
  try {
    call();
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe('InvalidParameter');
    expect((err as ApiError).status).toBe(400);
    return err as ApiError;
  }
  throw new Error('no error was thrown');
}

const TEN = Array.from({ length: 10 }, (_, i) => i + 1);

describe('pageRequest', () => {
  it('when no paging parameter is given, then KMS pages are PageNumber 1 of PageSize 10', () => {
    expect(pageRequest({}, KMS_PAGING)).toEqual({ pageNumber: 1, pageSize: 10 });
  });

  it('when no paging parameter is given, then CAS pages are CurrentPage 1 of ShowSize 50', () => {
    expect(pageRequest({}, CAS_PAGING)).toEqual({ pageNumber: 1, pageSize: 50 });
  });

  it('when the parameters are empty strings, then the defaults apply', () => {
    expect(pageRequest({ PageNumber: '', PageSize: '' }, KMS_PAGING)).toEqual({ pageNumber: 1, pageSize: 10 });
  });

  it('when PageNumber and PageSize are valid, then they are taken as numbers', () => {
    expect(pageRequest({ PageNumber: '3', PageSize: '25' }, KMS_PAGING)).toEqual({ pageNumber: 3, pageSize: 25 });
    expect(pageRequest({ CurrentPage: '2', ShowSize: '7' }, CAS_PAGING)).toEqual({ pageNumber: 2, pageSize: 7 });
  });

  it('when PageSize is at its bounds 1 and 100, then it is accepted', () => {
    expect(pageRequest({ PageSize: '1' }, KMS_PAGING).pageSize).toBe(1);
    expect(pageRequest({ PageSize: '100' }, KMS_PAGING).pageSize).toBe(100);
    expect(pageRequest({ ShowSize: '100' }, CAS_PAGING).pageSize).toBe(100);
  });

  it('when PageNumber is very large, then it is accepted (the page is simply past the end)', () => {
    expect(pageRequest({ PageNumber: '999999999999999' }, KMS_PAGING).pageNumber).toBe(999_999_999_999_999);
  });

  for (const value of ['0', '101', '-1', '1.5', 'ten', ' 5', '5 ', '+5', '1e2', '0x10', '١٠']) {
    it(`when PageSize is "${value}", then it is InvalidParameter naming PageSize`, () => {
      const err = invalidParameter(() => pageRequest({ PageSize: value }, KMS_PAGING));
      expect(err.message).toContain('"PageSize"');
      expect(err.message).toContain('1 to 100');
    });
  }

  for (const value of ['0', '-1', '2.0', 'first', '9999999999999999']) {
    it(`when PageNumber is "${value}", then it is InvalidParameter naming PageNumber`, () => {
      const err = invalidParameter(() => pageRequest({ PageNumber: value }, KMS_PAGING));
      expect(err.message).toContain('"PageNumber"');
    });
  }

  it('when CAS ShowSize is 101 or CurrentPage is 0, then the CAS parameter is named', () => {
    expect(invalidParameter(() => pageRequest({ ShowSize: '101' }, CAS_PAGING)).message).toContain('"ShowSize"');
    expect(invalidParameter(() => pageRequest({ CurrentPage: '0' }, CAS_PAGING)).message).toContain('"CurrentPage"');
  });

  it('when the KMS names are sent to a CAS rule, then they are ignored and the CAS defaults apply', () => {
    expect(pageRequest({ PageNumber: '0', PageSize: '500' }, CAS_PAGING)).toEqual({ pageNumber: 1, pageSize: 50 });
  });
});

describe('pageOf', () => {
  it('when the first page is asked, then it holds the first PageSize items and the total', () => {
    expect(pageOf(TEN, { pageNumber: 1, pageSize: 3 })).toEqual({ items: [1, 2, 3], totalCount: 10, pageNumber: 1, pageSize: 3 });
  });

  it('when a middle page is asked, then it holds the items after the earlier pages', () => {
    expect(pageOf(TEN, { pageNumber: 2, pageSize: 3 }).items).toEqual([4, 5, 6]);
  });

  it('when the last page is partial, then it holds only the remaining items', () => {
    expect(pageOf(TEN, { pageNumber: 4, pageSize: 3 }).items).toEqual([10]);
  });

  it('when a page past the end is asked, then it is empty with the right TotalCount', () => {
    expect(pageOf(TEN, { pageNumber: 5, pageSize: 3 })).toEqual({ items: [], totalCount: 10, pageNumber: 5, pageSize: 3 });
    expect(pageOf(TEN, { pageNumber: 999_999_999_999_999, pageSize: 100 })).toMatchObject({ items: [], totalCount: 10 });
  });

  it('when the list is empty, then every page is empty with TotalCount 0', () => {
    expect(pageOf([], { pageNumber: 1, pageSize: 10 })).toEqual({ items: [], totalCount: 0, pageNumber: 1, pageSize: 10 });
  });

  it('when every page of a list is walked, then each item appears exactly once, in order', () => {
    for (const pageSize of [1, 2, 3, 4, 10, 100]) {
      const seen: number[] = [];
      for (let pageNumber = 1; ; pageNumber++) {
        const page = pageOf(TEN, { pageNumber, pageSize });
        if (page.items.length === 0) break;
        seen.push(...page.items);
      }
      expect(seen).toEqual(TEN);
    }
  });

  it('when a page is taken, then the input list is not changed', () => {
    const list = [3, 1, 2];
    pageOf(list, { pageNumber: 1, pageSize: 2 });
    expect(list).toEqual([3, 1, 2]);
  });
});
