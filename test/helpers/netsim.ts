import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * The emulated network HSM (softhsm/netsim, a TEST TOOL): a PKCS#11 module that forwards every call to a real module
 * (SoftHSMv2 by default) after a configurable delay, and injects faults on command. See softhsm/netsim/README.md.
 *
 *   const token = createSoftHsmToken();
 *   Object.assign(process.env, netsimEnv({ softhsmConf: token.conf, controlDir, delayUs: 1000 }));
 *   p11.load(NETSIM_MODULE); p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
 *   const netsim = new NetsimControl(controlDir);
 *   await netsim.deviceError(500);
 *
 * The environment is read once, by the first C_Initialize of a process; the control directory reaches every process
 * that loaded the module with it (a gateway's cluster workers too).
 */
export const ROOT = resolve(import.meta.dirname, '../..');
const NETSIM_BUILD = resolve(ROOT, 'softhsm/netsim/build');
export const NETSIM_MODULE = resolve(NETSIM_BUILD, 'libnetsim-pkcs11.so');
export const NETSIM_CTL = resolve(NETSIM_BUILD, 'netsim-ctl');
export const NETSIM_TSAN_MODULE = resolve(NETSIM_BUILD, 'libnetsim-pkcs11-tsan.so');
export const NETSIM_STRESS_TSAN = resolve(NETSIM_BUILD, 'netsim-stress-tsan');

/** Runs scripts/build-netsim.sh (a no-op when up to date); `sanitize` also builds the ThreadSanitizer variants. */
export function buildNetsim(options: { sanitize?: boolean } = {}): void {
  execFileSync('bash', [resolve(ROOT, 'scripts/build-netsim.sh')], {
    cwd: ROOT,
    env: { ...process.env, NETSIM_SANITIZE: options.sanitize ? '1' : '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

interface NetsimEnvOptions {
  /** SOFTHSM2_CONF of the real module. */
  softhsmConf?: string;
  /** The real module (NETSIM_MODULE); SoftHSMv2 when absent. */
  module?: string;
  /** Where each process serves its control socket (NETSIM_CONTROL); no control channel when absent. */
  controlDir?: string;
  /** Default delay per call, µs (NETSIM_DELAY_US). */
  delayUs?: number;
  /** Per-function delays, µs: { C_Sign: 2000 } → NETSIM_DELAY_C_Sign=2000. */
  delays?: Record<string, number>;
  /** A configuration file (NETSIM_CONFIG): lines `default 1000`, `C_SignInit 500`, `module /path`, `control /dir`. */
  config?: string;
  /** Log the configuration, control commands and injected faults to stderr (NETSIM_VERBOSE). */
  verbose?: boolean;
}

/** The environment variables that configure the emulator (for process.env, a child process, or hsm.environment). */
export function netsimEnv(options: NetsimEnvOptions): Record<string, string> {
  const env: Record<string, string> = {};
  if (options.softhsmConf !== undefined) env.SOFTHSM2_CONF = options.softhsmConf;
  if (options.module !== undefined) env.NETSIM_MODULE = options.module;
  if (options.controlDir !== undefined) env.NETSIM_CONTROL = options.controlDir;
  if (options.delayUs !== undefined) env.NETSIM_DELAY_US = String(options.delayUs);
  for (const [fn, us] of Object.entries(options.delays ?? {})) env[`NETSIM_DELAY_${fn}`] = String(us);
  if (options.config !== undefined) env.NETSIM_CONFIG = options.config;
  if (options.verbose) env.NETSIM_VERBOSE = '1';
  return env;
}

export interface SoftHsmToken {
  dir: string;
  /** SOFTHSM2_CONF */
  conf: string;
  label: string;
  soPin: string;
  pin: string;
}

/** A SoftHSMv2 token in a new temporary directory, initialized with softhsm2-util (user PIN set). */
export function createSoftHsmToken(options: { label?: string; soPin?: string; pin?: string } = {}): SoftHsmToken {
  const dir = mkdtempSync(join(tmpdir(), 'netsim-softhsm-'));
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const token = { dir, conf, label: options.label ?? 'netsim-test', soPin: options.soPin ?? 'so-pin-8642', pin: options.pin ?? 'user-pin-9753' };
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', token.label, '--so-pin', token.soPin, '--pin', token.pin], {
    env: { ...process.env, SOFTHSM2_CONF: conf },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return token;
}

/** One process's answer to a command: the lines before the final "ok…", and that line. */
interface NetsimReply {
  pid: number;
  lines: string[];
  ok: string;
}

interface NetsimStatus {
  pid: number;
  module: string;
  defaultDelayUs: number;
  /** Per-function overrides, µs. */
  delays: Record<string, number>;
  hangMsLeft: number;
  deviceErrorMsLeft: number;
  /** lose-backend: away (C_Initialize fails), stuck (back, until the next re-initialization) or ok. */
  backend: 'ok' | 'away' | 'stuck';
  pending: { rv: number; pattern: string }[];
  sessionsLive: number;
  sessionsDead: number;
  sessionsInvalidated: number;
  /** Faults answered so far. */
  injected: number;
  inflight: number;
  /** The most calls inside the module at once (delays included) since the start or clear-stats. */
  maxInflight: number;
  /** Calls per function since the start or clear-stats. */
  calls: Record<string, number>;
}

class NetsimError extends Error {}

const SOCKET = /^netsim-(\d+)\.sock$/;

/** The control channel of every process that loaded the emulator with NETSIM_CONTROL=dir. */
export class NetsimControl {
  constructor(readonly dir: string) {}

  /** Sends one command line to every listening process; rejects when none listens or one answers an error. */
  async send(command: string): Promise<NetsimReply[]> {
    const replies: NetsimReply[] = [];
    for (const name of readdirSync(this.dir)) {
      const pid = SOCKET.exec(name)?.[1];
      if (!pid) continue;
      const text = await sendTo(join(this.dir, name), command);
      if (text === undefined) continue;
      const lines = text.split('\n').filter((l) => l !== '');
      const last = lines.pop() ?? '';
      if (!last.startsWith('ok')) throw new NetsimError(`netsim[${pid}] ${command}: ${last || 'no reply'}`);
      replies.push({ pid: Number(pid), lines, ok: last });
    }
    if (replies.length === 0) throw new NetsimError(`netsim ${command}: no process listens in ${this.dir}`);
    return replies;
  }

  /** The same through the command-line client (blocks the event loop: for where nothing else must run). */
  sendSync(command: string): string {
    const run = spawnSync(NETSIM_CTL, [this.dir, ...command.split(/\s+/).filter(Boolean)], { encoding: 'utf8' });
    if (run.status !== 0) throw new NetsimError(`netsim-ctl ${command}: ${run.stderr || run.stdout}`.trim());
    return run.stdout;
  }

  /** Every open session answers CKR_SESSION_HANDLE_INVALID from now on (as a YubiHSM's after 30 s idle). Their real
   * sessions are closed, so the user is logged out (SoftHSMv2 also forgets private objects' handles: find them
   * again), unless keepLogin. Resolves to the number of sessions invalidated (all processes). */
  async invalidateSessions(options: { keepLogin?: boolean } = {}): Promise<number> {
    const replies = await this.send(options.keepLogin ? 'invalidate-sessions keep-login' : 'invalidate-sessions');
    return replies.reduce((n, r) => n + Number(/invalidated=(\d+)/.exec(r.ok)?.[1] ?? 0), 0);
  }

  /** Every call answers CKR_DEVICE_ERROR for `ms` (0 ends the window). */
  async deviceError(ms: number): Promise<void> {
    await this.send(`device-error ${ms}`);
  }

  /** Every call entering within the next `ms` blocks until they are over (reset releases them early). */
  async hang(ms: number): Promise<void> {
    await this.send(`hang ${ms}`);
  }

  /** The next call (of `fn`: 'C_Sign', or 'C_Sign*' for a prefix) answers CKR_GENERAL_ERROR; once per command. */
  async generalErrorNext(fn?: string): Promise<void> {
    await this.send(fn ? `general-error-next ${fn}` : 'general-error-next');
  }

  /** The next call (of `fn`) answers `ckr` (a number or a CKR_ name the emulator knows). */
  async errorNext(ckr: number | string, fn?: string): Promise<void> {
    const code = typeof ckr === 'number' ? `0x${ckr.toString(16)}` : ckr;
    await this.send(fn ? `error-next ${code} ${fn}` : `error-next ${code}`);
  }

  /**
   * The backend goes away (tpm2-abrmd stopped behind tpm2-pkcs11): the calls that need it (sign, verify, random,
   * key generation …) answer `ckr` (CKR_GENERAL_ERROR), the library's own calls (info, sessions, login, objects) still
   * work, and C_Initialize fails. restoreBackend() brings it back, but only the next C_Finalize + C_Initialize ends
   * the errors.
   */
  async loseBackend(ckr?: number | string): Promise<void> {
    await this.send(ckr === undefined ? 'lose-backend' : `lose-backend ${typeof ckr === 'number' ? `0x${ckr.toString(16)}` : ckr}`);
  }

  /** The backend is back: C_Initialize works again; the errors of loseBackend() end at the next re-initialization. */
  async restoreBackend(): Promise<void> {
    await this.send('restore-backend');
  }

  /** Sets the default delay or a function's, in µs; 'default' removes a function's override. */
  async setDelay(fn: 'default' | string, us: number | 'default'): Promise<void> {
    await this.send(`set-delay ${fn} ${us}`);
  }

  /** No faults (hung calls are released), delays as configured at start. Sessions already invalidated stay so. */
  async reset(): Promise<void> {
    await this.send('reset');
  }

  /** Zeroes the call counters and max-inflight. */
  async clearStats(): Promise<void> {
    await this.send('clear-stats');
  }

  async status(): Promise<NetsimStatus[]> {
    return (await this.send('status')).map((r) => parseStatus(r.lines));
  }
}

function sendTo(path: string, command: string): Promise<string | undefined> {
  return new Promise((resolvePromise, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect(path);
    socket.setTimeout(30_000, () => socket.destroy(new NetsimError(`${path}: no reply in 30 s`)));
    socket.on('connect', () => socket.end(`${command}\n`));
    socket.on('data', (d) => chunks.push(d));
    socket.on('close', () => resolvePromise(Buffer.concat(chunks).toString('utf8')));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') {
        // Its process is gone.
        try {
          unlinkSync(path);
        } catch {
          /* already removed */
        }
        resolvePromise(undefined);
      } else {
        reject(err);
      }
    });
  });
}

function parseStatus(lines: string[]): NetsimStatus {
  const s: NetsimStatus = {
    pid: 0,
    module: '',
    defaultDelayUs: 0,
    delays: {},
    hangMsLeft: 0,
    deviceErrorMsLeft: 0,
    backend: 'ok',
    pending: [],
    sessionsLive: 0,
    sessionsDead: 0,
    sessionsInvalidated: 0,
    injected: 0,
    inflight: 0,
    maxInflight: 0,
    calls: {},
  };
  const numbers: Record<string, keyof NetsimStatus> = {
    pid: 'pid',
    'default-delay-us': 'defaultDelayUs',
    'hang-ms-left': 'hangMsLeft',
    'device-error-ms-left': 'deviceErrorMsLeft',
    'sessions-live': 'sessionsLive',
    'sessions-dead': 'sessionsDead',
    'sessions-invalidated': 'sessionsInvalidated',
    injected: 'injected',
    inflight: 'inflight',
    'max-inflight': 'maxInflight',
  };
  for (const line of lines) {
    const [key, a, b] = line.split(' ');
    if (key === undefined || a === undefined) continue;
    if (key in numbers) (s as unknown as Record<string, number>)[numbers[key]!] = Number(a);
    else if (key === 'module') s.module = line.slice('module '.length);
    else if (key === 'backend') s.backend = a as NetsimStatus['backend'];
    else if (key === 'delay-us' && b !== undefined) s.delays[a] = Number(b);
    else if (key === 'calls' && b !== undefined) s.calls[a] = Number(b);
    else if (key === 'pending' && b !== undefined) s.pending.push({ rv: Number(a), pattern: b });
  }
  return s;
}
