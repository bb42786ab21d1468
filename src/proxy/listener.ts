// What both proxy listeners share: request-head limits, the slowloris guard, malformed input
// answered with a mesh error instead of a crash, and the per-request entry into the pipeline.
import type { IncomingMessage, Server, ServerOptions, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { LimitsConfig } from '../config/schema.js';
import { sendError, sendErrorOnSocket } from '../errors/respond.js';
import { MeshError, toMeshError } from '../errors/table.js';
import type { Exchange, ExchangeRecorder } from '../telemetry/exchange.js';
import { limitBody } from './body-limit.js';
import type { RequestHead } from './headers.js';
import { ResponseRelay } from './relay.js';
import type { Cluster } from './upstream/cluster.js';
import { upstream } from './upstream/stack.js';

/** Options for node:http / node:https servers derived from the limits config. */
export function serverOptions(limits: LimitsConfig): ServerOptions {
  return {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headersTimeout,
    keepAliveTimeout: limits.idleTimeout,
    // How often node checks the head timeout; the default (30s) would let slow heads linger.
    connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(limits.headersTimeout / 2))),
    noDelay: true,
  };
}

/** Malformed, too-large or too-slow request heads never reach a handler: answer them here and close. */
export function answerClientErrors(server: Server, onError: (err: MeshError) => void): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex & { _httpMessage?: ServerResponse | null }) => {
    const code = err.code ?? '';
    // Only a request the parser rejected (HPE_*) or whose head came too slowly is answered and
    // counted. Anything else is the connection itself failing: a reset, or — https.Server
    // reports them here too — a TLS handshake refused or timed out, where there is no request
    // to count and bytes written would not even be inside TLS.
    if (code !== 'ERR_HTTP_REQUEST_TIMEOUT' && !code.startsWith('HPE_')) {
      socket.destroy();
      return;
    }
    const failure = toMeshError(err);
    onError(failure);
    // A malformed *body* arrives while its request's response may already be on the wire (node
    // keeps it in `_httpMessage`, and checks it the same way when no listener is set): a status
    // line written now would land in the middle of that response, so cutting it short is all
    // that is left.
    if (!socket.writable || socket._httpMessage?.headersSent) {
      socket.destroy();
      return;
    }
    sendErrorOnSocket(socket, failure);
  });
}

/**
 * `Expect: 100-continue`: node would invite the body at once; instead a declared length over the
 * limit is refused (413, by the request handler) before the client sends a byte of it.
 */
export function continueWithinLimits(
  server: Server,
  limits: LimitsConfig,
  onRequest: (req: IncomingMessage, res: ServerResponse) => void,
): void {
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    if (!(Number(req.headers['content-length']) > limits.maxBodyBytes)) res.writeContinue();
    onRequest(req, res);
  });
}

export interface ProxyRequest {
  req: IncomingMessage;
  res: ServerResponse;
  cluster: Cluster;
  head: RequestHead;
  path: string;
  hashKey: string | undefined;
  exchange: Exchange;
}

/** Sends one admitted request through the upstream pipeline. */
export function proxy(
  { req, res, cluster, head, path, hashKey, exchange }: ProxyRequest,
  limits: LimitsConfig,
  recorder: ExchangeRecorder,
  closeAfter: () => boolean,
): void {
  if (head.contentLength > limits.maxBodyBytes) {
    fail(res, exchange, recorder, cluster.name, new MeshError('payload_too_large', `request body of ${head.contentLength} bytes exceeds ${limits.maxBodyBytes}`), true);
    return;
  }
  const hasBody = head.contentLength > 0 || head.chunked;
  const call = {
    cluster,
    method: req.method ?? 'GET',
    path,
    headers: head.headers,
    body: !hasBody ? null : head.chunked ? limitBody(req, limits.maxBodyBytes) : req,
    hashKey,
    deadline: cluster.clock.now() + cluster.config.timeout,
    attempts: 0,
    tried: [],
    endpoint: undefined,
    cancelled: false,
  };
  upstream(call, new ResponseRelay(res, call, exchange, recorder, closeAfter));
}

/** Answers a request the proxy refuses itself, and records it like any other. */
export function fail(
  res: ServerResponse,
  exchange: Exchange,
  recorder: ExchangeRecorder,
  clusterName: string,
  err: MeshError,
  close = false,
): void {
  sendError(res, err, { close });
  recorder.record(exchange, clusterName, err.status, err.code, undefined, 0);
}
