// A request body without Content-Length is counted as it streams and cut off at the limit; one
// with Content-Length is refused before a byte is read (see the listeners).
import type { IncomingMessage } from 'node:http';
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
