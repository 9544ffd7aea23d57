import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startProcess, type Running } from './processes.js';

/**
 * A real PostgreSQL for the tests: Debian's server binaries (package `postgresql`, installed by `npm test` →
 * scripts/setup.sh test), a cluster made by initdb in a temp dir, owned by the unprivileged `postgres` user (the
 * server refuses to run as root), on its own port and socket directory, stopped and removed at the end.
 */
export interface TestPostgres {
  /** postgres://hsm_gateway:<password>@127.0.0.1:<port>/hsm_gateway */
  url: string;
  port: number;
  password: string;
  /** Stops the server as a crash would (SIGKILL), keeping its data. */
  kill(): Promise<void>;
  /** Starts it again on the same data and port. */
  restart(): Promise<void>;
  /** Runs SQL as the superuser (psql over the socket); returns stdout. */
  psql(sql: string, database?: string): string;
  /** pg_dump of the gateway's database as INSERTs: what a stolen backup holds (tests grep it for secrets). */
  dump(): string;
  close(): Promise<void>;
}

/** Where Debian keeps the server binaries: /usr/lib/postgresql/<version>/bin (not on PATH). */
function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin/initdb'))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (!newest) {
    throw new Error('PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin/initdb): `npm test` installs them (scripts/setup.sh test, as root), or `apt-get install postgresql`');
  }
  return join(root, newest, 'bin');
}

const USER = 'postgres';
const asPostgres = (args: string[]): string[] => (process.getuid?.() === 0 ? ['runuser', '-u', USER, '--', ...args] : args);

export async function startPostgres(): Promise<TestPostgres> {
  const bin = postgresBinDir();
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-pg-'));
  const data = join(dir, 'data');
  const password = `pw-${process.pid}-${Date.now().toString(36)}`;
  const pwfile = join(dir, 'superuser-password');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (process.getuid?.() === 0) {
    const { uid, gid } = userIds(USER);
    chownSync(dir, uid, gid);
    chownSync(pwfile, uid, gid);
  }
  const [cmd, ...args] = asPostgres([join(bin, 'initdb'), '-D', data, '-U', USER, '--auth=scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync']);
  execFileSync(cmd!, args, { stdio: 'pipe' });
  const port = await freePort();
  let server: Running | undefined;
  const start = async (): Promise<void> => {
    const [c, ...a] = asPostgres([join(bin, 'postgres'), '-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off']);
    server = await startProcess(c!, a, { ready: /database system is ready to accept connections/ });
  };
  await start();
  const psql = (sql: string, database = 'postgres'): string =>
    execFileSync('psql', ['-h', dir, '-p', String(port), '-U', USER, '-d', database, '-v', 'ON_ERROR_STOP=1', '-qtAc', sql], {
      env: { ...process.env, PGPASSWORD: password },
      encoding: 'utf8',
    });
  psql(`CREATE ROLE hsm_gateway LOGIN PASSWORD '${password}'`);
  psql('CREATE DATABASE hsm_gateway OWNER hsm_gateway');
  return {
    url: `postgres://hsm_gateway:${password}@127.0.0.1:${port}/hsm_gateway`,
    port,
    password,
    psql,
    dump: () =>
      execFileSync(join(bin, 'pg_dump'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'hsm_gateway', '--inserts', 'hsm_gateway'], {
        env: { ...process.env, PGPASSWORD: password },
        encoding: 'utf8',
        maxBuffer: 64 * 1024 * 1024,
      }),
    async kill() {
      // The postmaster itself (runuser, which started it as the postgres user, would not pass SIGKILL on).
      process.kill(postmasterPid(data), 'SIGKILL');
      await server?.exited;
      // The killed postmaster's children (backends) may still hold the port for a moment: wait until they are gone.
      for (let i = 0; i < 100 && childrenOf(data); i++) await new Promise((r) => setTimeout(r, 50));
    },
    restart: start,
    async close() {
      if (server?.child.exitCode === null) {
        process.kill(postmasterPid(data), 'SIGINT'); // fast shutdown
        await server.exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The first line of postmaster.pid: the server's process id. */
function postmasterPid(data: string): number {
  return Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
}

function userIds(name: string): { uid: number; gid: number } {
  const id = (flag: string): number => Number(execFileSync('id', [flag, name], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** Whether any process still runs with this data directory on its command line (a backend of a killed server). */
function childrenOf(data: string): boolean {
  try {
    return execFileSync('pgrep', ['-f', data], { encoding: 'utf8' }).trim().length > 0;
  } catch {
    return false;
  }
}
