import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { defaultMaxConnections, RefusedConnectionsLog } from '../../src/http/connection-limits.js';
import { checkingIntervalMs } from '../../src/http/listener.js';

describe('RefusedConnectionsLog (on a fake clock)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const logger = () => ({ warn: vi.fn<(message: string, meta: Record<string, unknown>) => void>() });

  it('when 1,000 connections are refused in one second, then one line says so at once and one line sums up the rest at the end of the 10 s window', () => {
    const log = logger();
    const refusals = new RefusedConnectionsLog(log, { max: 128, perAddress: 8 });
    for (let i = 0; i < 1000; i++) {
      refusals.refused(i % 2 === 0 ? 'max_connections' : 'per_address', `10.0.0.${i % 7}`);
      vi.advanceTimersByTime(1);
    }
    expect(log.warn).toHaveBeenCalledTimes(1);
    expect(log.warn.mock.calls[0]).toEqual(['connections refused', { refused: { max_connections: 1 }, addresses: ['10.0.0.0'], maxConnections: 128, maxConnectionsPerAddress: 8 }]);
    vi.advanceTimersByTime(9000 - 1);
    expect(log.warn).toHaveBeenCalledTimes(1);
    vi.advanceTimersByTime(1);
    expect(log.warn).toHaveBeenCalledTimes(2);
    const summary = log.warn.mock.calls[1]![1] as { refused: Record<string, number>; addresses: string[] };
    expect(summary.refused).toEqual({ max_connections: 499, per_address: 500 });
    // At most five addresses per line: a flood from many addresses does not make a long line.
    expect(summary.addresses).toHaveLength(5);
    // Quiet afterwards: no more lines.
    vi.advanceTimersByTime(60_000);
    expect(log.warn).toHaveBeenCalledTimes(2);
  });

  it('when refusals come once a minute, then each is logged when it happens', () => {
    const log = logger();
    const refusals = new RefusedConnectionsLog(log, { max: 10 });
    for (let i = 0; i < 3; i++) {
      refusals.refused('max_connections', '127.0.0.1');
      expect(log.warn).toHaveBeenCalledTimes(i + 1);
      vi.advanceTimersByTime(60_000);
    }
  });

  it('when the gateway stops with refusals pending, then flush() logs them at once', () => {
    const log = logger();
    const refusals = new RefusedConnectionsLog(log, {});
    refusals.refused('per_address', 'a');
    refusals.refused('per_address', 'a');
    refusals.flush();
    expect(log.warn).toHaveBeenCalledTimes(2);
    expect((log.warn.mock.calls[1]![1] as { refused: object }).refused).toEqual({ per_address: 1 });
    vi.advanceTimersByTime(60_000);
    expect(log.warn).toHaveBeenCalledTimes(2);
  });
});

describe('defaultMaxConnections', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-limits-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  const limits = (openFiles: string): string => {
    const file = join(dir, 'limits');
    writeFileSync(
      file,
      'Limit                     Soft Limit           Hard Limit           Units     \n' +
        'Max processes             63704                63704                processes \n' +
        `Max open files            ${openFiles}                 ${openFiles}                 files     \n`,
    );
    return file;
  };

  it('when the open-file limit is read, then 128 descriptors are kept back (half of a small limit)', () => {
    expect(defaultMaxConnections(limits('1048576'))).toBe(1048576 - 128);
    expect(defaultMaxConnections(limits('1024'))).toBe(896);
    expect(defaultMaxConnections(limits('256'))).toBe(128);
    expect(defaultMaxConnections(limits('64'))).toBe(32);
    expect(defaultMaxConnections(limits('unlimited'))).toBeUndefined();
    expect(defaultMaxConnections(join(dir, 'absent'))).toBeUndefined();
  });

  it('when this process is asked, then it has a limit (Linux)', () => {
    expect(defaultMaxConnections()).toBeGreaterThan(0);
  });
});

describe('checkingIntervalMs', () => {
  it('when the headers deadline is set, then Node checks the deadlines often enough for it to hold (≤ 1 s, ≤ a quarter of it)', () => {
    expect(checkingIntervalMs(10_000)).toBe(1000);
    expect(checkingIntervalMs(1000)).toBe(250);
    expect(checkingIntervalMs(100)).toBe(50);
  });
});
