import { randomUUID } from 'node:crypto';
import type { Express, NextFunction, Request, RequestHandler, Response } from 'express';
import type { Format } from './render.js';

/** What one request carries from its first step to its answer (res.locals.ctx). */
export interface Locals {
  requestId: string;
  format: Format;
  /** performance.now() when the request's scope opened (a number: a bigint is a heap object per request). */
  started: number;
  /** Facts for the audit record (action, access key, key id, code…): ids and names, never a secret or a message. */
  audit: Record<string, string>;
}

export const localsOf = (res: Response): Locals => res.locals.ctx as Locals;

/** A request's scope: its id (the x-acs-request-id header) and its start. */
export function openScope(res: Response): Locals {
  const locals: Locals = { requestId: randomUUID(), format: 'JSON', started: performance.now(), audit: {} };
  res.locals.ctx = locals;
  res.setHeader('x-acs-request-id', locals.requestId);
  return locals;
}

/**
 * The scope of every request that is not an API request (probes, /metrics, unknown paths): the API route opens its
 * own, in its one handler. API requests are audited, measured and logged by respond() before they are answered.
 */
export function requestScope(): RequestHandler {
  return (_req: Request, res: Response, next: NextFunction) => {
    openScope(res);
    next();
  };
}

/**
 * The connection closed before the answer was sent: the client hung up. Node marks the response destroyed when its
 * socket closes; a response that finished was answered, whatever happened to the socket after.
 */
export const clientGone = (res: Response): boolean => res.destroyed && !res.writableFinished;

/**
 * While draining for shutdown, every answer closes its connection: a keep-alive client must not send its next request
 * on a socket that is about to be closed (it would see a reset instead of an answer). Set once on the app's response
 * prototype (every response of this app inherits it), not per response: a closure and a new member per request cost
 * the hot path an allocation and a change of the response's shape.
 */
export function closeWhileDraining(app: Express, draining: (() => boolean) | undefined): void {
  if (!draining) return;
  const proto = app.response as Response;
  const writeHead = proto.writeHead;
  proto.writeHead = function (this: Response, ...args: Parameters<Response['writeHead']>) {
    if (draining()) this.setHeader('connection', 'close');
    return writeHead.apply(this, args);
  } as Response['writeHead'];
}
