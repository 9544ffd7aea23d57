import { createHash } from 'node:crypto';
import { chmodSync, existsSync, writev as fsWritev, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { runAuditVerify } from '../../src/cli/audit-verify.js';
import { AuditTrailError, formatLine, GENESIS, listAuditFiles, verifyAuditFile, type AuditRecord } from '../../src/observability/audit-chain.js';
import { AuditTrail } from '../../src/observability/audit-trail.js';

let dir: string;
let file: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'audit-trail-'));
  file = join(dir, 'logs', 'audit.jsonl');
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function rawLines(path: string): string[] {
  const text = readFileSync(path, 'utf8');
  expect(text.endsWith('\n')).toBe(true);
  return text.slice(0, -1).split('\n');
}

function parsed(path: string): Array<Record<string, unknown>> {
  return rawLines(path).map((l) => JSON.parse(l) as Record<string, unknown>);
}

function writeLines(path: string, lines: string[]): void {
  writeFileSync(path, lines.map((l) => `${l}\n`).join(''));
}

/** A trail file with `n` request records, closed. */
async function trailWith(n: number, path = file): Promise<void> {
  const trail = new AuditTrail(path);
  for (let i = 1; i <= n; i++) {
    await trail.write({ requestId: `req-${i}`, action: 'AsymmetricSign', keyId: 'k-1', status: 200, ok: true });
  }
  await trail.close();
}

/** Output lines and exit code of the CLI. */
function cli(args: string[]): { code: number; out: string[] } {
  const out: string[] = [];
  const code = runAuditVerify(args, (s) => out.push(s));
  return { code, out };
}

describe('AuditTrail writing', () => {
  it('when records are written, then each line carries seq, time, the record, prev = the previous hash and its own hash', async () => {
    const trail = new AuditTrail(file);
    const first = await trail.write({ requestId: 'r1', action: 'AsymmetricSign', status: 200 });
    const second = await trail.write({ requestId: 'r2', action: 'GetPublicKey', status: 404, ok: false });
    await trail.close();

    const lines = rawLines(file);
    const [a, b] = parsed(file);
    expect(Object.keys(a!)).toEqual(['seq', 'time', 'requestId', 'action', 'status', 'prev', 'hash']);
    expect(a).toMatchObject({ seq: 1, requestId: 'r1', action: 'AsymmetricSign', status: 200, prev: GENESIS });
    expect(b).toMatchObject({ seq: 2, requestId: 'r2', ok: false, prev: a!.hash });
    expect(new Date(a!.time as string).toISOString()).toBe(a!.time);
    expect(a!.time).toMatch(/Z$/);
    // The documented definition: hash = SHA-256(JSON.stringify(line without hash)); the line ends with the hash member.
    for (const [i, raw] of lines.entries()) {
      const { hash, ...body } = JSON.parse(raw) as Record<string, unknown>;
      expect(sha256(JSON.stringify(body))).toBe(hash);
      expect(raw).toBe(`${JSON.stringify(body).slice(0, -1)},"hash":"${hash as string}"}`);
      expect(sha256(raw.slice(0, -75) + '}')).toBe(hash);
      expect([first, second][i]).toEqual({ seq: i + 1, hash });
    }
    expect(verifyAuditFile(file)).toEqual({ ok: true, lines: 2, lastHash: b!.hash, gaps: [] });
  });

  it('when a record has undefined values, then those keys are not in the line', async () => {
    const trail = new AuditTrail(file);
    await trail.write({ requestId: 'r1', keyId: undefined, code: undefined, status: 200 });
    await trail.close();
    const [line] = parsed(file);
    expect(Object.keys(line!)).toEqual(['seq', 'time', 'requestId', 'status', 'prev', 'hash']);
    expect(rawLines(file)[0]).not.toContain('keyId');
    expect(verifyAuditFile(file).ok).toBe(true);
  });

  it('when a record uses a name the trail reserves, then write throws and nothing is written', async () => {
    const trail = new AuditTrail(file);
    for (const key of ['seq', 'time', 'prev', 'hash']) {
      expect(() => trail.write({ [key]: 'x' })).toThrow(TypeError);
    }
    await trail.close();
    expect(readFileSync(file, 'utf8')).toBe('');
  });

  it('when the trail starts, then the missing directory is created and the file mode is 0600 (also for a looser existing file)', async () => {
    await new AuditTrail(file).close();
    expect(statSync(file).mode & 0o777).toBe(0o600);
    chmodSync(file, 0o644);
    const trail = new AuditTrail(file);
    await trail.write({ requestId: 'r1' });
    await trail.close();
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('when the trail is closed, then write rejects', async () => {
    const trail = new AuditTrail(file);
    await trail.close();
    await expect(trail.write({ requestId: 'r1' })).rejects.toThrow(AuditTrailError);
  });

  it('when 1,000 writes come from concurrent async functions, then the chain is valid with seq 1..1000 in call order', async () => {
    const trail = new AuditTrail(file);
    const returned = await Promise.all(
      Array.from({ length: 1000 }, async (_, i) => {
        await new Promise((r) => setTimeout(r, (i * 7) % 13));
        await Promise.resolve();
        return { i, ...await trail.write({ requestId: `req-${i}`, n: i }) };
      }),
    );
    await trail.close();
    const lines = parsed(file);
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    for (const r of returned) expect(lines[r.seq - 1]).toMatchObject({ n: r.i, hash: r.hash });
    expect(verifyAuditFile(file)).toMatchObject({ ok: true, lines: 1000 });
  });
});

describe('formatLine', () => {
  // The line format as the module comment defines it, written the plain way: the fast builder must give these bytes.
  const reference = (seq: number, time: Date, record: AuditRecord, prev: string): string => {
    const entries = [['seq', seq], ['time', time.toISOString()], ...Object.entries(record).filter(([, v]) => v !== undefined), ['prev', prev]];
    const body = JSON.stringify(Object.fromEntries(entries));
    return `${body.slice(0, -1)},"hash":"${createHash('sha256').update(body).digest('hex')}"}\n`;
  };

  it.each<[string, AuditRecord]>([
    ['a request record', { requestId: 'r-1', sourceIp: '127.0.0.1', action: 'AsymmetricSign', keyId: 'key-1', status: 200, code: 'OK', latencyMs: 1.25, clientGone: true }],
    ['undefined members', { a: undefined, b: 'x', c: undefined }],
    ['array-index-like names, which JSON.stringify puts first', { z: 1, '42': 'n', '7': false }],
    ['a "__proto__" name and non-ASCII text', { ['__proto__']: 'p', note: 'é\u2028"\\' }],
    ['non-ASCII text and escapes in a plain record', { note: 'é\u2028"\\\n\u0001', n: -0.5 }],
    ['a reserved name', { requestId: 'r', seq: 99, time: 'x', prev: 'y' }],
    ['no member', {}],
    ['only undefined members', { a: undefined }],
    ['a record without a prototype', Object.assign(Object.create(null) as AuditRecord, { b: 'x', a: 1 })],
  ])('when %s is formatted, then its bytes are the defined line', (_, record) => {
    const time = new Date('2026-01-15T10:30:00.123Z');
    const { line, hash } = formatLine(7, time, record, GENESIS);
    expect(line.toString('utf8')).toBe(reference(7, time, record, GENESIS));
    expect(line.toString('utf8')).toContain(`"hash":"${hash}"`);
  });
});

describe('AuditTrail restart', () => {
  it('when lines are long and the file spans several read chunks, then restart and verification still work', async () => {
    const trail = new AuditTrail(file, { fsync: true });
    for (let i = 1; i <= 300; i++) await trail.write({ requestId: `req-${i}`, note: String(i % 10).repeat(5000 + i) });
    await trail.write({ requestId: 'huge', note: 'x'.repeat(200_000) });
    await trail.close();
    expect(statSync(file).size).toBeGreaterThan(1.5 * 1024 * 1024);
    const again = new AuditTrail(file);
    expect(again.head.seq).toBe(301);
    await again.write({ requestId: 'after' });
    await again.close();
    expect(verifyAuditFile(file)).toMatchObject({ ok: true, lines: 302 });

    // An edit far past the first 1 MB read is still named exactly.
    const lines = rawLines(file);
    lines[249] = lines[249]!.replace('"requestId":"req-250"', '"requestId":"req-25X"');
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toMatchObject({ ok: false, line: 250 });
  });

  it('when the gateway restarts, then seq and the chain continue from the last line', async () => {
    await trailWith(3);
    const lastBefore = parsed(file)[2]!;
    const trail = new AuditTrail(file);
    expect(trail.head).toEqual({ seq: 3, hash: lastBefore.hash });
    await trail.write({ requestId: 'after-restart' });
    await trail.close();
    const lines = parsed(file);
    expect(lines[3]).toMatchObject({ seq: 4, requestId: 'after-restart', prev: lastBefore.hash });
    expect(verifyAuditFile(file)).toMatchObject({ ok: true, lines: 4 });
  });

  it('when the last line is cut, then the trail refuses to start and names the file and line', async () => {
    await trailWith(5);
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.slice(0, -20));
    expect(() => new AuditTrail(file)).toThrow(AuditTrailError);
    expect(() => new AuditTrail(file)).toThrow(`${file} line 5: the last line is cut`);
  });

  it('when the last line is not JSON or was edited, then the trail refuses to start and names the file and line', async () => {
    await trailWith(4);
    const lines = rawLines(file);
    writeLines(file, [...lines.slice(0, 3), 'garbage']);
    expect(() => new AuditTrail(file)).toThrow(/audit\.jsonl line 4: the last line not JSON/);
    writeLines(file, [...lines.slice(0, 3), lines[3]!.replace('"status":200', '"status":500')]);
    expect(() => new AuditTrail(file)).toThrow(/audit\.jsonl line 4: the last line hash does not match its content/);
  });
});

describe('verifyAuditFile', () => {
  beforeEach(async () => await trailWith(10));

  it('when the file is untouched, then it verifies with its line count and last hash', async () => {
    expect(verifyAuditFile(file)).toEqual({ ok: true, lines: 10, lastHash: parsed(file)[9]!.hash, gaps: [] });
  });

  it('when one field of line 7 is changed, then line 7 is named as altered', async () => {
    const lines = rawLines(file);
    lines[6] = lines[6]!.replace('"requestId":"req-7"', '"requestId":"req-X"');
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toEqual({ ok: false, line: 7, reason: 'line 7: hash does not match its content (altered)' });
  });

  it('when only whitespace is added to a line, then it is altered too', async () => {
    const lines = rawLines(file);
    lines[2] = lines[2]!.replace('"status":200', '"status": 200');
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toMatchObject({ ok: false, line: 3, reason: expect.stringContaining('altered') });
  });

  it('when line 7 is deleted, then line 7 is named with the seq gap', async () => {
    const lines = rawLines(file);
    lines.splice(6, 1);
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toEqual({
      ok: false,
      line: 7,
      reason: 'line 7: seq 8 follows 6: a line was removed (seq 7)',
    });
  });

  it('when lines 3 to 5 are deleted, then line 3 is named with the three missing seqs', async () => {
    const lines = rawLines(file);
    lines.splice(2, 3);
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toEqual({
      ok: false,
      line: 3,
      reason: 'line 3: seq 6 follows 2: 3 lines were removed (seqs 3–5)',
    });
  });

  it('when the first line is deleted, then line 1 is named', async () => {
    writeLines(file, rawLines(file).slice(1));
    expect(verifyAuditFile(file)).toEqual({
      ok: false,
      line: 1,
      reason: 'line 1: seq 2 but a file starts at seq 1: seq 1 removed from its start',
    });
  });

  it('when lines 4 and 5 are swapped, then line 4 is named as reordered', async () => {
    const lines = rawLines(file);
    [lines[3], lines[4]] = [lines[4]!, lines[3]!];
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toEqual({
      ok: false,
      line: 4,
      reason: 'line 4: seq 5 follows 3: lines are out of order (a missing seq is at line 5): reordered',
    });
  });

  it('when a line is duplicated, then the copy is named', async () => {
    const lines = rawLines(file);
    lines.splice(5, 0, lines[4]!);
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toEqual({
      ok: false,
      line: 6,
      reason: 'line 6: seq 5 follows 5: lines are out of order or duplicated (reordered)',
    });
  });

  it('when the last line is truncated, then it is named', async () => {
    writeFileSync(file, readFileSync(file, 'utf8').slice(0, -30));
    expect(verifyAuditFile(file)).toMatchObject({ ok: false, line: 10, reason: expect.stringMatching(/^line 10: truncated/) });
  });

  it('when only the final newline is missing, then the last line is named as truncated', async () => {
    writeFileSync(file, readFileSync(file, 'utf8').slice(0, -1));
    expect(verifyAuditFile(file)).toMatchObject({ ok: false, line: 10, reason: expect.stringMatching(/^line 10: truncated/) });
  });

  it('when a line is not JSON, then it is named', async () => {
    const lines = rawLines(file);
    lines[2] = '{"seq":3,"time":';
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toMatchObject({ ok: false, line: 3, reason: expect.stringMatching(/^line 3: not JSON \(/) });
  });

  it('when an empty line is inserted, then it is named as not JSON', async () => {
    const lines = rawLines(file);
    lines.splice(8, 0, '');
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toMatchObject({ ok: false, line: 9, reason: expect.stringMatching(/^line 9: not JSON/) });
  });

  it('when line 7 is edited and its hash recomputed, then line 8 is named: its prev no longer matches', async () => {
    const lines = rawLines(file);
    const { hash: _old, ...body } = JSON.parse(lines[6]!) as Record<string, unknown>;
    const forged = { ...body, status: 403 };
    lines[6] = JSON.stringify({ ...forged, hash: sha256(JSON.stringify(forged)) });
    writeLines(file, lines);
    expect(verifyAuditFile(file)).toEqual({
      ok: false,
      line: 8,
      reason: "line 8: prev does not match line 7's hash (reordered or removed, or line 7 was altered and re-hashed)",
    });
  });

  it('when the file is expected to follow another, then a first prev that does not match is named', async () => {
    expect(verifyAuditFile(file, { expectedPrev: 'a'.repeat(64) })).toMatchObject({
      ok: false,
      line: 1,
      reason: expect.stringMatching(/^line 1: prev does not match the previous file's last hash/),
    });
  });

  it('when the file is empty, then it verifies with 0 lines', async () => {
    writeFileSync(file, '');
    expect(verifyAuditFile(file)).toEqual({ ok: true, lines: 0, lastHash: GENESIS, gaps: [] });
  });
});

describe('AuditTrail rotation', () => {
  const at = (iso: string) => () => new Date(iso);

  it('when the trail rotates, then the old file is renamed with a UTC timestamp and the new file chains to it', async () => {
    const trail = new AuditTrail(file, { now: at('2026-01-15T10:30:00.123Z') });
    await trail.write({ requestId: 'r1' });
    await trail.write({ requestId: 'r2' });
    const oldLast = trail.head.hash;
    await trail.rotate();
    await trail.write({ requestId: 'r3' });
    await trail.close();

    const rotated = join(dir, 'logs', 'audit.jsonl.20260115T103000.123Z');
    expect(listAuditFiles(file)).toEqual([rotated, file]);
    expect(statSync(rotated).mode & 0o777).toBe(0o600);
    const lines = parsed(file);
    expect(lines[0]).toMatchObject({
      seq: 1,
      event: 'rotated',
      previousFile: basename(rotated),
      previousLastSeq: 2,
      trigger: 'manual',
      prev: oldLast,
    });
    expect(lines[1]).toMatchObject({ seq: 2, requestId: 'r3', prev: lines[0]!.hash });
    expect(verifyAuditFile(rotated)).toEqual({ ok: true, lines: 2, lastHash: oldLast, gaps: [] });
    expect(verifyAuditFile(file, { expectedPrev: oldLast })).toMatchObject({ ok: true, lines: 2 });
  });

  it('when two rotations fall in the same millisecond, then no file is overwritten', async () => {
    const trail = new AuditTrail(file, { now: at('2026-01-15T10:30:00.123Z') });
    await trail.write({ requestId: 'r1' });
    await trail.rotate();
    await trail.rotate();
    await trail.close();
    const files = listAuditFiles(file);
    expect(files.map((f) => basename(f))).toEqual([
      'audit.jsonl.20260115T103000.123Z',
      'audit.jsonl.20260115T103000.123Z-1',
      'audit.jsonl',
    ]);
    expect(cli(files).code).toBe(0);
  });

  it('when the current file is still empty, then rotate does nothing', async () => {
    const trail = new AuditTrail(file);
    await trail.rotate();
    await trail.write({ requestId: 'r1' });
    await trail.close();
    expect(listAuditFiles(file)).toEqual([file]);
    expect(parsed(file)[0]).toMatchObject({ seq: 1, requestId: 'r1', prev: GENESIS });
  });

  it('when the file would exceed rotateBytes, then the trail rotates by itself and every file stays within it', async () => {
    let ms = Date.parse('2026-01-15T10:30:00.000Z');
    const trail = new AuditTrail(file, { rotateBytes: 4096, now: () => new Date(ms++) });
    for (let i = 1; i <= 200; i++) await trail.write({ requestId: `req-${i}`, action: 'AsymmetricSign', status: 200 });
    await trail.close();
    const files = listAuditFiles(file);
    expect(files.length).toBeGreaterThan(3);
    for (const f of files) expect(statSync(f).size).toBeLessThanOrEqual(4096);
    const requests = files.flatMap((f) => parsed(f)).filter((l) => l.event !== 'rotated');
    expect(requests.map((l) => l.requestId)).toEqual(Array.from({ length: 200 }, (_, i) => `req-${i + 1}`));
    expect(parsed(files[1]!)[0]).toMatchObject({ event: 'rotated', trigger: 'size' });
    const { code, out } = cli(files);
    expect(code).toBe(0);
    expect(out).toHaveLength(files.length);
    expect(out.every((l) => l.startsWith('OK '))).toBe(true);
  });

  it('when the process died between the rename and the first line, then the restart chains the new file to the renamed one', async () => {
    await trailWith(3);
    const oldLast = parsed(file)[2]!.hash;
    const rotated = `${file}.20260115T103000.123Z`;
    renameSync(file, rotated);
    const trail = new AuditTrail(file);
    await trail.write({ requestId: 'r4' });
    await trail.close();
    expect(parsed(file)[0]).toMatchObject({ seq: 1, event: 'rotated', previousFile: basename(rotated), trigger: 'restart', prev: oldLast });
    expect(cli([rotated, file]).code).toBe(0);
  });

  it('when the files of a rotated pair are given, then the CLI accepts them; when the second does not chain to the first, then it refuses', async () => {
    const trail = new AuditTrail(file, { now: at('2026-01-15T10:30:00.123Z') });
    await trail.write({ requestId: 'r1' });
    await trail.rotate();
    await trail.write({ requestId: 'r2' });
    await trail.close();
    const [first, second] = listAuditFiles(file) as [string, string];
    const ok = cli([first, second]);
    expect(ok.code).toBe(0);
    expect(ok.out).toEqual([
      `OK ${first}: 1 lines, last hash ${parsed(first)[0]!.hash}`,
      `OK ${second}: 2 lines, last hash ${parsed(second)[1]!.hash}`,
    ]);

    // Another trail's file, valid on its own, does not follow `first`.
    const stranger = join(dir, 'other', 'audit.jsonl');
    await trailWith(2, stranger);
    const bad = cli([first, stranger]);
    expect(bad.code).toBe(1);
    expect(bad.out[0]).toMatch(/^OK /);
    expect(bad.out[1]).toMatch(new RegExp(`^ALTERED ${stranger} line 1: prev does not match the previous file's last hash`));

    // A rotated file on its own is fine; in the wrong order, the pair is refused.
    expect(cli([second]).code).toBe(0);
    expect(cli([second, first]).code).toBe(1);
  });
});

describe('runAuditVerify', () => {
  it('when no file is given or an option is unknown, then it prints the usage and exits 2', async () => {
    const none = cli([]);
    expect(none.code).toBe(2);
    expect(none.out[0]).toMatch(/^usage: audit-verify <file>/);
    const unknown = cli(['--fast', 'x']);
    expect(unknown.code).toBe(2);
    expect(unknown.out).toEqual(['audit-verify: unknown option --fast', expect.stringMatching(/^usage:/)]);
    expect(cli(['--help'])).toEqual({ code: 0, out: [expect.stringMatching(/^usage:/)] });
  });

  it('when a file cannot be read, then it says so and exits 2', async () => {
    const missing = join(dir, 'nope.jsonl');
    const r = cli([missing]);
    expect(r.code).toBe(2);
    expect(r.out[0]).toMatch(new RegExp(`^ERROR ${missing}: cannot read \\(ENOENT`));
  });

  it('when the file is untouched, then it prints OK with the line count and last hash and exits 0', async () => {
    await trailWith(3);
    expect(cli([file])).toEqual({ code: 0, out: [`OK ${file}: 3 lines, last hash ${parsed(file)[2]!.hash}`] });
  });

  it('when a line was altered, then it prints ALTERED with the line and reason and exits 1', async () => {
    await trailWith(3);
    const lines = rawLines(file);
    lines[1] = lines[1]!.replace('"status":200', '"status":201');
    writeLines(file, lines);
    expect(cli([file])).toEqual({ code: 1, out: [`ALTERED ${file} line 2: hash does not match its content (altered)`] });
  });

  it('when one file of several is altered, then the others are still reported and the exit code is 1', async () => {
    await trailWith(2);
    const other = join(dir, 'b', 'audit.jsonl');
    await trailWith(2, other);
    writeFileSync(file, readFileSync(file, 'utf8').replace('req-1', 'req-9'));
    const r = cli([file, other]);
    expect(r.code).toBe(1);
    expect(r.out[0]).toMatch(/^ALTERED .* line 1: hash does not match/);
    expect(r.out[1]).toMatch(/^OK /);
    expect(existsSync(other)).toBe(true);
  });
});

describe('AuditTrail failing closed and recovering', () => {
  /** A write(2) that fails with `code` while `failing` is set (and may write part of the batch first). */
  function faultyDisk(): { failing: string | undefined; partial: boolean; writev: (fd: number, buffers: Buffer[]) => Promise<number> } {
    const disk = {
      failing: undefined as string | undefined,
      partial: false,
      writev: (fd: number, buffers: Buffer[]): Promise<number> =>
        new Promise((resolve, reject) => {
          if (disk.failing) {
            const err = Object.assign(new Error(`${disk.failing}: simulated`), { code: disk.failing });
            if (!disk.partial) return reject(err);
            // Half of the first line reaches the file before the disk refuses the rest.
            fsWritev(fd, [buffers[0]!.subarray(0, buffers[0]!.length >> 1)], () => reject(err));
            return;
          }
          fsWritev(fd, buffers, (e, n) => (e ? reject(e) : resolve(n)));
        }),
    };
    return disk;
  }
  const fast = { first: 5, max: 20 };

  it('when the file cannot be written (EPERM), then the write rejects, later writes reject at once and the status says why; once it can, the trail recovers by itself and notes the gap in the chain', async () => {
    const disk = faultyDisk();
    const changes: Array<{ ok: boolean; detail: string }> = [];
    const trail = new AuditTrail(file, { writev: disk.writev, retryMs: fast, onStateChange: (s) => changes.push(s) });
    await trail.write({ requestId: 'r1' });
    disk.failing = 'EPERM';
    const refused = await Promise.allSettled([trail.write({ requestId: 'r2' }), trail.write({ requestId: 'r3' })]);
    expect(refused.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    await expect(trail.write({ requestId: 'r4' })).rejects.toThrow(/cannot write \(EPERM\)/);
    expect(trail.status()).toMatchObject({ ok: false, detail: expect.stringMatching(/\(EPERM\); 3 records refused$/) });
    expect(changes).toEqual([{ ok: false, detail: expect.stringContaining('EPERM') }]);
    // Still failing: recovery attempts fail too, and the trail keeps refusing.
    await new Promise((r) => setTimeout(r, 50));
    expect(trail.status().ok).toBe(false);

    disk.failing = undefined;
    await vi.waitFor(() => expect(trail.status().ok).toBe(true), { timeout: 5000 });
    expect(changes[1]).toMatchObject({ ok: true });
    await trail.write({ requestId: 'r5' });
    await trail.close();
    const lines = parsed(file);
    expect(lines.map((l) => l.requestId ?? l.event)).toEqual(['r1', 'reopened', 'r5']);
    expect(lines[1]).toMatchObject({ seq: 2, event: 'reopened', error: 'EPERM', prev: lines[0]!.hash });
    expect(lines[1]!.lost).toBeGreaterThanOrEqual(3);
    const verified = cli([file]);
    expect(verified.code).toBe(0);
    expect(verified.out[1]).toMatch(new RegExp(`^GAP ${file} line 2: \\d+ records could not be written \\(EPERM\\)`));
  });

  it('when the disk fills in the middle of a line (ENOSPC), then the partial line is cut off: the file always verifies', async () => {
    const disk = faultyDisk();
    const trail = new AuditTrail(file, { writev: disk.writev, retryMs: fast });
    await trail.write({ requestId: 'r1' });
    disk.failing = 'ENOSPC';
    disk.partial = true;
    await expect(trail.write({ requestId: 'r2', note: 'x'.repeat(500) })).rejects.toThrow(/ENOSPC/);
    expect(verifyAuditFile(file)).toMatchObject({ ok: true, lines: 1 });
    disk.failing = undefined;
    await vi.waitFor(() => expect(trail.status().ok).toBe(true), { timeout: 5000 });
    await trail.write({ requestId: 'r3' });
    await trail.close();
    expect(parsed(file).map((l) => l.requestId ?? l.event)).toEqual(['r1', 'reopened', 'r3']);
    expect(verifyAuditFile(file)).toMatchObject({ ok: true, lines: 3, gaps: [{ line: 2, lost: expect.any(Number), error: 'ENOSPC' }] });
  });

  it('when the directory was replaced while failing, then the trail starts a new file whose line 1 chains to the last line it wrote', async () => {
    const disk = faultyDisk();
    const trail = new AuditTrail(file, { writev: disk.writev, retryMs: fast });
    await trail.write({ requestId: 'r1' });
    const last = trail.head.hash;
    disk.failing = 'EIO';
    await expect(trail.write({ requestId: 'r2' })).rejects.toThrow(/EIO/);
    const moved = join(dir, 'moved');
    renameSync(join(dir, 'logs'), moved);
    disk.failing = undefined;
    await vi.waitFor(() => expect(trail.status().ok).toBe(true), { timeout: 5000 });
    await trail.write({ requestId: 'r3' });
    await trail.close();
    expect(parsed(file)[0]).toMatchObject({ seq: 1, event: 'reopened', previousLastSeq: 1, error: 'EIO', prev: last });
    expect(cli([join(moved, 'audit.jsonl'), file]).code).toBe(0);
  });

  it('when the file changed under the trail while failing, then it stays failed until the file is moved aside', async () => {
    const disk = faultyDisk();
    const trail = new AuditTrail(file, { writev: disk.writev, retryMs: fast });
    await trail.write({ requestId: 'r1' });
    disk.failing = 'EPERM';
    await expect(trail.write({ requestId: 'r2' })).rejects.toThrow();
    writeFileSync(file, `${readFileSync(file, 'utf8')}{"not":"ours"}\n`);
    disk.failing = undefined;
    await new Promise((r) => setTimeout(r, 100));
    expect(trail.status()).toMatchObject({ ok: false, detail: expect.stringContaining('does not end with the trail') });
    renameSync(file, join(dir, 'aside.jsonl'));
    await vi.waitFor(() => expect(trail.status().ok).toBe(true), { timeout: 5000 });
    await trail.close();
    expect(parsed(file)[0]).toMatchObject({ seq: 1, event: 'reopened' });
  });

  it('when the trail is closed, then what was queued is written first', async () => {
    const trail = new AuditTrail(file);
    const writes = Array.from({ length: 50 }, (_, i) => trail.write({ requestId: `q-${i}` }));
    await trail.close();
    await Promise.all(writes);
    expect(parsed(file)).toHaveLength(50);
  });
});

describe('AuditTrail retention', () => {
  let ms = 0;
  const clock = () => new Date(Date.parse('2026-01-15T10:30:00.000Z') + ms++);

  it('when more than maxFiles files were rotated, then the oldest are deleted, the rotation record says so, and the kept files verify from their anchor', async () => {
    const trail = new AuditTrail(file, { rotateBytes: 2048, maxFiles: 2, now: clock });
    for (let i = 1; i <= 100; i++) await trail.write({ requestId: `req-${i}`, action: 'AsymmetricSign' });
    await trail.close();
    const files = listAuditFiles(file);
    expect(files).toHaveLength(3);
    const rotations = parsed(file)[0]!;
    expect(rotations).toMatchObject({ event: 'rotated', trigger: 'size', retentionDeleted: 1, oldestKept: basename(files[0]!) });
    const { code, out } = cli(files);
    expect(code).toBe(0);
    const anchor = parsed(files[0]!)[0]!.prev as string;
    expect(out[0]).toContain(`starts from ${anchor} (the last hash of`);
    expect(out.slice(1).every((l) => l.startsWith('OK ') && !l.includes('starts from'))).toBe(true);
  });

  it('when the rotated files exceed maxBytes, then the oldest are deleted until they fit', async () => {
    const trail = new AuditTrail(file, { rotateBytes: 2048, maxBytes: 5000, now: clock });
    for (let i = 1; i <= 100; i++) await trail.write({ requestId: `req-${i}`, action: 'AsymmetricSign' });
    await trail.close();
    const rotated = listAuditFiles(file).filter((f) => f !== file);
    expect(rotated.reduce((n, f) => n + statSync(f).size, 0)).toBeLessThanOrEqual(5000);
    expect(rotated.length).toBeGreaterThanOrEqual(2);
    expect(cli(listAuditFiles(file)).code).toBe(0);
  });
});
