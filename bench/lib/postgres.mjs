// A throw-away PostgreSQL for the benches (the same recipe as test/helpers/postgres.ts, which the benches cannot
// import: it is TypeScript): Debian's server binaries, initdb into a temp dir owned by the unprivileged `postgres`
// user, its own port, fsync off; stopped and removed by close().
import { execFileSync, spawn } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, sleep } from './common.mjs';

const USER = 'postgres';
const asPostgres = (args) => (process.getuid?.() === 0 ? ['runuser', '-u', USER, '--', ...args] : args);

function binDir() {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin/initdb'))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (!newest) throw new Error('PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin): scripts/setup.sh test installs them');
  return { bin: join(root, newest, 'bin'), version: newest };
}

/** Starts the server; resolves with its URL (no password in it), the password, the version, and close(). */
export async function startPostgres() {
  const { bin, version } = binDir();
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-bench-pg-'));
  const data = join(dir, 'data');
  const password = `pw-${process.pid}-${Date.now().toString(36)}`;
  const pwfile = join(dir, 'superuser-password');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (process.getuid?.() === 0) {
    const id = (flag) => Number(execFileSync('id', [flag, USER], { encoding: 'utf8' }).trim());
    chownSync(dir, id('-u'), id('-g'));
    chownSync(pwfile, id('-u'), id('-g'));
  }
  const [initdb, ...initArgs] = asPostgres([join(bin, 'initdb'), '-D', data, '-U', USER, '--auth=scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync']);
  execFileSync(initdb, initArgs, { stdio: 'pipe' });
  const port = await freePort();
  const [cmd, ...args] = asPostgres([join(bin, 'postgres'), '-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off']);
  const server = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise((r) => server.once('exit', r));
  let log = '';
  server.stderr.on('data', (chunk) => (log += chunk));
  for (let i = 0; !/database system is ready to accept connections/.test(log); i++) {
    if (i > 300) throw new Error(`PostgreSQL did not start:\n${log}`);
    await sleep(100);
  }
  const psql = (sql, database = 'postgres') =>
    execFileSync('psql', ['-h', dir, '-p', String(port), '-U', USER, '-d', database, '-v', 'ON_ERROR_STOP=1', '-qtAc', sql], { env: { ...process.env, PGPASSWORD: password }, encoding: 'utf8' });
  psql(`CREATE ROLE hsm_gateway LOGIN PASSWORD '${password}'`);
  psql('CREATE DATABASE hsm_gateway OWNER hsm_gateway');
  return {
    url: `postgres://hsm_gateway@127.0.0.1:${port}/hsm_gateway`,
    password,
    version,
    psql,
    async close() {
      const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(pid, 'SIGINT'); // fast shutdown of the postmaster itself (runuser would not pass the signal on)
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
