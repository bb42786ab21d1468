// Header handling shared by both directions. Hop-by-hop headers (RFC 9110 §7.6.1) describe one
// connection and are never forwarded; the peer-identity header is set by the inbound listener
// alone, so any copy arriving from elsewhere is dropped.
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

export const PEER_IDENTITY_HEADER = 'x-ctxmesh-peer-identity';
export const REQUEST_ID_HEADER = 'x-request-id';

const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade',
  // undici does not relay `expect: 100-continue`; node:http has already answered it.
  'expect',
]);

const DROPPED_FROM_REQUESTS = new Set([...HOP_BY_HOP, PEER_IDENTITY_HEADER]);

/** What one pass over the request's raw headers yields. */
export interface RequestHead {
  /** Headers to send upstream, flat [name, value, …]. */
  headers: string[];
  /** Host header value ('' when absent). */
  host: string;
  /** Declared body length, -1 when absent. */
  contentLength: number;
  /** Whether the request declares a chunked body. */
  chunked: boolean;
}

/**
 * One pass over `rawHeaders`: keeps the end-to-end headers (original case, repeats kept), and
 * picks out what routing and limits need.
 */
export function readRequestHead(rawHeaders: readonly string[]): RequestHead {
  const headers: string[] = [];
  let host = '';
  let contentLength = -1;
  let chunked = false;
  let hasRequestId = false;
  let connectionTokens: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    const lower = name.toLowerCase();
    if (lower === 'host') host = value;
    else if (lower === 'content-length') contentLength = Number(value);
    else if (lower === 'transfer-encoding') chunked = /chunked/i.test(value);
    else if (lower === 'connection') connectionTokens = value.toLowerCase();
    else if (lower === REQUEST_ID_HEADER) hasRequestId = true;
    if (DROPPED_FROM_REQUESTS.has(lower)) continue;
    headers.push(name, value);
  }
  if (connectionTokens && connectionTokens !== 'keep-alive' && connectionTokens !== 'close') {
    dropConnectionListed(headers, connectionTokens);
  }
  if (!hasRequestId) headers.push(REQUEST_ID_HEADER, randomUUID());
  return { headers, host, contentLength, chunked };
}

/** Headers named in `Connection` are hop-by-hop for this connection too. */
function dropConnectionListed(headers: string[], tokens: string): void {
  const listed = new Set(tokens.split(',').map((t) => t.trim()).filter(Boolean));
  for (let i = headers.length - 2; i >= 0; i -= 2) {
    if (listed.has(headers[i]!.toLowerCase())) headers.splice(i, 2);
  }
}

/** Upstream response headers as a flat list for `writeHead`, hop-by-hop headers removed. */
export function responseHeaders(incoming: IncomingHttpHeaders, close: boolean): string[] {
  const out: string[] = [];
  for (const name in incoming) {
    if (HOP_BY_HOP.has(name)) continue;
    const value = incoming[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else out.push(name, value);
  }
  if (close) out.push('connection', 'close');
  return out;
}

/** The first value of a header, by lower-case name. */
export function headerValue(rawHeaders: readonly string[], name: string): string | undefined {
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === name) return rawHeaders[i + 1];
  return undefined;
}
