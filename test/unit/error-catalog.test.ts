import type { AddressInfo } from 'node:net';
import express from 'express';
import { XMLParser } from 'fast-xml-parser';
import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import { toApiError } from '../../src/http/failure.js';
import { ApiError, ERROR_CATALOG, errorAnchor, invalid, missing, signatureDoesNotMatch, type ErrorCode } from '../../src/http/error-catalog.js';
import { sendError, type Format } from '../../src/http/render.js';
import { HsmBusyError, HsmError, HsmObjectNotFoundError, HsmOperationError, HsmUnavailableError } from '../../src/hsm/errors.js';
import { LifecycleError, RegistryError, type LifecycleErrorKind } from '../../src/keys/errors.js';

const CODES = Object.keys(ERROR_CATALOG) as ErrorCode[];

/** What gives away internals: a PKCS#11 return value, a stack frame, a file path. */
const LEAK = /CKR_|0x[0-9a-f]{2,}|\n\s+at |\/(?:opt|usr|home|work|tmp)\//i;

describe('ERROR_CATALOG', () => {
  it('when every code is read, then it has an HTTP error status, a one-line message without internals, what it means and what to do', () => {
    expect(CODES.length).toBeGreaterThan(0);
    for (const code of CODES) {
      const { status, message, meaning, action } = ERROR_CATALOG[code];
      expect(Number.isInteger(status) && status >= 400 && status <= 599, `${code}: status ${status}`).toBe(true);
      for (const text of [message, meaning, action]) {
        expect(text.trim(), code).not.toBe('');
        expect(text, code).not.toMatch(/\n/);
        expect(text, code).not.toMatch(LEAK);
      }
    }
  });

  it('when the anchors of the codes are made, then they are distinct (each Recommend link finds its own entry)', () => {
    expect(new Set(CODES.map(errorAnchor)).size).toBe(CODES.length);
    expect(errorAnchor('InvalidTimeStamp.Expired')).toBe('invalidtimestampexpired');
  });

  it("when a code's message is the cloud's, then it is the cloud's text word for word (API.md), and a detail cannot replace it", () => {
    const cloud: Array<[ErrorCode, string]> = [
      ['IllegalTimestamp', 'The input parameter "Timestamp" that is mandatory for processing this request is not supplied.'],
      ['InvalidTimeStamp.Expired', 'Specified time stamp or date value is expired.'],
      ['SignatureNonceUsed', 'Specified signature nonce was used already.'],
      ['SignatureDoesNotMatch', 'Specified signature is not matched with our calculation.'],
      ['InvalidAccessKeyId.NotFound', 'Specified access key is not found.'],
      ['Certificate.NotFound', 'The specified certificate is not found.'],
    ];
    expect(CODES.filter((c) => ERROR_CATALOG[c].cloud === 'verbatim').sort()).toEqual(cloud.map(([c]) => c).sort());
    for (const [code, text] of cloud) {
      expect(ERROR_CATALOG[code].message, code).toBe(text);
      expect(new ApiError(code, 'a detail of ours').message, code).toBe(text);
    }
  });

  it('when a signature does not match, then the message is the cloud\'s with the string to sign after the one colon (what the Python core SDK splits)', () => {
    const sts = 'GET&%2F&AccessKeyId%3Dtestid%26Timestamp%3D2026-01-01T00%253A00%253A00Z';
    const err = signatureDoesNotMatch(sts);
    expect(err).toMatchObject({ code: 'SignatureDoesNotMatch', status: 400 });
    expect(err.message).toBe(`Specified signature is not matched with our calculation. server string to sign is:${sts}`);
    expect(err.message.split(':')[1]).toBe(sts);
  });

  it('when the 5xx codes are listed, then they are only InternalFailure and ServiceUnavailableTemporary (bad input is never a 5xx)', () => {
    expect(CODES.filter((c) => ERROR_CATALOG[c].status >= 500).sort()).toEqual(['InternalFailure', 'ServiceUnavailableTemporary']);
  });

  it("when the codes the official clients know are looked up, then each has the status they expect (docs' error table)", () => {
    // The wire contract: the SDKs and the callers' retry logic key on these (code, status) pairs. 429s are retried
    // with x-acs-retry-after, 503 is retryable, 5xx never stands for bad input.
    const contract: Array<[ErrorCode, number]> = [
      ['MissingParameter', 400],
      ['InvalidParameter', 400],
      ['IncompleteSignature', 400],
      ['IllegalTimestamp', 400],
      ['InvalidTimeStamp.Expired', 400],
      ['SignatureNonceUsed', 400],
      ['SignatureDoesNotMatch', 400],
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
    ];
    const actual = contract.map(([code]) => [code, Object.hasOwn(ERROR_CATALOG, code) ? ERROR_CATALOG[code].status : undefined]);
    expect(actual).toEqual(contract);
  });
});

describe('ApiError, missing() and invalid()', () => {
  it('when a detail is given, then it replaces the catalog message but not the status; headers and cause are kept', () => {
    const plain = new ApiError('Forbidden.KeyNotFound');
    expect(plain).toMatchObject({ name: 'ApiError', code: 'Forbidden.KeyNotFound', status: 404, message: ERROR_CATALOG['Forbidden.KeyNotFound'].message, headers: {} });
    expect(new ApiError('Forbidden.KeyNotFound', 'no key k')).toMatchObject({ status: 404, message: 'no key k' });
    const cause = new Error('below');
    const throttled = new ApiError('Throttling.User', undefined, { cause, headers: { 'x-acs-retry-after': '1' } });
    expect(throttled.cause).toBe(cause);
    expect(throttled.headers).toEqual({ 'x-acs-retry-after': '1' });
  });

  it('when missing() and invalid() build errors, then they name the parameter with the right code', () => {
    expect(missing('KeyId')).toMatchObject({ code: 'MissingParameter', status: 400 });
    expect(missing('KeyId').message).toContain('"KeyId"');
    expect(invalid('Digest', 'not base64.')).toMatchObject({ code: 'InvalidParameter', status: 400 });
    expect(invalid('Digest', 'not base64.').message).toContain('"Digest"');
    expect(invalid('Digest', 'not base64.').message).toContain('not base64.');
  });
});

describe('toApiError: what the layers below throw, as the client sees it', () => {
  it('when given an ApiError, then it returns that same error', () => {
    const err = new ApiError('Rejected.Disabled', 'detail', { headers: { a: 'b' } });
    expect(toApiError(err)).toBe(err);
  });

  const hsmPath = '/opt/vendor/lib/libcryptoki.so';
  /** What the HSM layer, a bug or the body parser throws: [what, thrown, code]. None of their messages is the client's business. */
  const internal: Array<[string, unknown, ErrorCode]> = [
    ['HsmUnavailableError (token down)', new HsmUnavailableError(`token slot 3 is gone (${hsmPath})`, pkcs11js.CKR_DEVICE_REMOVED), 'ServiceUnavailableTemporary'],
    ['HsmBusyError (too many waiting)', new HsmBusyError('42 requests wait for a session on slot 3'), 'ServiceUnavailableTemporary'],
    ['HsmObjectNotFoundError (registry/token mismatch)', new HsmObjectNotFoundError('label k1 missing in slot 3'), 'ServiceUnavailableTemporary'],
    ['HsmOperationError (token refused)', new HsmOperationError('C_Sign failed on slot 3', pkcs11js.CKR_DEVICE_ERROR), 'InternalFailure'],
    ['HsmError (other)', new HsmError('C_GetAttributeValue failed on slot 3', pkcs11js.CKR_GENERAL_ERROR), 'InternalFailure'],
    // The registry as configured cannot be used (registry.store: postgres): the operator's problem, a 503 like the store away.
    ['RegistryError (the secrets key missing on the token)', new RegistryError('the secrets key "hsm-gateway-secrets" is not on the default token slot 3: run "hsm-gateway registry init" first'), 'ServiceUnavailableTemporary'],
    ['plain Error', new Error(`secret internals at ${hsmPath}: PIN 1234`), 'InternalFailure'],
    ['TypeError from a bug', new TypeError("Cannot read properties of undefined (reading 'keyId')"), 'InternalFailure'],
    ["body parser's entity.too.large", { type: 'entity.too.large', status: 413, message: 'request entity too large' }, 'RequestEntityTooLarge'],
    ['another 4xx body parser error', { type: 'request.aborted', status: 400, message: 'request aborted' }, 'InvalidParameter'],
    ['a 5xx body parser error', { type: 'stream.not.readable', status: 500, message: 'stream is not readable' }, 'InternalFailure'],
    ['null', null, 'InternalFailure'],
    ['undefined', undefined, 'InternalFailure'],
    ['a string', 'a string', 'InternalFailure'],
    ['a number', 42, 'InternalFailure'],
  ];
  /** Each LifecycleError kind's wire code; lifecycle messages are written for the caller. */
  const lifecycle: Record<LifecycleErrorKind, ErrorCode> = {
    'key-not-found': 'Forbidden.KeyNotFound',
    'alias-not-found': 'Forbidden.AliasNotFound',
    'alias-exists': 'Rejected.AlreadyExists',
    'key-exists': 'Rejected.AlreadyExists',
    'access-key-not-found': 'InvalidAccessKeyId.NotFound',
    'invalid-state': 'Rejected.UnexpectedState',
    conflict: 'Rejected.UnexpectedState',
    invalid: 'InvalidParameter',
    'not-on-token': 'Rejected.UnsupportedOperation',
    unsupported: 'Rejected.UnsupportedOperation',
    unavailable: 'ServiceUnavailableTemporary',
    'certificate-not-found': 'Certificate.NotFound',
    'certificate-exists': 'Rejected.AlreadyExists',
  };
  const lifecycleErrors = (Object.keys(lifecycle) as LifecycleErrorKind[]).map((kind) => new LifecycleError(kind, `refused (${kind}): try again`));

  it('when given HSM errors, bugs, body-parser errors and non-errors, then each becomes its code with the catalog status', () => {
    const seen = internal.map(([what, thrown]) => {
      const err = toApiError(thrown);
      return [what, err instanceof ApiError ? err.code : err, err.status];
    });
    expect(seen).toEqual(internal.map(([what, , code]) => [what, code, ERROR_CATALOG[code].status]));
  });

  it("when given a LifecycleError of each kind, then it becomes its code and keeps its message (the cloud's, where the code has the cloud's text)", () => {
    const seen = lifecycleErrors.map((e) => [e.kind, toApiError(e).code, toApiError(e).status, toApiError(e).message]);
    const expected = (e: LifecycleError) => {
      const entry = ERROR_CATALOG[lifecycle[e.kind]];
      return [e.kind, lifecycle[e.kind], entry.status, entry.cloud === 'verbatim' ? entry.message : e.message];
    };
    expect(seen).toEqual(lifecycleErrors.map(expected));
  });

  it('when any of them is turned into a client error, then its message carries no CKR, stack frame, path or HSM detail', () => {
    for (const [what, thrown] of internal) {
      const { message } = toApiError(thrown);
      expect(message, what).not.toMatch(LEAK);
      const own = (thrown as { message?: unknown } | null)?.message;
      if (typeof own === 'string') expect(message, what).not.toContain(own);
      expect(message, what).not.toContain('slot 3');
      expect(message, what).not.toContain('1234');
    }
    for (const e of lifecycleErrors) expect(toApiError(e).message, e.kind).not.toMatch(LEAK);
  });
});

describe('the error body on the wire (sendError)', () => {
  async function render(format: Format, err: ApiError): Promise<{ status: number; type: string; retryAfter: string | null; body: string }> {
    const app = express();
    app.get('/', (_req, res) => sendError(res, format, err, { requestId: 'req-1', hostId: 'kms.example', recommendBaseUrl: 'https://docs.example/errors.md' }));
    const server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    try {
      const r = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
      return { status: r.status, type: r.headers.get('content-type') ?? '', retryAfter: r.headers.get('x-acs-retry-after'), body: await r.text() };
    } finally {
      await new Promise((r) => server.close(r));
    }
  }
  // A detail with characters that are markup in XML, and control characters XML 1.0 cannot carry at all.
  const err = new ApiError('Throttling.User', 'Over 5 < 6 requests/s & "more"\u0000\u0007\u001b\uffff', { headers: { 'x-acs-retry-after': '250' } });
  const RECOMMEND = 'https://docs.example/errors.md#throttlinguser';

  it('when an error is rendered as JSON, then the status, headers and body are the Alibaba error shape', async () => {
    const r = await render('JSON', err);
    expect(r.status).toBe(429);
    expect(r.type).toMatch(/^application\/json/);
    expect(r.retryAfter).toBe('250');
    expect(JSON.parse(r.body)).toEqual({ RequestId: 'req-1', HostId: 'kms.example', Code: 'Throttling.User', Message: err.message, Recommend: RECOMMEND });
  });

  it('when the same error is rendered as XML, then it has an Error root with the same fields, markup escaped, characters XML forbids written as \\uXXXX', async () => {
    const r = await render('XML', err);
    expect(r.status).toBe(429);
    expect(r.type).toMatch(/^text\/xml/);
    expect(r.retryAfter).toBe('250');
    expect(r.body).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?><Error>/);
    expect(r.body).not.toContain('5 < 6');
    expect(r.body).not.toMatch(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/);
    expect(new XMLParser({ parseTagValue: false }).parse(r.body)).toEqual({
      '?xml': '',
      Error: { RequestId: 'req-1', HostId: 'kms.example', Code: 'Throttling.User', Message: 'Over 5 < 6 requests/s & "more"\\u0000\\u0007\\u001B\\uFFFF', Recommend: RECOMMEND },
    });
  });
});
