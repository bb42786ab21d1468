// A request body without Content-Length is counted as it streams and cut off at the limit; one
// with Content-Length is refused before a byte is read (see the listeners). limitBody passes the
// body on as a stream (the proxy); readBody collects it whole (the context and peer APIs).
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { MeshError } from '../errors/table.js';

export function limitBody(req: IncomingMessage, maxBytes: number): Readable {
  let seen = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      seen += chunk.length;
      if (seen > maxBytes) callback(new MeshError('payload_too_large', `request body exceeds ${maxBytes} bytes`));
      else callback(null, chunk);
    },
  });
  req.on('error', (err) => counter.destroy(err));
  return req.pipe(counter);
}

/**
 * The whole request body. Refused with payload_too_large when its declared length is over
 * `maxBytes` (before a byte is read, and before `Expect: 100-continue` is answered through `res`)
 * or, without one, as soon as the bytes streamed in pass it; the rest is then drained, not kept,
 * so that the refusal can go out. A request cut short rejects with client_closed.
 */
export function readBody(req: IncomingMessage, maxBytes: number, options: { what?: string; res?: ServerResponse } = {}): Promise<Buffer> {
  const what = options.what ?? 'request body';
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > maxBytes) {
    return Promise.reject(new MeshError('payload_too_large', `${what} of ${declared} bytes exceeds the limit of ${maxBytes}`));
  }
  if (options.res && req.headers.expect?.toLowerCase() === '100-continue') options.res.writeContinue();
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    const onData = (chunk: Buffer): void => {
      received += chunk.length;
      if (received > maxBytes) {
        req.off('data', onData);
        req.off('end', onEnd);
        req.resume();
        reject(new MeshError('payload_too_large', `${what} exceeds the limit of ${maxBytes} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', (err) => reject(new MeshError('client_closed', err.message, { cause: err })));
    req.on('close', () => {
      if (!req.complete) reject(new MeshError('client_closed'));
    });
  });
}
