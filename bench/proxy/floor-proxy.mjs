#!/usr/bin/env node
// The floor of a Node proxy built as ctxmesh is: a node:http server in front of an undici Pool,
// and nothing else — no routing, no limits, no breaker, no retries, no metrics, no logs. What this
// costs per request is what any node:http + undici proxy pays before it does anything useful.
//   node bench/proxy/floor-proxy.mjs --port 18084 --upstream 127.0.0.1:18080
import http from 'node:http';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

const { values } = parseArgs({ options: { port: { type: 'string' }, upstream: { type: 'string' } } });
const pool = new Pool(`http://${values.upstream}`, { connections: 256 });

http
  .createServer((req, res) => {
    pool.dispatch(
      { path: req.url, method: req.method, headers: req.rawHeaders, body: req.method === 'GET' || req.method === 'HEAD' ? null : req },
      {
        onConnect() {},
        onHeaders(status, raw) {
          const headers = [];
          for (let i = 0; i < raw.length; i += 2) headers.push(raw[i].toString('latin1'), raw[i + 1].toString('latin1'));
          res.writeHead(status, headers);
          return true;
        },
        onData(chunk) {
          return res.write(chunk);
        },
        onComplete() {
          res.end();
        },
        onError() {
          if (!res.headersSent) res.writeHead(502);
          res.end();
        },
      },
    );
  })
  .listen(Number(values.port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
