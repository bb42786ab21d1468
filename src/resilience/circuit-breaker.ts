// A circuit breaker per endpoint, on opossum. The breaker is *closed* while traffic flows, *open*
// while it rejects, and *half-open* when, after `resetTimeout`, it lets exactly one probe through:
// the probe's success closes it, its failure opens it again.
import CircuitBreaker from 'opossum';
import type { CircuitBreakerConfig } from '../config/schema.js';

export type BreakerState = 'closed' | 'open' | 'half_open';

/** Settles one try: no argument for success, the failure otherwise. */
export type TryOutcome = (failure?: Error) => void;

const ignore = (): void => {};

export class EndpointBreaker {
  private breaker: CircuitBreaker<[Promise<void>], void>;

  constructor(
    private readonly config: CircuitBreakerConfig,
    private readonly onStateChange: (state: BreakerState) => void,
  ) {
    this.breaker = this.createBreaker();
  }

  private createBreaker(): CircuitBreaker<[Promise<void>], void> {
    const { config, onStateChange } = this;
    // The action is the try itself: the proxy settles the promise it passes to `fire`, so opossum
    // only counts outcomes. Timeouts are the deadline interceptor's job, not the breaker's.
    const breaker = new CircuitBreaker((outcome: Promise<void>) => outcome, {
      timeout: false,
      errorThresholdPercentage: config.errorThresholdPercentage,
      volumeThreshold: config.volumeThreshold,
      resetTimeout: config.resetTimeout,
      rollingCountTimeout: config.rollingWindow,
      rollingCountBuckets: 10,
      enableSnapshots: false,
    });
    breaker.on('open', () => onStateChange('open'));
    breaker.on('halfOpen', () => onStateChange('half_open'));
    // opossum keeps its rolling window across a close: the failures that opened the breaker would
    // still count, and the first failure after recovery would open it again whatever the failure
    // rate since. A closed breaker starts from an empty window instead (as Hystrix and gobreaker
    // do), so it is replaced by a fresh one; tries still in flight settle on the old one unheard.
    breaker.on('close', () => {
      breaker.shutdown();
      this.breaker = this.createBreaker();
      onStateChange('closed');
    });
    return breaker;
  }

  get state(): BreakerState {
    if (this.breaker.opened) return 'open';
    return this.breaker.halfOpen ? 'half_open' : 'closed';
  }

  /** Whether a try may be sent now: closed, or half-open with the probe slot still free. */
  get admits(): boolean {
    return this.breaker.closed || this.breaker.pendingClose;
  }

  /** Records the start of a try; call the returned function once with its outcome. */
  begin(): TryOutcome {
    let settle: TryOutcome = ignore;
    const outcome = new Promise<void>((resolve, reject) => {
      settle = (failure) => (failure ? reject(failure) : resolve());
    });
    // opossum never looks at the outcome of a call it rejects (open breaker), so the rejection
    // must be observed here too, or it surfaces as an unhandled rejection and ends the process.
    outcome.catch(ignore);
    this.breaker.fire(outcome).catch(ignore);
    return settle;
  }

  close(): void {
    this.breaker.shutdown();
  }
}
