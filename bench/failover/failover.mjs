// Failover time under steady load, end to end through real processes: a control plane, three
// sidecars fronting `chat` apps (registered through their ADS node, probing each other, reporting
// to the control plane, replicating context), and a client sidecar routing Host `chat` by
// ring_hash on x-ctx-key from xDS. Each trial SIGKILLs one chat sidecar while this process sends
// requests through the client sidecar at a fixed rate, then measures, from the kill:
//   - the last failed request (by its send time: the mesh was still failing requests sent then);
//   - the last request that still tried the dead endpoint (a retry can hide that try from the
//     caller; the client's access log says how many tries a request took, and a key owned by the
//     dead sidecar tries it first for as long as anything still routes there);
//   - the control plane's declaration (GET /v1/failovers) and the EDS update seen at the client
//     (GET /clusters, polled every POLL_MS).
// Then it restarts the killed sidecar and waits until it is healthy everywhere before the next trial.
//
//   node bench/failover/failover.mjs <work dir> <out.json> [trials=20]
// Environment: BENCH_FAILOVER_RATE (req/s, default 200), BENCH_FAILOVER_WARM (ms of load before
// the kill, 1000), BENCH_FAILOVER_TAIL (ms of load after the EDS update, 1000),
// BENCH_CTXMESH_CLI (default dist/src/cli/main.js).
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join, resolve } from 'node:path';
import HashRing from 'hashring';
import { Agent, Pool, request } from 'undici';
import { initCa, issueCert } from '../../dist/src/tls/ca.js';
import { cliNodeFlags } from '../cli-node-flags.mjs';

const [work, outFile, trialsArg = '20'] = process.argv.slice(2);
if (!work || !outFile) throw new Error('usage: failover.mjs <work dir> <out.json> [trials]');
const TRIALS = Number(trialsArg);
const RATE = Number(process.env.BENCH_FAILOVER_RATE ?? 200);
const WARM_MS = Number(process.env.BENCH_FAILOVER_WARM ?? 1000);
const TAIL_MS = Number(process.env.BENCH_FAILOVER_TAIL ?? 1000);
const CLI = resolve(process.env.BENCH_CTXMESH_CLI ?? 'dist/src/cli/main.js');
// The sidecars run with the node flags of the CLI's shebang, as deployed.
const CLI_NODE_FLAGS = cliNodeFlags(CLI);
const CHAT_IDS = ['chat-a', 'chat-b', 'chat-c'];
const KEYS = Array.from({ length: 300 }, (_, i) => `chat/session-${i}`);
/** How often the client's /clusters and the control plane's /v1/failovers are polled: the resolution of those two figures. */
const POLL_MS = 10;
const READY_TIMEOUT_MS = 20_000;
const DECLARE_TIMEOUT_MS = 20_000;
const SETTLE_TIMEOUT_MS = 30_000;

/** The settings under test: sub-second detection as the design suggests. */
const HEALTH = {
  interval: '200ms',
  probeTimeout: '150ms',
  suspicionTimeout: '600ms',
  suspicionMinTimeout: '300ms',
  flapBackoff: { base: '500ms', max: '5s' },
  reportInterval: '200ms',
};
const SERVICE = {
  name: 'chat',
  lb: 'ring_hash',
  hashHeader: 'x-ctx-key',
  tls: 'mesh',
  timeout: '5s',
  connectTimeout: '300ms',
  retry: { attempts: 2, perTryTimeout: '400ms', backoff: '5ms', budgetPercent: 100 },
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new Agent({ connections: 8 });
const procs = [];

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

async function until(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

async function getJson(url) {
  const res = await request(url, { dispatcher: agent, headersTimeout: 3_000, bodyTimeout: 3_000 });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`GET ${url}: ${res.statusCode}`);
  return JSON.parse(text);
}

async function ready(admin) {
  const res = await request(`http://127.0.0.1:${admin}/ready`, { dispatcher: agent, headersTimeout: 1_000 });
  await res.body.text();
  return res.statusCode === 200;
}

/** Starts `ctxmesh <command> -c file`; `onLine` sees each stdout line. */
async function start(proc, command) {
  proc.output = '';
  const child = spawn(process.execPath, [...CLI_NODE_FLAGS, CLI, command, '-c', proc.configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.child = child;
  proc.exited = new Promise((r) => child.once('exit', r));
  let partial = '';
  child.stdout.on('data', (chunk) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop();
    for (const line of lines) {
      if (proc.onLine) proc.onLine(line);
      else proc.output = (proc.output + line + '\n').slice(-10_000);
    }
  });
  child.stderr.on('data', (chunk) => (proc.output = (proc.output + chunk.toString()).slice(-10_000)));
  const died = proc.exited.then(() => {
    throw new Error(`${proc.name} exited before it was ready:\n${proc.output}`);
  });
  await Promise.race([until(() => ready(proc.admin), READY_TIMEOUT_MS, `${proc.name} ready`), died]);
  died.catch(() => {});
}

async function kill(proc) {
  if (!proc.child || proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill('SIGKILL');
  await proc.exited;
}

function stopAll() {
  for (const p of procs) if (p.child && p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
}
process.on('exit', stopAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

// --- The mesh --------------------------------------------------------------------------------

mkdirSync(work, { recursive: true });
const caDir = join(work, 'ca');
await initCa({ out: caDir });
const identity = async (name) => {
  const out = join(work, `id-${name}`);
  await issueCert({ ca: caDir, name, out });
  return { cert: join(out, 'cert.pem'), key: join(out, 'key.pem'), ca: join(out, 'ca.pem') };
};

const xdsPort = await freePort();
const cp = { name: 'control-plane', admin: await freePort(), configFile: join(work, 'control-plane.yaml') };
procs.push(cp);
writeFileSync(
  cp.configFile,
  JSON.stringify({
    port: xdsPort,
    address: '127.0.0.1',
    admin: { port: cp.admin },
    registration: { ttl: '60s' },
    health: { suspicionWindow: '3s' },
    services: [SERVICE],
    log: { level: 'warn' },
  }),
);
await start(cp, 'control-plane');
const xds = { server: `127.0.0.1:${xdsPort}`, initialFetchTimeout: '5s', reconnect: { base: '50ms', max: '500ms' } };

const apps = [];
const chats = [];
for (const id of CHAT_IDS) {
  const app = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ app: id }));
    });
  });
  await new Promise((r) => app.listen(0, '127.0.0.1', r));
  apps.push(app);
  const inbound = await freePort();
  chats.push({ name: id, id, inbound, address: `127.0.0.1:${inbound}`, admin: await freePort(), context: await freePort(), configFile: join(work, `${id}.yaml`), app: `http://127.0.0.1:${app.address().port}` });
}
for (const node of chats) {
  procs.push(node);
  writeFileSync(
    node.configFile,
    JSON.stringify({
      node: { id: node.id, cluster: 'chat', zone: 'z1' },
      identity: await identity(node.id),
      inbound: { port: node.inbound, address: '127.0.0.1', app: node.app, allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
      outbound: { port: 0 },
      admin: { port: node.admin },
      xds,
      health: { ...HEALTH, reportTo: `127.0.0.1:${cp.admin}` },
      context: {
        port: node.context,
        l2: { backend: 'memory' },
        wal: { fsync: 'batch' },
        checkpoint: { dir: join(work, `${node.id}-data`) },
        replication: { factor: 3, consistency: 'strong', peers: chats.filter((p) => p !== node).map((p) => ({ id: p.id, address: p.address })) },
      },
      log: { level: 'warn', accessLog: false },
    }),
  );
}
await Promise.all(chats.map((n) => start(n, 'sidecar')));

const client = { name: 'client', admin: await freePort(), configFile: join(work, 'client.yaml') };
procs.push(client);
const clientOutbound = await freePort();
writeFileSync(
  client.configFile,
  JSON.stringify({
    node: { id: 'client', cluster: 'client', zone: 'z1' },
    identity: await identity('client'),
    inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9' },
    outbound: { port: clientOutbound, address: '127.0.0.1' },
    admin: { port: client.admin },
    xds,
    context: { enabled: false },
    health: { enabled: false },
    // The access log says how many tries each request took: the only witness of a try at the dead endpoint that a retry hid.
    log: { level: 'info', accessLog: true },
  }),
);
/** Tries per request path, from the client's access log. */
const tries = new Map();
client.onLine = (line) => {
  if (!line.includes('"access"')) return;
  try {
    const record = JSON.parse(line);
    if (record.kind === 'access' && record.direction === 'outbound') tries.set(record.path, { attempts: record.attempts, upstream: record.upstream, status: record.status });
  } catch {}
};
await start(client, 'sidecar');

const chatAtClient = async () =>
  ((await getJson(`http://127.0.0.1:${client.admin}/clusters`)).clusters.find((c) => c.name === 'chat')?.endpoints ?? []).map((e) => e.address);
async function settled() {
  const atClient = await chatAtClient();
  if (atClient.length !== chats.length || !chats.every((c) => atClient.includes(c.address))) return false;
  const registry = await getJson(`http://127.0.0.1:${cp.admin}/v1/registry`);
  const chat = registry.services.find((s) => s.name === 'chat');
  if (!chats.every((c) => chat?.endpoints.find((e) => e.address === c.address)?.health === 'HEALTHY')) return false;
  for (const node of chats) {
    const view = await getJson(`http://127.0.0.1:${node.admin}/members`);
    if (!CHAT_IDS.every((id) => view.members.find((m) => m.id === id)?.state === 'alive')) return false;
  }
  return true;
}
await until(settled, SETTLE_TIMEOUT_MS, 'the mesh to settle');

// --- Load --------------------------------------------------------------------------------------

const pool = new Pool(`http://127.0.0.1:${clientOutbound}`, { connections: 64 });
let seq = 0;

/** Sends RATE requests per second on a fixed schedule (open loop) until stopped; returns the records. */
function steadyLoad() {
  const records = [];
  const inFlight = new Set();
  let running = true;
  const interval = 1000 / RATE;
  const t0 = performance.now();
  let sent = 0;
  const fire = () => {
    const n = seq++;
    const key = KEYS[n % KEYS.length];
    const record = { path: `/r/${n}`, key, sentAt: performance.now(), endAt: 0, status: 0 };
    records.push(record);
    const p = pool
      .request({ method: 'GET', path: record.path, headers: { host: 'chat', 'x-ctx-key': key }, headersTimeout: 10_000, bodyTimeout: 10_000 })
      .then(async (res) => {
        const body = await res.body.text();
        record.status = res.statusCode;
        if (res.statusCode === 200) record.app = JSON.parse(body).app;
        else record.error = String(res.headers['x-ctxmesh-error'] ?? res.statusCode);
      })
      .catch((err) => (record.error = err.code ?? err.message))
      .finally(() => {
        record.endAt = performance.now();
        inFlight.delete(p);
      });
    inFlight.add(p);
  };
  const loop = (async () => {
    while (running) {
      const due = Math.floor((performance.now() - t0) / interval) + 1;
      while (sent < due) {
        fire();
        sent++;
      }
      await sleep(1);
    }
  })();
  return {
    records,
    async stop() {
      running = false;
      await loop;
      await Promise.all(inFlight);
    },
  };
}

// --- Trials ------------------------------------------------------------------------------------

const ring = new HashRing([...CHAT_IDS].sort());
const trials = [];
for (let trial = 0; trial < TRIALS; trial++) {
  const victim = chats[trial % chats.length];
  const owned = new Set(KEYS.filter((k) => ring.get(k) === victim.id));
  const load = steadyLoad();
  await sleep(WARM_MS);

  const killWall = Date.now();
  const killAt = performance.now();
  victim.child.kill('SIGKILL');
  let declaredMs;
  let pushedMs;
  await until(
    async () => {
      if (declaredMs === undefined) {
        const { failovers } = await getJson(`http://127.0.0.1:${cp.admin}/v1/failovers`);
        const record = failovers.find((f) => f.kind === 'declared' && f.nodeId === victim.id && Date.parse(f.at) >= killWall);
        if (record) declaredMs = Date.parse(record.at) - killWall;
      }
      if (pushedMs === undefined && !(await chatAtClient()).includes(victim.address)) pushedMs = performance.now() - killAt;
      return declaredMs !== undefined && pushedMs !== undefined;
    },
    DECLARE_TIMEOUT_MS,
    `trial ${trial}: ${victim.id} declared and pushed out`,
  );
  await sleep(TAIL_MS);
  await load.stop();
  await victim.exited;

  // Give the access log a moment to reach us.
  await sleep(100);
  const after = load.records.filter((r) => r.endAt >= killAt);
  const failed = after.filter((r) => r.status !== 200);
  const deadTries = after.filter((r) => {
    if (!owned.has(r.key)) return false;
    const t = tries.get(r.path);
    return (t && (t.attempts >= 2 || t.upstream === victim.address)) || r.status !== 200;
  });
  const otherRetries = after.filter((r) => !owned.has(r.key) && (tries.get(r.path)?.attempts ?? 1) >= 2).length;
  const since = (r) => Math.max(0, r.sentAt - killAt);
  const result = {
    trial,
    victim: victim.id,
    requests: after.length,
    failed: failed.length,
    lastFailureMs: failed.length ? Math.max(...failed.map(since)) : 0,
    deadEndpointTries: deadTries.length,
    lastDeadEndpointTryMs: deadTries.length ? Math.max(...deadTries.map(since)) : 0,
    otherRetries,
    declaredMs,
    pushedMs,
    missingAccessRecords: after.filter((r) => !tries.has(r.path)).length,
    errors: [...new Set(failed.map((r) => r.error))],
  };
  trials.push(result);
  console.error(`trial ${trial + 1}/${TRIALS} ${victim.id}: ${JSON.stringify(result)}`);
  for (const r of load.records) tries.delete(r.path);

  await start(victim, 'sidecar');
  await until(settled, SETTLE_TIMEOUT_MS, `trial ${trial}: ${victim.id} back everywhere`);
}

writeFileSync(
  outFile,
  JSON.stringify({ rate: RATE, warmMs: WARM_MS, tailMs: TAIL_MS, pollMs: POLL_MS, health: HEALTH, service: SERVICE, sidecars: CHAT_IDS.length, trials }, null, 1),
);
await pool.close();
await agent.close();
for (const app of apps) app.close();
stopAll();
process.exit(0);
