import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LifecycleError } from '../../src/keys/errors.js';
import { retryFirstLoad } from '../../src/keys/first-load.js';
import { StoreState } from '../../src/keys/store-state.js';

// The start-up retry of a registry whose PostgreSQL is away (registry.store: postgres), on a fake clock.

/** The error RegistrySource throws with the database away: the pg error (SQLSTATE or errno) as its cause. */
const unreachable = (code: string, detail = code): LifecycleError =>
  new LifecycleError('unavailable', `the registry database is unreachable (${detail})`, { cause: Object.assign(new Error(detail), { code }) });

function recordingLog() {
  const lines: Array<{ level: string; message: string; meta?: Record<string, unknown> }> = [];
  return {
    lines,
    info: (message: string, meta?: Record<string, unknown>) => void lines.push({ level: 'info', message, meta }),
    warn: (message: string, meta?: Record<string, unknown>) => void lines.push({ level: 'warn', message, meta }),
  };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('retryFirstLoad', () => {
  it('when the database stays away, then it retries after 0.5 s, doubling to 30 s at most, and logs the failure once, not per attempt', async () => {
    const log = recordingLog();
    const started = Date.now();
    const attempts: number[] = [];
    const retry = retryFirstLoad(
      async () => {
        attempts.push(Date.now() - started);
        throw unreachable('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432');
      },
      () => false,
      unreachable('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432'),
      log,
    );
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    retry.close();
    expect(await retry.done).toBe(false);
    const gaps = attempts.map((at, i) => at - (i === 0 ? 0 : attempts[i - 1]!));
    expect(gaps.slice(0, 8)).toEqual([500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
    // Ten minutes away: 24 attempts after the start-up one, not 600 (one a second) or 1,200 (every 0.5 s).
    expect(attempts.length).toBe(24);
    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]).toMatchObject({ level: 'warn', meta: { error: expect.stringContaining('ECONNREFUSED'), hint: expect.stringContaining('nothing listens'), attempts: 1, nextAttemptInMs: 500 } });
  });

  it('when the reason changes (refused, then no schema), then each kind is logged once with its hint, and the load is logged when it works', async () => {
    const log = recordingLog();
    const failures = [unreachable('ECONNREFUSED'), unreachable('ECONNREFUSED'), unreachable('42P01', 'relation "hsm_gateway_generation" does not exist'), unreachable('42P01')];
    let loaded = false;
    const retry = retryFirstLoad(
      async () => {
        const failure = failures.shift();
        if (failure) throw failure;
        loaded = true;
      },
      () => loaded,
      unreachable('ECONNREFUSED'),
      log,
    );
    await vi.advanceTimersByTimeAsync(60_000);
    expect(await retry.done).toBe(true);
    expect(log.lines.map((l) => `${l.level} ${String(l.meta?.hint ?? l.meta?.attempts)}`)).toEqual([
      'warn nothing listens at registry.postgres.url (PostgreSQL down or not started yet)',
      'warn the registry schema is missing: run "hsm-gateway registry init" once',
      'info 6',
    ]);
    expect(log.lines[2]!.message).toBe('key registry loaded: ready');
  });

  it('when another path loaded the registry meanwhile (the LISTEN resync), then no further attempt is made, and it is logged at once when told', async () => {
    const log = recordingLog();
    let loaded = false;
    const attempt = vi.fn(async () => {
      throw unreachable('ECONNREFUSED');
    });
    const retry = retryFirstLoad(attempt, () => loaded, unreachable('ECONNREFUSED'), log);
    await vi.advanceTimersByTimeAsync(600);
    expect(attempt).toHaveBeenCalledTimes(1);
    loaded = true;
    await vi.advanceTimersByTimeAsync(1000);
    expect(await retry.done).toBe(true);
    expect(attempt).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(attempt).toHaveBeenCalledTimes(1);
    // Told by the change listener: done now, without waiting for the next attempt's time.
    let told = false;
    const second = retryFirstLoad(attempt, () => told, unreachable('ECONNREFUSED'), log);
    told = true;
    second.loadedElsewhere();
    expect(await second.done).toBe(true);
    expect(log.lines.filter((l) => l.message === 'key registry loaded: ready')).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(attempt).toHaveBeenCalledTimes(1);
  });

  it('when closed (the gateway stops), then no attempt follows', async () => {
    const attempt = vi.fn(async () => undefined);
    const retry = retryFirstLoad(attempt, () => false, unreachable('ECONNREFUSED'), recordingLog());
    retry.close();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(attempt).not.toHaveBeenCalled();
    expect(await retry.done).toBe(false);
  });
});

describe('StoreState', () => {
  it('when calls fail and succeed, then it is away since the first failure of the outage, with the last reason, and up again after a success', () => {
    let now = new Date('2026-12-03T03:00:00Z');
    const state = new StoreState(() => now);
    expect(state.status()).toMatchObject({ up: false, detail: 'not reached yet' });
    state.reached();
    expect(state.status()).toEqual({ up: true });
    now = new Date('2026-12-03T03:01:00Z');
    state.failed(new Error('connect ECONNREFUSED'));
    now = new Date('2026-12-03T03:02:00Z');
    state.failed(new Error('Connection terminated due to connection timeout'));
    expect(state.status()).toEqual({ up: false, awaySince: new Date('2026-12-03T03:01:00Z'), detail: 'Connection terminated due to connection timeout' });
    state.reached();
    expect(state.status()).toEqual({ up: true });
  });
});
