import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';

/**
 * What every module helper of the module matrix returns: a fresh, isolated instance of one PKCS#11 module with one
 * initialized token, and what a process (the test itself, a gateway, the admin CLI) needs to use it.
 */
export interface ModuleInstance {
  /** softhsm | opencryptoki | tpm2 | p11-kit | nss */
  name: ModuleName;
  /** What it is, for tables and skip messages. */
  title: string;
  modulePath: string;
  tokenLabel: string;
  pin: string;
  soPin: string;
  /** Environment a process needs before C_Initialize (the test sets it in process.env; children inherit it). */
  env: Record<string, string>;
  /** C_Initialize's pReserved (pkcs11js `libraryParameters`; the gateway's hsm.initArgs). */
  initArgs?: string;
  /** The process behind the module, where there is one: stopping it is "the HSM went away". */
  backend?: { name: string; stop(): Promise<void>; start(): Promise<void> };
  /** The instance's own temp directory (configs, secrets, the module's store where it has one). */
  dir: string;
  /** Makes a signing key pair the module's own way (its tool, or pkcs11-tool): what "bring your own key" imports. */
  toolKeyPair(spec: 'RSA_2048' | 'EC_P256', label: string, idHex: string): Promise<{ tool: string; label: string; idHex?: string }>;
  /** Stops what the instance started and removes its files. */
  close(): Promise<void>;
}

export type ModuleName = 'softhsm' | 'opencryptoki' | 'tpm2' | 'p11-kit' | 'nss';

/** The module is not installed (or cannot run here): the suite skips it and prints this reason. */
export class ModuleUnavailableError extends Error {
  constructor(
    readonly module: ModuleName,
    reason: string,
  ) {
    super(`${module}: ${reason}`);
    this.name = 'ModuleUnavailableError';
  }
}

/** The multiarch library directories of this machine (/usr/lib/x86_64-linux-gnu, …), then the plain ones. */
function libraryDirs(): string[] {
  const multiarch = existsSync('/usr/lib') ? readdirSync('/usr/lib').filter((d) => /-linux-gnu/.test(d)).map((d) => `/usr/lib/${d}`) : [];
  return [...multiarch, '/usr/lib64', '/usr/lib'];
}

/** A library by its path below a library directory ("pkcs11/libtpm2_pkcs11.so"), or undefined. */
export function findLibrary(relative: string): string | undefined {
  return libraryDirs()
    .map((dir) => `${dir}/${relative}`)
    .find((path) => existsSync(path));
}

/** The path if the file exists, else undefined. */
export const findFile = (path: string): string | undefined => (existsSync(path) ? path : undefined);

/** An executable on PATH (or an absolute path), or undefined. */
export function findCommand(command: string): string | undefined {
  const candidates = command.startsWith('/') ? [command] : [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'].map((d) => `${d}/${command}`);
  return candidates.find((path) => {
    try {
      accessSync(path, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * Checks what a module needs; returns the reason it cannot run (naming the Debian packages), or undefined.
 * `needs`: [what, found, package].
 */
export function missing(needs: Array<[string, string | undefined, string]>): string | undefined {
  const absent = needs.filter(([, found]) => found === undefined);
  if (absent.length === 0) return undefined;
  const packages = [...new Set(absent.map(([, , pkg]) => pkg))];
  return `not installed: ${absent.map(([what]) => what).join(', ')} (Debian: apt-get install ${packages.join(' ')}; scripts/setup-modules.sh does it as root)`;
}

interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion; throws with its output unless it exits 0 (or `allowFailure`). */
export function run(command: string, args: string[], options: { env?: Record<string, string>; input?: string; cwd?: string; allowFailure?: boolean } = {}): RunResult {
  const r = spawnSync(command, args, {
    env: { ...process.env, ...options.env },
    input: options.input,
    cwd: options.cwd,
    encoding: 'utf8',
    timeout: 120_000,
  });
  const result = { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  if (r.error) throw new Error(`${command} ${args.join(' ')}: ${r.error.message}`);
  if (!options.allowFailure && r.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${r.status}:\n${result.stdout}${result.stderr}`);
  }
  return result;
}

/** A long-running child process (a daemon in the foreground), its output kept for error messages. */
export interface Daemon {
  name: string;
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts a daemon in the foreground and waits until `ready` says so (polled every 25 ms, 20 s at most). The
 * daemon is this process's child: stop() ends exactly it (SIGTERM, then SIGKILL after 3 s), or its process group.
 */
export async function startDaemon(
  name: string,
  command: string,
  args: string[],
  options: {
    env?: Record<string, string>;
    ready: (output: string, child: ChildProcess) => boolean | Promise<boolean>;
    /** The daemon forks a child per client (p11-kit server): stop() ends its whole process group. */
    processGroup?: boolean;
  },
): Promise<Daemon> {
  const child = spawn(command, args, { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'], detached: options.processGroup ?? false });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  const spawned = await new Promise<Error | undefined>((ok) => {
    child.once('spawn', () => ok(undefined));
    child.once('error', (err) => ok(err));
  });
  if (spawned) throw new Error(`${name} (${command}) did not start: ${spawned.message}`);
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${name} exited early (${child.exitCode ?? child.signalCode}):\n${out}`);
    if (await options.ready(out, child)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${name} did not become ready in 20 s:\n${out}`);
    }
    await sleep(25);
  }
  return {
    name,
    child,
    output: () => out,
    async stop() {
      const signal = (name: NodeJS.Signals): void => {
        try {
          // The daemon's own process group (it leads it: spawned detached), else the daemon alone.
          if (options.processGroup) process.kill(-child.pid!, name);
          else child.kill(name);
        } catch {
          // Gone already.
        }
      };
      if (child.exitCode === null && child.signalCode === null) {
        signal('SIGTERM');
        const killer = setTimeout(() => signal('SIGKILL'), 3000);
        await exited;
        clearTimeout(killer);
      }
      // The group's other members (the daemon's per-client children) get the signal too, exited or not.
      if (options.processGroup) signal('SIGTERM');
    },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function tcpOpen(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      ok(true);
    });
    socket.once('error', () => ok(false));
  });
}

function portFree(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const server = createServer();
    server.once('error', () => ok(false));
    server.listen(port, '127.0.0.1', () => server.close(() => ok(true)));
  });
}

/** Two consecutive free TCP ports (swtpm's TCTI finds the control channel at port + 1). */
export async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20000 + 2 * Math.floor(Math.random() * 15000);
    if ((await portFree(port)) && (await portFree(port + 1))) return port;
  }
  throw new Error('no two consecutive free TCP ports found');
}

/** A PIN of `length` decimal digits (openCryptoki's soft token takes 4 to 8 characters). */
export function digits(length: number): string {
  let pin = '';
  while (pin.length < length) pin += Math.floor(Math.random() * 10).toString();
  return pin;
}

/** pkcs11-tool's key pair generation, signing keys only: `--usage-sign`. */
export function pkcs11ToolKeyPair(
  modulePath: string,
  select: string[],
  pin: string,
  spec: 'RSA_2048' | 'EC_P256',
  label: string,
  idHex: string,
  env: Record<string, string>,
): { tool: string; label: string; idHex: string } {
  const keyType = spec === 'RSA_2048' ? 'rsa:2048' : 'EC:prime256v1';
  run('pkcs11-tool', ['--module', modulePath, ...select, '--login', '--pin', pin, '--keypairgen', '--key-type', keyType, '--label', label, '--id', idHex, '--usage-sign'], { env });
  return { tool: `pkcs11-tool --keypairgen --key-type ${keyType} --usage-sign`, label, idHex };
}
