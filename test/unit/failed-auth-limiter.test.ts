import { describe, expect, it } from 'vitest';
import { FailedAuthLimiter } from '../../src/http/auth/failed-auth-limiter.js';
import { clientText } from '../../src/observability/client-text.js';

describe('FailedAuthLimiter', () => {
  const clock = () => {
    const c = { t: 1_000_000, now: () => c.t };
    return c;
  };

  it('when an address fails `burst` times at once, then it must wait 1/perSecond before its next try; other addresses are not affected', () => {
    const c = clock();
    const limiter = new FailedAuthLimiter({ perSecond: 10, burst: 5, addresses: 100 }, c.now);
    for (let i = 0; i < 5; i++) {
      expect(limiter.retryAfterMs('10.0.0.1')).toBe(0);
      limiter.failed('10.0.0.1');
    }
    expect(limiter.retryAfterMs('10.0.0.1')).toBe(100);
    expect(limiter.retryAfterMs('10.0.0.2')).toBe(0);
    c.t += 60;
    expect(limiter.retryAfterMs('10.0.0.1')).toBe(40);
    c.t += 40;
    expect(limiter.retryAfterMs('10.0.0.1')).toBe(0);
  });

  it('when an address has been quiet, then its whole burst is back', () => {
    const c = clock();
    const limiter = new FailedAuthLimiter({ perSecond: 1, burst: 3, addresses: 100 }, c.now);
    for (let i = 0; i < 3; i++) limiter.failed('a');
    expect(limiter.retryAfterMs('a')).toBeGreaterThan(0);
    c.t += 3000;
    for (let i = 0; i < 3; i++) {
      expect(limiter.retryAfterMs('a')).toBe(0);
      limiter.failed('a');
    }
  });

  it('when more addresses fail than it remembers, then the least recently failing are forgotten: the map never grows past its bound', () => {
    const c = clock();
    const limiter = new FailedAuthLimiter({ perSecond: 1, burst: 1, addresses: 1000 }, c.now);
    limiter.failed('kept');
    for (let i = 0; i < 50_000; i++) {
      limiter.failed(`198.51.${i >> 8}.${i & 255}`);
      if (i % 500 === 0) limiter.failed('kept');
    }
    expect(limiter.size).toBe(1000);
    expect(limiter.retryAfterMs('kept')).toBeGreaterThan(0);
    expect(limiter.retryAfterMs('198.51.0.0')).toBe(0);
  });
});

describe('clientText', () => {
  it('when a client value is long, then it is cut to 128 characters and says how much was left out', () => {
    const out = clientText('A'.repeat(16 * 1024));
    expect(out).toBe(`${'A'.repeat(128)}…[+${16 * 1024 - 128}]`);
  });

  it('when a client value carries control characters or line separators, then they are removed', () => {
    expect(clientText('Asym\nmetric\r\u001b[31mSign\u0000\u2028\u0085')).toBe('Asymmetric[31mSign');
  });

  it('when the cut falls inside a surrogate pair, then the pair is not split', () => {
    const out = clientText(`${'a'.repeat(127)}😀tail`);
    expect(out.startsWith(`${'a'.repeat(127)}…`)).toBe(true);
    expect(() => encodeURIComponent(out)).not.toThrow(); // a lone surrogate would throw URIError
  });

  it('when a value is ordinary, then it is unchanged', () => {
    expect(clientText('AsymmetricSign')).toBe('AsymmetricSign');
  });
});
