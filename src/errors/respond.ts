// Writes a mesh-generated error response: the status from the table, `x-ctxmesh-error`, a small
// JSON body. The only place the proxy turns an error into a response.
import type { ServerResponse } from 'node:http';
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
  // When the request body was not read, closing is cheaper than draining it for keep-alive.
  if (options.close) headers.push('connection', 'close');
  res.writeHead(err.status, headers);
  res.end(body);
}
