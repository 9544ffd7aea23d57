import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import type { AppDeps } from './deps.js';
import { ApiError } from './error-catalog.js';
import { fail } from './failure.js';
import { localsOf, requestScope } from './request-scope.js';
import { respond } from './respond.js';
import { RpcHandler } from './rpc-handler.js';

/**
 * The express app: the request scope (id, metrics, log line, audit record), the probes (/metrics, /healthz, /readyz),
 * and the RPC endpoint (rpc-handler.ts). Anything else is InvalidAction.NotFound.
 */
export function createApp(deps: AppDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', false);
  app.use(requestScope(deps));
  addProbes(app, deps);
  // Every body is kept raw: V3 signs its SHA-256, and form parameters are parsed from it by buildRpcRequest.
  app.use(express.raw({ type: () => true, limit: deps.maxBodyBytes }));
  const rpc = new RpcHandler(deps);
  app.all('/', (req: Request, res: Response) => rpc.handle(req, res));
  app.use((req: Request, res: Response) => {
    fail(deps, new ApiError('InvalidAction.NotFound'), req, res);
  });
  // Registered last: errors thrown by the body parser (a body too large, a client that hung up while sending it) and
  // anything else that escaped a handler. An API request is audited like any other.
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    if (req.path === '/') respond(deps, req, res, { error: err }).catch((e: unknown) => deps.log.error('answer failed', { error: String(e) }));
    else fail(deps, err, req, res);
  });
  return app;
}

/** Prometheus metrics (when enabled), liveness, and readiness (every token up, the audit trail writing, not draining). */
function addProbes(app: Express, deps: AppDeps): void {
  const metrics = deps.metrics;
  if (metrics) {
    app.get('/metrics', async (_req, res, next) => {
      try {
        res.type(metrics.registry.contentType).send(await metrics.exposition());
      } catch (err) {
        next(err);
      }
    });
  }
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', RequestId: localsOf(res).requestId });
  });

  app.get('/readyz', async (_req, res) => {
    const tokens = Object.fromEntries(await Promise.all([...deps.tokens].map(async ([name, token]) => [name, await token.probe()] as const)));
    const audit = deps.audit?.status();
    const ok = Object.values(tokens).every((t) => t.ok) && audit?.ok !== false && !deps.draining?.();
    res
      .status(ok ? 200 : 503)
      .json({ status: ok ? 'ready' : deps.draining?.() ? 'draining' : 'not ready', tokens, ...(audit ? { audit } : {}), RequestId: localsOf(res).requestId });
  });
}
