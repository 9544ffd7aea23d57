import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startProcess, type Running } from '../helpers/processes.js';
import { kmsClient } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// A real Prometheus scrapes the gateway; PromQL over its HTTP API sees what the test sent.
let gw: TestGateway;
let prometheus: Running;
let promUrl: string;
let dir: string;
const METERED_KEY = 'LTAIprometheusmetered01';
const METERED_SECRET = 'prometheus-test-secret-metered-0000';
const METERED_LIMIT = 3;

beforeAll(async () => {
  // A second account with a small limit, to see throttling per account.
  gw = await startTestGateway({
    extraAccessKeys: [{ accessKeyId: METERED_KEY, secret: METERED_SECRET, account: 'metered' }],
    editConfig: (config) => {
      config.throttle.accounts.metered = METERED_LIMIT;
    },
  });
  dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-prometheus-'));
  const port = await freePort();
  promUrl = `http://127.0.0.1:${port}`;
  writeFileSync(
    join(dir, 'prometheus.yml'),
    `global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hsm-gateway\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['${gw.endpoint}']\n`,
  );
  prometheus = await startProcess(
    'prometheus',
    [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`],
    { ready: { url: `${promUrl}/-/ready` } },
  );
}, 120_000);

afterAll(async () => {
  await prometheus?.stop();
  await gw?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function query(promql: string): Promise<number | undefined> {
  const r = (await (await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(promql)}`)).json()) as {
    data: { result: Array<{ value: [number, string] }> };
  };
  const first = r.data.result[0];
  return first ? Number(first.value[1]) : undefined;
}

async function eventually(promql: string, atLeast: number): Promise<number> {
  const deadline = Date.now() + 45_000;
  for (;;) {
    const v = await query(promql);
    if (v !== undefined && v >= atLeast) return v;
    if (Date.now() > deadline) throw new Error(`${promql} is ${v}, expected at least ${atLeast}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

describe('metrics scraped by a real Prometheus', () => {
  it('when 5 signs and 2 refused requests are made, then PromQL returns the request counter and the latency histogram', async () => {
    const key = gw.demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    const kms = kmsClient({ endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret });
    for (let i = 0; i < 5; i++) {
      await kms.asymmetricSign({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: createHash('sha256').update(String(i)).digest('base64') });
    }
    for (let i = 0; i < 2; i++) {
      await kms.asymmetricSign({ keyId: 'alias/none', keyVersionId: key.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: createHash('sha256').update('x').digest('base64') }).catch(() => {});
    }
    expect(await eventually('sum(hsm_gateway_requests_total{action="AsymmetricSign",outcome="success",code="OK"})', 5)).toBe(5);
    expect(await eventually('sum(hsm_gateway_requests_total{action="AsymmetricSign",code="Forbidden.AliasNotFound"})', 2)).toBe(2);
    expect(await eventually('sum(hsm_gateway_request_duration_seconds_count{action="AsymmetricSign"})', 7)).toBe(7);
    expect(await eventually('sum(hsm_gateway_hsm_operation_duration_seconds_count{operation="sign",mechanism="CKM_ECDSA"})', 5)).toBe(5);
    const p99 = await query('histogram_quantile(0.99, sum by (le) (hsm_gateway_request_duration_seconds_bucket{action="AsymmetricSign"}))');
    expect(p99).toBeGreaterThan(0);
    expect(await eventually('hsm_gateway_token_up{token="default"}', 1)).toBe(1);
    expect(await query('hsm_gateway_limiter_backend{backend="memory"}')).toBe(1);
    expect(await query('nodejs_eventloop_lag_p99_seconds{job="hsm-gateway"}')).toBeGreaterThanOrEqual(0);
    expect(await query('count(hsm_gateway_build_info)')).toBe(1);
  });

  it("when /metrics is read and scraped, then Node's default metrics have their standard names, without the gateway's prefix", async () => {
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_p99_seconds']) {
      expect(text).toMatch(new RegExp(`^${name} [0-9.e+-]+$`, 'm'));
    }
    // prom-client measures this one during a scrape and reports it on the next: the family is always there.
    expect(text).toMatch(/^# TYPE nodejs_eventloop_lag_seconds gauge$/m);
    expect(text).not.toMatch(/^(# (HELP|TYPE) )?hsm_gateway_(nodejs|process)_/m);
    // What Prometheus stored under those names, as a Node.js dashboard would query it.
    expect(await eventually('process_cpu_seconds_total{job="hsm-gateway"}', 0)).toBeGreaterThan(0);
    expect(await eventually('nodejs_eventloop_lag_seconds{job="hsm-gateway"}', 0)).toBeGreaterThanOrEqual(0);
    expect(await query('count({__name__=~"hsm_gateway_(nodejs|process)_.+"})')).toBeUndefined();
  });

  it('when two accounts send requests, then each has its own request counter (admitted / throttled) and its limit as a gauge, by default', async () => {
    const key = gw.demo.keys.find((k) => k.keySpec === 'EC_P256')!;
    const digest = createHash('sha256').update('per-account').digest('base64');
    const metered = kmsClient({ endpoint: gw.endpoint, accessKeyId: METERED_KEY, accessKeySecret: METERED_SECRET });
    // A burst of 10 from an account allowed 3 per second: some are throttled. The account owns no key, so the
    // admitted ones end in 404: the counter is about the limit, whatever the operation answers.
    const codes = await Promise.all(
      Array.from({ length: 10 }, () =>
        metered.asymmetricSign({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'ECDSA_SHA_256', digest }).then(
          () => 'OK',
          (err: { data?: { Code?: string } }) => err.data?.Code ?? 'none',
        ),
      ),
    );
    const throttled = codes.filter((c) => c === 'Rejected.Throttling').length;
    expect(throttled).toBeGreaterThan(0);
    expect(await eventually('sum(hsm_gateway_account_requests_total{account="metered",result="throttled"})', throttled)).toBe(throttled);
    expect(await eventually('sum(hsm_gateway_account_requests_total{account="metered",result="admitted"})', 10 - throttled)).toBe(10 - throttled);
    expect(await eventually('hsm_gateway_account_limit_requests_per_second{account="metered"}', METERED_LIMIT)).toBe(METERED_LIMIT);
    // The demo account: its signs of the first test, admitted, under its own name, against the default limit.
    const demoAccount = 'default'; // the demo access key's account (src/demo/bootstrap.ts)
    expect(await eventually(`sum(hsm_gateway_account_requests_total{account="${demoAccount}",result="admitted"})`, 7)).toBeGreaterThanOrEqual(7);
    expect(await query(`hsm_gateway_account_limit_requests_per_second{account="${demoAccount}"}`)).toBe(1000);
    // The alert's join of requests and limit on the account label (over the counter itself: a rate needs a longer run).
    const perLimit = await query(
      'sum by (account) (hsm_gateway_account_requests_total{account="metered"}) / on (account) max by (account) (hsm_gateway_account_limit_requests_per_second)',
    );
    expect(perLimit).toBeCloseTo(10 / METERED_LIMIT, 6);
  });
});
