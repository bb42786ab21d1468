#!/usr/bin/env node
// Replicated writes beside unreplicated ones, in one run: PUTs of small contexts through the
// context API of
//   single    one sidecar with replication off (no context.replication.peers: the API writes
//             straight to its local store), and
//   eventual / session / strong / strong-tokenless   sidecar A of three sidecar processes
//             replicating to each other over real mTLS (RF=3); the level comes from the key's prefix
//             through context.replication.levels (bench-eventual/, bench-session/, bench-strong/),
//             no header; strong-tokenless: strong writes from clients that send no session token,
// every sidecar being `ctxmesh sidecar -c` as users run it (memory L2, write-through, the same WAL
// fsync policy for all). Per mode:
//   closed loop  C workers over an undici Pool of C connections, each sending its next PUT when
//                the last one answered, for every C of --conns: writes/s, p50/p99;
//   open loop    --rate writes/s scheduled by a metronome thread (write i at t0 + i/rate, sent
//                whatever the earlier ones are doing), latency counted from the scheduled time
//                (no coordinated omission) and from the actual send.
// CPU per write of every sidecar comes from /proc/<pid>/stat over the measured window.
// Keys go round-robin over --keys per mode, so no two writes in flight share a key (a strong
// write racing another on its key would retry: that is contention, not replication cost).
//
//   node bench/replication/writes.mjs --work DIR --certs DIR --out results.json [--profile DIR]
// Knobs in the environment: see run.sh. Progress on stderr; results as JSON in --out.
import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createHistogram, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { Pool, request } from 'undici';
import { cliNodeFlags } from '../cli-node-flags.mjs';
import { freePort } from './ports.mjs';

const ROOT = resolve(new URL('../..', import.meta.url).pathname);
const { values: args } = parseArgs({
  options: { work: { type: 'string' }, certs: { type: 'string' }, out: { type: 'string' }, profile: { type: 'string' } },
});
if (!args.work || !args.certs || !args.out) throw new Error('usage: writes.mjs --work DIR --certs DIR --out FILE [--profile DIR]');

const env = (name, fallback) => process.env[name] ?? fallback;
const CLI = resolve(env('BENCH_CTXMESH_CLI', join(ROOT, 'dist/src/cli/main.js')));
// The sidecars run with the node flags of the CLI's shebang, as deployed.
const CLI_NODE_FLAGS = cliNodeFlags(CLI);
const CONNS = env('BENCH_REPL_CONNS', '1 16 64').split(/\s+/).filter(Boolean).map(Number);
const DURATION_S = Number(env('BENCH_DURATION', '5'));
const WARMUP_S = Number(env('BENCH_WARMUP', '1'));
const RATE = Number(env('BENCH_REPL_RATE', '1000'));
const RATE_S = Number(env('BENCH_REPL_RATE_DURATION', '10'));
const RATE_CONNS = Number(env('BENCH_REPL_RATE_CONNS', '64'));
const ROUNDS = Number(env('BENCH_ROUNDS', '1'));
const VALUE_BYTES = Number(env('BENCH_REPL_VALUE_BYTES', '256'));
const KEYS = Number(env('BENCH_REPL_KEYS', '10000'));
const FSYNC = env('BENCH_REPL_FSYNC', 'none');
const SIDECAR_CPU = env('BENCH_SERVER_CPU', '1'); // every sidecar, replicated or not ("" = unpinned)
/** More node flags for every sidecar (e.g. "--trace-gc"), and whether to keep each one's whole output in <its dir>/output.log. */
const EXTRA_NODE_FLAGS = env('BENCH_REPL_SIDECAR_NODE_FLAGS', '').split(/\s+/).filter(Boolean);
const KEEP_OUTPUT = env('BENCH_REPL_KEEP_OUTPUT', '0') === '1';
/** Per-sidecar pinning, A B C (e.g. "1 0 0": the coordinator alone on a core); overrides BENCH_SERVER_CPU. */
const SIDECAR_CPUS = env('BENCH_REPL_CPUS', '').split(/\s+/).filter(Boolean);
const MODES = env('BENCH_REPL_MODES', 'single eventual session strong strong-tokenless').split(/\s+/).filter(Boolean);
const PROFILE_CONNS = Number(env('BENCH_REPL_PROFILE_CONNS', '16'));
const PROFILE_LEVEL = env('BENCH_REPL_PROFILE_LEVEL', 'strong');
const CLK_TCK = Number(env('BENCH_CLK_TCK', '100'));
const LEVELS = ['eventual', 'session', 'strong'];
const READY_TIMEOUT_MS = 20_000;

const say = (line) => process.stderr.write(`   ${line}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));


// ── sidecars: the CLI with a config file, as bench/state and test/helpers/sidecar-procs.ts run it ──

/** Writes the configs of `ids` (one sidecar alone when ids has one entry: replication off). */
async function planSidecars(name, ids) {
  const nodes = [];
  for (const [index, id] of ids.entries()) nodes.push({ id, index, inbound: await freePort(), context: await freePort(), admin: await freePort() });
  for (const node of nodes) {
    const dir = join(args.work, `${name}-${node.id}`);
    mkdirSync(dir, { recursive: true });
    const peers = nodes.filter((n) => n !== node).map((n) => ({ id: n.id, address: `127.0.0.1:${n.inbound}` }));
    const config = {
      node: { id: node.id },
      identity: { cert: join(args.certs, node.id, 'cert.pem'), key: join(args.certs, node.id, 'key.pem'), ca: join(args.certs, node.id, 'ca.pem') },
      inbound: { port: node.inbound, address: '127.0.0.1', app: 'http://127.0.0.1:9' },
      outbound: { port: 0 },
      admin: { port: node.admin },
      // Fixed placement and no background work beside the writes: no failure detector, no
      // anti-entropy round and no snapshot during a measurement (the same for every mode).
      health: { enabled: false },
      drainTimeout: '1s',
      log: { level: 'warn', accessLog: false },
      context: {
        port: node.context,
        l2: { backend: 'memory' },
        writeMode: 'write-through',
        wal: { fsync: FSYNC },
        warm: { maxBytes: 0 },
        checkpoint: { dir: join(dir, 'data'), interval: '5m', changedWrites: 0, changedBytes: 0 },
        replication: {
          factor: 3,
          consistency: 'session',
          peers,
          levels: LEVELS.map((level) => ({ prefix: `bench-${level}/`, consistency: level })),
          antiEntropy: { interval: '24h' },
        },
      },
    };
    node.configFile = join(dir, 'sidecar.json');
    node.dir = dir;
    writeFileSync(node.configFile, JSON.stringify(config, null, 2));
  }
  return nodes;
}

async function startSidecar(node, nodeFlags = []) {
  const argv = [process.execPath, ...CLI_NODE_FLAGS, ...EXTRA_NODE_FLAGS, ...nodeFlags, CLI, 'sidecar', '-c', node.configFile];
  const cpu = SIDECAR_CPUS.length > 0 ? SIDECAR_CPUS[node.index] ?? '' : SIDECAR_CPU;
  const [cmd, ...rest] = cpu ? ['taskset', '-c', cpu, ...argv] : argv;
  node.output = '';
  const child = spawn(cmd, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
  node.child = child;
  node.exited = new Promise((r) => child.once('exit', r));
  const log = KEEP_OUTPUT ? createWriteStream(join(node.dir, 'output.log'), { flags: 'a' }) : undefined;
  const keep = (chunk) => {
    log?.write(chunk);
    node.output = (node.output + chunk.toString()).slice(-8_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${node.id} exited before it was ready:\n${node.output}`);
    const status = await request(`http://127.0.0.1:${node.admin}/ready`, { headersTimeout: 1_000 })
      .then(async (r) => (await r.body.dump(), r.statusCode))
      .catch(() => 0);
    if (status === 200) return;
    if (Date.now() > deadline) throw new Error(`${node.id} not ready after ${READY_TIMEOUT_MS} ms:\n${node.output}`);
    await sleep(50);
  }
}

async function stopSidecar(node) {
  const child = node.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM'); // drains and exits; under --cpu-prof, node writes the profile then
  const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await node.exited;
  clearTimeout(killer);
}
const running = new Set();
process.on('exit', () => {
  for (const node of running) node.child?.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/** utime + stime of a process, in clock ticks (taskset execs node, so the pid is the sidecar). */
function cpuTicks(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return NaN;
  }
}
/** Busy clock ticks of the whole machine (every core), from /proc/stat. */
function machineBusyTicks() {
  const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return user + nice + system + irq + softirq + steal;
}
function rssMiB(pid) {
  try {
    const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return Number(kb) / 1024;
  } catch {
    return NaN;
  }
}

/**
 * The coordinator's replication counters: ctxmesh_replication_writes_total by "level/outcome", and
 * hints delivered (writes a replica did not get in time and got later from the hint store), and
 * strong writes that went without a prepare round (a promise kept from the key's last write).
 */
async function replicatedWrites(node) {
  const res = await request(`http://127.0.0.1:${node.admin}/metrics`);
  const text = await res.body.text();
  const out = {};
  for (const m of text.matchAll(/^ctxmesh_replication_writes_total\{consistency="(\w+)",outcome="(\w+)"\} (\S+)$/gm)) out[`${m[1]}/${m[2]}`] = Number(m[3]);
  const hints = /^ctxmesh_replication_hints_delivered_total (\S+)$/m.exec(text);
  if (hints) out['hints delivered'] = Number(hints[1]);
  const skipped = /^ctxmesh_replication_strong_prepares_skipped_total (\S+)$/m.exec(text);
  if (skipped && Number(skipped[1]) > 0) out['strong prepares skipped'] = Number(skipped[1]);
  return out;
}

// ── load ─────────────────────────────────────────────────────────────────────────────────────

const value = Buffer.alloc(VALUE_BYTES, 'x');
value.write('{"role":"user","text":"', 0);
value.write('"}', VALUE_BYTES - 2);
/**
 * Each mode's keys, their consistency level (from the key prefix, through context.replication.levels)
 * and its clients: they echo the ctxmesh-session token, as the README asks, except in
 * strong-tokenless. A strong write of a session that has seen past the key's last write needs a
 * prepare round (its version must be newer than what the session saw), so echoing clients that
 * write many keys pay two rounds a write; a client without a token (linearizable per key is what
 * strong promises) pays one, on the promise its sidecar kept from the key's last write.
 */
const WORKLOADS = {
  single: { level: undefined, stem: 'bench-single/conversation-', tokens: true },
  eventual: { level: 'eventual', stem: 'bench-eventual/conversation-', tokens: true },
  session: { level: 'session', stem: 'bench-session/conversation-', tokens: true },
  strong: { level: 'strong', stem: 'bench-strong/conversation-', tokens: true },
  'strong-tokenless': { level: 'strong', stem: 'bench-strong/tokenless-', tokens: false },
};
for (const mode of [...MODES, PROFILE_LEVEL]) if (!WORKLOADS[mode]) throw new Error(`BENCH_REPL_MODES: unknown mode "${mode}" (${Object.keys(WORKLOADS).join(', ')})`);
/** One mode's load: its key paths (written round-robin from `cursor`) and whether its clients echo tokens. */
const loadOf = (mode) => ({ paths: Array.from({ length: KEYS }, (_, i) => `/v1/contexts/${WORKLOADS[mode].stem}${i}`), cursor: { next: 0 }, tokens: WORKLOADS[mode].tokens });

/** One PUT; resolves to its status (-1: transport error) and keeps the session token it was given. */
async function put(pool, path, session) {
  const headers = { 'content-type': 'application/json' };
  if (session.token && session.tokens) headers['ctxmesh-session'] = session.token;
  try {
    const res = await pool.request({ path, method: 'PUT', headers, body: value, headersTimeout: 10_000, bodyTimeout: 10_000 });
    await res.body.dump();
    const token = res.headers['ctxmesh-session'];
    if (typeof token === 'string') session.token = token;
    return res.statusCode;
  } catch {
    return -1;
  }
}

const ms = (ns) => Math.round(ns / 1e3) / 1e3; // histogram ns → ms with µs resolution
const summary = (h) => (h.count === 0 ? { p50: null, p99: null, p999: null, max: null } : { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), p999: ms(h.percentile(99.9)), max: ms(h.max) });

/**
 * CPU accounting over the measured part of a run (not its warm-up or drain): `fn(probe)` calls
 * probe.begin() when measuring starts and probe.end() when it stops, and returns the writes it
 * counted in between.
 */
async function window(pids, fn) {
  let ticks0, busy0, gen0, t0, ticks, busy1, gen, wallS;
  const probe = {
    begin() {
      ticks0 = pids.map(cpuTicks);
      busy0 = machineBusyTicks();
      gen0 = process.cpuUsage();
      t0 = performance.now();
    },
    end() {
      wallS = (performance.now() - t0) / 1000;
      gen = process.cpuUsage(gen0);
      ticks = pids.map((pid, i) => cpuTicks(pid) - ticks0[i]);
      busy1 = machineBusyTicks();
    },
  };
  const result = await fn(probe);
  // Busy time charged to none of the sidecars and this generator: other work on the machine.
  const otherTicks = busy1 - busy0 - ticks.reduce((a, t) => a + t, 0) - ((gen.user + gen.system) / 1e6) * CLK_TCK;
  const perWrite = (us) => (result.ok > 0 ? Math.round((us / result.ok) * 10) / 10 : null);
  return {
    ...result,
    wallS,
    cpuUsPerWrite: ticks.map((t) => perWrite((t / CLK_TCK) * 1e6)),
    cpuPctOfCore: ticks.map((t) => Math.round(((t / CLK_TCK) / wallS) * 1000) / 10),
    generatorUsPerWrite: perWrite(gen.user + gen.system),
    otherWorkPctOfCore: Math.max(0, Math.round(((otherTicks / CLK_TCK) / wallS) * 100)),
  };
}

/** Closed loop: `conns` workers, each sending its next write as soon as the last one answered. */
async function closedLoop(pool, { paths, cursor, tokens }, conns, warmupMs, measureMs, probe = { begin() {}, end() {} }) {
  const hist = createHistogram();
  let measuring = false;
  let stopping = false;
  let ok = 0;
  let errors = 0;
  const statuses = {};
  const worker = async () => {
    const session = { tokens };
    while (!stopping) {
      const path = paths[cursor.next++ % paths.length];
      const start = performance.now();
      const status = await put(pool, path, session);
      if (!measuring) continue;
      if (status === 204) {
        ok++;
        hist.record(Math.max(1, Math.round((performance.now() - start) * 1e6)));
      } else {
        errors++;
        statuses[status] = (statuses[status] ?? 0) + 1;
      }
    }
  };
  const workers = Array.from({ length: conns }, worker);
  await sleep(warmupMs);
  probe.begin();
  measuring = true;
  const t0 = performance.now();
  await sleep(measureMs);
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  probe.end();
  stopping = true;
  await Promise.all(workers);
  return { ok, errors, statuses, writesPerS: Math.round(ok / seconds), latency: summary(hist) };
}

/**
 * Open loop at `rate`: a metronome thread keeps the schedule with Atomics.wait (Node's timers
 * tick in whole milliseconds) and posts each index; the write's latency counts from its scheduled
 * time, so a stalled server is charged for every write it delayed.
 */
async function openLoop(pool, { paths, cursor, tokens }, rate, warmupMs, measureMs, probe) {
  const total = Math.round(((warmupMs + measureMs) / 1000) * rate);
  const warmupCount = Math.round((warmupMs / 1000) * rate);
  const intervalMs = 1000 / rate;
  const fromSchedule = createHistogram();
  const fromSend = createHistogram();
  const lateness = createHistogram();
  const sessions = Array.from({ length: 64 }, () => ({ tokens }));
  let ok = 0;
  let errors = 0;
  let done = 0;
  let lastEnd = 0;
  const statuses = {};
  const startAbs = performance.timeOrigin + performance.now() + 20;
  const startMain = startAbs - performance.timeOrigin;
  // CPU is counted from the first measured write's scheduled time to the last answer.
  setTimeout(() => probe.begin(), Math.max(0, startMain + warmupMs - performance.now()));
  const finished = new Promise((resolveAll) => {
    const metronome = new Worker(
      `const { parentPort, workerData: { startAbs, intervalMs, total } } = require('node:worker_threads');
       const { performance } = require('node:perf_hooks');
       const cell = new Int32Array(new SharedArrayBuffer(4));
       for (let i = 0; i < total; i++) {
         const wait = startAbs + i * intervalMs - (performance.timeOrigin + performance.now());
         if (wait > 0) Atomics.wait(cell, 0, 0, wait);
         parentPort.postMessage(i);
       }`,
      { eval: true, workerData: { startAbs, intervalMs, total } },
    );
    metronome.on('message', async (i) => {
      const scheduled = startMain + i * intervalMs;
      const sent = performance.now();
      const status = await put(pool, paths[cursor.next++ % paths.length], sessions[i % sessions.length]);
      const ended = performance.now();
      lastEnd = Math.max(lastEnd, ended);
      if (i >= warmupCount) {
        if (status === 204) {
          ok++;
          fromSchedule.record(Math.max(1, Math.round((ended - scheduled) * 1e6)));
          fromSend.record(Math.max(1, Math.round((ended - sent) * 1e6)));
          lateness.record(Math.max(1, Math.round((sent - scheduled) * 1e6)));
        } else {
          errors++;
          statuses[status] = (statuses[status] ?? 0) + 1;
        }
      }
      if (++done === total) {
        void metronome.terminate();
        resolveAll();
      }
    });
    metronome.on('error', (err) => {
      throw err;
    });
  });
  await finished;
  probe.end();
  // Achieved: answered writes over the time from the first measured one's schedule to the last
  // answer (below the rate when the sidecar cannot keep up and the backlog drains late).
  const spanS = Math.max(measureMs, lastEnd - (startMain + warmupMs)) / 1000;
  return { ok, errors, statuses, writesPerS: Math.round(ok / spanS), latency: summary(fromSchedule), fromSend: summary(fromSend), generatorLateness: summary(lateness) };
}

/** Pre-flight: a PUT answers 204 at the level the row claims, and (replicated) every replica has it. */
async function preflight(mode, nodes) {
  const key = `${WORKLOADS[mode].stem}preflight`;
  const body = `preflight ${mode} ${Date.now()}`;
  const res = await request(`http://127.0.0.1:${nodes[0].context}/v1/contexts/${key}`, { method: 'PUT', body, headers: { 'content-type': 'text/plain' } });
  await res.body.dump();
  if (res.statusCode !== 204) throw new Error(`${mode}: pre-flight PUT answered ${res.statusCode}`);
  if (WORKLOADS[mode].level && res.headers['ctxmesh-consistency'] !== WORKLOADS[mode].level) {
    throw new Error(`${mode}: the PUT was taken at consistency "${res.headers['ctxmesh-consistency']}" (context.replication.levels not applied)`);
  }
  // Every replica must hold the write (eventual ones a moment later).
  for (const node of nodes) {
    let seen = '';
    for (let i = 0; i < 100 && seen !== body; i++) {
      const get = await request(`http://127.0.0.1:${node.context}/v1/contexts/${key}`, { headers: { 'ctxmesh-consistency': 'eventual' } });
      seen = get.statusCode === 200 ? await get.body.text() : (await get.body.dump(), '');
      if (seen !== body) await sleep(20);
    }
    if (seen !== body) throw new Error(`${mode}: ${node.id} does not hold the pre-flight write`);
  }
}

// ── the run ──────────────────────────────────────────────────────────────────────────────────

const results = [];
const loads = Object.fromEntries(MODES.map((m) => [m, loadOf(m)]));

async function measureMode(mode, nodes, round) {
  await preflight(mode, nodes);
  const pids = nodes.map((n) => n.child.pid);
  const before = mode === 'single' ? {} : await replicatedWrites(nodes[0]);
  for (const conns of CONNS) {
    const pool = new Pool(`http://127.0.0.1:${nodes[0].context}`, { connections: conns, pipelining: 1 });
    const r = await window(pids, (probe) => closedLoop(pool, loads[mode], conns, WARMUP_S * 1000, DURATION_S * 1000, probe));
    await pool.close();
    results.push({ round, mode, kind: 'closed', conns, ...r });
    say(`${mode.padEnd(8)} closed c=${String(conns).padEnd(3)} ${String(r.writesPerS).padStart(6)} writes/s  p50 ${r.latency.p50} ms  p99 ${r.latency.p99} ms  errors ${r.errors}  sidecar CPU µs/write ${r.cpuUsPerWrite.join(' / ')}  other work ${r.otherWorkPctOfCore}% of a core`);
  }
  const pool = new Pool(`http://127.0.0.1:${nodes[0].context}`, { connections: RATE_CONNS, pipelining: 1 });
  const r = await window(pids, (probe) => openLoop(pool, loads[mode], RATE, WARMUP_S * 1000, RATE_S * 1000, probe));
  await pool.close();
  const rss = pids.map((pid) => Math.round(rssMiB(pid) * 10) / 10);
  results.push({ round, mode, kind: 'open', rate: RATE, ...r, rssMiB: rss });
  say(`${mode.padEnd(8)} open   ${RATE}/s  p50 ${r.latency.p50} ms  p99 ${r.latency.p99} ms  (from send: p99 ${r.fromSend.p99} ms; generator late p99 ${r.generatorLateness.p99} ms)  errors ${r.errors}  other work ${r.otherWorkPctOfCore}% of a core`);
  if (mode !== 'single') {
    const after = await replicatedWrites(nodes[0]);
    const delta = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => v > 0));
    results.push({ round, mode, kind: 'counters', replicatedWrites: delta });
  }
}

/**
 * Fresh sidecars run every mode once, unmeasured, before any is measured: otherwise the first mode
 * measured pays for JIT compilation and the peer connections (TLS handshakes) of all of them.
 */
async function warmUp(modes, nodes) {
  const pool = new Pool(`http://127.0.0.1:${nodes[0].context}`, { connections: 16, pipelining: 1 });
  for (const mode of modes) await closedLoop(pool, loads[mode], 16, Math.max(1, WARMUP_S) * 1000, 0);
  await pool.close();
}

async function withSidecars(name, ids, fn, nodeFlags = () => []) {
  const nodes = await planSidecars(name, ids);
  try {
    for (const node of nodes) running.add(node);
    await Promise.all(nodes.map((n) => startSidecar(n, nodeFlags(n))));
    await fn(nodes);
  } finally {
    await Promise.all(nodes.map(stopSidecar));
    for (const node of nodes) running.delete(node);
  }
  return nodes;
}

const REPLICA_IDS = ['repl-a', 'repl-b', 'repl-c'];
const replicated = MODES.filter((m) => WORKLOADS[m].level !== undefined);
for (let round = 1; round <= ROUNDS; round++) {
  say(`round ${round} of ${ROUNDS}`);
  // Alternate which setup goes first, and rotate the levels, so drift does not favour one row.
  const order = round % 2 ? ['single', 'replicated'] : ['replicated', 'single'];
  for (const setup of order) {
    if (setup === 'single' && MODES.includes('single')) {
      await withSidecars(`r${round}-single`, ['repl-a'], async (nodes) => {
        await warmUp(['single'], nodes);
        await measureMode('single', nodes, round);
      });
    } else if (setup === 'replicated' && replicated.length > 0) {
      const levels = replicated.map((_, i) => replicated[(i + round - 1) % replicated.length]);
      await withSidecars(`r${round}-rf3`, REPLICA_IDS, async (nodes) => {
        await warmUp(levels, nodes);
        for (const level of levels) await measureMode(level, nodes, round);
      });
    }
  }
}

// Profile: the three sidecars under node --cpu-prof while one closed-loop run at PROFILE_LEVEL goes
// through A; each profile is cut to the measured seconds (bench/state/profile-top.mjs).
const profiles = [];
if (args.profile) {
  say(`profile: ${PROFILE_LEVEL} writes, c=${PROFILE_CONNS}, ${DURATION_S} s, sidecars under node --cpu-prof`);
  const spawnedAt = {};
  await withSidecars(
    'profile',
    REPLICA_IDS,
    async (nodes) => {
      await preflight(PROFILE_LEVEL, nodes);
      const pool = new Pool(`http://127.0.0.1:${nodes[0].context}`, { connections: PROFILE_CONNS, pipelining: 1 });
      const loadAt = performance.now();
      const r = await closedLoop(pool, loadOf(PROFILE_LEVEL), PROFILE_CONNS, WARMUP_S * 1000, DURATION_S * 1000);
      await pool.close();
      say(`under the profiler: ${r.writesPerS} writes/s, p99 ${r.latency.p99} ms`);
      for (const node of nodes) profiles.push({ id: node.id, role: node === nodes[0] ? 'coordinator' : 'replica', skipMs: Math.round(loadAt - spawnedAt[node.id] + WARMUP_S * 1000), spanMs: DURATION_S * 1000, dir: join(args.profile, node.id), writesPerS: r.writesPerS });
    },
    (node) => {
      spawnedAt[node.id] = performance.now();
      return ['--cpu-prof', `--cpu-prof-dir=${join(args.profile, node.id)}`];
    },
  );
  for (const p of profiles) p.file = readdirSync(p.dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(p.dir, f))[0];
}

writeFileSync(
  args.out,
  JSON.stringify(
    {
      config: { conns: CONNS, durationS: DURATION_S, warmupS: WARMUP_S, rate: RATE, rateDurationS: RATE_S, rateConns: RATE_CONNS, rounds: ROUNDS, valueBytes: VALUE_BYTES, keys: KEYS, fsync: FSYNC, sidecarCpu: SIDECAR_CPUS.length > 0 ? SIDECAR_CPUS.join('/') : SIDECAR_CPU, modes: MODES, profileConns: PROFILE_CONNS, profileLevel: PROFILE_LEVEL },
      results,
      profiles,
    },
    null,
    2,
  ),
);
process.exit(0);
