import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ASYNC_PKCS11_ADDON } from '../../src/hsm/async-pkcs11.js';
import { LifecycleError } from '../../src/keys/errors.js';
import { hostFileLock, softhsmTokenDirectory } from '../../src/keys/host-lock.js';

let dir: string;
const children: ChildProcess[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-host-lock-'));
});

afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** Another process that takes the lock on `path` with the same addon and keeps it until it is killed. */
async function holderOf(path: string): Promise<ChildProcess> {
  const script = `const a = require(${JSON.stringify(ASYNC_PKCS11_ADDON)}); const fd = a.lockFile(${JSON.stringify(path)}); console.log(fd === null ? 'busy' : 'held'); setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const { value } = await createInterface({ input: child.stdout! })[Symbol.asyncIterator]().next();
  expect(value).toBe('held');
  return child;
}

const quiet = { unusable: () => undefined };

describe('softhsmTokenDirectory', () => {
  it('reads directories.tokendir from $SOFTHSM2_CONF as SoftHSMv2 does: comments dropped, name and value trimmed', () => {
    const conf = join(dir, 'softhsm2.conf');
    writeFileSync(conf, '# SoftHSM v2 configuration file\n\nlog.level = ERROR\n  directories.tokendir =  /var/lib/tokens  # where\nobjectstore.backend = file\n');
    expect(softhsmTokenDirectory({ SOFTHSM2_CONF: conf }, dir)).toBe('/var/lib/tokens');
  });

  it('without $SOFTHSM2_CONF, takes ~/.config/softhsm2/softhsm2.conf when it exists', () => {
    mkdirSync(join(dir, '.config', 'softhsm2'), { recursive: true });
    writeFileSync(join(dir, '.config', 'softhsm2', 'softhsm2.conf'), 'directories.tokendir = /home/me/tokens\n');
    expect(softhsmTokenDirectory({}, dir)).toBe('/home/me/tokens');
  });

  it('answers undefined when the file or the setting is missing', () => {
    expect(softhsmTokenDirectory({ SOFTHSM2_CONF: join(dir, 'none.conf') }, dir)).toBeUndefined();
    writeFileSync(join(dir, 'empty.conf'), '# directories.tokendir = /commented/out\n');
    expect(softhsmTokenDirectory({ SOFTHSM2_CONF: join(dir, 'empty.conf') }, dir)).toBeUndefined();
  });
});

describe('hostFileLock (the addon\'s flock)', () => {
  it('when another process holds the lock, then a change waits for it and, past its wait, answers unavailable without running', async () => {
    const path = join(dir, 'registry.lock');
    await holderOf(path);
    let ran = false;
    const change = hostFileLock(path, { ...quiet, waitMs: 150 })(async () => {
      ran = true;
    });
    await expect(change).rejects.toBeInstanceOf(LifecycleError);
    await expect(change).rejects.toMatchObject({ kind: 'unavailable' });
    expect(ran).toBe(false);
  });

  it('when the process holding the lock is killed, then the next change takes it (the kernel released it)', async () => {
    const path = join(dir, 'registry.lock');
    const holder = await holderOf(path);
    const change = hostFileLock(path, { ...quiet, waitMs: 10_000 })(async () => 'made');
    await new Promise((r) => setTimeout(r, 50));
    holder.kill('SIGKILL');
    await expect(change).resolves.toBe('made');
  });

  it('when two changes of one process want the lock, then the second runs only after the first ended, and the lock is free afterwards', async () => {
    const path = join(dir, 'registry.lock');
    const lock = hostFileLock(path, quiet);
    const steps: string[] = [];
    let release!: () => void;
    const first = lock(async () => {
      steps.push('first starts');
      await new Promise<void>((r) => (release = r));
      steps.push('first ends');
    });
    await new Promise((r) => setTimeout(r, 20));
    const second = hostFileLock(path, quiet)(async () => void steps.push('second runs'));
    await new Promise((r) => setTimeout(r, 50));
    expect(steps).toEqual(['first starts']);
    release();
    await Promise.all([first, second]);
    expect(steps).toEqual(['first starts', 'first ends', 'second runs']);
    await holderOf(path); // another process can take it now
  });

  it('when the work fails, then the lock is released all the same', async () => {
    const path = join(dir, 'registry.lock');
    const lock = hostFileLock(path, quiet);
    await expect(lock(async () => Promise.reject(new Error('no')))).rejects.toThrow('no');
    await holderOf(path);
  });

  it('when the lock file cannot be opened, then changes run without it and that is said once', async () => {
    const reasons: string[] = [];
    const lock = hostFileLock(join(dir, 'missing', 'registry.lock'), { unusable: (reason) => void reasons.push(reason) });
    expect(await lock(async () => 1)).toBe(1);
    expect(await lock(async () => 2)).toBe(2);
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toContain('missing/registry.lock');
  });
});
