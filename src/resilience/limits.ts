// Envoy-style concurrency limits. Over a limit the request fails at once with 503 `overflow`:
// a proxy that queues without bound turns an overload into an outage.
import type { IncomingHttpHeaders } from 'node:http';
import { MeshError } from '../errors/table.js';
import { ForwardingHandler, reject, type DispatchController, type Interceptor, type ResponseHandler } from '../proxy/upstream/dispatch.js';
import type { Cluster } from '../proxy/upstream/cluster.js';
import type { Endpoint } from '../proxy/upstream/endpoint.js';

/** `maxRequests`: requests in flight in the cluster. */
export const admit: Interceptor = (next) => (call, handler) => {
  const cluster = call.cluster;
  if (cluster.active >= cluster.config.circuitBreaker.maxRequests) {
    cluster.metrics.overflows.labels(cluster.name, 'max_requests').inc();
    reject(handler, new MeshError('overflow', `cluster ${cluster.name} has ${cluster.active} requests in flight (maxRequests)`));
    return;
  }
  cluster.active += 1;
  next(call, new AdmittedHandler(handler, cluster));
};

class AdmittedHandler extends ForwardingHandler {
  private released = false;
  constructor(downstream: ResponseHandler, private readonly cluster: Cluster) {
    super(downstream);
  }
  private release(): void {
    if (this.released) return;
    this.released = true;
    this.cluster.active -= 1;
  }
  override onResponseEnd(controller: DispatchController, trailers: IncomingHttpHeaders): void {
    this.release();
    super.onResponseEnd(controller, trailers);
  }
  override onResponseError(controller: DispatchController, err: Error): void {
    this.release();
    super.onResponseError(controller, err);
  }
}

/**
 * `maxPendingRequests`: a try sent to an endpoint whose connections are all busy waits in the
 * endpoint's pool; the cluster allows only so many such waiters. Returns false when over.
 */
export function reservePending(cluster: Cluster, endpoint: Endpoint): boolean {
  if (endpoint.active < cluster.config.circuitBreaker.maxConnections) return true;
  if (cluster.pending >= cluster.config.circuitBreaker.maxPendingRequests) return false;
  cluster.pending += 1;
  return true;
}

/** Undoes `reservePending` when the try ends; called before `endpoint.active` drops. */
export function releasePending(cluster: Cluster, endpoint: Endpoint): void {
  if (endpoint.active > cluster.config.circuitBreaker.maxConnections) cluster.pending -= 1;
}
