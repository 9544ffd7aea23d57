import { describe, expect, it } from 'vitest';
import { toApiError } from '../../src/http/app.js';
import { ApiError, ERROR_CATALOG, invalid, missing, type ErrorCode } from '../../src/http/error-catalog.js';
import { HsmObjectNotFoundError, HsmOperationError, HsmUnavailableError } from '../../src/hsm/errors.js';

const CODES = Object.keys(ERROR_CATALOG) as ErrorCode[];

describe('ERROR_CATALOG', () => {
  it.each(CODES)('when %s is looked up, then its status is in 400..599 and its message is not empty', (code) => {
    const { status, message } = ERROR_CATALOG[code];
    expect(status).toBeGreaterThanOrEqual(400);
    expect(status).toBeLessThanOrEqual(599);
    expect(message.trim()).not.toBe('');
  });

  it('when the 5xx codes are listed, then they are only InternalFailure and ServiceUnavailableTemporary', () => {
    expect(CODES.filter((c) => ERROR_CATALOG[c].status >= 500).sort()).toEqual(['InternalFailure', 'ServiceUnavailableTemporary']);
  });

  it.each([
    ['MissingParameter', 400],
    ['InvalidParameter', 400],
    ['IncompleteSignature', 400],
    ['IllegalTimestamp', 400],
    ['SignatureNonceUsed', 400],
    ['SignatureDoesNotMatch', 403],
    ['Forbidden.NoPermission', 403],
    ['Forbidden.AccessKey', 403],
    ['InvalidAccessKeyId.NotFound', 404],
    ['Forbidden.KeyNotFound', 404],
    ['Forbidden.AliasNotFound', 404],
    ['Certificate.NotFound', 404],
    ['Rejected.Disabled', 409],
    ['Rejected.PendingDeletion', 409],
    ['Rejected.Throttling', 429],
    ['Throttling.User', 429],
    ['InternalFailure', 500],
    ['ServiceUnavailableTemporary', 503],
  ] as const)('when %s is looked up, then it exists with status %i', (code, status) => {
    expect(Object.hasOwn(ERROR_CATALOG, code)).toBe(true);
    expect(ERROR_CATALOG[code].status).toBe(status);
  });
});

describe('ApiError', () => {
  it.each(CODES)('when %s is raised without a detail, then it carries the catalog status and message', (code) => {
    const err = new ApiError(code);
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('ApiError');
    expect(err.code).toBe(code);
    expect(err.status).toBe(ERROR_CATALOG[code].status);
    expect(err.message).toBe(ERROR_CATALOG[code].message);
    expect(err.headers).toEqual({});
  });

  it('when a detail is given, then it replaces the catalog message but not the status', () => {
    const err = new ApiError('Forbidden.KeyNotFound', 'no key k');
    expect(err.message).toBe('no key k');
    expect(err.status).toBe(404);
  });

  it('when headers and a cause are given, then they are kept', () => {
    const cause = new Error('below');
    const err = new ApiError('Throttling.User', undefined, { cause, headers: { 'x-acs-retry-after': '1' } });
    expect(err.cause).toBe(cause);
    expect(err.headers).toEqual({ 'x-acs-retry-after': '1' });
  });

  it('when missing() and invalid() build errors, then they name the parameter with the right code', () => {
    expect(missing('KeyId')).toMatchObject({ code: 'MissingParameter', status: 400 });
    expect(missing('KeyId').message).toContain('"KeyId"');
    expect(invalid('Digest', 'not base64.')).toMatchObject({ code: 'InvalidParameter', status: 400 });
    expect(invalid('Digest', 'not base64.').message).toContain('"Digest"');
  });
});

describe('toApiError', () => {
  it('when given an ApiError, then it returns that same error', () => {
    const err = new ApiError('Rejected.Disabled');
    expect(toApiError(err)).toBe(err);
  });

  it('when given an HsmUnavailableError, then it becomes ServiceUnavailableTemporary without the HSM detail', () => {
    const err = toApiError(new HsmUnavailableError('token slot 3 is gone'));
    expect(err.code).toBe('ServiceUnavailableTemporary');
    expect(err.status).toBe(503);
    expect(err.message).not.toContain('slot 3');
  });

  it('when given an HsmObjectNotFoundError, then it becomes ServiceUnavailableTemporary', () => {
    expect(toApiError(new HsmObjectNotFoundError('label k1 missing')).code).toBe('ServiceUnavailableTemporary');
  });

  it('when given a plain Error, then it becomes InternalFailure whose message does not repeat the original', () => {
    const err = toApiError(new Error('secret internals at /opt/hsm: PIN 1234'));
    expect(err.code).toBe('InternalFailure');
    expect(err.status).toBe(500);
    expect(err.message).not.toContain('secret internals');
    expect(err.message).not.toContain('1234');
  });

  it('when given another HSM error (an operation refusal), then it becomes InternalFailure', () => {
    expect(toApiError(new HsmOperationError('C_Sign failed', 0x00000021)).code).toBe('InternalFailure');
  });

  it("when given the body parser's {type: 'entity.too.large'}, then it becomes RequestEntityTooLarge", () => {
    const err = toApiError({ type: 'entity.too.large', status: 413 });
    expect(err.code).toBe('RequestEntityTooLarge');
    expect(err.status).toBe(413);
  });

  it('when given another 4xx body parser error, then it becomes InvalidParameter', () => {
    expect(toApiError({ type: 'request.aborted', status: 400 }).code).toBe('InvalidParameter');
  });

  it.each([[null], [undefined], ['a string'], [42]])('when given the non-error %j, then it becomes InternalFailure', (thrown) => {
    expect(toApiError(thrown).code).toBe('InternalFailure');
  });
});
