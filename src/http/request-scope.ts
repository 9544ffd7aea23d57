import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { AppDeps } from './deps.js';
import type { Format } from './render.js';

/** What one request carries from its first step to its answer (res.locals.ctx). */
export interface Locals {
  requestId: string;
  format: Format;
  started: bigint;
  /** Facts for the audit record (action, access key, key id, code…): ids and names, never a secret or a message. */
  audit: Record<string, string>;
  /** The connection closed before the answer was sent (the client hung up). */
  clientGone?: boolean;
}

export const localsOf = (res: Response): Locals => res.locals.ctx as Locals;

type ScopeDeps = Pick<AppDeps, 'draining'>;

/**
 * Every request: an id (the x-acs-request-id header), a closed connection while draining, and whether the client
 * hung up before its answer. API requests are audited, measured and logged by respond() before they are answered.
 */
export function requestScope(deps: ScopeDeps): RequestHandler {
  return (_req: Request, res: Response, next: NextFunction) => {
    const locals: Locals = { requestId: randomUUID(), format: 'JSON', started: process.hrtime.bigint(), audit: {} };
    res.locals.ctx = locals;
    res.setHeader('x-acs-request-id', locals.requestId);
    closeWhileDraining(res, deps.draining);
    res.once('close', () => {
      if (!res.writableFinished) locals.clientGone = true;
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
