#!/usr/bin/env node
// A bare node:http server answering the origin's 1 KiB from memory: the server half of any Node
// proxy, alone.
//   node bench/proxy/node-origin.mjs --port 18085 --body body.txt
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string' }, body: { type: 'string' } } });
const body = values.body ? readFileSync(values.body) : Buffer.alloc(1024, 'A');
const head = ['content-type', 'text/plain', 'content-length', String(body.length)];
http
  .createServer((req, res) => {
    req.resume();
    res.writeHead(200, head);
    res.end(body);
  })
  .listen(Number(values.port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
