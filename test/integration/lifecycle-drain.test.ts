import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { opensslVerifyDigest } from '../helpers/openssl.js';
import { freePort, startGatewayProcess, type Running } from '../helpers/processes.js';
import { signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// SIGTERM while a request's body is still on the wire (issue #18, item 7), on the gateway as `npm start` runs it,
// alone and as a node:cluster primary with two workers. The request's headers are taken (100 Continue) and half its
// body sent; then the signal; once every serving process has begun to drain and closed its idle connections, the rest
// of the body follows. The request must be answered — its signature, with `Connection: close` — and the gateway must
// exit 0 well before server.shutdownTimeoutMs.
//
// Signalled two ways: the gateway's own process only (`kill <pid>`, a container runtime), and the whole process group
// (systemd's default KillMode=control-group, Ctrl-C in a terminal, `kill -- -<pgid>`), where each worker gets the
// signal itself and again from the primary, which passes it on.

const SHUTDOWN_TIMEOUT_MS = 20_000;
const DRAINING = /"message":"shutting down: no new connections; answering the requests in flight"/g;
/** A serving process's line (the primary's says "signal received: draining the workers"). */
const SIGNALLED = /"message":"signal received"/g;

let home: string;
let demo: DemoInfo;
let secret: string;
let run: Running | undefined;

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-drain-'));
  demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
});
afterEach(async () => {
  await run?.stop('SIGKILL');
  run = undefined;
});
afterAll(() => {
  rmSync(home, { recursive: true, force: true });
});

/** The demo gateway with `workers` serving processes, once every one of them listens. */
async function startGateway(workers: number): Promise<{ gateway: Running; port: number }> {
  const port = await freePort();
  const config = parse(readFileSync(join(home, 'gateway.yaml'), 'utf8'));
  config.server.workers = workers;
  config.server.shutdownTimeoutMs = SHUTDOWN_TIMEOUT_MS;
  config.logging = { level: 'info' };
  const file = join(home, `drain-${workers}.yaml`);
  writeFileSync(file, stringify(config));
  run = await startGatewayProcess({ HSM_GATEWAY_CONFIG: file, HSM_GATEWAY_PORT: String(port), HSM_GATEWAY_WORKERS: '' });
  await logged(run, /"message":"listening"/g, workers, 60_000);
  return { gateway: run, port };
}

/** Waits until the output holds `count` lines matching `pattern`; throws if the gateway exits first. */
async function logged(r: Running, pattern: RegExp, count: number, withinMs = 10_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while ((r.output().match(pattern) ?? []).length < count) {
    if (r.child.exitCode !== null || r.child.signalCode !== null) throw new Error(`the gateway exited before ${count} × ${pattern}:\n${r.output().slice(-3000)}`);
    if (Date.now() > deadline) throw new Error(`fewer than ${count} × ${pattern}:\n${r.output().slice(-3000)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The primary's children: the cluster's workers. */
function workerPids(primary: number): number[] {
  const ppidOf = (pid: string): number | undefined => {
    try {
      // /proc/<pid>/stat: "pid (comm) state ppid …"; comm may hold spaces, so split after its closing parenthesis.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      return undefined; // gone meanwhile
    }
  };
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry) && ppidOf(entry) === primary)
    .map(Number);
}

/** A raw TCP client: what it received, and when the server closed the connection. */
function connect(port: number): Promise<{ socket: net.Socket; data: () => string; closed: Promise<void>; received: (p: RegExp) => Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (text += d));
    const closed = new Promise<void>((ok) => socket.once('close', () => ok()));
    const received = async (pattern: RegExp): Promise<void> => {
      const deadline = Date.now() + 15_000;
      while (!pattern.test(text)) {
        if (Date.now() > deadline || socket.destroyed) throw new Error(`never received ${pattern}; got ${JSON.stringify(text)}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    socket.once('connect', () => {
      socket.on('error', () => {}); // a reset shows as a close without the answer
      resolve({ socket, data: () => text, closed, received });
    });
    socket.once('error', reject);
  });
}

type Delivery = (gateway: Running, workers: number) => Promise<void>;

/** SIGTERM to the gateway's process only (the primary, in a cluster). */
const toTheProcess: Delivery = async (gateway, workers) => {
  gateway.child.kill('SIGTERM');
  await logged(gateway, DRAINING, workers);
};

/**
 * SIGTERM to the process group: each worker gets its own, then the primary gets its and passes another on (the order
 * made fixed here: signals sent together may merge into one). One process alone: the signal sent twice.
 */
const toTheGroup: Delivery = async (gateway, workers) => {
  const pids = workers > 1 ? workerPids(gateway.child.pid!) : [gateway.child.pid!];
  expect(pids).toHaveLength(workers);
  for (const pid of pids) process.kill(pid, 'SIGTERM');
  await logged(gateway, DRAINING, workers);
  await logged(gateway, SIGNALLED, workers);
  for (const pid of workers > 1 ? [gateway.child.pid!] : pids) process.kill(pid, 'SIGTERM');
  // The second signal reached every serving process (the primary passed it on).
  await logged(gateway, SIGNALLED, 2 * workers);
};

describe.each([
  { mode: 'one process (server.workers = 1)', workers: 1, signal: 'SIGTERM to the process', deliver: toTheProcess },
  { mode: 'one process (server.workers = 1)', workers: 1, signal: 'SIGTERM twice', deliver: toTheGroup },
  { mode: 'node:cluster (server.workers = 2)', workers: 2, signal: 'SIGTERM to the primary', deliver: toTheProcess },
  { mode: 'node:cluster (server.workers = 2)', workers: 2, signal: 'SIGTERM to the process group', deliver: toTheGroup },
])('$mode, $signal, with a request body half sent', ({ workers, deliver }) => {
  it('when the rest of the body arrives during the drain, then the request is answered with its signature and Connection: close, and the gateway exits 0 before the deadline', async () => {
    const { gateway, port } = await startGateway(workers);
    const key = demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    const digest = createHash('sha256').update(`drain ${Math.random()}`).digest();
    const form = toQuery(
      signV1(v1Params(demo.accessKeyId, { KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: digest.toString('base64') }), secret, 'POST'),
    );
    const half = Math.floor(form.length / 2);

    const client = await connect(port);
    client.socket.write(
      `POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${Buffer.byteLength(form)}\r\nExpect: 100-continue\r\n\r\n`,
    );
    // 100 Continue: a serving process parsed the headers; the request is in flight there.
    await client.received(/^HTTP\/1\.1 100 Continue\r\n\r\n$/);
    client.socket.write(form.slice(0, half));

    const signalled = Date.now();
    await deliver(gateway, workers);
    // Past the drain's grace for connections not parsed yet (250 ms): the idle connections are closed. Ours must not be.
    await new Promise((r) => setTimeout(r, 1000));
    expect(client.socket.destroyed).toBe(false);

    client.socket.write(form.slice(half));
    await client.received(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 \d{3} [^]*\r\n\r\n\{[^]*\}$/);
    const answer = client.data().replace(/^HTTP\/1\.1 100 Continue\r\n\r\n/, '');
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer).toMatch(/\r\nconnection: close\r\n/i);
    const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { KeyId: string; Value: string };
    expect(body.KeyId).toBe(key.keyId);
    expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature: Buffer.from(body.Value, 'base64') })).toContain('Signature Verified Successfully');
    await client.closed;

    expect(await gateway.exited).toBe(0);
    // Well before the deadline: nothing but this request held the drain (bounds generous for a loaded machine).
    expect(Date.now() - signalled).toBeLessThan(SHUTDOWN_TIMEOUT_MS - 5000);
    // Every serving process stopped, then (in a cluster) the primary.
    expect((gateway.output().match(/"message":"stopped"/g) ?? []).length).toBe(workers === 1 ? 1 : workers + 1);
  }, 120_000);
});
