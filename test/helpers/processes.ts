import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { resolve } from 'node:path';

/** Real processes for the tests: the gateway as `npm start` runs it, redis-server, prometheus. */

/** The entry point `npm start` runs (it sizes the libuv pool, then loads dist/main.js). */
export const MAIN = resolve(import.meta.dirname, '../../bin/hsm-gateway.cjs');

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => ok(port));
    });
  });
}

export interface Running {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Spawns a process and waits until its output contains `ready` (or it dies, or 60 s pass). */
export async function startProcess(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; ready: string | RegExp | { url: string } },
): Promise<Running> {
  const child = spawn(command, args, { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
  const ready = options.ready;
  const isReady = async (): Promise<boolean> => {
    if (typeof ready === 'string') return out.includes(ready);
    if (ready instanceof RegExp) return ready.test(out);
    return fetch(ready.url).then((r) => r.ok, () => false);
  };
  const deadline = Date.now() + 60_000;
  while (!(await isReady())) {
    if (child.exitCode !== null) throw new Error(`${command} exited early:\n${out}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${command} did not become ready:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    output: () => out,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/**
 * The gateway process (bin/hsm-gateway.cjs) with the given environment (HSM_GATEWAY_HOME / HSM_GATEWAY_CONFIG /
 * HSM_GATEWAY_PORT …). One process unless the test asks for workers (HSM_GATEWAY_WORKERS; cluster.test.ts does):
 * the tests of single-process behaviour (token faults, logs) stay what they were on a many-core machine.
 */
export function startGatewayProcess(env: NodeJS.ProcessEnv): Promise<Running> {
  const ready = env.HSM_GATEWAY_PORT ? { url: `http://127.0.0.1:${env.HSM_GATEWAY_PORT}/healthz` } : '"message":"listening"';
  return startProcess(process.execPath, [MAIN], { env: { ...process.env, HSM_GATEWAY_CONFIG: '', HSM_GATEWAY_WORKERS: '1', ...env }, ready });
}

export function startRedis(port: number): Promise<Running> {
  return startProcess('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    ready: 'Ready to accept connections',
  });
}
