import http, { type Server } from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import type { RequestListener } from 'node:http';
import type { Duplex } from 'node:stream';

export interface ListenerOptions {
  host: string;
  port: number;
  /** TLS on the listener; absent: plain HTTP. */
  tls?: https.ServerOptions;
  timeouts: { headersMs: number; requestMs: number; keepAliveMs: number };
  /** The answer (a complete HTTP response) to a request the HTTP parser refused; absent: Node's bare default. */
  refusedRequestAnswer?: (err: NodeJS.ErrnoException) => string | undefined;
  /** The prototypes the app gives every request and response (an Express app's `request` and `response`). */
  prototypes?: { request: object; response: object };
}

/** One listening HTTP(S) server: its slow-client timeouts set, and a drain that stops accepting at once. */
export interface Listener {
  server: Server;
  port: number;
  url: string;
  /**
   * Stops accepting at once (a load balancer's next connection goes elsewhere), lets the requests already on the wire
   * arrive for `graceMs`, closes the idle connections, waits for the others' answers (the app sends each with
   * `Connection: close`) and at `timeoutMs` closes whatever is left.
   */
  drain(timeoutMs: number, graceMs?: number): Promise<void>;
}

/**
 * The server's request and response classes, constructed with the app's prototypes from the start. Express 5 gives
 * every request and response its app's prototypes with Object.setPrototypeOf, and an object whose prototype changes
 * after it was made costs V8 a new shape per request — and outlives the young generation: measured at 1,000 req/s, a
 * bare node:http server that sets the prototypes per request promotes 1.4 MB per scavenge, one that does not, none
 * (bench/README.md, "Memory"). Express leaves a prototype that is already in place as it is.
 */
function constructedWith(prototypes: { request: object; response: object }): Pick<http.ServerOptions, 'IncomingMessage' | 'ServerResponse'> {
  function Request(this: http.IncomingMessage, socket: net.Socket): void {
    Reflect.apply(http.IncomingMessage, this, [socket]);
  }
  Request.prototype = prototypes.request;
  function Response(this: http.ServerResponse, req: http.IncomingMessage, options?: unknown): void {
    Reflect.apply(http.ServerResponse, this, [req, options]);
  }
  Response.prototype = prototypes.response;
  return { IncomingMessage: Request as unknown as typeof http.IncomingMessage, ServerResponse: Response as unknown as typeof http.ServerResponse };
}

/**
 * Node checks the headers and request deadlines only every `connectionsCheckingInterval` (30 s by default): a client
 * dribbling its headers was cut at 32.5 s instead of 10 s. A quarter of the headers deadline, at most a second.
 */
export const checkingIntervalMs = (headersMs: number): number => Math.max(50, Math.min(1000, Math.floor(headersMs / 4)));

export async function openListener(app: RequestListener, options: ListenerOptions): Promise<Listener> {
  const { timeouts, tls } = options;
  const serverOptions: http.ServerOptions = {
    headersTimeout: timeouts.headersMs,
    requestTimeout: timeouts.requestMs,
    keepAliveTimeout: timeouts.keepAliveMs,
    connectionsCheckingInterval: checkingIntervalMs(timeouts.headersMs),
    ...(options.prototypes ? constructedWith(options.prototypes) : {}),
  };
  const server: Server = tls ? https.createServer({ ...tls, ...serverOptions }, app) : http.createServer(serverOptions, app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const answer = options.refusedRequestAnswer;
  if (answer) server.on('clientError', (err: NodeJS.ErrnoException, socket) => answerRefused(err, socket, answer));
  const port = (server.address() as AddressInfo).port;
  const url = `${tls ? 'https' : 'http'}://${options.host}:${port}`;
  let draining: Promise<void> | undefined;
  return { server, port, url, drain: (timeoutMs, graceMs = 250) => (draining ??= drain(server, timeoutMs, graceMs)) };
}

/**
 * A request the parser refused (too long a request line or headers, malformed HTTP) or a client too slow: with a
 * 'clientError' listener Node writes nothing itself, so every case is answered here, then the connection closed.
 */
function answerRefused(err: NodeJS.ErrnoException, socket: Duplex, answer: (err: NodeJS.ErrnoException) => string | undefined): void {
  if (!socket.writable || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const text = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n' : answer(err);
  socket.end(text ?? 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
}

async function drain(server: Server, timeoutMs: number, graceMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const closed = new Promise<void>((resolve) => server.once('close', () => resolve()));
  // net.Server's close, not http.Server's: the latter also closes the "idle" connections at once, and a connection
  // whose request is still on the wire (accepted, not parsed yet) counts as idle — it would be reset unanswered.
  net.Server.prototype.close.call(server);
  await new Promise((r) => setTimeout(r, Math.min(graceMs, timeoutMs)));
  server.closeIdleConnections();
  const timer = setTimeout(() => server.closeAllConnections(), Math.max(0, deadline - Date.now()));
  await closed;
  clearTimeout(timer);
  // http.Server's own close now: it stops the timer that checks the headers and request deadlines.
  server.close();
}
