// Experiment behind "The audit write on the request path" (bench/README.md): what writing each request's audit record
// BEFORE its answer costs, isolated from HTTP and the token. 64 "requests" in flight, each awaiting its record, then
// the next; three ways to write:
//   sync-after   the old way: format + hash + writeSync on the main thread, the answer not waiting for anything more
//                (its record was written after the answer, and lost on a failure)
//   async-before the gateway's AuditTrail: format + hash on the main thread, the write batched on the libuv pool, the
//                request waiting until the OS has its line
//   async-fsync  the same with audit.fsync (fdatasync per batch)
// Measured: records/s, per-record wait p50/p99 (call → resolved), and the process's CPU per record (main thread and
// libuv threads together).
//
// Usage: npx tsc -p tsconfig.json && node bench/experiments/audit-write.mjs   (EXP_RECORDS 50000, EXP_CONCURRENCY 64)
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';

const ROOT = resolve(import.meta.dirname, '../..');
const { AuditTrail } = await import(join(ROOT, 'dist/observability/audit-trail.js'));
const { formatLine, GENESIS } = await import(join(ROOT, 'dist/observability/audit-chain.js'));
const RECORDS = Number(process.env.EXP_RECORDS ?? 50_000);
const CONCURRENCY = Number(process.env.EXP_CONCURRENCY ?? 64);

const record = (i) => ({
  requestId: `5f0c3a4e-8d1b-4f57-9a7e-${String(i).padStart(12, '0')}`,
  sourceIp: '127.0.0.1',
  action: 'AsymmetricSign',
  accessKeyId: 'LTAI5tDemoDemoDemoDemo',
  account: 'default',
  keyId: 'key-hzz6a1b2c3d4e5f6g7h8i9',
  keyVersionId: 'a1b2c3d4-e5f6-7890-abcd-ef1234567890',
  algorithm: 'ECDSA_SHA_256',
  messageType: 'DIGEST',
  status: 200,
  outcome: 'success',
  code: 'OK',
  latencyMs: 0.52,
});

/** The old writer's I/O: one synchronous write per record, nothing awaited. */
function syncWriter(file) {
  const fd = openSync(file, 'a', 0o600);
  let seq = 0;
  let prev = GENESIS;
  return {
    write(r) {
      const { line, hash } = formatLine(++seq, new Date(), r, prev);
      prev = hash;
      for (let off = 0; off < line.length; ) off += writeSync(fd, line, off, line.length - off);
      return Promise.resolve();
    },
    close: async () => closeSync(fd),
    size: () => fstatSync(fd).size,
  };
}

async function run(name, writer) {
  const waits = new Float64Array(RECORDS);
  let next = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < RECORDS; i = next++) {
        const at = performance.now();
        await writer.write(record(i));
        waits[i] = performance.now() - at;
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await writer.close();
  waits.sort();
  const q = (p) => waits[Math.min(RECORDS - 1, Math.floor(p * RECORDS))].toFixed(3);
  console.log(
    `| ${name} | ${Math.round(RECORDS / seconds).toLocaleString('en')} | ${q(0.5)} | ${q(0.99)} | ${(((cpu.user + cpu.system) / RECORDS)).toFixed(1)} |`,
  );
}

const dir = mkdtempSync(join(tmpdir(), 'audit-write-'));
try {
  console.log(`${RECORDS} records, ${CONCURRENCY} in flight\n`);
  console.log('| writer | records/s | wait p50 ms | wait p99 ms | CPU µs / record |');
  console.log('|---|---|---|---|---|');
  for (let round = 0; round < 2; round++) {
    await run('sync-after', syncWriter(join(dir, `sync-${round}.log`)));
    await run('async-before', new AuditTrail(join(dir, `async-${round}.log`)));
    await run('async-fsync', new AuditTrail(join(dir, `fsync-${round}.log`), { fsync: true }));
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
