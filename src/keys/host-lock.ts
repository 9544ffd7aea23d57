import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileLocks } from '../hsm/async-pkcs11.js';
import type { ChangeLock } from './change-lock.js';
import { LifecycleError } from './errors.js';

/**
 * Registry changes of the processes that share one SoftHSMv2 token take turns through an exclusive lock on a file in its
 * token directory. Why: SoftHSMv2 2.6.1 can hide from a process an object another process created just before that
 * process's own write, until a third write or a re-initialization (bench/README "Objects two processes create at once"),
 * which leaves the token store's compare-and-swap (registry-cas.ts) a window of a millisecond where two writers both
 * win. Every process that shares a SoftHSMv2 token shares its token directory, so a lock there serializes them all —
 * gateways, cluster workers and the CLI alike — with no Redis; the kernel releases it when its holder dies (flock(2)),
 * so a killed writer never blocks the others. Other modules show objects across processes at once: there the
 * compare-and-swap alone is sound, and no file is shared anyway.
 */

/** The lock file, beside SoftHSMv2's token folders (it lists only folders there, and only `.object` files inside them). */
export const REGISTRY_LOCK_FILE = 'hsm-gateway-registry.lock';

/**
 * SoftHSMv2's token directory as the module finds it: `directories.tokendir` of the configuration file named by
 * $SOFTHSM2_CONF, else ~/.config/softhsm2/softhsm2.conf when it exists, else /etc/softhsm/softhsm2.conf (2.6.1's
 * SimpleConfigLoader::getConfigPath). Undefined when the file or the setting is missing.
 */
export function softhsmTokenDirectory(env: NodeJS.ProcessEnv = process.env, home: string = homedir()): string | undefined {
  const user = join(home, '.config', 'softhsm2', 'softhsm2.conf');
  const file = env.SOFTHSM2_CONF || (existsSync(user) ? user : '/etc/softhsm/softhsm2.conf');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split(/\r?\n/)) {
    // As SoftHSMv2 reads it: a line ends at '#'; `name = value`, both trimmed.
    const [name, value] = line.replace(/#.*/, '').split('=');
    if (name?.trim() === 'directories.tokendir' && value?.trim()) return value.trim();
  }
  return undefined;
}

interface HostLockOptions {
  /** How long a change waits for another process's before it answers 503. */
  waitMs?: number;
  /** The lock file cannot be used (a read-only or foreign directory): said once; changes then go on unserialized. */
  unusable(reason: string): void;
  /** Injected by tests; the addon's flock otherwise. */
  locks?: { lock(path: string): number | null; unlock(fd: number): void };
}

/**
 * A ChangeLock on `path`: polls the non-blocking flock (2 ms, doubling to 50 ms) up to waitMs. Where the file cannot
 * be opened at all, the change runs without it (the compare-and-swap still decides) and `unusable` is told once.
 */
export function hostFileLock(path: string, options: HostLockOptions): ChangeLock {
  const waitMs = options.waitMs ?? 10_000;
  let locks = options.locks;
  let usable = true;
  return async (work) => {
    if (!usable) return work();
    locks ??= fileLocks();
    const deadline = Date.now() + waitMs;
    let fd: number | null;
    for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
      try {
        fd = locks.lock(path);
      } catch (err) {
        usable = false;
        options.unusable(`${path}: ${(err as Error).message}`);
        return work();
      }
      if (fd !== null) break;
      if (Date.now() + delay > deadline) throw new LifecycleError('unavailable', 'another process is changing the registry on this token; try again');
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
    try {
      return await work();
    } finally {
      locks.unlock(fd);
    }
  };
}
