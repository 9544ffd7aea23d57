import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { GatewayMetrics } from '../../src/observability/metrics.js';

// The monitoring files shipped in deploy/: checked by the real promtool (Debian package `prometheus`, installed by
// `npm test` → scripts/setup.sh test), and held to the metric names the gateway exports.

const root = resolve(import.meta.dirname, '../..');
const PROMETHEUS_YML = resolve(root, 'deploy/prometheus/prometheus.yml');
const ALERTS_YML = resolve(root, 'deploy/prometheus/alerts.yml');
const ALERTS_TEST_YML = resolve(root, 'deploy/prometheus/alerts.test.yml');
const DASHBOARD_JSON = resolve(root, 'deploy/grafana/hsm-gateway-dashboard.json');

/** The gateway's own metrics (src/observability/metrics.ts). Histograms also appear as _bucket, _sum, _count. */
const COUNTERS_AND_GAUGES = [
  'hsm_gateway_requests_total',
  'hsm_gateway_hsm_sessions',
  'hsm_gateway_token_up',
  'hsm_gateway_account_requests_total',
  'hsm_gateway_account_limit_requests_per_second',
  'hsm_gateway_audit_write_failures_total',
  'hsm_gateway_limiter_backend',
  'hsm_gateway_connections_refused_total',
  'hsm_gateway_build_info',
  // registry.store: postgres only (the rendering below passes that source).
  'hsm_gateway_registry_store_up',
];
const HISTOGRAMS = ['hsm_gateway_request_duration_seconds', 'hsm_gateway_hsm_operation_duration_seconds'];
/** prom-client's default metrics, under their standard names (no prefix): other programs export these names too. */
const DEFAULT_METRIC_PREFIXES = ['nodejs_', 'process_'];
const isDefaultMetric = (name: string): boolean => DEFAULT_METRIC_PREFIXES.some((p) => name.startsWith(p) && name.length > p.length);

function isKnownMetric(name: string): boolean {
  if (COUNTERS_AND_GAUGES.includes(name) || HISTOGRAMS.includes(name)) return true;
  const histogram = /^(.*)_(bucket|sum|count)$/.exec(name)?.[1];
  if (histogram !== undefined && HISTOGRAMS.includes(histogram)) return true;
  // Prometheus's own per-target metric: the process is reachable at all.
  if (name === 'up') return true;
  return isDefaultMetric(name);
}

const PROMQL_KEYWORDS = new Set([
  'and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan',
  'sum', 'min', 'max', 'avg', 'count', 'stddev', 'stdvar', 'topk', 'bottomk', 'quantile', 'count_values', 'group', 'atan2',
]);

/**
 * The metric names a PromQL expression selects: strings, label matchers, ranges and grouping label lists are dropped,
 * then every identifier that is neither a function call nor a keyword is a metric name.
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\boffset\s+-?[0-9a-z]+/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, ident, call] = m;
    if (call || PROMQL_KEYWORDS.has(ident!.toLowerCase())) continue;
    names.add(ident!);
  }
  return [...names];
}

function run(command: string, args: string[]): { status: number | null; output: string } {
  const r = spawnSync(command, args, { cwd: root, encoding: 'utf8', timeout: 30_000 });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    throw new Error(
      `${command} is not installed. It comes with the Debian package \`prometheus\` (/usr/bin/promtool): ` +
        '`npm test` installs it (scripts/setup.sh test, as root), or run `sudo apt-get install prometheus`.',
    );
  }
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

const promtool = (...args: string[]) => run('promtool', args);

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface Target {
  expr?: string;
  datasource?: unknown;
}
interface Panel {
  id?: number;
  type?: string;
  title?: string;
  targets?: Target[];
  datasource?: unknown;
  panels?: Panel[];
}
interface Dashboard {
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query?: unknown; definition?: string; datasource?: unknown; allValue?: string }> };
}

const alertRules = (): Rule[] =>
  (parse(readFileSync(ALERTS_YML, 'utf8')) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules);
const dashboard = (): Dashboard => JSON.parse(readFileSync(DASHBOARD_JSON, 'utf8')) as Dashboard;
const allPanels = (panels: Panel[]): Panel[] => panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
const dashboardExprs = (): string[] =>
  allPanels(dashboard().panels).flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? ''));
/** The selectors inside the template variables' label_values(selector, label) queries. */
const variableSelectors = (): string[] =>
  dashboard()
    .templating.list.filter((v) => v.type === 'query')
    .map((v) => {
      const query = typeof v.query === 'string' ? v.query : (v.query as { query: string }).query;
      const selector = /^label_values\((.+),\s*\w+\)$/.exec(query)?.[1];
      if (selector === undefined) throw new Error(`variable ${v.name}: unexpected query ${query}`);
      return selector;
    });

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'hsm-gateway-deploy-prometheus-'));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

describe('deploy/prometheus: scrape config and alert rules, checked by promtool', () => {
  it('when promtool checks prometheus.yml, then it is valid and loads alerts.yml with its ten rules', () => {
    const r = promtool('check', 'config', PROMETHEUS_YML);
    expect(r.output).toContain('SUCCESS');
    expect(r.output).toContain('1 rule files found');
    expect(r.output).toContain('SUCCESS: 10 rules found');
    expect(r.status, r.output).toBe(0);
  });

  it('when promtool checks alerts.yml, then it reports SUCCESS for ten rules', () => {
    const r = promtool('check', 'rules', ALERTS_YML);
    expect(r.output).toContain('SUCCESS: 10 rules found');
    expect(r.status, r.output).toBe(0);
  });

  it('when promtool runs alerts.test.yml, then HsmGatewayTokenDown fires after 1m of token_up 0 and never while it is 1', () => {
    const tests = readFileSync(ALERTS_TEST_YML, 'utf8');
    expect(tests).toContain('alertname: HsmGatewayTokenDown');
    // The event-loop alert on the standard Node metric fires for the gateway only, not for another job's Node process.
    expect(tests).toContain('alertname: HsmGatewayEventLoopLag');
    expect(tests).toContain('alertname: HsmGatewayRegistryStoreDown');
    const r = promtool('test', 'rules', ALERTS_TEST_YML);
    expect(r.output).toContain('SUCCESS');
    expect(r.status, r.output).toBe(0);
  });

  it('when an alert unit test expects the wrong thing, then promtool test rules fails (the tests can fail)', () => {
    writeFileSync(join(work, 'alerts.yml'), readFileSync(ALERTS_YML));
    const tests = parse(readFileSync(ALERTS_TEST_YML, 'utf8')) as { tests: Array<{ alert_rule_test: Array<{ eval_time: string; alertname: string; exp_alerts: unknown[] }> }> };
    // Claim that the token-down alert is already firing after 45 s (it is only pending then).
    const pending = tests.tests[0]!.alert_rule_test.find((t) => t.alertname === 'HsmGatewayTokenDown' && t.eval_time === '45s')!;
    const firing = tests.tests[0]!.alert_rule_test.find((t) => t.alertname === 'HsmGatewayTokenDown' && t.eval_time === '1m')!;
    pending.exp_alerts = firing.exp_alerts;
    writeFileSync(join(work, 'alerts.test.yml'), stringify(tests));
    const r = promtool('test', 'rules', join(work, 'alerts.test.yml'));
    expect(r.output).toContain('FAILED');
    expect(r.status).not.toBe(0);
  });

  it('when alerts.yml is read, then it holds the ten gateway alerts with their durations, severities and annotations', () => {
    const rules = alertRules();
    const byName = Object.fromEntries(rules.map((r) => [r.alert, r]));
    expect(Object.keys(byName).sort()).toEqual([
      'HsmGatewayAccountNearLimit',
      'HsmGatewayDown',
      'HsmGatewayEventLoopLag',
      'HsmGatewayHighErrorRatio',
      'HsmGatewayHighLatency',
      'HsmGatewayLimiterFallback',
      'HsmGatewayRegistryStoreDown',
      'HsmGatewaySessionsExhausted',
      'HsmGatewayThrottling',
      'HsmGatewayTokenDown',
    ]);
    expect(byName.HsmGatewayTokenDown).toMatchObject({ for: '1m', labels: { severity: 'critical' } });
    expect(byName.HsmGatewayTokenDown!.expr).toMatch(/hsm_gateway_token_up\s*==\s*0/);
    expect(byName.HsmGatewayHighErrorRatio!.labels?.severity).toBe('warning');
    expect(byName.HsmGatewayHighErrorRatio!.expr).toContain('outcome="server_error"');
    expect(byName.HsmGatewayHighErrorRatio!.expr).toContain('[5m]');
    expect(byName.HsmGatewayHighErrorRatio!.expr).toMatch(/>\s*0\.05/);
    expect(byName.HsmGatewayThrottling).toMatchObject({ for: '5m' });
    expect(['info', 'warning']).toContain(byName.HsmGatewayThrottling!.labels?.severity);
    expect(byName.HsmGatewayAccountNearLimit).toMatchObject({ for: '5m', labels: { severity: 'warning' } });
    expect(byName.HsmGatewayAccountNearLimit!.expr).toMatch(/hsm_gateway_account_requests_total[\s\S]*\/[\s\S]*hsm_gateway_account_limit_requests_per_second[\s\S]*>\s*0\.8/);
    expect(byName.HsmGatewayHighLatency).toMatchObject({ for: '10m' });
    expect(byName.HsmGatewayHighLatency!.expr).toMatch(/histogram_quantile\(0\.99,[\s\S]*hsm_gateway_request_duration_seconds_bucket[\s\S]*>\s*0\.5/);
    expect(byName.HsmGatewayEventLoopLag).toMatchObject({ for: '5m' });
    expect(byName.HsmGatewayEventLoopLag!.expr).toMatch(/^nodejs_eventloop_lag_p99_seconds\{job="hsm-gateway"\}\s*>\s*0\.1$/);
    expect(byName.HsmGatewayLimiterFallback).toMatchObject({ for: '2m' });
    expect(byName.HsmGatewayLimiterFallback!.expr).toMatch(/hsm_gateway_limiter_backend\{backend="local_fallback"\}\s*==\s*1/);
    expect(byName.HsmGatewaySessionsExhausted).toMatchObject({ for: '5m' });
    expect(byName.HsmGatewaySessionsExhausted!.expr).toMatch(/hsm_gateway_hsm_sessions\{state="waiting"\}\s*>\s*0/);
    expect(byName.HsmGatewayRegistryStoreDown).toMatchObject({ for: '2m', labels: { severity: 'warning' } });
    expect(byName.HsmGatewayRegistryStoreDown!.expr).toMatch(/^hsm_gateway_registry_store_up\s*==\s*0$/);
    for (const r of rules) {
      expect(r.labels?.severity, r.alert).toMatch(/^(critical|warning|info)$/);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
      expect(r.annotations?.description, r.alert).toBeTruthy();
    }
  });
});

/** The metric families (name → type) of a freshly built GatewayMetrics registry, one observation each. */
async function renderedFamilies(): Promise<Map<string, string>> {
  const metrics = new GatewayMetrics(
    {
      sessions: () => [{ token: 't', inUse: 1, idle: 1, waiting: 0 }],
      tokensUp: () => [{ token: 't', up: true }],
      limiterBackend: () => 'memory',
      accountLimits: () => [{ account: 'default', limit: 1000 }],
      registryStoreUp: () => false,
    },
    1000,
  );
  metrics.observeRequest('AsymmetricSign', 'success', 'OK', 0.01);
  metrics.observeHsm('sign', 'CKM_SHA256_RSA_PKCS', 0.001);
  metrics.observeAccount('default', false);
  const text = await metrics.registry.metrics();
  return new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

describe('metric names used by the alerts and the dashboard', () => {
  it('when the metric-name extractor reads a PromQL expression, then it returns only the metric names', () => {
    expect(
      metricNames(
        'histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{job=~"$job", le!="x y"}[$__rate_interval]))) ' +
          '/ on (instance) group_left (version) b offset 5m > 1e3 and sum(c) without (action) unless bool d',
      ).sort(),
    ).toEqual(['a_bucket', 'b', 'c', 'd']);
    expect(metricNames('sum(rate(x_total[5m])) by (code)')).toEqual(['x_total']);
  });

  it('when the metric names in alerts.yml are collected, then each is one the gateway exports', () => {
    for (const rule of alertRules()) {
      const names = metricNames(rule.expr);
      expect(names.length, `${rule.alert}: no metric in ${rule.expr}`).toBeGreaterThan(0);
      for (const name of names) expect(isKnownMetric(name), `${rule.alert} uses unknown metric ${name}`).toBe(true);
    }
  });

  it("when the metric names in the dashboard's exprs and variables are collected, then each is one the gateway exports", () => {
    const exprs = [...dashboardExprs(), ...variableSelectors()];
    expect(exprs.length).toBeGreaterThan(10);
    for (const expr of exprs) {
      const names = metricNames(expr);
      expect(names.length, `no metric in ${expr}`).toBeGreaterThan(0);
      for (const name of names) expect(isKnownMetric(name), `the dashboard uses unknown metric ${name} in ${expr}`).toBe(true);
    }
  });

  it("when an alert or a dashboard query uses one of Node's default metrics, then it selects the gateway's targets only", () => {
    // process_* and nodejs_* are exported by every Node.js program (and process_* by most others): unscoped, the
    // gateway's alert would fire for them and its panels would show them.
    const selectors = (expr: string, name: string): string[] =>
      [...expr.matchAll(new RegExp(`(?<![\\w:])${name}(\\{[^}]*\\})?`, 'g'))].map((m) => m[1] ?? '');
    let checked = 0;
    for (const rule of alertRules()) {
      for (const name of metricNames(rule.expr).filter(isDefaultMetric)) {
        for (const selector of selectors(rule.expr, name)) {
          checked++;
          expect(selector, `${rule.alert}: ${name}`).toMatch(/\bjob="hsm-gateway"/);
        }
      }
    }
    for (const expr of dashboardExprs()) {
      for (const name of metricNames(expr).filter(isDefaultMetric)) {
        for (const selector of selectors(expr, name)) {
          checked++;
          expect(selector, expr).toMatch(/\bjob=~"\$job"/);
        }
      }
    }
    expect(checked).toBeGreaterThanOrEqual(6);
    // $job lists the jobs that have the gateway's build_info, and its "All" is that list (no allValue wildcard such
    // as .+, which would match every job in Prometheus); $instance likewise.
    expect(variableSelectors()[0]).toMatch(/^hsm_gateway_build_info\b/);
    for (const v of dashboard().templating.list.filter((v) => v.type === 'query')) expect(v.allValue, `variable ${v.name}`).toBeUndefined();
  });

  it("when the gateway's metrics registry is rendered, then it has every listed metric and every default metric the files use", async () => {
    const families = await renderedFamilies();
    for (const name of COUNTERS_AND_GAUGES) expect(families.has(name), name).toBe(true);
    for (const name of HISTOGRAMS) expect(families.get(name), name).toBe('histogram');
    const used = [...alertRules().map((r) => r.expr), ...dashboardExprs(), ...variableSelectors()].flatMap(metricNames);
    // `up` is Prometheus's own per-target series, not the gateway's.
    for (const name of new Set(used.filter((n) => n !== 'up'))) {
      const family = /^(.*)_(bucket|sum|count)$/.exec(name)?.[1];
      const exported = families.has(name) || (family !== undefined && families.get(family) === 'histogram');
      expect(exported, `${name} is not exported by src/observability/metrics.ts`).toBe(true);
    }
  });

  it('when the registry is not kept in PostgreSQL, then hsm_gateway_registry_store_up is not exported; when it is, the gauge is 1 or 0 as the database answers', async () => {
    const render = async (registryStoreUp?: () => boolean): Promise<string> => {
      const metrics = new GatewayMetrics(
        { sessions: () => [], tokensUp: () => [], limiterBackend: () => 'memory', accountLimits: () => [], ...(registryStoreUp ? { registryStoreUp } : {}) },
        0,
      );
      return metrics.registry.metrics();
    };
    expect(await render()).not.toContain('hsm_gateway_registry_store_up');
    let up = true;
    const text = () => render(() => up);
    expect(await text()).toMatch(/^hsm_gateway_registry_store_up 1$/m);
    up = false;
    expect(await text()).toMatch(/^hsm_gateway_registry_store_up 0$/m);
  });

  it("when the registry is rendered, then Node's default metrics have their standard names and only the gateway's own are prefixed", async () => {
    const families = await renderedFamilies();
    // The names the community Node.js dashboards and alert rules query.
    for (const name of [
      'process_cpu_seconds_total',
      'process_cpu_user_seconds_total',
      'process_resident_memory_bytes',
      'process_start_time_seconds',
      'nodejs_eventloop_lag_seconds',
      'nodejs_eventloop_lag_p99_seconds',
      'nodejs_heap_size_used_bytes',
      'nodejs_version_info',
    ]) {
      expect(families.has(name), name).toBe(true);
    }
    // Every family is one of the gateway's own (listed above) or an unprefixed default: no hsm_gateway_nodejs_*,
    // hsm_gateway_process_*, nor an unlisted hsm_gateway_ metric.
    for (const name of families.keys()) {
      expect(COUNTERS_AND_GAUGES.includes(name) || HISTOGRAMS.includes(name) || isDefaultMetric(name), name).toBe(true);
    }
    expect([...families.keys()].filter((n) => /^hsm_gateway_(nodejs|process)_/.test(n))).toEqual([]);
  });
});

describe('deploy/grafana/hsm-gateway-dashboard.json', () => {
  it('when the dashboard JSON is parsed, then every panel has a title and at least one target with an expr', () => {
    const d = dashboard();
    expect(d.schemaVersion).toBeGreaterThanOrEqual(36);
    const panels = allPanels(d.panels);
    expect(panels.length).toBeGreaterThanOrEqual(10);
    for (const p of panels) {
      expect(p.title, `panel ${p.id}`).toBeTruthy();
      expect(p.targets?.length ?? 0, `panel "${p.title}" has no target`).toBeGreaterThan(0);
      for (const t of p.targets!) expect(t.expr, `panel "${p.title}"`).toBeTruthy();
    }
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('when the datasources are read, then every one is the DS_PROMETHEUS variable and no uid is hard-coded', () => {
    const d = dashboard();
    const variable = d.templating.list.find((v) => v.name === 'DS_PROMETHEUS');
    expect(variable).toMatchObject({ type: 'datasource', query: 'prometheus' });
    const refs: unknown[] = [];
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node !== null && typeof node === 'object') {
        for (const [k, v] of Object.entries(node)) {
          if (k === 'datasource') refs.push(v);
          else walk(v);
        }
      }
    };
    walk(d);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) expect(ref).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
    const uids = [...readFileSync(DASHBOARD_JSON, 'utf8').matchAll(/"uid":\s*"([^"]*)"/g)].map((m) => m[1]);
    // The dashboard's own uid is allowed; every other uid is the variable.
    expect(uids.filter((u) => u !== '${DS_PROMETHEUS}')).toEqual(['hsm-gateway']);
  });

  it('when the panels are looked for by subject, then each requested view is there', () => {
    const titles = allPanels(dashboard().panels).map((p) => `${p.title}\n${(p.targets ?? []).map((t) => t.expr).join('\n')}`);
    const has = (title: RegExp, metric: string) =>
      expect(titles.some((t) => title.test(t.split('\n')[0]!) && t.includes(metric)), `${title} on ${metric}`).toBe(true);
    has(/request rate/i, 'hsm_gateway_requests_total');
    has(/error codes/i, 'hsm_gateway_requests_total');
    has(/latency p50 \/ p95 \/ p99/i, 'hsm_gateway_request_duration_seconds_bucket');
    has(/HSM operation latency/i, 'hsm_gateway_hsm_operation_duration_seconds_bucket');
    has(/sessions/i, 'hsm_gateway_hsm_sessions');
    has(/token up/i, 'hsm_gateway_token_up');
    has(/throttled/i, 'hsm_gateway_account_requests_total');
    has(/account load/i, 'hsm_gateway_account_limit_requests_per_second');
    has(/limiter backend/i, 'hsm_gateway_limiter_backend');
    has(/event-loop lag/i, 'nodejs_eventloop_lag_p99_seconds');
    has(/memory|RSS/i, 'process_resident_memory_bytes');
    has(/CPU/i, 'process_cpu_seconds_total');
  });

  it("when the dashboard's queries are given to promtool as recording rules, then every one parses as PromQL", () => {
    const exprs = [...dashboardExprs(), ...variableSelectors()].map((e) =>
      e.replace(/\$__rate_interval|\$\{__rate_interval\}/g, '1m').replace(/\$\{?\w+\}?/g, '.+'),
    );
    const file = join(work, 'dashboard-queries.rules.yml');
    writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules: exprs.map((expr, i) => ({ record: `dashboard:query_${i}`, expr })) }] }));
    const r = promtool('check', 'rules', file);
    expect(r.output).toContain(`SUCCESS: ${exprs.length} rules found`);
    expect(r.status, r.output).toBe(0);
  });
});
