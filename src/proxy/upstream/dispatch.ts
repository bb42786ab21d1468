// The one extension point of the upstream path, in undici's shape: a `Dispatch` takes a call and
// a handler; an `Interceptor` wraps a Dispatch. Limits, deadline, retry, balancing and endpoint
// health are interceptors; the innermost Dispatch hands the call to the endpoint's undici Pool.
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { Cluster } from './cluster.js';
import type { Endpoint } from './endpoint.js';

export type ResponseHandler = Dispatcher.DispatchHandler;
export type DispatchController = Dispatcher.DispatchController;

/** One request on its way upstream; interceptors read and annotate it. */
export interface UpstreamCall {
  readonly cluster: Cluster;
  readonly method: string;
  readonly path: string;
  /** Request headers as a flat [name, value, …] list, hop-by-hop headers already removed. */
  readonly headers: string[];
  /** The downstream request body, streamed; null when the request has none. */
  readonly body: Readable | null;
  /** Value of the cluster's hash header, for ring_hash. */
  readonly hashKey: string | undefined;
  /** Absolute time (cluster clock, ms) by which response headers must have arrived. */
  deadline: number;
  /** Tries dispatched so far, including the one in progress. */
  attempts: number;
  /** Endpoints already tried, so that a retry goes elsewhere. */
  readonly tried: Endpoint[];
  /** The endpoint chosen for the try in progress. */
  endpoint: Endpoint | undefined;
  /** Set when the downstream client went away: nothing more is worth sending or retrying. */
  cancelled: boolean;
}

export type Dispatch = (call: UpstreamCall, handler: ResponseHandler) => void;
export type Interceptor = (next: Dispatch) => Dispatch;

/** `compose(send, a, b, c)` → a(b(c(send))): the first interceptor listed is the outermost. */
export function compose(innermost: Dispatch, ...interceptors: Interceptor[]): Dispatch {
  return interceptors.reduceRight<Dispatch>((next, interceptor) => interceptor(next), innermost);
}

/**
 * The controller handed with errors raised before any upstream I/O (limits, no endpoint):
 * there is nothing to abort, pause or resume yet.
 */
export const DETACHED_CONTROLLER: DispatchController = {
  aborted: false,
  paused: false,
  reason: null,
  abort() {},
  pause() {},
  resume() {},
};

/** Fails a call before it reached any endpoint. */
export function reject(handler: ResponseHandler, err: Error): void {
  handler.onResponseError?.(DETACHED_CONTROLLER, err);
}

/**
 * Base for interceptor handlers that pass everything through unless they override it.
 * A class (not closures) keeps the per-request objects small and monomorphic.
 */
export class ForwardingHandler implements ResponseHandler {
  constructor(protected readonly downstream: ResponseHandler) {}
  onRequestStart(controller: DispatchController, context: unknown): void {
    this.downstream.onRequestStart?.(controller, context);
  }
  onResponseStart(controller: DispatchController, status: number, headers: IncomingHttpHeaders, message?: string): void {
    this.downstream.onResponseStart?.(controller, status, headers, message);
  }
  onResponseData(controller: DispatchController, chunk: Buffer): void {
    this.downstream.onResponseData?.(controller, chunk);
  }
  onResponseEnd(controller: DispatchController, trailers: IncomingHttpHeaders): void {
    this.downstream.onResponseEnd?.(controller, trailers);
  }
  onResponseError(controller: DispatchController, err: Error): void {
    this.downstream.onResponseError?.(controller, err);
  }
}
