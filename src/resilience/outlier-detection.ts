// Outlier detection as Envoy does it: an endpoint that returns `consecutive5xx` gateway failures
// in a row (5xx statuses, connect failures, resets) is ejected for baseEjectionTime × the number
// of times it has been ejected, capped at maxEjectionTime; at most maxEjectionPercent of the
// cluster is ejected at once, but one endpoint always may be (Envoy's rule, so that a two-endpoint
// cluster can still shed its bad half). Each healthy review interval lowers the multiplier again.
import type { OutlierDetectionConfig } from '../config/schema.js';
import type { Clock } from './clock.js';

/** The per-endpoint state the detector keeps; stored on the endpoint itself. */
export class OutlierState {
  consecutiveFailures = 0;
  ejectedUntil = 0;
  timesEjected = 0;
  /** Whether any failure was recorded since the last review, for multiplier decay. */
  failedSinceReview = false;
}

export interface OutlierHost {
  readonly address: string;
  readonly outlier: OutlierState;
}

export class ConsecutiveFailureDetector<H extends OutlierHost> {
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly config: OutlierDetectionConfig,
    private readonly hosts: () => readonly H[],
    private readonly clock: Clock,
    private readonly onEject: (host: H, untilMs: number) => void = () => {},
  ) {
    if (config.consecutive5xx > 0 && config.interval > 0) {
      this.timer = setInterval(() => this.review(), config.interval).unref();
    }
  }

  isEjected(host: H): boolean {
    return host.outlier.ejectedUntil > this.clock.now();
  }

  recordSuccess(host: H): void {
    host.outlier.consecutiveFailures = 0;
  }

  recordFailure(host: H): void {
    const state = host.outlier;
    state.failedSinceReview = true;
    state.consecutiveFailures += 1;
    if (this.config.consecutive5xx === 0 || state.consecutiveFailures < this.config.consecutive5xx) return;
    if (this.isEjected(host) || !this.mayEjectAnother()) return;
    state.timesEjected += 1;
    state.consecutiveFailures = 0;
    const duration = Math.min(this.config.baseEjectionTime * state.timesEjected, this.config.maxEjectionTime);
    state.ejectedUntil = this.clock.now() + duration;
    this.onEject(host, state.ejectedUntil);
  }

  /** The periodic pass: endpoints that stayed healthy for a whole interval earn back trust. */
  review(): void {
    for (const host of this.hosts()) {
      const state = host.outlier;
      if (!this.isEjected(host) && !state.failedSinceReview && state.timesEjected > 0) state.timesEjected -= 1;
      state.failedSinceReview = false;
    }
  }

  private mayEjectAnother(): boolean {
    const hosts = this.hosts();
    let ejected = 0;
    for (const host of hosts) if (this.isEjected(host)) ejected += 1;
    const limit = Math.max(1, Math.floor((hosts.length * this.config.maxEjectionPercent) / 100));
    return ejected < limit;
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
