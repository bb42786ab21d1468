#!/usr/bin/env node
// Open-loop, fixed-rate HTTP load generator (a small stand-in for wrk2, which Debian does not ship).
//
//   node bench/proxy/fixed-rate.mjs --url http://127.0.0.1:18080/ --host origin \
//        --rate 1000 --duration 20 --warmup 2 --connections 32 --expect-bytes 1024
//
// Request i is *scheduled* at start + i/rate, whatever happened to the requests before it (open
// loop: a slow response does not delay the next send, so queueing shows up as latency instead of
// as a lower rate). Requests go over a keep-alive pool of at most --connections sockets; when all
// are busy the request waits in the pool, and that wait is part of its latency.
//
// Three histograms (perf_hooks.createHistogram, nanosecond resolution), warm-up excluded:
//   service  : actual send (the http.request call) -> last body byte: the latency the client
//              sees. bench/proxy/run.sh compares paths on this one.
//   latency  : scheduled send time -> last body byte: the wrk2-style figure, corrected for
//              coordinated omission. It also counts the generator's own lateness (below), which
//              on a VM is mostly the time a sleeping thread takes to be woken.
//   lateness : actual send - scheduled send: how far the generator was from its schedule.
// A response counts as an error (and is left out of the histograms) unless it is a 200 whose body
// has --expect-bytes bytes.
//
// Prints one line: FIXEDRATEJSON {...} with every figure in microseconds.
import http from 'node:http';
import { createHistogram, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    host: { type: 'string' },
    rate: { type: 'string', default: '1000' },
    duration: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '2' },
    connections: { type: 'string', default: '32' },
    'expect-bytes': { type: 'string' },
    timeout: { type: 'string', default: '5' },
    label: { type: 'string', default: '' },
  },
});
if (!values.url) {
  process.stderr.write('fixed-rate: --url is required\n');
  process.exit(2);
}
const url = new URL(values.url);
const rate = Number(values.rate);
const duration = Number(values.duration);
const warmup = Number(values.warmup);
const connections = Number(values.connections);
const expectBytes = values['expect-bytes'] ? Number(values['expect-bytes']) : undefined;
const timeoutMs = Number(values.timeout) * 1000;
const intervalMs = 1000 / rate;
const warmupCount = Math.round(warmup * rate);
const total = warmupCount + Math.round(duration * rate);

const agent = new http.Agent({
  keepAlive: true,
  maxSockets: connections,
  maxFreeSockets: connections,
  scheduling: 'fifo',
});
const headers = values.host ? { host: values.host } : {};
const requestOptions = {
  agent,
  host: url.hostname,
  port: Number(url.port || 80),
  path: url.pathname + url.search,
  method: 'GET',
  headers,
};

const hist = {
  latency: createHistogram(),
  service: createHistogram(),
  lateness: createHistogram(),
};
const errors = { status: 0, body: 0, socket: 0, timeout: 0 };
let recorded = 0;
let sent = 0;
let done = 0;
let firstMeasuredSend = 0;
let lastMeasuredEnd = 0;
let socketsOpened = 0;
const seenSockets = new WeakSet();

const toNs = (ms) => Math.max(1, Math.round(ms * 1e6));

function fire(scheduled, measured) {
  const t0 = performance.now();
  if (measured && firstMeasuredSend === 0) firstMeasuredSend = t0;
  sent++;
  let finished = false;
  const finish = (kind, bytes, status) => {
    if (finished) return;
    finished = true;
    done++;
    const t1 = performance.now();
    if (measured) {
      lastMeasuredEnd = t1;
      if (kind) errors[kind]++;
      else if (status !== 200) errors.status++;
      else if (expectBytes !== undefined && bytes !== expectBytes) errors.body++;
      else {
        recorded++;
        hist.latency.record(toNs(t1 - scheduled));
        hist.service.record(toNs(t1 - t0));
        hist.lateness.record(toNs(Math.max(0, t0 - scheduled)));
      }
    }
    if (done === total) finishRun();
  };
  const req = http.request(requestOptions, (res) => {
    let bytes = 0;
    res.on('data', (chunk) => {
      bytes += chunk.length;
    });
    res.on('end', () => finish(null, bytes, res.statusCode));
    res.on('error', () => finish('socket'));
  });
  req.on('socket', (s) => {
    if (!seenSockets.has(s)) {
      seenSockets.add(s);
      socketsOpened++;
    }
  });
  req.setTimeout(timeoutMs, () => {
    finish('timeout');
    req.destroy();
  });
  req.on('error', () => finish('socket'));
  req.end();
}

// The schedule is kept by a metronome thread: node's own timers have a 1 ms granularity (libuv
// keeps time in whole milliseconds), which at 1000 req/s would send requests up to a millisecond
// late and in pairs. The worker sleeps with Atomics.wait (sub-millisecond, futex based) until each
// request's time and posts its index; the main thread sends it at once and handles the responses.
const startAbs = performance.timeOrigin + performance.now() + 50;
const metronome = new Worker(
  `
  const { parentPort, workerData } = require('node:worker_threads');
  const { performance } = require('node:perf_hooks');
  const { startAbs, intervalMs, total } = workerData;
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < total; i++) {
    const wait = startAbs + i * intervalMs - (performance.timeOrigin + performance.now());
    if (wait > 0) Atomics.wait(cell, 0, 0, wait);
    parentPort.postMessage(i);
  }
  `,
  { eval: true, workerData: { startAbs, intervalMs, total } },
);
const startMain = startAbs - performance.timeOrigin; // the same instant on this thread's clock
metronome.on('message', (i) => {
  fire(startMain + i * intervalMs, i >= warmupCount);
  if (i === total - 1) {
    // Give stragglers their timeout, then report whatever came back.
    setTimeout(finishRun, timeoutMs + 1000).unref();
  }
});
metronome.on('error', (err) => {
  process.stderr.write(`fixed-rate: metronome failed: ${err}\n`);
  process.exit(1);
});

let reported = false;
function finishRun() {
  if (reported) return;
  reported = true;
  const us = (h) => ({
    p50: Math.round(h.percentile(50) / 100) / 10,
    p90: Math.round(h.percentile(90) / 100) / 10,
    p99: Math.round(h.percentile(99) / 100) / 10,
    p999: Math.round(h.percentile(99.9) / 100) / 10,
    max: Math.round(h.max / 100) / 10,
    mean: Math.round(h.mean / 100) / 10,
  });
  const measuredSeconds = (lastMeasuredEnd - firstMeasuredSend) / 1000;
  const out = {
    label: values.label,
    url: values.url,
    rate,
    duration,
    warmup,
    connections,
    sent: sent - warmupCount,
    ok: recorded,
    errors,
    achievedRate: measuredSeconds > 0 ? Math.round((total - warmupCount) / measuredSeconds) : 0,
    socketsOpened,
    latency_us: us(hist.latency),
    service_us: us(hist.service),
    lateness_us: us(hist.lateness),
  };
  process.stdout.write(`FIXEDRATEJSON ${JSON.stringify(out)}\n`);
  agent.destroy();
  metronome.terminate().finally(() => process.exit(0));
}
