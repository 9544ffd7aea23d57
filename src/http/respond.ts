import type { Request, Response } from 'express';
import { clientText } from '../observability/client-text.js';
import { outcomeOf } from '../observability/metrics.js';
import { isKnownAction } from '../operations/index.js';
import type { AppDeps } from './deps.js';
import { ApiError } from './error-catalog.js';
import { logFailure, toApiError } from './failure.js';
import { sendError, sendResult } from './render.js';
import { clientGone, localsOf, type Locals } from './request-scope.js';

/** How an API request ends: an operation's result, or whatever a step threw. */
export type Answer = { result: Record<string, unknown>; xmlRoot: string } | { error: unknown };

type RespondDeps = Pick<AppDeps, 'metrics' | 'log' | 'audit' | 'recommendBaseUrl'>;
type AuditLine = Record<string, string | number | boolean | undefined>;

/**
 * The end of every API request (GET or POST /), answered or not: its audit record is handed to the OS FIRST, then
 * the answer is sent. When the record cannot be written the answer becomes 503 ServiceUnavailableTemporary: a
 * signature (or a lifecycle result) never leaves without its record. A client that hung up still gets its record
 * (`clientGone`). Then the metrics and the log line, which carry the status the client was sent.
 */
export async function respond(deps: RespondDeps, req: Request, res: Response, answer: Answer): Promise<void> {
  const locals = localsOf(res);
  let error = 'error' in answer ? toApiError(answer.error) : undefined;
  if (error && 'error' in answer) {
    locals.audit.code = error.code;
    logFailure(deps.log, locals.requestId, error, answer.error);
  }
  let record = auditRecord(req, res, locals, error?.status ?? 200);
  if (deps.audit) {
    try {
      await deps.audit.write(record);
    } catch {
      // The trail says once why (its state change is logged); per request: the count, and a 503 instead.
      deps.metrics?.auditWriteFailed();
      error = new ApiError('ServiceUnavailableTemporary');
      record = { ...record, status: error.status, outcome: outcomeOf(error.status), code: error.code, audit: 'not written' };
    }
  }
  const seconds = (performance.now() - locals.started) / 1e3;
  const action = locals.audit.action !== undefined && isKnownAction(locals.audit.action) ? locals.audit.action : 'unknown';
  deps.metrics?.observeRequest(action, outcomeOf(Number(record.status)), String(record.code), seconds);
  // winston formats (timestamp + JSON) every call before its transport drops a disabled level: ask first
  // (measured: ~3 % of the main thread per request at level warn).
  if (deps.log.isLevelEnabled('info')) deps.log.info('request', record);
  if (res.headersSent) return;
  if (error) sendError(res, locals.format, error, { requestId: locals.requestId, hostId: req.headers.host ?? 'hsm-gateway', recommendBaseUrl: deps.recommendBaseUrl });
  else if ('result' in answer) sendResult(res, locals.format, answer.xmlRoot, answer.result);
}

/**
 * Who did what with which key, and how it ended. Never a message, digest, signature, PIN or secret: operations only
 * put ids and names into `locals.audit`; whatever of it came from the client (the Action of an unknown or
 * unauthenticated request…) is cut to a bounded, control-free text.
 */
function auditRecord(req: Request, res: Response, locals: Locals, status: number): AuditLine {
  // Built member by member, in the order the line has always had: requestId, sourceIp, the facts in the order they were
  // noted, then action (where the facts put it, or here), status, outcome, code, latencyMs, clientGone. The facts' names
  // are the gateway's own (operations note ids under fixed names), never a client's.
  const line: AuditLine = { requestId: locals.requestId, sourceIp: req.socket.remoteAddress };
  const facts = locals.audit;
  for (const key of Object.keys(facts)) line[key] = clientText(facts[key]!);
  line.action = line.action;
  line.status = status;
  line.outcome = outcomeOf(status);
  line.code = line.code ?? 'OK';
  line.latencyMs = Math.round((performance.now() - locals.started) * 1e3) / 1e3;
  if (clientGone(res)) line.clientGone = true;
  return line;
}
