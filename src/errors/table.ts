// The one table of errors the mesh itself generates. Each code is declared once with its HTTP
// status; every response the proxy, the admin API or the context API makes on its own behalf
// carries `x-ctxmesh-error: <code>`. Causes (socket errors, undici errors, limits) are mapped to
// codes in one place: `toMeshError`.

export const ERROR_HEADER = 'x-ctxmesh-error';

export const ERRORS = {
  bad_request: { status: 400, message: 'malformed request' },
  invalid_key: { status: 400, message: 'invalid context key' },
  forbidden: { status: 403, message: 'caller identity is not allowed' },
  no_route: { status: 404, message: 'no route for this host' },
  not_found: { status: 404, message: 'not found' },
  method_not_allowed: { status: 405, message: 'method not allowed' },
  stale_epoch: { status: 409, message: 'peer call refused: the sender’s ownership epoch is older than the one the control plane gave this member for it (fenced)' },
  not_mergeable: { status: 409, message: 'the stored value is not a JSON object that a merge patch can apply to' },
  request_timeout: { status: 408, message: 'request was not received in time' },
  precondition_failed: { status: 412, message: 'the context has a different version than If-Match names' },
  payload_too_large: { status: 413, message: 'request body exceeds the limit' },
  unsupported_media_type: { status: 415, message: 'unsupported content type' },
  precondition_required: { status: 428, message: 'this write needs If-Match or If-None-Match' },
  rate_limited: { status: 429, message: 'request rate limit reached' },
  headers_too_large: { status: 431, message: 'request headers exceed the limit' },
  client_closed: { status: 499, message: 'client closed the connection before the response' },
  internal: { status: 500, message: 'internal error' },
  upstream_reset: { status: 502, message: 'upstream reset the connection' },
  connect_failure: { status: 503, message: 'could not connect to upstream' },
  circuit_open: { status: 503, message: 'every endpoint has its circuit breaker open' },
  overflow: { status: 503, message: 'cluster concurrency limit reached' },
  no_healthy_upstream: { status: 503, message: 'no healthy endpoint' },
  draining: { status: 503, message: 'sidecar is draining' },
  not_ready: { status: 503, message: 'sidecar is not ready' },
  l2_unavailable: { status: 503, message: 'the L2 store (Redis) is unavailable' },
  store_unavailable: { status: 503, message: 'the control plane registry store (Redis) is unavailable' },
  write_queue_full: { status: 503, message: 'the write-behind queue is full' },
  upstream_timeout: { status: 504, message: 'upstream did not respond in time' },
  quorum_unavailable: { status: 503, message: 'too few replicas of the context answered for the requested consistency' },
  fenced: { status: 503, message: 'this sidecar lost its ownership epoch (declared failed or superseded) and takes no writes until the control plane re-admits it' },
  indeterminate: { status: 504, message: 'the write reached too few replicas in time: it may or may not take effect' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

export class MeshError extends Error {
  readonly status: number;
  /** Seconds the client should wait before trying again (429, 503 backpressure): `Retry-After`. */
  readonly retryAfter: number | undefined;
  constructor(
    readonly code: ErrorCode,
    detail?: string,
    options?: { cause?: unknown; retryAfter?: number },
  ) {
    super(detail ?? ERRORS[code].message, options);
    this.name = 'MeshError';
    this.status = ERRORS[code].status;
    this.retryAfter = options?.retryAfter;
  }
}

// Node and undici error codes, grouped by what they mean for the caller.
const CONNECT_CODES = new Set([
  'ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL',
  'UND_ERR_CONNECT_TIMEOUT', 'ERR_TLS_CERT_ALTNAME_INVALID', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_HAS_EXPIRED', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'ERR_TLS_PEER_IDENTITY',
]);
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

export function toMeshError(err: unknown): MeshError {
  if (err instanceof MeshError) return err;
  const code = (err as { code?: string } | null)?.code ?? '';
  const message = (err as Error | null)?.message;
  if (CONNECT_CODES.has(code) || code.startsWith('ERR_SSL_')) return new MeshError('connect_failure', message, { cause: err });
  if (TIMEOUT_CODES.has(code)) return new MeshError('upstream_timeout', message, { cause: err });
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return new MeshError('request_timeout', undefined, { cause: err });
  if (code === 'HPE_HEADER_OVERFLOW') return new MeshError('headers_too_large', undefined, { cause: err });
  if (code.startsWith('HPE_')) return new MeshError('bad_request', message, { cause: err });
  if (code.startsWith('UND_ERR_') || code.startsWith('E')) return new MeshError('upstream_reset', message, { cause: err });
  return new MeshError('internal', message, { cause: err });
}

/** The body of a mesh-generated error response. */
export function errorBody(err: MeshError): string {
  return JSON.stringify({ error: err.code, message: err.message });
}
