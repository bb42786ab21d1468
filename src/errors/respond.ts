// Writes a mesh-generated error response: the status from the table, `x-ctxmesh-error`, a small
// JSON body. The only place the proxy turns an error into a response.
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { ERROR_HEADER, errorBody, type MeshError } from './table.js';

export function sendError(res: ServerResponse, err: MeshError, options: { close?: boolean } = {}): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = errorBody(err);
  const headers = [
    'content-type', 'application/json',
    'content-length', String(Buffer.byteLength(body)),
    ERROR_HEADER, err.code,
  ];
  if (err.retryAfter !== undefined) headers.push('retry-after', String(Math.max(1, Math.ceil(err.retryAfter))));
  // When the request body was not read, closing is cheaper than draining it for keep-alive.
  if (options.close) headers.push('connection', 'close');
  res.writeHead(err.status, headers);
  res.end(body);
}

/**
 * The same response written straight to a socket, for requests node's parser refused before any
 * ServerResponse existed (malformed or oversized heads, heads that came too slowly). The
 * connection is closed after it: the parser's state is unknown.
 */
export function sendErrorOnSocket(socket: Duplex, err: MeshError): void {
  const body = errorBody(err);
  socket.end(
    `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? 'Error'}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\n${ERROR_HEADER}: ${err.code}\r\nconnection: close\r\n\r\n${body}`,
  );
}
