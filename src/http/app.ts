import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import type { AppDeps } from './deps.js';
import { ApiError } from './error-catalog.js';
import { fail } from './failure.js';
import { closeWhileDraining, localsOf, openScope, requestScope } from './request-scope.js';
import { respond } from './respond.js';
import { RpcHandler } from './rpc-handler.js';

/**
 * The express app: the request scope (id, metrics, log line, audit record), the probes (/healthz, /readyz, and
 * /metrics unless a management listener serves it), and the RPC endpoint (rpc-handler.ts). Anything else is
 * InvalidAction.NotFound.
 */
export function createApp(deps: AppDeps, options: { serveMetrics: boolean }): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', false);
  closeWhileDraining(app, deps.draining);
  // The API first, as one layer with one handler: every layer and handler ahead of it is a match and a closure per
  // API request. Every body is kept raw: V3 signs its SHA-256, and form parameters are parsed from it by
  // buildRpcRequest. A body that cannot be read (too large, a client that hung up while sending it) is an API request
  // too: audited and answered like any other.
  const rpc = new RpcHandler(deps);
  const readBody = express.raw({ type: () => true, limit: deps.maxBodyBytes });
  const answerFailure = (req: Request, res: Response, err: unknown): void => {
    respond(deps, req, res, { error: err }).catch((e: unknown) => deps.log.error('answer failed', { error: String(e) }));
  };
  app.all('/', (req: Request, res: Response) => {
    openScope(res);
    readBody(req, res, (err?: unknown) => {
      if (err) answerFailure(req, res, err);
      else rpc.handle(req, res).catch((e: unknown) => answerFailure(req, res, e));
    });
  });
  app.use(requestScope());
  if (options.serveMetrics) addMetrics(app, deps);
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', RequestId: localsOf(res).requestId });
  });
  // Anyone who reaches the API port may ask: the state only. Module paths, token labels and PKCS#11 errors are for
  // the management listener.
  app.get('/readyz', async (_req, res) => {
    const { ok, status } = await readiness(deps);
    res.status(ok ? 200 : 503).json({ status, RequestId: localsOf(res).requestId });
  });
  app.use((req: Request, res: Response) => {
    fail(deps, new ApiError('InvalidAction.NotFound'), req, res);
  });
  // Registered last: anything that escaped a handler of the paths above.
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    fail(deps, err, req, res);
  });
  return app;
}

/**
 * The management listener's app (server.management): /metrics, /healthz and the detailed /readyz (each token's
 * probe: module, label, PKCS#11 error). No API, no request scope: these are not API requests.
 */
export function createManagementApp(deps: AppDeps, worker?: number): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', false);
  addMetrics(app, deps);
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    const { ok, status, tokens, audit, registry } = await readiness(deps);
    res.status(ok ? 200 : 503).json({ status, tokens, ...(audit ? { audit } : {}), ...(registry ? { registry } : {}), ...(worker === undefined ? {} : { worker }) });
  });
  app.use((_req, res) => {
    res.status(404).json({ status: 'not found', paths: ['/metrics', '/healthz', '/readyz'] });
  });
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    deps.log.error('management request failed', { error: String((err as Error)?.message ?? err) });
    res.status(500).json({ status: 'error' });
  });
  return app;
}

/** Prometheus metrics, when enabled. */
function addMetrics(app: Express, deps: AppDeps): void {
  const metrics = deps.metrics;
  if (!metrics) return;
  app.get('/metrics', async (_req, res, next) => {
    try {
      res.type(metrics.registry.contentType).send(await metrics.exposition());
    } catch (err) {
      next(err);
    }
  });
}

/** What the management listener's /readyz says of the registry: loaded, and (PostgreSQL) whether its store answers. */
interface RegistryReadiness {
  store: string;
  loaded: boolean;
  storeUp?: boolean;
  storeAwaySince?: string;
  storeDetail?: string;
}

/**
 * Ready: every token up, the audit trail writing, the registry loaded, and not draining. A registry store lost after
 * the registry was loaded (PostgreSQL down) leaves the gateway ready: signing goes on from the loaded registry; the
 * details say the store is away and since when.
 */
async function readiness(
  deps: AppDeps,
): Promise<{ ok: boolean; status: string; tokens: Record<string, { ok: boolean; detail: string }>; audit?: ReturnType<NonNullable<AppDeps['audit']>['status']>; registry?: RegistryReadiness }> {
  const tokens = Object.fromEntries(await Promise.all([...deps.tokens].map(async ([name, token]) => [name, await token.probe()] as const)));
  const audit = deps.audit?.status();
  const state = deps.registryState?.();
  const store = state?.storeStatus;
  const registry: RegistryReadiness | undefined = state && {
    store: state.store,
    loaded: state.loaded,
    ...(store ? { storeUp: store.up } : {}),
    ...(store?.awaySince ? { storeAwaySince: store.awaySince.toISOString() } : {}),
    ...(store?.detail ? { storeDetail: store.detail } : {}),
  };
  const ok = Object.values(tokens).every((t) => t.ok) && audit?.ok !== false && state?.loaded !== false && !deps.draining?.();
  return { ok, status: ok ? 'ready' : deps.draining?.() ? 'draining' : 'not ready', tokens, ...(audit ? { audit } : {}), ...(registry ? { registry } : {}) };
}
