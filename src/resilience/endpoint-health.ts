// Chooses the endpoint for each try and feeds each try's outcome to that endpoint's circuit
// breaker and to outlier detection. A gateway failure is a 5xx status, a connect failure or a
// reset; anything else is a success as far as the endpoint's health is concerned.
import type { IncomingHttpHeaders } from 'node:http';
import { MeshError } from '../errors/table.js';
import { ForwardingHandler, reject, type DispatchController, type Interceptor, type ResponseHandler } from '../proxy/upstream/dispatch.js';
import type { Endpoint } from '../proxy/upstream/endpoint.js';
import type { UpstreamCall } from '../proxy/upstream/dispatch.js';
import type { TryOutcome } from './circuit-breaker.js';
import { releasePending, reservePending } from './limits.js';

export const balanceAndGuard: Interceptor = (next) => (call, handler) => {
  const cluster = call.cluster;
  const chosen = cluster.choose(call);
  if (chosen instanceof MeshError) {
    reject(handler, chosen);
    return;
  }
  if (!reservePending(cluster, chosen)) {
    cluster.metrics.overflows.labels(cluster.name, 'max_pending_requests').inc();
    reject(handler, new MeshError('overflow', `cluster ${cluster.name} has ${cluster.pending} requests waiting for a connection (maxPendingRequests)`));
    return;
  }
  call.endpoint = chosen;
  call.attempts += 1;
  chosen.active += 1;
  next(call, new GuardedTryHandler(handler, call, chosen, chosen.breaker.begin()));
};

class GuardedTryHandler extends ForwardingHandler {
  private settled = false;
  private finished = false;

  constructor(
    downstream: ResponseHandler,
    private readonly call: UpstreamCall,
    private readonly endpoint: Endpoint,
    private readonly outcome: TryOutcome,
  ) {
    super(downstream);
  }

  override onResponseStart(controller: DispatchController, status: number, headers: IncomingHttpHeaders, message?: string): void {
    this.settle(status >= 500 ? new MeshError('upstream_reset', `upstream answered ${status}`) : undefined);
    super.onResponseStart(controller, status, headers, message);
  }

  override onResponseEnd(controller: DispatchController, trailers: IncomingHttpHeaders): void {
    this.finish();
    super.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: DispatchController, err: Error): void {
    // An error after the status arrived (e.g. the client went away mid-body) says nothing about
    // the endpoint's health, which was already judged by the status.
    this.settle(err);
    this.finish();
    super.onResponseError(controller, err);
  }

  private settle(failure: Error | undefined): void {
    if (this.settled) return;
    this.settled = true;
    // A try abandoned because the client left, or cut short by the client's own request (a body
    // over the limit, a malformed body: a 4xx mesh error), is no evidence against the endpoint.
    if (this.call.cancelled || (failure instanceof MeshError && failure.status < 500)) failure = undefined;
    this.outcome(failure);
    if (failure) this.call.cluster.outliers.recordFailure(this.endpoint);
    else this.call.cluster.outliers.recordSuccess(this.endpoint);
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    releasePending(this.call.cluster, this.endpoint);
    this.endpoint.active -= 1;
  }
}
