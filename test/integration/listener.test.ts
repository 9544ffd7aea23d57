import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import winston from 'winston';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootstrapDemo } from '../../src/demo/bootstrap.js';
import { freePort, MAIN, startProcess, type Running } from '../helpers/processes.js';
import { send, signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { SOFTHSM_MODULE, startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// The listeners (issue #18, items 7–9): shutdown stops accepting at once, slow clients are cut at the configured
// deadlines, connection floods are bounded (logged and counted), and the details of readiness and the metrics are on
// the management listener only. Timeouts are small here and bounds generous: the machine may be loaded.

/** A raw TCP client: what it received, and when the server closed the connection. */
interface Raw {
  socket: net.Socket;
  data: () => string;
  /** Resolves with the milliseconds from connect to close. */
  closed: Promise<number>;
  /** Resolves once the received text matches. */
  received: (pattern: RegExp, withinMs?: number) => Promise<void>;
}

function raw(port: number, localAddress?: string): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', ...(localAddress ? { localAddress } : {}) });
    let text = '';
    let started = 0;
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (text += d));
    socket.on('error', () => {}); // a reset is a close too
    const closed = new Promise<number>((ok) => socket.once('close', () => ok(Date.now() - started)));
    const received = async (pattern: RegExp, withinMs = 10_000): Promise<void> => {
      const deadline = Date.now() + withinMs;
      while (!pattern.test(text)) {
        if (Date.now() > deadline) throw new Error(`never received ${pattern}; got ${JSON.stringify(text)}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    socket.once('connect', () => {
      started = Date.now();
      resolve({ socket, data: () => text, closed, received });
    });
    socket.once('error', reject);
  });
}

/** Resolves true when a new connection is refused (the listener is closed), false when one is accepted. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

const within = (ms: number): Promise<'timeout'> => new Promise((r) => setTimeout(() => r('timeout'), ms));

/** Log lines the gateway wrote, kept for the assertions. */
function capturingLogger(): { log: winston.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()));
      done();
    },
  });
  return { log: winston.createLogger({ level: 'info', format: winston.format.json(), transports: [new winston.transports.Stream({ stream })] }), lines };
}

describe('shutdown: the listener closes at once, the requests in flight are answered', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({
      editConfig: (c) => {
        c.server.shutdownTimeoutMs = 20_000;
        c.server.management = { host: '127.0.0.1', port: 0 };
      },
    });
  }, 120_000);
  afterAll(async () => {
    await gw?.close();
  });

  it('when stop() begins with a request in flight, then new connections are refused at once, idle keep-alive connections are closed, and the request is answered with Connection: close', async () => {
    const port = gw.gateway.port;
    // A keep-alive connection that has been answered once and is idle now.
    const idle = await raw(port);
    idle.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await idle.received(/"status":"ok"/);
    // A request in flight: its headers parsed (100 Continue proves it), its body not complete.
    const inFlight = await raw(port);
    inFlight.socket.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n');
    await inFlight.received(/^HTTP\/1\.1 100 Continue\r\n\r\n$/);
    inFlight.socket.write('Action=');

    const began = Date.now();
    let stopped = false;
    const stopping = gw.gateway.stop().then(() => (stopped = true));
    // The listener is closed at once, not when the requests in flight are done: a load balancer retries elsewhere.
    let refusedAfterMs = -1;
    while (Date.now() - began < 5000) {
      if (await refused(port)) {
        refusedAfterMs = Date.now() - began;
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(refusedAfterMs).toBeGreaterThanOrEqual(0);
    expect(refusedAfterMs).toBeLessThan(5000);
    // The idle keep-alive connection is closed without an answer to anything; the one in flight is not.
    expect(await Promise.race([idle.closed, within(5000)])).not.toBe('timeout');
    expect(stopped).toBe(false);
    // The management listener still says what is going on.
    const ready = await send(`${gw.gateway.managementUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(ready.json!.status).toBe('draining');

    // The rest of the body: the request is answered (an Alibaba error: no such action), with Connection: close.
    inFlight.socket.write('Nope');
    await inFlight.received(/\r\n\r\n\{/);
    expect(inFlight.data()).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 [45]\d\d /);
    expect(inFlight.data()).toMatch(/\r\nconnection: close\r\n/i);
    expect(await Promise.race([inFlight.closed, within(5000)])).not.toBe('timeout');
    // Done well before the 20 s deadline: nothing new kept it open.
    await stopping;
    expect(Date.now() - began).toBeLessThan(10_000);
  }, 90_000);
});

describe('slow clients: the configured deadlines hold (headers 1 s, request 2 s, keep-alive 1 s)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({
      editConfig: (c) => {
        c.server.headersTimeoutMs = 1000;
        c.server.requestTimeoutMs = 2000;
        c.server.keepAliveTimeoutMs = 1000;
      },
    });
  }, 120_000);
  afterAll(async () => {
    await gw?.close();
  });

  const dribble = (r: Raw, text: string, everyMs: number): void => {
    const timer = setInterval(() => r.socket.write(text), everyMs);
    void r.closed.then(() => clearInterval(timer));
  };

  it('when clients dribble headers, dribble a body, send nothing or idle on keep-alive, then each is cut near its deadline, not at 30 s', async () => {
    const port = gw.gateway.port;
    const headers = await raw(port);
    headers.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    dribble(headers, 'X-Slow: 1\r\n', 100);
    const body = await raw(port);
    body.socket.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n');
    dribble(body, 'a', 100);
    const silent = await raw(port);
    const keepAlive = await raw(port);
    keepAlive.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await keepAlive.received(/"status":"ok"/);
    const answeredAt = Date.now();

    const [headersMs, bodyMs, silentMs] = await Promise.all([headers.closed, body.closed, silent.closed]);
    const keepAliveMs = await keepAlive.closed.then(() => Date.now() - answeredAt);
    // Timers never fire early; the upper bounds leave room for a loaded machine (Node's default would be 30–60 s).
    expect(headersMs).toBeGreaterThanOrEqual(900);
    expect(headersMs).toBeLessThan(6000);
    expect(headers.data()).toMatch(/^HTTP\/1\.1 408 /);
    expect(bodyMs).toBeGreaterThanOrEqual(1900);
    expect(bodyMs).toBeLessThan(8000);
    expect(body.data()).toMatch(/^HTTP\/1\.1 408 /);
    expect(silentMs).toBeGreaterThanOrEqual(900);
    expect(silentMs).toBeLessThan(6000);
    expect(keepAliveMs).toBeGreaterThanOrEqual(900);
    expect(keepAliveMs).toBeLessThan(7000);
  }, 30_000);

  it('when no management listener is configured, then /metrics is on the API port and /readyz there says only the state', async () => {
    const metrics = await send(`${gw.url}/metrics`);
    expect(metrics.status).toBe(200);
    expect(metrics.text).toContain('hsm_gateway_connections_refused_total{reason="max_connections"} 0');
    const ready = await send(`${gw.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(Object.keys(ready.json!).sort()).toEqual(['RequestId', 'status']);
  });
});

describe('connection floods: server.maxConnections and server.maxConnectionsPerAddress', () => {
  let gw: TestGateway;
  const logged = capturingLogger();
  beforeAll(async () => {
    gw = await startTestGateway({
      log: logged.log,
      editConfig: (c) => {
        c.server.maxConnections = 4;
        c.server.maxConnectionsPerAddress = 2;
        c.server.management = { host: '127.0.0.1', port: 0 };
      },
    });
  }, 120_000);
  afterAll(async () => {
    await gw?.close();
  });

  const stillOpen = async (r: Raw): Promise<boolean> => (await Promise.race([r.closed, within(300)])) === 'timeout';
  const healthz = async (r: Raw): Promise<void> => {
    r.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await r.received(/"status":"ok"/);
  };

  it('when one address opens more than its share and then the listener is full, then the extra connections are closed at once, logged and counted, and the others are served', async () => {
    const port = gw.gateway.port;
    const first = [await raw(port), await raw(port)];
    const third = await raw(port);
    // Closed without a byte: the per-address limit.
    expect(await Promise.race([third.closed, within(5000)])).not.toBe('timeout');
    expect(third.data()).toBe('');
    for (const r of first) expect(await stillOpen(r)).toBe(true);
    // Another address still gets in, and is served.
    const other = [await raw(port, '127.0.0.2'), await raw(port, '127.0.0.2')];
    for (const r of other) await healthz(r);
    // Four open: the listener is full, whatever the address.
    const fifth = await raw(port, '127.0.0.3');
    expect(await Promise.race([fifth.closed, within(5000)])).not.toBe('timeout');
    expect(fifth.data()).toBe('');
    for (const r of first) await healthz(r);

    const metrics = (await send(`${gw.gateway.managementUrl}/metrics`)).text;
    expect(metrics).toContain('hsm_gateway_connections_refused_total{reason="per_address"} 1');
    expect(metrics).toContain('hsm_gateway_connections_refused_total{reason="max_connections"} 1');
    // One line at once for the first refusal; the second falls in the same 10 s window and waits for its summary.
    const lines = logged.lines.filter((l) => l.message === 'connections refused');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'warn', refused: { per_address: 1 }, maxConnections: 4, maxConnectionsPerAddress: 2 });
    // Closed again, and the server has seen it: 127.0.0.1 may connect again (the next test's requests).
    for (const r of [...first, ...other]) r.socket.destroy();
    const deadline = Date.now() + 5000;
    while ((await send(`${gw.url}/healthz`).then((h) => h.status, () => 0)) !== 200 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  });

  it('when a management listener is configured, then /readyz on the API port says only the state and the details and /metrics are on the management port', async () => {
    const api = await send(`${gw.url}/readyz`);
    expect(api.status).toBe(200);
    expect(Object.keys(api.json!).sort()).toEqual(['RequestId', 'status']);
    expect(api.text).not.toContain(SOFTHSM_MODULE);
    expect(api.text).not.toContain('hsm-gateway-demo');
    const apiMetrics = await send(`${gw.url}/metrics`);
    expect(apiMetrics.status).toBe(404);
    expect(apiMetrics.json!.Code).toBe('InvalidAction.NotFound');

    const details = await send(`${gw.gateway.managementUrl}/readyz`);
    expect(details.status).toBe(200);
    expect(details.json!.status).toBe('ready');
    expect(Object.keys(details.json!.tokens as object)).toContain('default');
    const metrics = await send(`${gw.gateway.managementUrl}/metrics`);
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/^hsm_gateway_build_info\{/m);
    expect((await send(`${gw.gateway.managementUrl}/`)).status).toBe(404);
  });
});

describe('a flood of idle sockets against a gateway process under ulimit -n 256', () => {
  let home: string;
  let port: number;
  let run: Running;
  beforeAll(async () => {
    home = mkdtempSync(join(tmpdir(), 'hsm-gateway-flood-'));
    port = await freePort();
    bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port });
    // The demo's config as it is: the defaults (headers within 10 s, the connection limit from the open-file limit).
    run = await startProcess('sh', ['-c', `ulimit -n 256 && exec "${process.execPath}" "${MAIN}"`], {
      env: { ...process.env, HSM_GATEWAY_CONFIG: join(home, 'gateway.yaml'), HSM_GATEWAY_WORKERS: '1' },
      ready: { url: `http://127.0.0.1:${port}/healthz` },
    });
  }, 120_000);
  afterAll(async () => {
    await run?.stop('SIGKILL');
    rmSync(home, { recursive: true, force: true });
  });

  it('when 300 idle sockets arrive, then the gateway keeps descriptors for itself, logs and counts the refusals, and serves again once they are cut', async () => {
    const flood = await Promise.all(Array.from({ length: 300 }, () => raw(port).catch(() => undefined)));
    const deadline = Date.now() + 10_000;
    while (!run.output().includes('"message":"connections refused"') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(run.output()).toContain('"message":"connections refused"');
    // 256 open files, 128 of them kept back for the token, the audit trail and the logs.
    expect(run.output()).toMatch(/"maxConnections":128/);
    // The idle sockets are cut at the headers deadline (10 s); then a signed request is answered.
    const cut = await Promise.all(flood.map((r) => r && Promise.race([r.closed, within(25_000)])));
    expect(cut.filter((c) => c === 'timeout')).toEqual([]);
    const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));
    const key = demo.keys.find((k: { keySpec: string }) => k.keySpec === 'EC_P256');
    const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
    const params = signV1(
      v1Params(demo.accessKeyId, { KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: createHash('sha256').update('flood').digest('base64') }),
      secret,
    );
    const signed = await send(`http://127.0.0.1:${port}/?${toQuery(params)}`);
    expect(signed.status).toBe(200);
    const metrics = (await send(`http://127.0.0.1:${port}/metrics`)).text;
    const refusedCount = Number(/^hsm_gateway_connections_refused_total\{reason="max_connections"\} (\d+)$/m.exec(metrics)?.[1]);
    expect(refusedCount).toBeGreaterThanOrEqual(300 - 128);
    // No accept() failed for want of a descriptor (libuv would reset those silently, or Node would throw).
    expect(run.child.exitCode).toBeNull();
    expect(run.output()).not.toMatch(/EMFILE/);
  }, 90_000);
});
