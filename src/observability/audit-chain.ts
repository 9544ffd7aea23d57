/**
 * The audit trail's file format and its verifier (the writer is audit-trail.ts).
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
 * Records the trail writes itself (`event`):
 * - `rotated`  line 1 of a file that follows a renamed one: `previousFile`, `previousLastSeq`, `trigger`
 *   (manual | size | restart), and `retentionDeleted` / `oldestKept` when retention deleted old files.
 * - `reopened` the trail could not write for a while and writes again: `lost` records were refused (their requests
 *   were answered 503, nothing signed left), `failedAt`, `error` (the errno code). It chains to the last line that was
 *   written; when the file had to be created anew it is its line 1 (`previousLastSeq` names where the chain was).
 *
 * What a hash chain proves and what not: an edit, a deleted, inserted or reordered line, or a cut in the middle
 * is found by `verifyAuditFile` (and the line named). Someone who can write the file can still drop lines from
 * its END, or recompute the whole chain: anchor the head hash outside the machine (ship `write()`'s returned
 * hash to the central log, or sign checkpoints) to close that gap. The first kept file of a trail whose older files
 * were deleted by retention starts from the last hash of the deleted one (its anchor, which the verifier prints).
 */
import * as crypto from 'node:crypto';
import { closeSync, existsSync, openSync, read, readSync, readdirSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export const GENESIS = '0'.repeat(64);

export type AuditValue = string | number | boolean | undefined;
export type AuditRecord = Record<string, AuditValue>;

/** What the verifier found: a chain gap the trail noted (`reopened`), by line. */
interface NotedGap {
  line: number;
  lost: number;
  error?: string;
}

type VerifyResult =
  | {
      ok: true;
      lines: number;
      lastHash: string;
      /** Lines the trail wrote after it could not write for a while: records lost there (none were signed). */
      gaps: NotedGap[];
      /** Line 1 chains to a file that was not given (deleted by retention, or kept elsewhere): its last hash. */
      anchor?: { prev: string; previousFile?: string };
    }
  | { ok: false; line: number; reason: string };

/** A trail that cannot be (re)opened or appended to; the message names the file (and line). */
export class AuditTrailError extends Error {
  override readonly name = 'AuditTrailError';
}

const HEX64 = /^[0-9a-f]{64}$/;
const HASH_TAIL = /^,"hash":"([0-9a-f]{64})"\}$/;
const HASH_TAIL_BYTES = 75; // ,"hash":" (9) + 64 hex + "} (2)
const NEWLINE = 0x0a;
const CHUNK = 1 << 20;
/** Records that may open a file with a `prev` from another file. */
const CHAIN_STARTS = new Set(['rotated', 'reopened']);

/** Node ≥ 20.12 hashes a string in one call, without a Hash object per line (a line per request). */
const oneShotHash = (crypto as { hash?: (algorithm: string, data: string | Buffer, encoding: 'hex') => string }).hash;

function sha256Hex(data: Buffer | string): string {
  return oneShotHash ? oneShotHash('sha256', data, 'hex') : crypto.createHash('sha256').update(data).digest('hex');
}

/** One line's bytes (with its `\n`) and hash: `record` after `seq`/`time`, before `prev`. */
export function formatLine(seq: number, time: Date, record: AuditRecord, prev: string): { line: Buffer; hash: string } {
  const body = plainMembers(record) ? spliced(seq, time, record, prev) : assembled(seq, time, record, prev);
  const hash = sha256Hex(body);
  return { line: Buffer.from(`${body.slice(0, -1)},"hash":"${hash}"}\n`), hash };
}

/** The members JSON.stringify writes in insertion order and no reserved name: what every request record has. */
function plainMembers(record: AuditRecord): boolean {
  for (const key in record) {
    const first = key.charCodeAt(0);
    if ((first >= 48 && first <= 57) || RESERVED.has(key)) return false;
  }
  return Object.getPrototypeOf(record) === Object.prototype;
}
const RESERVED = new Set(['seq', 'time', 'prev', 'hash', '__proto__']);

/** The record's own JSON between `seq`/`time` and `prev`: no second object per line (a line per request). */
function spliced(seq: number, time: Date, record: AuditRecord, prev: string): string {
  const members = JSON.stringify(record).slice(1, -1);
  return `{"seq":${seq},"time":"${time.toISOString()}",${members}${members ? ',' : ''}"prev":"${prev}"}`;
}

/**
 * Any other record (an array-index-like name, which JSON.stringify puts first; a reserved or "__proto__" name): one
 * object built in member order, without a prototype, so that every name is an own member as Object.fromEntries made it.
 */
function assembled(seq: number, time: Date, record: AuditRecord, prev: string): string {
  const members: Record<string, AuditValue> = Object.create(null);
  members.seq = seq;
  members.time = time.toISOString();
  for (const key of Object.keys(record)) {
    const value = record[key];
    if (value !== undefined) members[key] = value;
  }
  members.prev = prev;
  return JSON.stringify(members);
}

export interface ParsedLine {
  seq: number;
  prev: string;
  hash: string;
  fields: Record<string, unknown>;
}

/** Checks one line on its own (JSON, hash member, hash over its bytes, field shapes). Reasons have no line prefix. */
export function checkLine(bytes: Buffer): { ok: true; value: ParsedLine } | { ok: false; reason: string } {
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
  return { ok: true, value: { seq, prev, hash, fields: line } };
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

/** The steps to read the last line before `size` backwards in 64 KB blocks: each yield asks for one block to be filled. */
function* lastLineSteps(size: number): Generator<{ block: Buffer; position: number }, RawLine | undefined, void> {
  if (size === 0) return undefined;
  const last = Buffer.alloc(1);
  yield { block: last, position: size - 1 };
  const terminated = last[0] === NEWLINE;
  const end = terminated ? size - 1 : size;
  const parts: Buffer[] = [];
  let pos = end;
  while (pos > 0) {
    const len = Math.min(64 * 1024, pos);
    const block = Buffer.alloc(len);
    yield { block, position: pos - len };
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

/** The last line of an open file, read synchronously (start-up only), or undefined when the file is empty. */
export function readLastLine(fd: number, size: number): RawLine | undefined {
  const steps = lastLineSteps(size);
  for (let step = steps.next(); ; step = steps.next()) {
    if (step.done) return step.value;
    readSync(fd, step.value.block, 0, step.value.block.length, step.value.position);
  }
}

/** The last line of an open file, read without blocking the event loop (recovery while serving). */
export async function readLastLineAsync(fd: number, size: number): Promise<RawLine | undefined> {
  const steps = lastLineSteps(size);
  for (let step = steps.next(); ; step = steps.next()) {
    if (step.done) return step.value;
    const { block, position } = step.value;
    await new Promise<void>((resolve, reject) => read(fd, block, 0, block.length, position, (err) => (err ? reject(err) : resolve())));
  }
}

/** Number of lines (an unterminated tail counts as one); only used to name a line in start-up errors. */
export function countLines(path: string): number {
  let count = 0;
  for (const _ of readLines(path)) count++;
  return count;
}

function missingRange(from: number, to: number): string {
  return from === to ? `seq ${from}` : `seqs ${from}–${to}`;
}

/**
 * Recomputes a file's chain and names the FIRST bad line (1-based). `expectedPrev`: the last hash of the file this
 * one follows (rotation); without it, line 1 must carry `prev` = GENESIS unless it is a `rotated` or `reopened`
 * record (its file follows one that was not given: the result's `anchor`). Reasons read "line N: …". `reopened`
 * records are returned as `gaps`. I/O errors (missing file, permissions) are thrown, not returned.
 */
export function verifyAuditFile(path: string, options: { expectedPrev?: string } = {}): VerifyResult {
  const lines = readLines(path);
  let lineNo = 0;
  let lastSeq = 0;
  let lastHash = options.expectedPrev ?? GENESIS;
  let anchor: { prev: string; previousFile?: string } | undefined;
  const gaps: NotedGap[] = [];
  try {
    for (let next = lines.next(); !next.done; next = lines.next()) {
      const { bytes, terminated } = next.value;
      lineNo++;
      const fail = (reason: string): VerifyResult => ({ ok: false, line: lineNo, reason: `line ${lineNo}: ${reason}` });
      if (!terminated) return fail('truncated: the last line has no newline (an incomplete write, or the file was cut)');
      const checked = checkLine(bytes);
      if (!checked.ok) return fail(checked.reason);
      const { seq, prev, hash, fields } = checked.value;

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
        if (typeof fields.event !== 'string' || !CHAIN_STARTS.has(fields.event)) {
          return fail('prev is not 64 zeros and the line is not a rotation record: lines were removed from the start');
        }
        anchor = { prev, ...(typeof fields.previousFile === 'string' ? { previousFile: fields.previousFile } : {}) };
      }
      if (fields.event === 'reopened') {
        gaps.push({ line: lineNo, lost: typeof fields.lost === 'number' ? fields.lost : 0, ...(typeof fields.error === 'string' ? { error: fields.error } : {}) });
      }
      lastSeq = seq;
      lastHash = hash;
    }
  } finally {
    lines.return(undefined);
  }
  return { ok: true, lines: lineNo, lastHash, gaps, ...(anchor ? { anchor } : {}) };
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Rotated files of the trail `file`, oldest first (their names sort by rotation time, then `-n`). */
function rotatedInOrder(file: string, names: string[]): string[] {
  const pattern = new RegExp(`^${escapeRegExp(basename(file))}\\.(\\d{8}T\\d{6}\\.\\d{3}Z)(?:-(\\d+))?$`);
  return names
    .map((name) => ({ name, m: pattern.exec(name) }))
    .filter((e): e is { name: string; m: RegExpExecArray } => e.m !== null)
    .sort((a, b) => (a.m[1]! < b.m[1]! ? -1 : a.m[1]! > b.m[1]! ? 1 : Number(a.m[2] ?? 0) - Number(b.m[2] ?? 0)))
    .map((e) => join(dirname(file), e.name));
}

/** The trail's rotated files, oldest first, then the current file (if it exists): the verifier's argument list. */
export function listAuditFiles(file: string): string[] {
  const dir = dirname(file);
  const rotated = existsSync(dir) ? rotatedInOrder(file, readdirSync(dir)) : [];
  return existsSync(file) ? [...rotated, file] : rotated;
}

/** The trail's rotated files, oldest first, without blocking the event loop (retention while serving). */
export async function listRotatedFiles(file: string): Promise<string[]> {
  return rotatedInOrder(file, await readdir(dirname(file)));
}
