#!/usr/bin/env node
// The "naive Node proxy" peer of the proxy benchmark: what a developer writes in ten minutes with
// node:http and nothing else. One process, a keep-alive Agent towards the upstream, bodies piped
// both ways, headers passed through. No routing table, no resilience, no metrics, no logging — it
// is the floor a Node sidecar is compared with, not a strawman: it reuses upstream connections.
//
//   node bench/proxy/naive-proxy.mjs --listen 127.0.0.1:18083 --upstream 127.0.0.1:18080
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:18083' },
    upstream: { type: 'string', default: '127.0.0.1:18080' },
  },
});
const [listenHost, listenPort] = splitHostPort(values.listen);
const [upHost, upPort] = splitHostPort(values.upstream);

const agent = new http.Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 256 });

const server = http.createServer((req, res) => {
  const upReq = http.request(
    { host: upHost, port: upPort, method: req.method, path: req.url, headers: req.headers, agent },
    (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    },
  );
  upReq.on('error', () => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end('bad gateway\n');
  });
  req.pipe(upReq);
});
server.keepAliveTimeout = 60_000;
server.listen(listenPort, listenHost, () => {
  process.stdout.write(`naive-proxy listening on ${listenHost}:${listenPort} -> ${upHost}:${upPort}\n`);
});
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
});

function splitHostPort(s) {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
}
