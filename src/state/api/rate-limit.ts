// Per-tenant token buckets for the context API. A bucket holds up to `burst` tokens and refills at
// `requestsPerSecond`; a request takes one. A bucket that has refilled to the brim is the same as
// no bucket at all, so full buckets are dropped in periodic sweeps: memory is bounded by the
// tenants active within one refill time, not by every tenant ever seen.

export interface RateLimitConfig {
  /** Tokens added per second, per tenant; must be > 0. */
  requestsPerSecond: number;
  /** Bucket size. Default: one second's worth, at least 1. */
  burst?: number | undefined;
}

interface Bucket {
  tokens: number;
  /** ms (injected clock) when `tokens` was last brought up to date. */
  at: number;
}

/** Sweeps run at most this often, and never more often than a bucket takes to refill. */
const MIN_SWEEP_INTERVAL_MS = 1_000;

export class TenantRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly tokensPerMs: number;
  readonly burst: number;
  /** Time an empty bucket takes to fill: a bucket idle this long is full and can be forgotten. */
  private readonly refillMs: number;
  private readonly sweepIntervalMs: number;
  private lastSweep: number;

  constructor(
    config: RateLimitConfig,
    private readonly now: () => number = Date.now,
  ) {
    if (!(config.requestsPerSecond > 0)) throw new RangeError('requestsPerSecond must be > 0');
    this.tokensPerMs = config.requestsPerSecond / 1_000;
    this.burst = config.burst ?? Math.max(1, Math.ceil(config.requestsPerSecond));
    this.refillMs = this.burst / this.tokensPerMs;
    this.sweepIntervalMs = Math.max(MIN_SWEEP_INTERVAL_MS, this.refillMs);
    this.lastSweep = now();
  }

  /** Takes a token for `tenant`: 0 when the request may go ahead, else the seconds until it may. */
  take(tenant: string): number {
    const now = this.now();
    if (now - this.lastSweep >= this.sweepIntervalMs) this.sweep(now);
    const bucket = this.buckets.get(tenant);
    if (bucket === undefined) {
      this.buckets.set(tenant, { tokens: this.burst - 1, at: now });
      return 0;
    }
    // A clock that steps back must not drain the bucket; treat it as no time passed.
    const elapsed = Math.max(0, now - bucket.at);
    bucket.tokens = Math.min(this.burst, bucket.tokens + elapsed * this.tokensPerMs);
    bucket.at = now;
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return (1 - bucket.tokens) / this.tokensPerMs / 1_000;
  }

  /** Tenants with a bucket that is not yet full. */
  get size(): number {
    return this.buckets.size;
  }

  private sweep(now: number): void {
    this.lastSweep = now;
    for (const [tenant, bucket] of this.buckets) {
      if (bucket.tokens + (now - bucket.at) * this.tokensPerMs >= this.burst) this.buckets.delete(tenant);
    }
  }
}
