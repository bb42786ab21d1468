// The upstream pipeline every proxied request goes through, outbound and inbound alike.
import { admit } from '../../resilience/limits.js';
import { retry } from '../../resilience/retry.js';
import { balanceAndGuard } from '../../resilience/endpoint-health.js';
import { compose, type Dispatch } from './dispatch.js';
import { sendToEndpoint } from './send.js';

export const upstream: Dispatch = compose(
  sendToEndpoint, //  the chosen endpoint's keep-alive pool, with the per-try timeout
  admit, //           maxRequests: over the limit → 503 overflow, never a queue
  retry, //           failed tries again, elsewhere, within the retry budget and the deadline
  balanceAndGuard, // pick an endpoint (priority, breaker, ejection, LB); record its outcome
);
