/**
 * The tamper-evident audit trail's writer: one JSON line per audited request, each chained to the one before by
 * SHA-256 (format and verifier: audit-chain.ts).
 *
 * Fail closed: `write()` resolves only once the line has been handed to the OS (a completed write(2) on the file; with
 * `fsync`, also flushed to the disk), so a caller that waits for it before answering never answers without its
 * record. When a write fails (EPERM, ENOSPC, EIO, a vanished directory…) the partial line is cut off again, that write
 * and every write queued behind it reject, and so does every write until the trail recovers: it re-opens the file by
 * its path (the directory or the file may have been replaced) with backoff, checks that the file still ends with the
 * last line it wrote, and continues the chain with a `reopened` record that says how many records were lost and why.
 *
 * Writes never block the event loop: they are queued in call order and written in batches (one writev per batch, on
 * the libuv pool), so the chain order is the call order however many requests are in flight. One process owns a trail
 * file: two processes (cluster workers, two gateways) must not share one. Do not rotate it with logrotate (the trail
 * keeps writing to the renamed inode): use `rotate()` or `rotateBytes`.
 *
 * Rotation renames `<file>` to `<file>.<YYYYMMDDTHHMMSS.sssZ>` (UTC; `-1`, `-2`… appended if that name exists) and
 * starts a new `<file>` whose line 1 is `{"event":"rotated","previousFile":"<renamed basename>",…}` chained to the
 * renamed file's last hash. Retention (`maxFiles`, `maxBytes`) then deletes the oldest rotated files; the first kept
 * file still starts with a rotation record, whose `prev` is the anchor of what is left.
 */
import { close, fdatasync, fstat, ftruncate, open, read, writev } from 'node:fs';
import { closeSync, fchmodSync, fstatSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { mkdir, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import {
  AuditTrailError,
  GENESIS,
  checkLine,
  countLines,
  formatLine,
  listAuditFiles,
  listRotatedFiles,
  readLastLine,
  readLastLineAsync,
  type AuditRecord,
  type ParsedLine,
} from './audit-chain.js';

const DEFAULT_ROTATE_BYTES = 100 * 1024 * 1024;
const RESERVED = new Set(['seq', 'time', 'prev', 'hash']);

/** Whether the trail writes, for /readyz and the log. */
interface AuditStatus {
  ok: boolean;
  detail: string;
}

interface AuditTrailOptions {
  /** Rotate before a write that would take the file over this size (default 100 MB). */
  rotateBytes?: number;
  /** Rotated files kept; older ones are deleted after a rotation (default: all). */
  maxFiles?: number;
  /** Total bytes of rotated files kept; the oldest are deleted after a rotation until they fit (default: no limit). */
  maxBytes?: number;
  /** fdatasync after every batch: survives an OS crash / power loss, costs a disk flush per batch (default false). */
  fsync?: boolean;
  /** Clock for `time` and rotated file names (tests). */
  now?: () => Date;
  /** Delay before the first recovery attempt after a failed write, doubling up to `max` (default 100 ms → 2 s). */
  retryMs?: { first: number; max: number };
  /** Called when the trail starts failing and when it writes again. */
  onStateChange?: (status: AuditStatus) => void;
  /** The write(2) of a batch; returns the bytes written (tests inject failures here). */
  writev?: (fd: number, buffers: Buffer[]) => Promise<number>;
}

interface Written {
  seq: number;
  hash: string;
}

type Entry =
  | { kind: 'record'; record: AuditRecord; time: Date; settled: boolean; resolve: (w: Written) => void; reject: (e: Error) => void }
  | { kind: 'rotate'; settled: boolean; resolve: () => void; reject: (e: Error) => void };

interface Failure {
  error: AuditTrailError;
  since: Date;
  /** The errno code (or message) of the last failed attempt. */
  cause: string;
  /** Records refused since the failure began. */
  lost: number;
}

type RotationTrigger = 'manual' | 'size' | 'restart';

const errnoOf = (err: unknown): string => (err as NodeJS.ErrnoException)?.code ?? String((err as Error)?.message ?? err);

function fsCall<T>(fn: (cb: (err: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));
}

const writevAsync = (fd: number, buffers: Buffer[]): Promise<number> => fsCall<number>((cb) => writev(fd, buffers, cb));
const closeAsync = (fd: number): Promise<void> => fsCall<void>((cb) => close(fd, (err) => cb(err, undefined)));

/** `buffers` without their first `n` bytes. */
function skipBytes(buffers: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of buffers) {
    if (n >= b.length) n -= b.length;
    else {
      out.push(n > 0 ? b.subarray(n) : b);
      n = 0;
    }
  }
  return out;
}

function compactUtc(d: Date): string {
  return d.toISOString().replace(/[-:]/g, ''); // 20260115T103000.123Z
}

export class AuditTrail {
  private readonly rotateBytes: number;
  private readonly options: AuditTrailOptions;
  private readonly now: () => Date;
  private readonly writeBuffers: (fd: number, buffers: Buffer[]) => Promise<number>;
  private fd: number | undefined;
  private inode: { dev: number; ino: number } | undefined;
  /** Bytes of complete lines in the file (what a failed write is cut back to). */
  private size = 0;
  /** The last line written (seq 0 and the chain's start value before the first line of a file). */
  private seq = 0;
  private lastHash = GENESIS;
  private queue: Entry[] = [];
  /** The batch loop while it runs (close and recovery wait for it); `busy` is its flag, set and cleared synchronously. */
  private writing: Promise<void> | undefined;
  private busy = false;
  private failure: Failure | undefined;
  /** The bytes of a failed write that could not be cut off again (recovery cuts them once it can). */
  private uncut: Buffer | undefined;
  private retry: { timer?: NodeJS.Timeout; delayMs: number };
  private closed = false;

  /**
   * Opens (or creates, mode 0600, directory 0700 if missing) `file` and restores `seq` and the last hash from its
   * last line. A last line that is cut, not JSON or whose hash does not match throws AuditTrailError: the trail
   * does not append to a broken chain (verify the file, move it aside, restart). A missing or empty file after a
   * rotated one (crash between rename and first line) starts with a rotation record chained to it. Start-up only:
   * synchronous.
   */
  constructor(
    readonly file: string,
    options: AuditTrailOptions = {},
  ) {
    const rotateBytes = options.rotateBytes ?? DEFAULT_ROTATE_BYTES;
    if (!Number.isSafeInteger(rotateBytes) || rotateBytes <= 0) {
      throw new RangeError(`audit trail rotateBytes must be a positive integer, got ${rotateBytes}`);
    }
    this.rotateBytes = rotateBytes;
    this.options = options;
    this.now = options.now ?? (() => new Date());
    this.writeBuffers = options.writev ?? writevAsync;
    this.retry = { delayMs: options.retryMs?.first ?? 100 };
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const fd = openSync(file, 'a+', 0o600);
    fchmodSync(fd, 0o600);
    const st = fstatSync(fd);
    this.adopt(fd, st, st.size);
    const tail = readLastLine(fd, this.size);
    if (tail) {
      const checked = tail.terminated ? checkLine(tail.bytes) : undefined;
      if (!checked?.ok) {
        this.closeSync();
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
      const { line, hash } = formatLine(1, this.now(), { event: 'rotated', previousFile: basename(previous), previousLastSeq: result.seq, trigger: 'restart' }, this.lastHash);
      for (let off = 0; off < line.length; ) off += writeSync(fd, line, off, line.length - off);
      this.size += line.length;
      this.seq = 1;
      this.lastHash = hash;
    } catch (err) {
      this.closeSync();
      throw err;
    }
  }

  /** Last seq and hash written (seq 0 and the chain's start value before the first line of a file). */
  get head(): { seq: number; hash: string } {
    return { seq: this.seq, hash: this.lastHash };
  }

  /** Whether the trail writes; when not, since when and why, and how many records it refused. */
  status(): AuditStatus {
    const f = this.failure;
    if (this.closed) return { ok: false, detail: `audit trail ${this.file} is closed` };
    if (!f) return { ok: true, detail: `writing ${this.file}` };
    return { ok: false, detail: `cannot write ${this.file} since ${f.since.toISOString()} (${f.cause}); ${f.lost} records refused` };
  }

  /**
   * Appends one line; resolves with its seq and hash (worth shipping elsewhere as an anchor) once the OS has it.
   * Rejects after `close()` and while the trail cannot write (see the class comment). A reserved key (`seq`, `time`,
   * `prev`, `hash`) throws at once: that is a bug, not an outage.
   */
  write(record: AuditRecord): Promise<Written> {
    for (const key of Object.keys(record)) {
      if (RESERVED.has(key)) throw new TypeError(`audit record key "${key}" is reserved by the trail`);
    }
    if (this.closed) return Promise.reject(new AuditTrailError(`audit trail ${this.file} is closed`));
    if (this.failure) {
      this.failure.lost++;
      return Promise.reject(this.failure.error);
    }
    const time = this.now();
    return new Promise<Written>((resolve, reject) => {
      this.queue.push({ kind: 'record', record, time, settled: false, resolve, reject });
      this.kick();
    });
  }

  /** Renames the current file to `<file>.<UTC timestamp>` and starts a new one chained to it (no-op when empty). */
  rotate(): Promise<void> {
    if (this.closed) return Promise.reject(new AuditTrailError(`audit trail ${this.file} is closed`));
    if (this.failure) return Promise.reject(this.failure.error);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ kind: 'rotate', settled: false, resolve, reject });
      this.kick();
    });
  }

  /** Writes what is queued, stops recovering, closes the file. Later writes reject. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry.timer);
    await this.writing;
    if (this.fd !== undefined) {
      const fd = this.fd;
      this.fd = undefined;
      await closeAsync(fd).catch(() => undefined);
    }
  }

  private closeSync(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private adopt(fd: number, st: { dev: number; ino: number }, size: number): void {
    this.fd = fd;
    this.inode = { dev: st.dev, ino: st.ino };
    this.size = size;
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

  private kick(): void {
    if (this.busy) return;
    this.busy = true;
    this.writing = this.drain();
  }

  /** Writes the queue in batches (everything queued while the previous batch was on its way) until it is empty. */
  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0 && !this.failure) {
        const batch = this.queue;
        this.queue = [];
        try {
          await this.writeBatch(batch);
        } catch (err) {
          this.fail(err, batch);
        }
      }
    } finally {
      this.busy = false;
    }
  }

  /** Formats the batch's lines in order (rotating where needed) and writes them; settles each entry once written. */
  private async writeBatch(batch: Entry[]): Promise<void> {
    let lines: Buffer[] = [];
    let bytes = 0;
    let done: Array<() => void> = [];
    let seq = this.seq;
    let hash = this.lastHash;
    const flush = async (): Promise<void> => {
      if (lines.length > 0) {
        await this.writeOut(this.fd!, lines, bytes, this.size);
        this.size += bytes;
        this.seq = seq;
        this.lastHash = hash;
      }
      for (const settle of done) settle();
      lines = [];
      bytes = 0;
      done = [];
    };
    const rotateHere = async (trigger: RotationTrigger): Promise<void> => {
      await flush();
      await this.rotateNow(trigger);
      seq = this.seq;
      hash = this.lastHash;
    };
    for (const entry of batch) {
      if (this.fd === undefined) throw new AuditTrailError(`audit trail ${this.file} is closed`);
      if (entry.kind === 'rotate') {
        if (this.size + bytes > 0) await rotateHere('manual');
        entry.settled = true;
        entry.resolve();
        continue;
      }
      let formatted = formatLine(seq + 1, entry.time, entry.record, hash);
      if (this.size + bytes > 0 && this.size + bytes + formatted.line.length > this.rotateBytes) {
        await rotateHere('size');
        formatted = formatLine(seq + 1, entry.time, entry.record, hash);
      }
      lines.push(formatted.line);
      bytes += formatted.line.length;
      seq += 1;
      hash = formatted.hash;
      const written = { seq, hash };
      done.push(() => {
        entry.settled = true;
        entry.resolve(written);
      });
    }
    await flush();
  }

  /** Hands `lines` to the OS (all of them: a short write continues); on failure the file is cut back to its size. */
  private async writeOut(fd: number, lines: Buffer[], bytes: number, before: number): Promise<void> {
    try {
      for (let off = 0; off < bytes; ) {
        const n = await this.writeBuffers(fd, off === 0 ? lines : skipBytes(lines, off));
        off += n;
      }
      if (this.options.fsync) await fsCall<void>((cb) => fdatasync(fd, (err) => cb(err, undefined)));
    } catch (err) {
      // A cut line would break the chain; if even this fails, recovery cuts it (it knows what it tried to write).
      await fsCall<void>((cb) => ftruncate(fd, before, (e) => cb(e, undefined))).catch(() => {
        this.uncut = Buffer.concat(lines);
      });
      throw err;
    }
  }

  /** Renames the current file away, opens a new one, applies retention, and writes the new file's rotation record. */
  private async rotateNow(trigger: RotationTrigger): Promise<void> {
    const stamp = compactUtc(this.now());
    let target = `${this.file}.${stamp}`;
    for (let n = 1; await stat(target).then(() => true, () => false); n++) target = `${this.file}.${stamp}-${n}`;
    const previousLastSeq = this.seq;
    await rename(this.file, target);
    const fd = await fsCall<number>((cb) => open(this.file, 'a+', 0o600, cb));
    const st = await fsCall<{ dev: number; ino: number }>((cb) => fstat(fd, cb));
    const old = this.fd!;
    this.adopt(fd, st, 0);
    this.seq = 0;
    await closeAsync(old).catch(() => undefined);
    const retention = await this.applyRetention();
    const { line, hash } = formatLine(1, this.now(), { event: 'rotated', previousFile: basename(target), previousLastSeq, trigger, ...retention }, this.lastHash);
    await this.writeOut(fd, [line], line.length, 0);
    this.size = line.length;
    this.seq = 1;
    this.lastHash = hash;
  }

  /** Deletes the oldest rotated files beyond `maxFiles` / `maxBytes`; what it did, for the rotation record. */
  private async applyRetention(): Promise<AuditRecord> {
    const { maxFiles, maxBytes } = this.options;
    if (maxFiles === undefined && maxBytes === undefined) return {};
    try {
      const rotated = await listRotatedFiles(this.file);
      const sizes = await Promise.all(rotated.map((f) => stat(f).then((s) => s.size)));
      let total = sizes.reduce((a, b) => a + b, 0);
      let deleted = 0;
      while (deleted < rotated.length && (rotated.length - deleted > (maxFiles ?? Infinity) || total > (maxBytes ?? Infinity))) {
        await unlink(rotated[deleted]!);
        total -= sizes[deleted]!;
        deleted++;
      }
      const oldest = rotated[deleted];
      return deleted === 0 ? {} : { retentionDeleted: deleted, ...(oldest ? { oldestKept: basename(oldest) } : {}) };
    } catch (err) {
      // Not a lost record: the trail still writes. A disk that then fills up fails closed like any other.
      return { retentionError: errnoOf(err) };
    }
  }

  /** A batch failed: it and everything queued behind it is refused; recovery starts. */
  private fail(err: unknown, batch: Entry[]): void {
    const cause = errnoOf(err);
    const refused = [...batch.filter((e) => !e.settled), ...this.queue];
    this.queue = [];
    const first = !this.failure;
    this.failure ??= {
      error: new AuditTrailError(`audit trail ${this.file}: cannot write (${cause}); refusing until it can`),
      since: this.now(),
      cause,
      lost: 0,
    };
    this.failure.lost += refused.filter((e) => e.kind === 'record').length;
    for (const e of refused) {
      e.settled = true;
      e.reject(this.failure.error);
    }
    if (first) this.options.onStateChange?.(this.status());
    this.scheduleRecovery();
  }

  /** Whether the bytes past the trail's last line are (a start of) the write that failed. */
  private async endsWithUncut(fd: number, size: number): Promise<boolean> {
    const extra = size - this.size;
    if (!this.uncut || extra > this.uncut.length) return false;
    const bytes = Buffer.alloc(extra);
    await fsCall<number>((cb) => read(fd, bytes, 0, extra, this.size, cb));
    return bytes.equals(this.uncut.subarray(0, extra));
  }

  private scheduleRecovery(): void {
    if (this.closed) return;
    clearTimeout(this.retry.timer);
    const delay = this.retry.delayMs;
    this.retry.delayMs = Math.min(delay * 2, this.options.retryMs?.max ?? 2000);
    this.retry.timer = setTimeout(() => void this.recover(), delay);
    this.retry.timer.unref();
  }

  /**
   * Re-opens the file by its path and, if it ends with the last line this trail wrote (or is new and empty), writes
   * the `reopened` record there: the gap is in the chain, not only in the log. Otherwise the trail stays failed and
   * tries again later (a file that changed under it is the operator's to move aside).
   */
  private async recover(): Promise<void> {
    const failure = this.failure;
    if (!failure || this.closed) return;
    await this.writing;
    let fd: number | undefined;
    try {
      await mkdir(dirname(this.file), { recursive: true, mode: 0o700 });
      fd = await fsCall<number>((cb) => open(this.file, 'a+', 0o600, cb));
      const st = await fsCall<{ dev: number; ino: number; size: number }>((cb) => fstat(fd!, cb));
      const same = this.inode !== undefined && st.dev === this.inode.dev && st.ino === this.inode.ino;
      let size = st.size;
      if (same && size > this.size && (await this.endsWithUncut(fd, size))) {
        // Our own failed write, which could not be cut off then.
        await fsCall<void>((cb) => ftruncate(fd!, this.size, (e) => cb(e, undefined)));
        size = this.size;
      }
      let seq = 0;
      if (size > 0) {
        const tail = await readLastLineAsync(fd, size);
        const checked = tail?.terminated ? checkLine(tail.bytes) : undefined;
        if (!checked?.ok || checked.value.hash !== this.lastHash) {
          throw new AuditTrailError(`${this.file} changed while it could not be written: it does not end with the trail's last line (move it aside)`);
        }
        seq = checked.value.seq;
      }
      const record: AuditRecord = {
        event: 'reopened',
        lost: failure.lost,
        failedAt: failure.since.toISOString(),
        error: failure.cause,
        ...(seq === 0 ? { previousLastSeq: this.seq } : {}),
      };
      const { line, hash } = formatLine(seq + 1, this.now(), record, this.lastHash);
      await this.writeOut(fd, [line], line.length, size);
      const old = this.fd;
      this.adopt(fd, st, size + line.length);
      fd = undefined;
      this.seq = seq + 1;
      this.lastHash = hash;
      if (old !== undefined && old !== this.fd) await closeAsync(old).catch(() => undefined);
      this.failure = undefined;
      this.uncut = undefined;
      this.retry.delayMs = this.options.retryMs?.first ?? 100;
      this.options.onStateChange?.({ ok: true, detail: `writing ${this.file} again; ${record.lost} records were refused (noted in the chain)` });
      if (this.queue.length > 0) this.kick();
    } catch (err) {
      if (fd !== undefined) await closeAsync(fd).catch(() => undefined);
      failure.cause = err instanceof AuditTrailError ? err.message : errnoOf(err);
      this.scheduleRecovery();
    }
  }
}
