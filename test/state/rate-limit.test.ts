// Per-tenant token buckets, on an injected clock.
import { describe, expect, it } from 'vitest';
import { TenantRateLimiter } from '../../src/state/api/rate-limit.js';

function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('TenantRateLimiter', () => {
  it('allows a burst, then asks the caller to wait until the next token', () => {
    const c = clock();
    const limiter = new TenantRateLimiter({ requestsPerSecond: 2, burst: 3 }, c.now);
    expect([limiter.take('acme'), limiter.take('acme'), limiter.take('acme')]).toEqual([0, 0, 0]);
    expect(limiter.take('acme')).toBeCloseTo(0.5);
    c.advance(250);
    expect(limiter.take('acme')).toBeCloseTo(0.25);
    c.advance(250);
    expect(limiter.take('acme')).toBe(0);
    expect(limiter.take('acme')).toBeCloseTo(0.5);
  });

  it('keeps tenants apart', () => {
    const c = clock();
    const limiter = new TenantRateLimiter({ requestsPerSecond: 1, burst: 1 }, c.now);
    expect(limiter.take('a')).toBe(0);
    expect(limiter.take('a')).toBeGreaterThan(0);
    expect(limiter.take('b')).toBe(0);
  });

  it('defaults the burst to one second of rate, at least 1', () => {
    expect(new TenantRateLimiter({ requestsPerSecond: 2.5 }).burst).toBe(3);
    expect(new TenantRateLimiter({ requestsPerSecond: 0.1 }).burst).toBe(1);
  });

  it('refills no higher than the burst', () => {
    const c = clock();
    const limiter = new TenantRateLimiter({ requestsPerSecond: 10, burst: 2 }, c.now);
    limiter.take('acme');
    c.advance(60_000);
    expect([limiter.take('acme'), limiter.take('acme')]).toEqual([0, 0]);
    expect(limiter.take('acme')).toBeCloseTo(0.1);
  });

  it('a slow rate waits whole seconds', () => {
    const c = clock();
    const limiter = new TenantRateLimiter({ requestsPerSecond: 0.5 }, c.now);
    expect(limiter.take('acme')).toBe(0);
    expect(limiter.take('acme')).toBeCloseTo(2);
  });

  it('forgets buckets that have refilled, so memory follows active tenants only', () => {
    const c = clock();
    const limiter = new TenantRateLimiter({ requestsPerSecond: 100 }, c.now);
    for (let i = 0; i < 1_000; i++) limiter.take(`tenant-${i}`);
    expect(limiter.size).toBe(1_000);
    c.advance(1_000);
    limiter.take('active');
    expect(limiter.size).toBe(1);
  });

  it('keeps a bucket that is still refilling, and its debt', () => {
    const c = clock();
    const limiter = new TenantRateLimiter({ requestsPerSecond: 1, burst: 2 }, c.now);
    limiter.take('acme');
    limiter.take('acme');
    c.advance(1_500);
    limiter.take('other');
    expect(limiter.size).toBe(2);
    expect(limiter.take('acme')).toBe(0);
    expect(limiter.take('acme')).toBeCloseTo(0.5);
  });

  it('a clock stepping back costs nothing', () => {
    const c = clock();
    const limiter = new TenantRateLimiter({ requestsPerSecond: 1, burst: 1 }, c.now);
    limiter.take('acme');
    c.advance(-10_000);
    expect(limiter.take('acme')).toBeCloseTo(1);
  });
});
