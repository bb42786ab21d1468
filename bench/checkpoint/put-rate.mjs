#!/usr/bin/env node
// Open-loop PUTs at a fixed rate against a sidecar's context API, with a checkpoint taken in the
// middle: the write pause a snapshot causes, as a client sees it.
//
//   node bench/checkpoint/put-rate.mjs --api http://127.0.0.1:P --admin http://127.0.0.1:A \
//        --keys 262144 --value-bytes 4096 --rate 1000 --warmup 3 --quiet 10 --tail 3
//
// Timeline: warm-up (not counted), a quiet period (PUTs only), then POST /checkpoints on the admin
// port; PUTs go on at the same rate while it runs and for --tail seconds after it answers. Each
// PUT overwrites a random preloaded key (bench/session-NNNNNNN) with a new value of the same size.
// The schedule is kept by a metronome thread as in bench/proxy/fixed-rate.mjs (request i at
// t0 + i/rate, sent whatever the earlier ones are doing). Every request's scheduled time, send
// time, end time and status are kept; a request belongs to the window its send time falls in.
//
// Prints one line: PUTRATEJSON {...}, latencies in milliseconds.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';

const { values } = parseArgs({
  options: {
    api: { type: 'string' },
    admin: { type: 'string' },
    keys: { type: 'string', default: String(256 * 1024) },
    'value-bytes': { type: 'string', default: '4096' },
    rate: { type: 'string', default: '1000' },
    warmup: { type: 'string', default: '3' },
    quiet: { type: 'string', default: '10' },
    tail: { type: 'string', default: '3' },
    'max-seconds': { type: 'string', default: '300' },
    connections: { type: 'string', default: '64' },
  },
});
const api = new URL(values.api);
const admin = new URL(values.admin);
const KEYS = Number(values.keys);
const VALUE_BYTES = Number(values['value-bytes']);
const RATE = Number(values.rate);
const WARMUP_MS = Number(values.warmup) * 1000;
const QUIET_MS = Number(values.quiet) * 1000;
const TAIL_MS = Number(values.tail) * 1000;
const MAX = Math.round(Number(values['max-seconds']) * RATE);
const intervalMs = 1000 / RATE;

const agent = new http.Agent({ keepAlive: true, maxSockets: Number(values.connections), scheduling: 'fifo' });
const body = Buffer.alloc(VALUE_BYTES, 'x');
body.write('{"bench":"put-rate","pad":"', 0);
body.write('"}', VALUE_BYTES - 2);

const scheduled = new Float64Array(MAX);
const sentAt = new Float64Array(MAX);
const endedAt = new Float64Array(MAX);
const status = new Int16Array(MAX); // 0 = pending, -1 = socket error
let issued = 0;
let finished = 0;

function put(i, when) {
  scheduled[i] = when;
  sentAt[i] = performance.now();
  issued = i + 1;
  const key = `bench/session-${String(Math.floor(Math.random() * KEYS)).padStart(7, '0')}`;
  const req = http.request(
    { agent, host: api.hostname, port: Number(api.port), path: `/v1/contexts/${key}`, method: 'PUT', headers: { 'content-type': 'application/json', 'content-length': VALUE_BYTES } },
    (res) => {
      res.resume();
      res.on('end', () => {
        endedAt[i] = performance.now();
        status[i] = res.statusCode;
        finished++;
      });
    },
  );
  req.on('error', () => {
    endedAt[i] = performance.now();
    status[i] = -1;
    finished++;
  });
  req.end(body);
}

const startAbs = performance.timeOrigin + performance.now() + 50;
const stop = new Int32Array(new SharedArrayBuffer(4));
const metronome = new Worker(
  `
  const { parentPort, workerData } = require('node:worker_threads');
  const { performance } = require('node:perf_hooks');
  const { startAbs, intervalMs, max, stop } = workerData;
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < max && Atomics.load(stop, 0) === 0; i++) {
    const wait = startAbs + i * intervalMs - (performance.timeOrigin + performance.now());
    if (wait > 0) Atomics.wait(cell, 0, 0, wait);
    parentPort.postMessage(i);
  }
  `,
  { eval: true, workerData: { startAbs, intervalMs, max: MAX, stop: stop } },
);
const startMain = startAbs - performance.timeOrigin;
metronome.on('message', (i) => put(i, startMain + i * intervalMs));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function adminCall(method, path) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: admin.hostname, port: Number(admin.port), path, method, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end();
  });
}

await sleep(50 + WARMUP_MS + QUIET_MS);
const ckptStart = performance.now();
const ckpt = await adminCall('POST', '/checkpoints?reason=bench');
const ckptEnd = performance.now();
await sleep(TAIL_MS);
Atomics.store(stop, 0, 1);
await metronome.terminate();
for (let waited = 0; finished < issued && waited < 10_000; waited += 50) await sleep(50);

function windowStats(from, to) {
  const lat = [];
  const fromSchedule = [];
  let errors = 0;
  let pending = 0;
  for (let i = 0; i < issued; i++) {
    if (sentAt[i] < from || sentAt[i] >= to) continue;
    if (status[i] === 0) pending++;
    else if (status[i] < 200 || status[i] > 299) errors++;
    else {
      lat.push(endedAt[i] - sentAt[i]);
      fromSchedule.push(endedAt[i] - scheduled[i]);
    }
  }
  const pct = (xs, p) => {
    if (xs.length === 0) return null;
    const s = Float64Array.from(xs).sort();
    return Math.round(s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] * 1000) / 1000;
  };
  const summary = (xs) => ({ p50: pct(xs, 50), p99: pct(xs, 99), p999: pct(xs, 99.9), max: pct(xs, 100) });
  return { seconds: (to - from) / 1000, ok: lat.length, errors, pending, achievedRate: Math.round(lat.length / ((to - from) / 1000)), latency: summary(lat), fromSchedule: summary(fromSchedule) };
}

const quietFrom = startMain + WARMUP_MS;
function slowestIn(from, to) {
  return [...Array(issued).keys()]
    .filter((i) => sentAt[i] >= from && sentAt[i] < to && status[i] > 0)
    .sort((a, b) => endedAt[b] - sentAt[b] - (endedAt[a] - sentAt[a]))
    .slice(0, 5)
    .map((i) => ({ atSeconds: Math.round((sentAt[i] - ckptStart) / 10) / 100, ms: Math.round((endedAt[i] - sentAt[i]) * 100) / 100 }));
}
const out = {
  rate: RATE,
  valueBytes: VALUE_BYTES,
  keys: KEYS,
  checkpoint: { status: ckpt.status, seconds: (ckptEnd - ckptStart) / 1000, summary: (() => { try { return JSON.parse(ckpt.body); } catch { return ckpt.body; } })() },
  quiet: windowStats(quietFrom, ckptStart),
  during: windowStats(ckptStart, ckptEnd),
  after: windowStats(ckptEnd, ckptEnd + TAIL_MS),
  // The worst PUTs of the snapshot window, with when they were sent (s after the POST).
  slowest: slowestIn(ckptStart, ckptEnd),
  // The same for the windows around it (negative: before the POST), to tell a stall the snapshot
  // causes from one that comes anyway.
  slowestQuiet: slowestIn(quietFrom, ckptStart),
  slowestAfter: slowestIn(ckptEnd, ckptEnd + TAIL_MS),
};
process.stdout.write(`PUTRATEJSON ${JSON.stringify(out)}\n`);
agent.destroy();
process.exit(0);
