/**
 * Tamper-evident audit trail: one JSON line per audited request, each line chained to the one before by SHA-256.
 *
 * Line format (UTF-8, one line per record, `\n` after every line, no other whitespace):
 *
 *   {"seq":7,"time":"2026-01-15T10:30:00.123Z",<the record's members>,"prev":"<64 hex>","hash":"<64 hex>"}
 *
 * - `seq`   1, 2, … within a file (every file, rotated or not, starts at 1).
 * - `time`  ISO-8601 UTC (`Date#toISOString`), added by the trail.
 * - the record's members in the order given to `write()`; members whose value is `undefined` are dropped.
 *   (JSON.stringify puts array-index-like keys such as "42" first; writer and verifier both work on the bytes, so
 *   this changes nothing for the chain.) The names `seq`, `time`, `prev`, `hash` are reserved.
 * - `prev`  the `hash` of the previous line. For line 1 of a file: the `hash` of the last line of the file it
 *   follows (the one rotated away just before), or 64 zeros (`GENESIS`) when there was none.
 * - `hash`  the hash definition, byte-exact:
 *
 *     B    = JSON.stringify({ seq, time, ...record, prev })            // the line without its hash member
 *     hash = hex(SHA-256(UTF-8 bytes of B))
 *     line = B without its closing "}"  +  ',"hash":"' + hash + '"}'
 *
 *   So any tool can check a line without re-serialising JSON: strip the last 75 bytes (`,"hash":"` + 64 hex +
 *   `"}`), append `}`, SHA-256 what is left, compare with the 64 hex that were stripped. Because the hash covers
 *   the line's exact bytes (minus its own hash member) and `prev` is the previous line's hash, every byte of every
 *   line is bound by the chain; a changed space is as "altered" as a changed value.
 *
 * What a hash chain proves and what not: an edit, a deleted, inserted or reordered line, or a cut in the middle
 * is found by `verifyAuditFile` (and the line named). Someone who can write the file can still drop lines from
 * its END, or recompute the whole chain: anchor the head hash outside the machine (ship `write()`'s returned
 * hash to the central log, or sign checkpoints) to close that gap.
 *
 * One process owns a trail file: writes are synchronous appends on a kept descriptor, so the chain order is the
 * call order however many requests are in flight, but two processes (cluster workers, two gateways) must not
 * share a file. Do not rotate it with logrotate either (the trail keeps writing to the renamed inode): use
 * `rotate()` or `maxBytes`.
 *
 * Rotation renames `<file>` to `<file>.<YYYYMMDDTHHMMSS.sssZ>` (UTC; `-1`, `-2`… appended if that name exists) and
 * starts a new `<file>` whose line 1 is `{"event":"rotated","previousFile":"<renamed basename>",…}` chained to the
 * renamed file's last hash. `listAuditFiles(file)` returns the set in rotation order, ready for the verifier.
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fchmodSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readSync,
  readdirSync,
  renameSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';

export const GENESIS = '0'.repeat(64);
const DEFAULT_MAX_BYTES = 100 * 1024 * 1024;

type AuditValue = string | number | boolean | undefined;
type AuditRecord = Record<string, AuditValue>;

interface AuditTrailOptions {
  /** Rotate before a write that would take the file over this size (default 100 MB). */
  maxBytes?: number;
  /** fsync after every line: survives an OS crash / power loss, costs a disk flush per request (default false). */
  fsync?: boolean;
  /** Clock for `time` and rotated file names (tests). */
  now?: () => Date;
}

type VerifyResult = { ok: true; lines: number; lastHash: string } | { ok: false; line: number; reason: string };

/** A trail that cannot be (re)opened or appended to; the message names the file (and line). */
export class AuditTrailError extends Error {
  override readonly name = 'AuditTrailError';
}

const RESERVED = new Set(['seq', 'time', 'prev', 'hash']);
const HEX64 = /^[0-9a-f]{64}$/;
const HASH_TAIL = /^,"hash":"([0-9a-f]{64})"\}$/;
const HASH_TAIL_BYTES = 75; // ,"hash":" (9) + 64 hex + "} (2)
const NEWLINE = 0x0a;
const CHUNK = 1 << 20;

function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

interface ParsedLine {
  seq: number;
  prev: string;
  hash: string;
  event?: unknown;
}

/** Checks one line on its own (JSON, hash member, hash over its bytes, field shapes). Reasons have no line prefix. */
function checkLine(bytes: Buffer): { ok: true; value: ParsedLine } | { ok: false; reason: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    return { ok: false, reason: `not JSON (${(err as Error).message})` };
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return { ok: false, reason: 'not a JSON object' };
  }
  const tail = bytes.length > HASH_TAIL_BYTES ? HASH_TAIL.exec(bytes.subarray(-HASH_TAIL_BYTES).toString('latin1')) : null;
  if (!tail) return { ok: false, reason: 'has no "hash" as its last member (altered)' };
  const hash = tail[1]!;
  const body = Buffer.concat([bytes.subarray(0, bytes.length - HASH_TAIL_BYTES), Buffer.from('}')]);
  if (sha256Hex(body) !== hash) return { ok: false, reason: 'hash does not match its content (altered)' };
  const line = parsed as Record<string, unknown>;
  const { seq, prev, time } = line;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
    return { ok: false, reason: 'seq is missing or not a positive integer' };
  }
  if (typeof prev !== 'string' || !HEX64.test(prev)) return { ok: false, reason: 'prev is missing or not 64 hex digits' };
  if (typeof time !== 'string') return { ok: false, reason: 'time is missing' };
  if (line.hash !== hash) return { ok: false, reason: 'has two "hash" members (altered)' };
  return { ok: true, value: { seq, prev, hash, event: line.event } };
}

interface RawLine {
  bytes: Buffer;
  /** false only for a last line without its newline. */
  terminated: boolean;
}

/** The file's lines (bytes, without `\n`), streamed in 1 MB reads. */
function* readLines(path: string): Generator<RawLine> {
  const fd = openSync(path, 'r');
  try {
    const chunk = Buffer.allocUnsafe(CHUNK);
    let pending: Buffer[] = [];
    for (;;) {
      const n = readSync(fd, chunk, 0, CHUNK, null);
      if (n === 0) break;
      const view = chunk.subarray(0, n);
      let start = 0;
      let nl = view.indexOf(NEWLINE, start);
      while (nl !== -1) {
        const part = view.subarray(start, nl);
        const bytes = pending.length > 0 ? Buffer.concat([...pending, part]) : Buffer.from(part);
        pending = [];
        yield { bytes, terminated: true };
        start = nl + 1;
        nl = view.indexOf(NEWLINE, start);
      }
      if (start < n) pending.push(Buffer.from(view.subarray(start)));
    }
    if (pending.length > 0) yield { bytes: Buffer.concat(pending), terminated: false };
  } finally {
    closeSync(fd);
  }
}

/** The last line of an open file (read backwards), or undefined when the file is empty. */
function readLastLine(fd: number, size: number): RawLine | undefined {
  if (size === 0) return undefined;
  const last = Buffer.alloc(1);
  readSync(fd, last, 0, 1, size - 1);
  const terminated = last[0] === NEWLINE;
  const end = terminated ? size - 1 : size;
  const parts: Buffer[] = [];
  let pos = end;
  while (pos > 0) {
    const len = Math.min(64 * 1024, pos);
    const block = Buffer.alloc(len);
    readSync(fd, block, 0, len, pos - len);
    const nl = block.lastIndexOf(NEWLINE);
    if (nl !== -1) {
      parts.unshift(block.subarray(nl + 1));
      break;
    }
    parts.unshift(block);
    pos -= len;
  }
  return { bytes: Buffer.concat(parts), terminated };
}

/** Number of lines (an unterminated tail counts as one); only used to name a line in start-up errors. */
function countLines(path: string): number {
  let count = 0;
  for (const _ of readLines(path)) count++;
  return count;
}

function missingRange(from: number, to: number): string {
  return from === to ? `seq ${from}` : `seqs ${from}–${to}`;
}

/**
 * Recomputes a file's chain and names the FIRST bad line (1-based). `expectedPrev`: the last hash of the file this
 * one follows (rotation); without it, line 1 must carry `prev` = GENESIS unless it is a rotation record. Reasons
 * read "line N: …". I/O errors (missing file, permissions) are thrown, not returned.
 */
export function verifyAuditFile(path: string, options: { expectedPrev?: string } = {}): VerifyResult {
  const lines = readLines(path);
  let lineNo = 0;
  let lastSeq = 0;
  let lastHash = options.expectedPrev ?? GENESIS;
  try {
    for (let next = lines.next(); !next.done; next = lines.next()) {
      const { bytes, terminated } = next.value;
      lineNo++;
      const fail = (reason: string): VerifyResult => ({ ok: false, line: lineNo, reason: `line ${lineNo}: ${reason}` });
      if (!terminated) return fail('truncated: the last line has no newline (an incomplete write, or the file was cut)');
      const checked = checkLine(bytes);
      if (!checked.ok) return fail(checked.reason);
      const { seq, prev, hash, event } = checked.value;

      const expectedSeq = lastSeq + 1;
      if (seq !== expectedSeq) {
        if (lineNo === 1) {
          return fail(`seq ${seq} but a file starts at seq 1: ${missingRange(1, seq - 1)} removed from its start`);
        }
        if (seq < expectedSeq) {
          return fail(`seq ${seq} follows ${lastSeq}: lines are out of order or duplicated (reordered)`);
        }
        // A gap: reordered if the missing seqs turn up later in the file, removed if not.
        const wanted = new Set<number>();
        for (let s = expectedSeq; s < seq && wanted.size < 10_000; s++) wanted.add(s);
        let laterAt: number | undefined;
        let ahead = lineNo;
        for (let more = lines.next(); !more.done && laterAt === undefined; more = lines.next()) {
          ahead++;
          try {
            const v = (JSON.parse(more.value.bytes.toString('utf8')) as { seq?: unknown }).seq;
            if (typeof v === 'number' && wanted.has(v)) laterAt = ahead;
          } catch {
            // not JSON: cannot hold a missing seq
          }
        }
        if (laterAt !== undefined) {
          return fail(`seq ${seq} follows ${lastSeq}: lines are out of order (a missing seq is at line ${laterAt}): reordered`);
        }
        const count = seq - expectedSeq;
        return fail(
          `seq ${seq} follows ${lastSeq}: ` +
            `${count === 1 ? 'a line was removed' : `${count} lines were removed`} (${missingRange(expectedSeq, seq - 1)})`,
        );
      }

      if (prev !== lastHash) {
        if (lineNo > 1) {
          return fail(
            `prev does not match line ${lineNo - 1}'s hash ` +
              `(reordered or removed, or line ${lineNo - 1} was altered and re-hashed)`,
          );
        }
        if (options.expectedPrev !== undefined) {
          return fail(
            `prev does not match the previous file's last hash ${options.expectedPrev} ` +
              '(the files are not consecutive, or lines were removed)',
          );
        }
        if (event !== 'rotated') {
          return fail('prev is not 64 zeros and the line is not a rotation record: lines were removed from the start');
        }
      }
      lastSeq = seq;
      lastHash = hash;
    }
  } finally {
    lines.return(undefined);
  }
  return { ok: true, lines: lineNo, lastHash };
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The trail's rotated files, oldest first, then the current file (if it exists): the verifier's argument list. */
export function listAuditFiles(file: string): string[] {
  const dir = dirname(file);
  const pattern = new RegExp(`^${escapeRegExp(basename(file))}\\.(\\d{8}T\\d{6}\\.\\d{3}Z)(?:-(\\d+))?$`);
  const rotated = existsSync(dir)
    ? readdirSync(dir)
        .map((name) => ({ name, m: pattern.exec(name) }))
        .filter((e): e is { name: string; m: RegExpExecArray } => e.m !== null)
        .sort((a, b) => (a.m[1]! < b.m[1]! ? -1 : a.m[1]! > b.m[1]! ? 1 : Number(a.m[2] ?? 0) - Number(b.m[2] ?? 0)))
        .map((e) => join(dir, e.name))
    : [];
  return existsSync(file) ? [...rotated, file] : rotated;
}

function compactUtc(d: Date): string {
  return d.toISOString().replace(/[-:]/g, ''); // 20260115T103000.123Z
}

type RotationTrigger = 'manual' | 'size' | 'restart';

export class AuditTrail {
  private readonly maxBytes: number;
  private readonly fsync: boolean;
  private readonly now: () => Date;
  private fd: number | undefined;
  private size = 0;
  private seq = 0;
  private lastHash = GENESIS;
  private broken: Error | undefined;

  /**
   * Opens (or creates, mode 0600, directory 0700 if missing) `file` and restores `seq` and the last hash from its
   * last line. A last line that is cut, not JSON or whose hash does not match throws AuditTrailError: the trail
   * does not append to a broken chain (verify the file, move it aside, restart). A missing or empty file after a
   * rotated one (crash between rename and first line) starts with a rotation record chained to it.
   */
  constructor(
    readonly file: string,
    options: AuditTrailOptions = {},
  ) {
    const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) {
      throw new RangeError(`audit trail maxBytes must be a positive integer, got ${maxBytes}`);
    }
    this.maxBytes = maxBytes;
    this.fsync = options.fsync ?? false;
    this.now = options.now ?? (() => new Date());
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    this.open();
    const tail = readLastLine(this.fd!, this.size);
    if (tail) {
      const checked = tail.terminated ? checkLine(tail.bytes) : undefined;
      if (!checked?.ok) {
        this.close();
        throw new AuditTrailError(
          `audit trail ${file} line ${countLines(file)}: the last line ${checked ? checked.reason : 'is cut (no newline)'}; ` +
            'refusing to append to a broken chain (check it with audit-verify, move the file aside, restart)',
        );
      }
      this.seq = checked.value.seq;
      this.lastHash = checked.value.hash;
      return;
    }
    const previous = listAuditFiles(file).filter((f) => f !== file).pop();
    if (previous === undefined) return;
    try {
      const result = this.lastLineOf(previous);
      this.lastHash = result.hash;
      this.append({ event: 'rotated', previousFile: basename(previous), previousLastSeq: result.seq, trigger: 'restart' }, false);
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /** Last seq and hash written (seq 0 and the chain's start value before the first line of a file). */
  get head(): { seq: number; hash: string } {
    return { seq: this.seq, hash: this.lastHash };
  }

  /**
   * Appends one line synchronously and returns its seq and hash (worth shipping elsewhere as an anchor). Throws on
   * a reserved key (`seq`, `time`, `prev`, `hash`), after `close()`, or when the disk refuses the line (the file is
   * then cut back to its previous end, so the chain stays intact; the request should fail closed).
   */
  write(record: AuditRecord): { seq: number; hash: string } {
    for (const key of Object.keys(record)) {
      if (RESERVED.has(key)) throw new TypeError(`audit record key "${key}" is reserved by the trail`);
    }
    return this.append(record);
  }

  /** Renames the current file to `<file>.<UTC timestamp>` and starts a new one chained to it (no-op when empty). */
  rotate(): void {
    if (this.fd !== undefined && this.size === 0) return;
    this.rotateAs('manual');
  }

  close(): void {
    if (this.fd !== undefined) {
      closeSync(this.fd);
      this.fd = undefined;
    }
  }

  private open(): void {
    this.fd = openSync(this.file, 'a+', 0o600);
    fchmodSync(this.fd, 0o600);
    this.size = fstatSync(this.fd).size;
  }

  private lastLineOf(path: string): ParsedLine {
    const fd = openSync(path, 'r');
    try {
      const tail = readLastLine(fd, fstatSync(fd).size);
      const checked = tail?.terminated ? checkLine(tail.bytes) : undefined;
      if (!checked?.ok) {
        throw new AuditTrailError(
          `audit trail ${path} line ${countLines(path)}: the last line ` +
            `${checked ? checked.reason : tail ? 'is cut (no newline)' : 'is missing (empty file)'}; ` +
            `cannot chain ${this.file} to it`,
        );
      }
      return checked.value;
    } finally {
      closeSync(fd);
    }
  }

  private rotateAs(trigger: RotationTrigger): void {
    if (this.broken) throw this.broken;
    if (this.fd === undefined) throw new AuditTrailError(`audit trail ${this.file} is closed`);
    const stamp = compactUtc(this.now());
    let target = `${this.file}.${stamp}`;
    for (let n = 1; existsSync(target); n++) target = `${this.file}.${stamp}-${n}`;
    const previousLastSeq = this.seq;
    renameSync(this.file, target);
    this.close();
    this.open();
    this.seq = 0;
    this.append({ event: 'rotated', previousFile: basename(target), previousLastSeq, trigger }, false);
  }

  private format(record: AuditRecord, seq: number): { line: Buffer; hash: string } {
    const entries: Array<[string, AuditValue]> = [
      ['seq', seq],
      ['time', this.now().toISOString()],
      ...Object.entries(record).filter(([, v]) => v !== undefined),
      ['prev', this.lastHash],
    ];
    const body = JSON.stringify(Object.fromEntries(entries));
    const hash = sha256Hex(body);
    return { line: Buffer.from(`${body.slice(0, -1)},"hash":"${hash}"}\n`), hash };
  }

  private append(record: AuditRecord, mayRotate = true): { seq: number; hash: string } {
    if (this.broken) throw this.broken;
    if (this.fd === undefined) throw new AuditTrailError(`audit trail ${this.file} is closed`);
    let { line, hash } = this.format(record, this.seq + 1);
    if (this.size > 0 && this.size + line.length > this.maxBytes && mayRotate) {
      this.rotateAs('size');
      ({ line, hash } = this.format(record, this.seq + 1));
    }
    const fd = this.fd!;
    const before = this.size;
    try {
      for (let off = 0; off < line.length; ) off += writeSync(fd, line, off, line.length - off);
      if (this.fsync) fsyncSync(fd);
    } catch (err) {
      try {
        ftruncateSync(fd, before);
      } catch {
        this.broken = new AuditTrailError(
          `audit trail ${this.file}: a write failed and the partial line could not be removed (${String(err)}); ` +
            'restart after checking the file',
        );
      }
      throw err;
    }
    this.size += line.length;
    this.seq += 1;
    this.lastHash = hash;
    return { seq: this.seq, hash };
  }
}
