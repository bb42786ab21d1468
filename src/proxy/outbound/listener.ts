// The outbound listener: plain HTTP/1.1 from the local app, transparent (routed by Host) or as an
// explicit proxy (routed by the absolute-form target). The stages, in order:
//   accept → read the head (one pass) → route by authority → limits → upstream pipeline → relay
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { LimitsConfig } from '../../config/schema.js';
import { MeshError } from '../../errors/table.js';
import type { Exchange, ExchangeRecorder } from '../../telemetry/exchange.js';
import { headerValue, readRequestHead } from '../headers.js';
import { answerClientErrors, continueWithinLimits, fail, proxy, serverOptions } from '../listener.js';
import type { Router } from './router.js';

export interface OutboundOptions {
  limits: LimitsConfig;
  recorder: ExchangeRecorder;
  /** The route table in force; read per request so an update applies to the next request. */
  router: () => Router;
  /** Whether responses should close their connection (the sidecar is draining). */
  draining: () => boolean;
}

export function createOutboundServer(options: OutboundOptions): http.Server {
  const { limits, recorder } = options;
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const target = splitTarget(req.url ?? '/');
    const head = readRequestHead(req.rawHeaders);
    const authority = target.authority ?? head.host;
    const exchange: Exchange = {
      direction: 'outbound',
      method: req.method ?? 'GET',
      authority,
      path: target.path,
      startedAt: performance.now(),
    };
    const cluster = options.router().route(authority);
    if (!cluster) {
      fail(res, exchange, recorder, '-', new MeshError('no_route', `no route for host "${authority}"`), head.contentLength > 0 || head.chunked);
      return;
    }
    // The hash header is known only once the cluster is: a second, short scan, for ring_hash only.
    const hashKey = cluster.config.lb === 'ring_hash' ? headerValue(req.rawHeaders, cluster.config.hashHeader) : undefined;
    if (target.authority) setHost(head.headers, target.authority);
    proxy({ req, res, cluster, head, path: target.path, hashKey, exchange }, limits, recorder, options.draining);
  };
  const server = http.createServer(serverOptions(limits), onRequest);
  continueWithinLimits(server, limits, onRequest);
  answerClientErrors(server, (err) => recorder.record(clientErrorExchange('outbound'), '-', err.status, err.code, undefined, 0));
  return server;
}

/** `http://chat:8080/v1/x?q` (explicit proxy) → authority `chat:8080`, path `/v1/x?q`. */
function splitTarget(url: string): { authority: string | undefined; path: string } {
  if (url.charCodeAt(0) === 47 /* / */) return { authority: undefined, path: url };
  const scheme = url.indexOf('://');
  if (scheme === -1) return { authority: undefined, path: url };
  const slash = url.indexOf('/', scheme + 3);
  return {
    authority: url.slice(scheme + 3, slash === -1 ? undefined : slash),
    path: slash === -1 ? '/' : url.slice(slash),
  };
}

/** In explicit-proxy mode the target's authority is the Host the upstream must see. */
function setHost(headers: string[], authority: string): void {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() === 'host') {
      headers[i + 1] = authority;
      return;
    }
  }
  headers.push('host', authority);
}

export function clientErrorExchange(direction: 'inbound' | 'outbound'): Exchange {
  return { direction, method: '-', authority: '-', path: '-', startedAt: performance.now() };
}
