// Retries, as Envoy and Linkerd bound them. A try that fails to connect, is reset, times out
// waiting for headers, or answers with a status in `retryOn` is sent again, to a different
// endpoint when there is one, while all of these hold:
//   - tries left (`retry.attempts` retries after the first try) and time left before the deadline;
//   - the request body can be sent again: none, or not a byte of it consumed yet (a request whose
//     body is already on the wire is not retried, whatever its method);
//   - the retry budget: retries in flight < max(minRetryConcurrency, budgetPercent% of active
//     requests), and < the cluster's `maxRetries`. A retry the budget refuses is not an error:
//     the caller gets the original failure.
import type { IncomingHttpHeaders } from 'node:http';
import { MeshError, toMeshError } from '../errors/table.js';
import {
  DETACHED_CONTROLLER,
  ForwardingHandler,
  type Dispatch,
  type DispatchController,
  type Interceptor,
  type ResponseHandler,
  type UpstreamCall,
} from '../proxy/upstream/dispatch.js';

/** Longest back-off between two tries, whatever the attempt number. */
const MAX_BACKOFF_MS = 250;

export const retry: Interceptor = (next) => (call, handler) => {
  next(call, new RetryingHandler(handler, call, next));
};

class RetryingHandler extends ForwardingHandler {
  /** A retryable response is being drained instead of relayed; the retry follows its end. */
  private discarding: MeshError | undefined;
  /** Whether the try in progress counts in the cluster's `retriesActive`. */
  private holdsRetrySlot = false;

  constructor(
    downstream: ResponseHandler,
    private readonly call: UpstreamCall,
    private readonly next: Dispatch,
  ) {
    super(downstream);
  }

  override onResponseStart(controller: DispatchController, status: number, headers: IncomingHttpHeaders, message?: string): void {
    this.releaseRetrySlot();
    if (this.call.cluster.config.retry.retryOn.includes(status) && this.mayRetry()) {
      this.discarding = new MeshError('upstream_reset', `upstream answered ${status}`);
      return;
    }
    super.onResponseStart(controller, status, headers, message);
  }

  override onResponseData(controller: DispatchController, chunk: Buffer): void {
    if (!this.discarding) super.onResponseData(controller, chunk);
  }

  override onResponseEnd(controller: DispatchController, trailers: IncomingHttpHeaders): void {
    if (this.discarding) {
      this.discarding = undefined;
      this.retryNow();
      return;
    }
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: DispatchController, err: Error): void {
    this.releaseRetrySlot();
    if (this.discarding) {
      this.discarding = undefined;
      this.retryNow();
      return;
    }
    const failure = toMeshError(err);
    if (isRetryable(failure) && this.mayRetry()) {
      this.retryNow(failure);
      return;
    }
    super.onResponseError(controller, failure);
  }

  private mayRetry(): boolean {
    const { call } = this;
    const { cluster } = call;
    const policy = cluster.config.retry;
    if (call.cancelled || call.attempts > policy.attempts) return false;
    if (cluster.clock.now() >= call.deadline) return false;
    if (call.body && (call.body.readableDidRead || call.body.destroyed)) return false;
    if (cluster.retriesActive >= cluster.config.circuitBreaker.maxRetries) {
      cluster.metrics.overflows.labels(cluster.name, 'max_retries').inc();
      return false;
    }
    const budget = Math.max(policy.minRetryConcurrency, Math.floor((cluster.active * policy.budgetPercent) / 100));
    if (cluster.retriesActive >= budget) {
      cluster.metrics.overflows.labels(cluster.name, 'retry_budget').inc();
      return false;
    }
    return true;
  }

  private retryNow(failure?: MeshError): void {
    const { call } = this;
    const { cluster } = call;
    if (call.endpoint) call.tried.push(call.endpoint);
    // The slot is taken now, not when the back-off ends, so that concurrent failures see it.
    cluster.retriesActive += 1;
    this.holdsRetrySlot = true;
    cluster.metrics.retries.labels(cluster.name).inc();
    const ceiling = Math.min(MAX_BACKOFF_MS, cluster.config.retry.backoff * 2 ** (call.attempts - 1));
    const delay = Math.min(Math.floor(cluster.random() * ceiling), Math.max(0, call.deadline - cluster.clock.now()));
    const send = (): void => {
      if (call.cancelled) {
        this.releaseRetrySlot();
        super.onResponseError(DETACHED_CONTROLLER, failure ?? new MeshError('upstream_reset', 'client went away before the retry'));
        return;
      }
      this.next(call, this);
    };
    if (delay > 0) setTimeout(send, delay);
    else setImmediate(send);
  }

  private releaseRetrySlot(): void {
    if (!this.holdsRetrySlot) return;
    this.holdsRetrySlot = false;
    this.call.cluster.retriesActive -= 1;
  }
}

function isRetryable(err: MeshError): boolean {
  return err.code === 'connect_failure' || err.code === 'upstream_reset' || err.code === 'upstream_timeout';
}
