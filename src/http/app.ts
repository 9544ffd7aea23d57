import { randomUUID } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { CertificateMaterial } from '../keys/certificate-store.js';
import type { KeyLifecycle } from '../keys/lifecycle.js';
import type { KeyRegistry } from '../keys/registry.js';
import type { Logger } from '../observability/logger.js';
import type { OperationContext } from '../operations/context.js';
import { catalogued } from '../operations/errors.js';
import { dispatch, isKnownAction } from '../operations/index.js';
import { outcomeOf, type GatewayMetrics } from '../observability/metrics.js';
import type { AccountLimiter } from '../throttle/account-limiter.js';
import type { SigningPlans } from '../signing/plan.js';
import type { Signer } from '../signing/signer.js';
import { authenticate, type AuthOptions } from './auth/authenticate.js';
import type { SharedReplayGuard } from './auth/replay-guard.js';
import { ApiError, missing } from './error-catalog.js';
import { formatOf, sendError, sendResult, type Format } from './render.js';
import { buildRpcRequest } from './rpc-request.js';

export interface AppDeps {
  auth: AuthOptions;
  /** True once shutdown has begun. */
  draining?: () => boolean;
  /** Nonces shared by the replicas (Redis), on top of this replica's own guard. */
  sharedReplayGuard?: SharedReplayGuard;
  limiter: AccountLimiter;
  metrics?: GatewayMetrics;
  /** Hash-chained audit file, when configured. */
  audit?: { write(record: Record<string, string | number | boolean | undefined>): void };
  regionId: string;
  registry: KeyRegistry;
  /** Key lifecycle (CreateKey, DisableKey, aliases…) on the token-kept registry. */
  lifecycle?: KeyLifecycle;
  certificates: ReadonlyMap<string, CertificateMaterial>;
  publicKeys: ReadonlyMap<string, string>;
  /** CAS compatibility switch (2024 document): is this account's RAW Message Base64? */
  casRawMessageIsBase64: (account: string) => boolean;
  plans: ReadonlyMap<string, SigningPlans>;
  signer: Signer;
  /** The tokens' health, as /readyz reports it. */
  tokens: ReadonlyMap<string, { probe(): { ok: boolean; detail: string } }>;
  log: Logger;
  maxBodyBytes: number;
}

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

interface Locals {
  requestId: string;
  format: Format;
  started: bigint;
  audit: Record<string, string>;
}

export function createApp(deps: AppDeps): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', false);

  app.use((req: Request, res: Response, next: NextFunction) => {
    const locals: Locals = { requestId: randomUUID(), format: 'JSON', started: process.hrtime.bigint(), audit: {} };
    res.locals.ctx = locals;
    res.setHeader('x-acs-request-id', locals.requestId);
    // While draining for shutdown, every answer closes its connection: a keep-alive client must not send its next
    // request on a socket that is about to be closed (it would see a reset instead of an answer).
    const writeHead = res.writeHead;
    res.writeHead = function (this: Response, ...args: Parameters<Response['writeHead']>) {
      if (deps.draining?.()) this.setHeader('connection', 'close');
      return writeHead.apply(this, args);
    } as Response['writeHead'];
    res.on('finish', () => {
      if (req.path !== '/') return;
      const seconds = Number(process.hrtime.bigint() - locals.started) / 1e9;
      const code = locals.audit.code ?? 'OK';
      const outcome = outcomeOf(res.statusCode);
      const action = locals.audit.action !== undefined && isKnownAction(locals.audit.action) ? locals.audit.action : 'unknown';
      deps.metrics?.observeRequest(action, outcome, code, seconds);
      // The access/audit record: who did what with which key, and how it ended. Never a message, digest,
      // signature, PIN or secret: operations only put ids and names into `audit`.
      const record = { requestId: locals.requestId, ...locals.audit, action: locals.audit.action, status: res.statusCode, outcome, code, latencyMs: Math.round(seconds * 1e6) / 1e3 };
      // winston formats (timestamp + JSON) every call before its transport drops a disabled level: ask first
      // (measured: ~3 % of the main thread per request at level warn).
      if (deps.log.isLevelEnabled('info')) deps.log.info('request', record);
      deps.audit?.write(record);
    });
    next();
  });

  if (deps.metrics) {
    const metrics = deps.metrics;
    app.get('/metrics', async (_req, res, next) => {
      try {
        res.type(metrics.registry.contentType).send(await metrics.exposition());
      } catch (err) {
        next(err);
      }
    });
  }

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', RequestId: (res.locals.ctx as Locals).requestId });
  });

  app.get('/readyz', (_req, res) => {
    const tokens = Object.fromEntries([...deps.tokens].map(([name, token]) => [name, token.probe()]));
    const ok = Object.values(tokens).every((t) => t.ok) && !deps.draining?.();
    res.status(ok ? 200 : 503).json({ status: ok ? 'ready' : deps.draining?.() ? 'draining' : 'not ready', tokens, RequestId: (res.locals.ctx as Locals).requestId });
  });

  // Every body is kept raw: V3 signs its SHA-256, and form parameters are parsed from it by buildRpcRequest.
  app.use(express.raw({ type: () => true, limit: deps.maxBodyBytes }));

  app.all('/', async (req: Request, res: Response) => {
    const locals = res.locals.ctx as Locals;
    try {
      if (req.method !== 'GET' && req.method !== 'POST') throw new ApiError('UnsupportedHTTPMethod');
      const rpc = buildRpcRequest({
        method: req.method,
        url: req.originalUrl,
        headers: req.headers,
        rawBody: Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0),
      });
      locals.format = formatOf(rpc.params);
      const action = rpc.params.Action ?? rpc.headers['x-acs-action'];
      const version = rpc.params.Version ?? rpc.headers['x-acs-version'];
      if (!action) throw missing('Action');
      locals.audit.action = action;
      const found = dispatch(version, action);
      if ('error' in found) {
        throw found.error === 'no-action'
          ? new ApiError('InvalidAction.NotFound', `Specified api is not found, please check your url and method: ${action}`)
          : new ApiError('InvalidVersion', `Specified parameter Version is not valid: ${version ?? '(none)'}`);
      }
      const caller = authenticate(rpc, deps.auth);
      locals.audit.accessKeyId = caller.accessKeyId;
      locals.audit.account = caller.account;
      // Throttled after authentication (only real callers count) and before any HSM work. The shared nonce check
      // and the count are asked together: with Redis or cluster workers each is a round trip, and one suffices.
      // (So a replay refused by another replica's nonce counts against the account, like any authenticated request.)
      const [fresh, decision] = await Promise.all([deps.sharedReplayGuard?.checkAndRemember(caller.accessKeyId, caller.nonce, caller.nonceKeepMs), deps.limiter.consume(caller.account)]);
      if (fresh === false) {
        throw new ApiError('SignatureNonceUsed', 'The request signature nonce has been used (on another replica).');
      }
      if (!decision.allowed) {
        deps.metrics?.throttled(caller.account);
        throw new ApiError(found.throttlingCode, undefined, { headers: { 'x-acs-retry-after': String(decision.retryAfterMs) } });
      }
      const ctx: OperationContext = {
        caller,
        ramAction: `${found.ramService}:${action}`,
        requestId: locals.requestId,
        regionId: deps.regionId,
        log: deps.log.child({ requestId: locals.requestId }),
        registry: deps.registry,
        lifecycle: deps.lifecycle,
        plans: deps.plans,
        signer: deps.signer,
        certificates: deps.certificates,
        publicKeys: deps.publicKeys,
        casRawMessageIsBase64: deps.casRawMessageIsBase64(caller.account),
        audit: locals.audit,
      };
      const result = await found.operation.handle(rpc.params, ctx);
      sendResult(res, locals.format, found.operation.xmlRoot, result);
    } catch (err) {
      fail(err, req, res);
    }
  });

  app.use((_req: Request, res: Response) => {
    fail(new ApiError('InvalidAction.NotFound'), _req, res);
  });

  // Registered last: errors thrown by the body parser and anything else that escaped a handler.
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    fail(err, req, res);
  });

  function fail(err: unknown, req: Request, res: Response): void {
    const locals = res.locals.ctx as Locals;
    const apiError = toApiError(err);
    locals.audit.code = apiError.code;
    if (apiError.status >= 500) {
      // The cause goes to the log (with the CKR when there is one), never to the client. A 503 is the
      // expected face of a token outage (logged once as such by the token): warn, not error, per request.
      const level = apiError.status === 503 ? 'warn' : 'error';
      deps.log.log(level, 'request failed', { requestId: locals.requestId, code: apiError.code, error: String((err as Error)?.message ?? err) });
    }
    if (res.headersSent) return;
    sendError(res, locals.format, apiError, locals.requestId, req.headers.host ?? 'hsm-gateway');
  }

  return app;
}
