import type { Request, Response } from 'express';
import type { OperationContext } from '../operations/context.js';
import { dispatch, throttlingCodeOf, type Route } from '../operations/index.js';
import { authenticate, type Caller } from './auth/authenticate.js';
import type { AppDeps } from './deps.js';
import { ApiError, missing } from './error-catalog.js';
import { toApiError } from './failure.js';
import { formatOf } from './render.js';
import { localsOf, type Locals } from './request-scope.js';
import { respond, type Answer } from './respond.js';
import { buildRpcRequest, type RpcRequest } from './rpc-request.js';

/**
 * One API request (POST or GET /), one step after the other: parse → refuse at once while the audit trail cannot
 * write → wait while an announced registry change is being read → refuse while this address keeps failing to
 * authenticate → pick the operation → authenticate → refuse a replay and throttle the account → run the operation
 * with its context → respond() (audit record first, then the answer). Whatever a step throws is answered with a
 * catalogued error.
 */
export class RpcHandler {
  constructor(private readonly deps: AppDeps) {}

  async handle(req: Request, res: Response): Promise<void> {
    const locals = localsOf(res);
    const address = req.socket.remoteAddress ?? 'unknown';
    let authenticated = false;
    let answer: Answer;
    try {
      const rpc = this.parse(req, locals);
      this.refuseWhileAuditFails();
      this.refuseUntilRegistryLoaded();
      // Not an async helper: when nothing is pending, nothing is awaited or allocated.
      const announced = this.announcedChange();
      if (announced) await announced;
      this.refuseFailingAddress(rpc, address);
      const route = this.route(rpc, locals);
      const caller = this.authenticate(rpc, locals);
      authenticated = true;
      await this.admit(caller, route);
      answer = { result: await route.operation.handle(rpc.params, this.context(caller, route, locals)), xmlRoot: route.operation.xmlRoot };
    } catch (err) {
      if (!authenticated) this.countFailure(err, address);
      answer = { error: err };
    }
    await respond(this.deps, req, res, answer);
  }

  /** No operation starts while its record could not be written (it would be answered 503 after the work anyway). */
  private refuseWhileAuditFails(): void {
    if (this.deps.audit && !this.deps.audit.status().ok) throw new ApiError('ServiceUnavailableTemporary');
  }

  /**
   * Before the registry is loaded (its PostgreSQL was away at start-up) every request is refused, before it
   * authenticates: the access keys made by the CLI and every key are in that registry, so anything else would answer
   * a misleading 404. The store's address and error stay in the log and on the management listener.
   */
  private refuseUntilRegistryLoaded(): void {
    if (this.deps.registryState?.().loaded !== false) return;
    throw new ApiError('ServiceUnavailableTemporary', 'The key registry is not loaded yet: its store cannot be reached. The gateway retries by itself; try again later.');
  }

  /**
   * Another process's change was announced to this one (acknowledged to its caller already) and is being read: this
   * request waits for it, so that it never sees the registry the change replaced (a key just disabled, an access key
   * just made). Undefined when none is.
   */
  private announcedChange(): Promise<void> | undefined {
    return this.deps.registryCatchingUp?.();
  }

  /** An address over its failed-authentication budget is refused before any signature work: 429, the API's code. */
  private refuseFailingAddress(rpc: RpcRequest, address: string): void {
    const retryAfterMs = this.deps.failedAuth?.retryAfterMs(address) ?? 0;
    if (retryAfterMs === 0) return;
    const code = throttlingCodeOf(rpc.params.Version ?? rpc.headers['x-acs-version']);
    throw new ApiError(code, undefined, { headers: { 'x-acs-retry-after': String(retryAfterMs) } });
  }

  /** A request refused before it authenticated (4xx, not a 429 of ours) counts against its address. */
  private countFailure(err: unknown, address: string): void {
    const { status } = toApiError(err);
    if (status >= 400 && status < 500 && status !== 429) this.deps.failedAuth?.failed(address);
  }

  /** The RPC parameters (query + form body) and the headers, as the signature schemes see them; the answer's format. */
  private parse(req: Request, locals: Locals): RpcRequest {
    if (req.method !== 'GET' && req.method !== 'POST') throw new ApiError('UnsupportedHTTPMethod');
    const rpc = buildRpcRequest({
      method: req.method,
      url: req.originalUrl,
      headers: req.headers,
      rawBody: Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0),
    });
    locals.format = formatOf(rpc.params);
    return rpc;
  }

  /** The operation named by (Version, Action), from the parameters (V1) or the x-acs- headers (V3). */
  private route(rpc: RpcRequest, locals: Locals): Route & { action: string } {
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
    return { ...found, action };
  }

  /** The request signature (V1 or V3), the access key and the timestamp window. */
  private authenticate(rpc: RpcRequest, locals: Locals): Caller {
    const caller = authenticate(rpc, this.deps.auth);
    locals.audit.accessKeyId = caller.accessKeyId;
    locals.audit.account = caller.account;
    return caller;
  }

  /**
   * The replay check, then the account's throttle: after authentication (only real callers count, and nobody can
   * burn another caller's nonces) and before any HSM work. A nonce this replica has seen is refused at once, before
   * it is counted. The shared nonce check (with the journal write) and the count are asked together: with Redis or
   * cluster workers each is a round trip, and they travel side by side. A request refused here for any reason but a
   * replay gives its nonce back (a throttled request was not accepted, so only admitted requests fill the guard).
   */
  private async admit(caller: Caller, route: Route): Promise<void> {
    const nonce = this.deps.replay.check(caller, route.changesState);
    const counted = this.deps.limiter.consume(caller.account).then((decision) => {
      this.deps.metrics?.observeAccount(caller.account, decision.allowed);
      return decision;
    });
    try {
      const [, decision] = await Promise.all([nonce.settled, counted]);
      if (!decision.allowed) {
        throw new ApiError(route.throttlingCode, undefined, { headers: { 'x-acs-retry-after': String(decision.retryAfterMs) } });
      }
    } catch (err) {
      if (!(err instanceof ApiError && err.code === 'SignatureNonceUsed')) nonce.release();
      throw err;
    }
  }

  /** What the operation may use; the registry as it is now (a change swaps it for later requests). */
  private context(caller: Caller, route: Route & { action: string }, locals: Locals): OperationContext {
    const { deps } = this;
    return {
      caller,
      ramAction: `${route.ramService}:${route.action}`,
      requestId: locals.requestId,
      regionId: deps.regionId,
      registry: deps.registry,
      lifecycle: deps.lifecycle,
      plans: deps.plans,
      signer: deps.signer,
      certificates: deps.certificates,
      publicKeys: deps.publicKeys,
      casRawMessageIsBase64: deps.casRawMessageIsBase64(caller.account),
      audit: locals.audit,
    };
  }
}
