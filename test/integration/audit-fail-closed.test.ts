import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { runAuditVerify } from '../../src/cli/audit-verify.js';
import { listAuditFiles } from '../../src/observability/audit-chain.js';
import { send, signV1, toQuery, v1Params } from '../helpers/raw-client.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// Issue #18: the audit trail fails closed (no signature leaves without its record, the trail recovers by itself and
// notes the gap), every request that reached the gateway's handler has its record, client text is bounded, failed
// authentications are rate-limited per address, and retention keeps a verifiable chain.
let gw: TestGateway;
let auditFile: string;
let canFreeze = false;

beforeAll(async () => {
  gw = await startTestGateway({
    editConfig: (c) => {
      c.throttle.defaultLimit = 1_000_000;
      c.audit.rotateBytes = 32 * 1024;
      c.audit.maxFiles = 2;
      // The readiness details (which part is not ready, and why) are on the management listener.
      c.server.management = { host: '127.0.0.1', port: 0 };
    },
  });
  auditFile = join(gw.home, 'audit', 'audit.log');
  // `chattr +i` makes writes on an open descriptor fail with EPERM, even for root: the probe's fault, deterministic.
  const probe = join(gw.home, 'chattr-probe');
  writeFileSync(probe, 'x');
  try {
    execFileSync('chattr', ['+i', probe], { stdio: 'ignore' });
    execFileSync('chattr', ['-i', probe], { stdio: 'ignore' });
    canFreeze = true;
  } catch {
    canFreeze = false;
  }
});
afterAll(async () => {
  if (canFreeze) execFileSync('chattr', ['-i', auditFile], { stdio: 'ignore' });
  await gw?.close();
});

const records = (): Array<Record<string, unknown>> =>
  listAuditFiles(auditFile).flatMap((f) =>
    readFileSync(f, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>),
  );

function signQuery(): string {
  const key = gw.demo.keys.find((k) => k.keySpec === 'EC_P256')!;
  const digest = createHash('sha256').update(String(Math.random())).digest('base64');
  return toQuery(signV1(v1Params(gw.demo.accessKeyId, { KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: 'ECDSA_SHA_256', Digest: digest }), gw.secret));
}

const sign = () => send(`${gw.url}/?${signQuery()}`);

function verify(): { code: number; out: string[] } {
  const out: string[] = [];
  const code = runAuditVerify(listAuditFiles(auditFile), (s) => out.push(s));
  return { code, out };
}

describe('the audit trail fails closed and recovers', () => {
  it('when 20 signing clients hang up 1 ms after sending, then each of the 20 requests has its audit record', async () => {
    const before = records().length;
    await Promise.all(
      Array.from(
        { length: 20 },
        () =>
          new Promise<void>((resolve) => {
            const req = http.request(`${gw.url}/?${signQuery()}`);
            req.on('error', () => resolve());
            req.on('close', () => resolve());
            req.on('finish', () => setTimeout(() => req.destroy(), 1));
            req.end();
          }),
      ),
    );
    await vi.waitFor(() => expect(records().length - before).toBe(20), { timeout: 15_000, interval: 100 });
    const added = records().slice(before);
    expect(added.every((r) => r.action === 'AsymmetricSign' && typeof r.status === 'number')).toBe(true);
  });

  it('when the audit file cannot be written (chattr +i: EPERM), then signs answer 503 without a signature, /readyz is 503 and the failure metric counts; once writable, the trail recovers alone, notes the gap, and every 200 has its record', async (ctx) => {
    if (!canFreeze) ctx.skip();
    const ok1 = await Promise.all(Array.from({ length: 5 }, sign));
    expect(ok1.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);

    execFileSync('chattr', ['+i', auditFile]);
    let refused;
    try {
      refused = await Promise.all(Array.from({ length: 10 }, sign));
      expect((await send(`${gw.url}/readyz`)).status).toBe(503);
      const ready = await send(`${gw.gateway.managementUrl}/readyz`);
      expect(ready.status).toBe(503);
      expect(ready.json!.audit).toMatchObject({ ok: false, detail: expect.stringContaining('EPERM') });
      const metrics = await (await fetch(`${gw.gateway.managementUrl}/metrics`)).text();
      expect(Number(/^hsm_gateway_audit_write_failures_total (\d+)$/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(10);
    } finally {
      execFileSync('chattr', ['-i', auditFile]);
    }
    for (const r of refused) {
      expect(r.status).toBe(503);
      expect(r.json).toMatchObject({ Code: 'ServiceUnavailableTemporary' });
      expect(r.json!.Value).toBeUndefined();
    }

    await vi.waitFor(async () => expect((await send(`${gw.url}/readyz`)).status).toBe(200), { timeout: 15_000, interval: 100 });
    const ok2 = await Promise.all(Array.from({ length: 5 }, sign));
    expect(ok2.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);

    const all = records();
    const audited = new Set(all.filter((r) => r.status === 200).map((r) => r.requestId));
    for (const r of [...ok1, ...ok2]) expect(audited.has(r.json!.RequestId)).toBe(true);
    const refusedIds = new Set(refused.map((r) => r.json!.RequestId));
    expect(all.some((r) => refusedIds.has(r.requestId as string))).toBe(false);
    expect(all.find((r) => r.event === 'reopened')).toMatchObject({ error: 'EPERM', lost: expect.any(Number) });
    const verified = verify();
    expect(verified.code).toBe(0);
    expect(verified.out.join('\n')).toMatch(/^GAP .* records could not be written \(EPERM\)/m);
  });
});

describe('unauthenticated noise', () => {
  it('when a load of requests carries a 16 KB Action, then their audit lines stay small, and past the burst the address gets 429 with the API’s throttling code', async () => {
    const action = 'X'.repeat(16 * 1024);
    const answers = [];
    for (let round = 0; round < 10; round++) {
      answers.push(
        ...(await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            send(`${gw.url}/`, {
              method: 'POST',
              headers: { 'content-type': 'application/x-www-form-urlencoded' },
              body: toQuery({ Action: action, Version: i % 2 ? '2020-04-07' : '2016-01-20', AccessKeyId: 'LTAInobody' }),
            }),
          ),
        )),
      );
    }
    const statuses = new Set(answers.map((a) => a.status));
    expect([...statuses].sort()).toEqual([404, 429]);
    const throttled = answers.filter((a) => a.status === 429);
    expect(throttled.length).toBeGreaterThanOrEqual(50);
    for (const t of throttled) {
      expect(['Rejected.Throttling', 'Throttling.User']).toContain(t.json!.Code);
      expect(Number(t.headers.get('x-acs-retry-after'))).toBeGreaterThan(0);
    }
    expect(new Set(throttled.map((t) => t.json!.Code)).size).toBe(2);

    const mine = records().filter((r) => typeof r.action === 'string' && (r.action as string).startsWith('XXXX'));
    // Retention (32 KB files, 2 kept) has already deleted the oldest of them: this is what is kept.
    expect(mine.length).toBeGreaterThanOrEqual(50);
    for (const r of mine) {
      expect(r.action).toBe(`${'X'.repeat(128)}…[+${16 * 1024 - 128}]`);
      expect(JSON.stringify(r).length).toBeLessThan(1024);
    }
  });

  it('when the trail has rotated past maxFiles, then the oldest files are gone and what is kept verifies from its anchor', () => {
    const files = listAuditFiles(auditFile);
    expect(files).toHaveLength(3);
    const { code, out } = verify();
    expect(code).toBe(0);
    expect(out[0]).toMatch(/^OK .*, starts from [0-9a-f]{64} \(the last hash of audit\.log\.\d{8}T/);
  });
});
