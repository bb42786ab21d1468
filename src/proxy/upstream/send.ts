// The innermost stage: the try goes to the chosen endpoint's undici Pool, with the per-try
// timeout clipped to what is left of the call's deadline, so that a slow try never outlives the
// deadline. The timeout is a native timer of ours: undici's own headersTimeout runs on its coarse
// "fast timers" (500ms ticks), which let a 200ms per-try timeout last up to a second. undici's
// stays set as a backstop.
import type { IncomingHttpHeaders } from 'node:http';
import { MeshError } from '../../errors/table.js';
import { ForwardingHandler, type Dispatch, type DispatchController, type ResponseHandler, type UpstreamCall } from './dispatch.js';

export const sendToEndpoint: Dispatch = (call, handler) => {
  const { cluster } = call;
  call.endpoint!.pool.dispatch(
    {
      path: call.path,
      method: call.method,
      headers: call.headers,
      body: call.body,
      headersTimeout: headersTimeoutMs(call),
      bodyTimeout: cluster.config.idleTimeout,
    },
    new HeadersTimeoutHandler(handler, call),
  );
};

function headersTimeoutMs(call: UpstreamCall): number {
  const { cluster } = call;
  const perTry = cluster.config.retry.perTryTimeout ?? cluster.config.timeout;
  return Math.max(1, Math.floor(Math.min(perTry, call.deadline - cluster.clock.now())));
}

/** Fails the try with upstream_timeout when its response headers are late. */
class HeadersTimeoutHandler extends ForwardingHandler {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    downstream: ResponseHandler,
    private readonly call: UpstreamCall,
  ) {
    super(downstream);
  }

  override onRequestStart(controller: DispatchController, context: unknown): void {
    // Armed when undici writes the request, as its own headers timeout is: a wait for a free
    // connection is bounded by maxPendingRequests, the connect itself by connectTimeout.
    // Not unref'd: the timer is always cleared or fires, and toggling a handle's ref count costs
    // a call into the runtime on every request.
    const ms = headersTimeoutMs(this.call);
    this.timer = setTimeout(() => controller.abort(new MeshError('upstream_timeout', `no response headers within ${ms}ms`)), ms);
    super.onRequestStart(controller, context);
  }

  override onResponseStart(controller: DispatchController, status: number, headers: IncomingHttpHeaders, message?: string): void {
    clearTimeout(this.timer);
    super.onResponseStart(controller, status, headers, message);
  }

  override onResponseError(controller: DispatchController, err: Error): void {
    clearTimeout(this.timer);
    super.onResponseError(controller, err);
  }
}
