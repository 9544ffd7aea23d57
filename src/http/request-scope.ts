import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { outcomeOf } from '../observability/metrics.js';
import { isKnownAction } from '../operations/index.js';
import type { AppDeps } from './deps.js';
import type { Format } from './render.js';

/** What one request carries from its first step to its answer (res.locals.ctx). */
export interface Locals {
  requestId: string;
  format: Format;
  started: bigint;
  /** Facts for the audit record (action, access key, key id, code…): ids and names, never a secret or a message. */
  audit: Record<string, string>;
}

export const localsOf = (res: Response): Locals => res.locals.ctx as Locals;

type ScopeDeps = Pick<AppDeps, 'draining' | 'metrics' | 'log' | 'audit'>;

/**
 * Every request: an id (the x-acs-request-id header), a closed connection while draining, and once it is answered
 * (API requests only): its metrics, its log line and its audit record.
 */
export function requestScope(deps: ScopeDeps): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const locals: Locals = { requestId: randomUUID(), format: 'JSON', started: process.hrtime.bigint(), audit: {} };
    res.locals.ctx = locals;
    res.setHeader('x-acs-request-id', locals.requestId);
    closeWhileDraining(res, deps.draining);
    res.on('finish', () => {
      if (req.path === '/') recordOutcome(deps, res, locals);
    });
    next();
  };
}

/**
 * While draining for shutdown, every answer closes its connection: a keep-alive client must not send its next request
 * on a socket that is about to be closed (it would see a reset instead of an answer).
 */
function closeWhileDraining(res: Response, draining: ScopeDeps['draining']): void {
  const writeHead = res.writeHead;
  res.writeHead = function (this: Response, ...args: Parameters<Response['writeHead']>) {
    if (draining?.()) this.setHeader('connection', 'close');
    return writeHead.apply(this, args);
  } as Response['writeHead'];
}

/** Metrics, then the access/audit record: who did what with which key, and how it ended. */
function recordOutcome(deps: ScopeDeps, res: Response, locals: Locals): void {
  const seconds = Number(process.hrtime.bigint() - locals.started) / 1e9;
  const code = locals.audit.code ?? 'OK';
  const outcome = outcomeOf(res.statusCode);
  const action = locals.audit.action !== undefined && isKnownAction(locals.audit.action) ? locals.audit.action : 'unknown';
  deps.metrics?.observeRequest(action, outcome, code, seconds);
  // Never a message, digest, signature, PIN or secret: operations only put ids and names into `audit`.
  const record = { requestId: locals.requestId, ...locals.audit, action: locals.audit.action, status: res.statusCode, outcome, code, latencyMs: Math.round(seconds * 1e6) / 1e3 };
  // winston formats (timestamp + JSON) every call before its transport drops a disabled level: ask first
  // (measured: ~3 % of the main thread per request at level warn).
  if (deps.log.isLevelEnabled('info')) deps.log.info('request', record);
  deps.audit?.write(record);
}
