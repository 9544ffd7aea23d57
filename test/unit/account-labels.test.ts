import { describe, expect, it } from 'vitest';
import { AccountLabels, GatewayMetrics } from '../../src/observability/metrics.js';

const metricsWith = (cap: number, accounts: string[]) =>
  new GatewayMetrics(
    {
      sessions: () => [],
      tokensUp: () => [],
      limiterBackend: () => 'memory',
      accountLimits: () => accounts.map((account, i) => ({ account, limit: 100 * (i + 1) })),
    },
    cap,
  );

describe('account labels: bounded by the cap', () => {
  it('when more accounts than the cap are seen, then the first keep their names and the rest share _other', () => {
    const labels = new AccountLabels(2);
    expect(['a', 'b', 'c', 'a', 'd', 'b'].map((x) => labels.of(x))).toEqual(['a', 'b', '_other', 'a', '_other', 'b']);
  });

  it('when account labels are off (cap 0), then every account is _all', () => {
    const labels = new AccountLabels(0);
    expect(['a', 'b'].map((x) => labels.of(x))).toEqual(['_all', '_all']);
  });

  it('when the limits are exported, then only accounts with their own label have a limit series', async () => {
    const metrics = metricsWith(2, ['a', 'b', 'c']);
    metrics.observeAccount('a', true);
    metrics.observeAccount('c', false);
    metrics.observeAccount('z', true);
    const text = await metrics.registry.metrics();
    const limits = text.split('\n').filter((l) => l.startsWith('hsm_gateway_account_limit_requests_per_second{'));
    // a and c took the two labels by sending first; b, configured but beyond the cap, has none.
    expect(limits).toEqual(['hsm_gateway_account_limit_requests_per_second{account="a"} 100', 'hsm_gateway_account_limit_requests_per_second{account="c"} 300']);
    expect(text).toContain('hsm_gateway_account_requests_total{account="c",result="throttled"} 1');
    expect(text).toContain('hsm_gateway_account_requests_total{account="a",result="admitted"} 1');
    expect(text).toContain('hsm_gateway_account_requests_total{account="_other",result="admitted"} 1');
  });
});
