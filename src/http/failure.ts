import type { Request, Response } from 'express';
import type { Logger } from '../observability/logger.js';
import { catalogued } from '../operations/errors.js';
import { ApiError } from './error-catalog.js';
import { sendError } from './render.js';
import { localsOf } from './request-scope.js';

/** Turns anything thrown below the HTTP layer into a catalogued error; unknown errors become InternalFailure. */
export function toApiError(err: unknown): ApiError {
  const known = catalogued(err);
  if (known) return known;
  const bodyError = err as { type?: string; status?: number };
  if (bodyError?.type === 'entity.too.large') return new ApiError('RequestEntityTooLarge');
  if (typeof bodyError?.status === 'number' && bodyError.status >= 400 && bodyError.status < 500) {
    return new ApiError('InvalidParameter', 'The request body could not be read.');
  }
  return new ApiError('InternalFailure');
}

/** A 5xx's cause goes to the log (with the CKR when there is one), never to the client. */
export function logFailure(log: Logger, requestId: string, apiError: ApiError, err: unknown): void {
  if (apiError.status < 500) return;
  // A 503 is the expected face of a token outage (logged once as such by the token): warn, not error, per request.
  const level = apiError.status === 503 ? 'warn' : 'error';
  const cause = (err as Error | undefined)?.cause;
  log.log(level, 'request failed', {
    requestId,
    code: apiError.code,
    error: String((err as Error)?.message ?? err),
    // What the client is not told (a database's address and its driver's words): the operator's log has it.
    ...(cause instanceof Error ? { cause: cause.message } : {}),
  });
}

/** Answers a failed request that is not an API call (no audit record) with the Alibaba error body. */
export function fail(deps: { log: Logger; recommendBaseUrl: string }, err: unknown, req: Request, res: Response): void {
  const locals = localsOf(res);
  const apiError = toApiError(err);
  locals.audit.code = apiError.code;
  logFailure(deps.log, locals.requestId, apiError, err);
  if (res.headersSent) return;
  sendError(res, locals.format, apiError, { requestId: locals.requestId, hostId: req.headers.host ?? 'hsm-gateway', recommendBaseUrl: deps.recommendBaseUrl });
}
