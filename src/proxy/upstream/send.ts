// The innermost stage: the try goes to the chosen endpoint's undici Pool. The per-try timeout is
// undici's own headers timeout, clipped to what is left of the call's deadline, so a slow try
// neither outlives the deadline nor needs a timer of ours.
import type { Dispatch } from './dispatch.js';

export const sendToEndpoint: Dispatch = (call, handler) => {
  const { cluster } = call;
  const perTry = cluster.config.retry.perTryTimeout ?? cluster.config.timeout;
  const left = call.deadline - cluster.clock.now();
  call.endpoint!.pool.dispatch(
    {
      path: call.path,
      method: call.method,
      headers: call.headers,
      body: call.body,
      headersTimeout: Math.max(1, Math.floor(Math.min(perTry, left))),
      bodyTimeout: cluster.config.idleTimeout,
    },
    handler,
  );
};
