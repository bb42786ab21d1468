#!/usr/bin/env node
// The peers of the context API's GET, with no ctxmesh code at all:
//
//   node bench/state/bare-server.mjs --port P --body body.bin
//       a bare node:http server answering every request with the same bytes from memory (the
//       L1 peer: what node:http alone costs per request)
//   node bench/state/bare-server.mjs --port P --body body.bin --redis redis://127.0.0.1:R --key K
//       the same server, but each request GETs the value from Redis with ioredis first (the L2
//       floor: node:http + ioredis, configured as ctxmesh's L2 client is, nothing else); a PUT
//       stores its body there with a plain SET and answers 204 (the floor of a write-through PUT)
//
// Both answer with the header set the context API writes for a GET (content-type, content-length,
// etag, ctxmesh-tier, ctxmesh-consistency, ctxmesh-session), values of the same length, so
// that the bytes on the wire match the API's.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string' }, body: { type: 'string' }, redis: { type: 'string' }, key: { type: 'string' } },
});
const body = values.body ? readFileSync(values.body) : Buffer.alloc(1024, 'A');
const tier = values.redis ? 'l2' : 'l1';
const head = (length) => [
  'content-type', 'application/octet-stream',
  'content-length', String(length),
  'etag', '"1795325091561.0@bench"',
  'ctxmesh-tier', tier,
  'ctxmesh-consistency', 'session',
  'ctxmesh-session', '1795325091561.0',
];

let handler;
if (values.redis) {
  const { Redis } = await import('ioredis');
  const url = new URL(values.redis);
  // As ctxmesh's L2 client: no offline queue, auto-pipelining (concurrent GETs share a write).
  const redis = new Redis({ host: url.hostname, port: Number(url.port), enableOfflineQueue: false, enableAutoPipelining: true });
  await new Promise((resolve, reject) => { redis.once('ready', resolve); redis.once('error', reject); });
  const key = values.key ?? 'floor';
  const failed = (res) => () => { res.writeHead(503).end(); };
  handler = (req, res) => {
    if (req.method === 'PUT') {
      const chunks = [];
      req.on('data', (chunk) => chunks.push(chunk));
      req.on('end', () => {
        redis.set(key, Buffer.concat(chunks)).then(() => { res.writeHead(204).end(); }, failed(res));
      });
      return;
    }
    req.resume();
    redis.getBuffer(key).then(
      (value) => {
        if (value === null) { res.writeHead(404).end(); return; }
        res.writeHead(200, head(value.length));
        res.end(value);
      },
      failed(res),
    );
  };
} else {
  const headers = head(body.length);
  handler = (req, res) => {
    req.resume();
    res.writeHead(200, headers);
    res.end(body);
  };
}

// keepAliveTimeout as the context API's listener, so idle wrk connections are treated alike.
http.createServer({ keepAliveTimeout: 60_000 }, handler).listen(Number(values.port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
