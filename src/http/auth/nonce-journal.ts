import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { open, rename, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { RememberedNonce } from './replay-guard.js';

/**
 * The replay guard's write-ahead journal: every accepted nonce id is appended before the request goes on, so that a
 * gateway restarted after `kill -9` (or a crash, or a deploy) still refuses the requests it accepted within their
 * timestamp window.
 *
 * Durability: an append resolves once write(2) has returned — the record is in the kernel's page cache, which
 * outlives the process (kill -9, a crash of Node). It is not fsync'ed: a power cut or kernel crash may lose the last
 * seconds, and a host that comes back from one has also lost its clock's continuity and its TCP peers; fsync per
 * request would cost a disk flush each (milliseconds on most disks) for that case only.
 *
 * The event loop never waits on the disk: appends are asynchronous (libuv pool), and what arrives while one write is
 * on its way goes out as the next single write, so under load a write carries many records.
 *
 * Bounded: two segment files, `<file>` (current) and `<file>.previous`. Each starts with its creation time; a segment
 * older than `ttlMs` (the longest a nonce is kept) is renamed to `.previous` (replacing the one before, whose records
 * have all expired by then) and a new one begun. So the files hold at most two TTLs of accepted requests: at
 * 1,000 req/s with the 15-minute window (TTL 30 min), ≈ 3.6 M records of 15 bytes + the account name.
 *
 * Record: u16 account length, the account (UTF-8), the 53-bit id in 7 bytes, the expiry in u32 seconds since 1970.
 * A record cut short at the end (a write interrupted by the end of the host) is ignored.
 */
const HEADER_BYTES = 8;

export class NonceJournal {
  private queue: Buffer[] = [];
  private waiters: Array<{ resolve: () => void; reject: (err: unknown) => void }> = [];
  private writing = false;

  private constructor(
    private readonly file: string,
    private handle: FileHandle,
    private startedAtMs: number,
    private readonly ttlMs: number,
    private readonly now: () => number,
  ) {}

  /** Opens (or creates) the journal; returns it and the ids it still holds that have not expired. */
  static async open(file: string, ttlMs: number, now: () => number = Date.now): Promise<{ journal: NonceJournal; remembered: RememberedNonce[] }> {
    const t = now();
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const remembered = [...readSegment(`${file}.previous`), ...readSegment(file)].filter((n) => n.expiresAtMs > t);
    let startedAtMs = existsSync(file) ? segmentStart(file) : undefined;
    if (startedAtMs === undefined || t - startedAtMs >= ttlMs) {
      if (startedAtMs !== undefined) renameSync(file, `${file}.previous`);
      startedAtMs = t;
      writeHeader(file, t);
    }
    const handle = await open(file, 'a');
    return { journal: new NonceJournal(file, handle, startedAtMs, ttlMs, now), remembered };
  }

  /** Resolves once the record is handed to the OS. */
  append(nonce: RememberedNonce): Promise<void> {
    this.queue.push(encode(nonce));
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (!this.writing) void this.flush();
    });
  }

  async close(): Promise<void> {
    while (this.writing) await new Promise((r) => setTimeout(r, 5));
    await this.handle.close();
  }

  private async flush(): Promise<void> {
    this.writing = true;
    while (this.queue.length > 0) {
      const records = Buffer.concat(this.queue);
      const waiters = this.waiters;
      this.queue = [];
      this.waiters = [];
      try {
        await this.rotateIfDue();
        for (let done = 0; done < records.length; ) done += (await this.handle.write(records, done)).bytesWritten;
        for (const w of waiters) w.resolve();
      } catch (err) {
        for (const w of waiters) w.reject(err);
      }
    }
    this.writing = false;
  }

  private async rotateIfDue(): Promise<void> {
    const t = this.now();
    if (t - this.startedAtMs < this.ttlMs) return;
    await this.handle.close();
    await rename(this.file, `${this.file}.previous`);
    writeHeader(this.file, t); // 8 bytes, once per TTL
    this.handle = await open(this.file, 'a');
    this.startedAtMs = t;
  }
}

function writeHeader(file: string, at: number): void {
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeDoubleBE(at);
  const fd = openSync(file, 'w', 0o600);
  try {
    writeSync(fd, header);
  } finally {
    closeSync(fd);
  }
}

function segmentStart(file: string): number | undefined {
  const bytes = readFileSync(file);
  return bytes.length >= HEADER_BYTES ? bytes.readDoubleBE(0) : undefined;
}

function encode({ account, id, expiresAtMs }: RememberedNonce): Buffer {
  const name = Buffer.from(account, 'utf8');
  const record = Buffer.alloc(2 + name.length + 7 + 4);
  record.writeUInt16BE(name.length, 0);
  name.copy(record, 2);
  record.writeUIntBE(Math.floor(id / 2 ** 24), 2 + name.length, 4);
  record.writeUIntBE(id % 2 ** 24, 6 + name.length, 3);
  record.writeUInt32BE(Math.ceil(expiresAtMs / 1000), 9 + name.length);
  return record;
}

function readSegment(file: string): RememberedNonce[] {
  if (!existsSync(file)) return [];
  const bytes = readFileSync(file);
  const out: RememberedNonce[] = [];
  for (let at = HEADER_BYTES; at + 2 <= bytes.length; ) {
    const length = bytes.readUInt16BE(at);
    const end = at + 2 + length + 11;
    if (end > bytes.length) break; // cut short
    const account = bytes.toString('utf8', at + 2, at + 2 + length);
    const id = bytes.readUIntBE(at + 2 + length, 4) * 2 ** 24 + bytes.readUIntBE(at + 6 + length, 3);
    out.push({ account, id, expiresAtMs: bytes.readUInt32BE(at + 9 + length) * 1000 });
    at = end;
  }
  return out;
}
