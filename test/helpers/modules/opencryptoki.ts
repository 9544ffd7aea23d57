import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { digits, findCommand, findFile, findLibrary, missing, ModuleUnavailableError, pkcs11ToolKeyPair, run, startDaemon, type Daemon, type ModuleInstance } from './common.js';

/**
 * openCryptoki has no per-user or per-directory instance: pkcsslotd reads /etc/opencryptoki/opencryptoki.conf and
 * listens on /var/run/pkcsslotd.socket, the soft token keeps its objects in /var/lib/opencryptoki/swtok (all three
 * paths compiled in, 3.8.1). So this helper takes the machine's soft token, one user at a time (a lock file), and
 * only when it is unused or was made by this helper (label below): any other token there is left alone.
 */
const CONF = '/etc/opencryptoki/opencryptoki.conf';
const SOCKET = '/var/run/pkcsslotd.socket';
const PID_FILE = '/var/run/pkcsslotd.pid';
const TOKEN_DIR = '/var/lib/opencryptoki/swtok';
const LOCK = join(tmpdir(), 'hsm-gateway-matrix-opencryptoki.lock');
const OPENCRYPTOKI_TOKEN_LABEL = 'hsmgw-matrix';
/**
 * The soft token's default SO PIN. It stays the SO PIN: openCryptoki 3.8 re-initializes a token (C_InitToken,
 * `pkcsconf -I`) cleanly only from the default; once the SO PIN was changed, a re-initialization leaves a token
 * whose SO and user logins both fail (measured), and only deleting its files recovers it.
 */
const OPENCRYPTOKI_DEFAULT_SO_PIN = '87654321';

export function opencryptokiMissing(): string | undefined {
  const absent = missing([
    ['pkcs11/libopencryptoki.so', findLibrary('pkcs11/libopencryptoki.so'), 'opencryptoki'],
    ['opencryptoki/stdll/libpkcs11_sw.so.0', findLibrary('opencryptoki/stdll/libpkcs11_sw.so.0'), 'libopencryptoki0'],
    ['pkcsslotd', findCommand('pkcsslotd'), 'opencryptoki'],
    ['pkcsconf', findCommand('pkcsconf'), 'opencryptoki'],
    [CONF, findFile(CONF), 'opencryptoki'],
    ['flock', findCommand('flock'), 'util-linux'],
  ]);
  if (absent) return absent;
  if (softTokenSlot() === undefined) return `${CONF} defines no slot with stdll = libpkcs11_sw.so (the soft token)`;
  try {
    accessSync(TOKEN_DIR, constants.R_OK | constants.W_OK);
  } catch {
    return `${TOKEN_DIR} is not writable by this user: run as root or as a member of the group pkcs11`;
  }
  return undefined;
}

/** The slot number of the soft token in opencryptoki.conf (Debian's: 3). */
function softTokenSlot(): number | undefined {
  const conf = readFileSync(CONF, 'utf8').replace(/#.*$/gm, '');
  for (const m of conf.matchAll(/slot\s+(\d+)\s*\{([^}]*)\}/g)) {
    if (/stdll\s*=\s*(PKCS11_SW\.so|libpkcs11_sw\.so)\b/.test(m[2]!)) return Number(m[1]);
  }
  return undefined;
}

/** The pid of a live pkcsslotd (from its pid file), or undefined. */
function runningSlotDaemon(): number | undefined {
  if (!existsSync(PID_FILE) || !existsSync(SOCKET)) return undefined;
  const pid = Number(readFileSync(PID_FILE, 'utf8').trim());
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state …": a zombie (Z) is not running.
    const m = /^\d+ \((.*)\) (\S)/.exec(stat);
    return m && m[1] === 'pkcsslotd' && m[2] !== 'Z' ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Holds an exclusive lock (flock(1)) until release(); the lock goes with this process if it dies. */
async function lock(path: string): Promise<{ release(): void }> {
  // flock holds the lock while `cat` reads its stdin, a pipe from this process: closing it (or dying) releases it.
  const child: ChildProcess = spawn('flock', ['-x', '-w', '600', path, '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((ok, fail) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('locked')) ok();
    });
    child.once('exit', (code) => fail(new Error(`could not take the lock ${path} (flock exited ${code})`)));
  });
  return { release: () => child.stdin!.end() };
}

function tokenState(slot: number): { label: string; initialized: boolean; flags: string } {
  const out = run('pkcsconf', ['-t', '-c', String(slot)]).stdout;
  const label = /Label:\s*(.*?)\s*$/m.exec(out)?.[1] ?? '';
  const flags = /Flags:\s*(.*)$/m.exec(out)?.[1] ?? '';
  return { label, initialized: /\bTOKEN_INITIALIZED\b/.test(flags), flags };
}

/**
 * The machine's openCryptoki soft token, re-initialized (every object gone) with a new user PIN. pkcsslotd is
 * started (as this process's child, in the foreground) when it is not running, and stopped again by close(); then
 * it is also the backend. Instances are serialized across processes by a lock file held until close().
 */
export async function startOpenCryptoki(): Promise<ModuleInstance> {
  const reason = opencryptokiMissing();
  if (reason) throw new ModuleUnavailableError('opencryptoki', reason);
  const modulePath = findLibrary('pkcs11/libopencryptoki.so')!;
  const slot = softTokenSlot()!;
  const held = await lock(LOCK);
  let slotd: Daemon | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-matrix-opencryptoki-'));
  const startSlotDaemon = async (): Promise<void> => {
    slotd = await startDaemon('pkcsslotd', 'pkcsslotd', ['-f'], {
      // Ready once it wrote its own pid and listens (a socket left by an earlier daemon is removed at its start).
      ready: (_, child) => existsSync(SOCKET) && existsSync(PID_FILE) && readFileSync(PID_FILE, 'utf8').trim() === String(child.pid),
    });
  };
  const release = async (): Promise<void> => {
    await slotd?.stop();
    held.release();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const owned = runningSlotDaemon() === undefined;
    if (owned) {
      if (process.getuid?.() !== 0) throw new ModuleUnavailableError('opencryptoki', 'pkcsslotd is not running and only root may start it (systemctl start pkcsslotd)');
      await startSlotDaemon();
    }
    const state = tokenState(slot);
    if (state.initialized && state.label !== OPENCRYPTOKI_TOKEN_LABEL) {
      throw new ModuleUnavailableError('opencryptoki', `the soft token (slot ${slot}) is initialized as "${state.label}", not by these tests: left alone`);
    }
    // pkcsconf -I asks for the label on stdin; C_InitToken deletes every object of the token.
    const init = run('pkcsconf', ['-I', '-c', String(slot), '-S', OPENCRYPTOKI_DEFAULT_SO_PIN], { input: `${OPENCRYPTOKI_TOKEN_LABEL}\n`, allowFailure: true });
    if (init.status !== 0) {
      throw new ModuleUnavailableError(
        'opencryptoki',
        `pkcsconf -I with the default SO PIN failed (${(init.stdout + init.stderr).trim()}): the soft token's SO PIN was changed; ` +
          `with pkcsslotd stopped, delete ${TOKEN_DIR}/NVTOK.DAT, MK_* and TOK_OBJ/* to start it afresh`,
      );
    }
    const pin = digits(8);
    run('pkcsconf', ['-u', '-c', String(slot), '-S', OPENCRYPTOKI_DEFAULT_SO_PIN, '-n', pin]);
    return {
      name: 'opencryptoki',
      title: 'openCryptoki soft token (pkcsslotd)',
      modulePath,
      tokenLabel: OPENCRYPTOKI_TOKEN_LABEL,
      pin,
      soPin: OPENCRYPTOKI_DEFAULT_SO_PIN,
      env: {},
      dir,
      ...(owned
        ? {
            backend: {
              name: 'pkcsslotd',
              stop: async () => {
                await slotd?.stop();
                slotd = undefined;
              },
              start: startSlotDaemon,
            },
          }
        : {}),
      async toolKeyPair(spec, label, idHex) {
        return pkcs11ToolKeyPair(modulePath, ['--slot', String(slot)], pin, spec, label, idHex, {});
      },
      close: release,
    };
  } catch (err) {
    await release();
    throw err;
  }
}
