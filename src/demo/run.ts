// `ctxmesh demo` (npm start): a local mesh on the embedded defaults, nothing but Node needed.
// A dev CA and five identities; the control plane in this process; three sample AI services, each
// behind its own sidecar running as a child process; a gateway sidecar (in this process) whose
// outbound listener is the client path. Every sidecar takes the `chat` service from the control
// plane over xDS, and the three service sidecars register themselves as its endpoints through
// their ADS node. The script shows routing that follows the context key over mTLS, a failing
// instance's circuit breaker opening and closing again, and a failover: one sidecar SIGKILLed, its
// peers' health monitors getting it declared by the control plane, its sessions moving to the next
// instance, which already holds their context (replicated, RF 3), and the sidecar coming back.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Agent, request } from 'undici';
import { ClusterSchema, ControlPlaneConfigSchema, SidecarConfigSchema } from '../config/schema.js';
import { Sidecar } from '../sidecar.js';
import { createLogger } from '../telemetry/logger.js';
import { initCa, issueCert } from '../tls/ca.js';
import type { ControlPlane } from '../../xds/control-plane.js';
import { ChildSidecar } from './child-sidecar.js';
import { SampleService } from './sample-service.js';

const SERVICE_NAMES = ['chat-1', 'chat-2', 'chat-3'] as const;
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'niaj', 'olivia', 'peggy', 'rupert', 'sybil', 'trent', 'victor', 'walter', 'yara'];
const SESSIONS_PER_INSTANCE = 2;
const MAX_FAILURE_ROUNDS = 30;
/** Conditions the script waits for (a registration, a declaration, an EDS push) get this long. */
const WAIT_TIMEOUT_MS = 20_000;
/** The breaker settings xDS cannot carry (Envoy's thresholds have no error rate): the sidecar's defaults. */
const BREAKER = ClusterSchema.parse({ name: 'defaults', domains: ['defaults'] }).circuitBreaker;
/** Sub-second failure detection, as the design suggests: ~200ms probes, a short suspicion. */
const HEALTH = {
  interval: '200ms',
  probeTimeout: '150ms',
  suspicionTimeout: '1500ms',
  suspicionMinTimeout: '500ms',
  flapBackoff: { base: '500ms', max: '5s' },
  reportInterval: '300ms',
};

export interface DemoOptions {
  /** Keep the mesh up after the scripted run, until Ctrl-C. */
  keepRunning: boolean;
  /** Port of the gateway's outbound listener (0 = any). */
  port: number;
}

interface Instance {
  name: string;
  service: SampleService;
  /** host:port of its sidecar's inbound mTLS listener: its endpoint and member address. */
  address: string;
  sidecar: ChildSidecar;
  configFile: string;
  config: object;
  logFile: string;
}

interface Mesh {
  dir: string;
  plane: ControlPlane;
  instances: Instance[];
  gateway: Sidecar;
}

const say = (line = ''): void => void process.stdout.write(`${line}\n`);

export async function runDemo(options: DemoOptions): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-demo-'));
  let mesh: Mesh | undefined;
  let conversation: Conversation | undefined;
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    say('\nstopping the mesh…');
    if (mesh) await stopMesh(mesh);
    await client.close();
    rmSync(dir, { recursive: true, force: true });
    say('stopped.');
  };
  process.once('SIGINT', () => void stop().then(() => process.exit(0)));
  process.once('SIGTERM', () => void stop().then(() => process.exit(0)));

  try {
    mesh = await startMesh(dir, options.port);
    conversation = await script(mesh);
  } catch (err) {
    await stop();
    throw err;
  }
  if (!options.keepRunning) return stop();
  const port = mesh.gateway.ports.outbound;
  say('\nThe mesh keeps running. Try:');
  say(`  curl -H 'Host: chat' -H 'x-ctx-key: alice/s1' http://127.0.0.1:${port}/v1/chat`);
  say(`  curl http://127.0.0.1:${mesh.plane.adminPort}/v1/registry`);
  say(`  curl http://127.0.0.1:${mesh.plane.adminPort}/v1/failovers`);
  say(`  curl http://127.0.0.1:${mesh.gateway.ports.admin}/clusters`);
  if (conversation) {
    for (const instance of mesh.instances) say(`  curl -H 'ctxmesh-consistency: strong' http://127.0.0.1:${instance.sidecar.ports.context}/v1/contexts/${conversation.key}   # on ${instance.name}`);
  }
  say('Ctrl-C stops it.');
}

/** Where inbound ports are looked for: below Linux's default ephemeral range (32768-60999). */
const PLANNED_PORTS = { from: 20_000, to: 32_000 };

/**
 * A port free right now, for the inbound listeners: peers must know each other's address up
 * front. Not one the kernel hands out for port 0: the sidecars started before its owner dial their
 * peers, and an outgoing connection draws its local port from that same range — it took a port
 * planned this way once (EADDRINUSE at the demo's second sidecar).
 */
async function freePort(): Promise<number> {
  const span = PLANNED_PORTS.to - PLANNED_PORTS.from;
  const start = Math.floor(Math.random() * span);
  for (let i = 0; i < span; i++) {
    const port = PLANNED_PORTS.from + ((start + i) % span);
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${PLANNED_PORTS.from}-${PLANNED_PORTS.to}`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

async function startMesh(dir: string, gatewayPort: number): Promise<Mesh> {
  const caDir = join(dir, 'ca');
  await initCa({ out: caDir });
  const identity = async (name: string) => {
    await issueCert({ ca: caDir, name, out: join(dir, name) });
    return { cert: join(dir, name, 'cert.pem'), key: join(dir, name, 'key.pem'), ca: join(dir, name, 'ca.pem') };
  };
  // Logs go to files so that the console shows the story, not every line.
  const logger = createLogger({ level: 'info', destination: pino.destination({ dest: join(dir, 'mesh.log'), sync: false, mkdir: true }) });

  // Loaded here so the other verbs do not pay for gRPC and the xDS protos at startup.
  const { ControlPlane } = await import('../../xds/control-plane.js');
  const plane = await ControlPlane.start(
    ControlPlaneConfigSchema.parse({
      port: 0,
      address: '127.0.0.1',
      admin: { port: 0 },
      health: { suspicionWindow: '3s' },
      services: [
        {
          name: 'chat',
          lb: 'ring_hash',
          hashHeader: 'x-ctx-key',
          tls: 'mesh',
          // Left to the breaker in this demo, so that one mechanism is on show at a time.
          outlierDetection: { consecutive5xx: 0 },
          retry: { attempts: 2, budgetPercent: 50 },
          timeout: '5s',
          connectTimeout: '1s',
        },
      ],
    }),
    { logger: logger.child({ node: 'control-plane' }) },
  );
  const xds = { server: `127.0.0.1:${plane.xdsPort}`, initialFetchTimeout: '5s', reconnect: { base: '100ms', max: '1s' } };

  try {
    const planned: Array<{ name: string; address: string; service: SampleService; app: string }> = [];
    for (const name of SERVICE_NAMES) {
      const service = new SampleService(name);
      planned.push({ name, address: `127.0.0.1:${await freePort()}`, service, app: await service.start() });
    }
    const instances: Instance[] = [];
    // One after the other: a sidecar probing a peer that is not listening yet would report it dead.
    for (const p of planned) {
      const config = {
        node: { id: p.name, cluster: 'chat', zone: 'z1' },
        identity: await identity(p.name),
        // Only the gateway may call the services; the sidecars' own peer calls are allowed by trust domain.
        inbound: { port: Number(p.address.split(':')[1]), address: '127.0.0.1', app: p.app, allow: ['spiffe://ctxmesh.local/ns/default/sa/gateway'] },
        outbound: { port: 0 },
        admin: { port: 0 },
        xds,
        context: {
          port: 0,
          replication: { factor: 3, consistency: 'strong', peers: planned.filter((o) => o !== p).map((o) => ({ id: o.name, address: o.address })) },
          checkpoint: { dir: join(dir, 'data', p.name) },
        },
        health: { ...HEALTH, reportTo: `127.0.0.1:${plane.adminPort}` },
        log: { accessLog: false },
        drainTimeout: '2s',
      };
      // Validated here too, so that a mistake reads as a config error rather than a child's exit.
      SidecarConfigSchema.parse(config);
      const configFile = join(dir, `${p.name}.json`);
      const logFile = join(dir, `${p.name}.log`);
      const sidecar = await ChildSidecar.start(p.name, config, configFile, logFile);
      instances.push({ name: p.name, service: p.service, address: p.address, sidecar, configFile, config, logFile });
    }
    const gateway = await Sidecar.start(
      SidecarConfigSchema.parse({
        node: { id: 'gateway', cluster: 'gateway', zone: 'z1' },
        identity: await identity('gateway'),
        inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9', allow: [] },
        outbound: { port: gatewayPort },
        admin: { port: 0 },
        xds,
        context: { port: 0, checkpoint: { dir: join(dir, 'data', 'gateway') } },
        // The gateway fronts no service of peers: nothing to probe.
        health: { enabled: false },
        log: { accessLog: false },
      }),
      { logger: logger.child({ node: 'gateway' }) },
    );
    const mesh: Mesh = { dir, plane, instances, gateway };
    await settled(mesh, instances);
    await waitFor(() => chatEndpoints(mesh).length === instances.length, 'the gateway to learn the 3 chat endpoints over xDS');
    return mesh;
  } catch (err) {
    await plane.close();
    throw err;
  }
}

async function stopMesh(mesh: Mesh): Promise<void> {
  await mesh.gateway.close();
  await Promise.all(mesh.instances.map((i) => i.sidecar.stop()));
  await mesh.plane.close();
  await Promise.all(mesh.instances.map((i) => i.service.close()));
}

const client = new Agent({ connections: 8 });

async function waitFor(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = WAIT_TIMEOUT_MS): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`gave up waiting for ${what} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

interface Turn {
  status: number;
  instance: string | undefined;
  caller: string | undefined;
  error: string | undefined;
  ms: number;
}

async function chat(mesh: Mesh, session: string, path = '/v1/chat'): Promise<Turn> {
  const started = performance.now();
  const res = await request(`http://127.0.0.1:${mesh.gateway.ports.outbound}${path}`, {
    dispatcher: client,
    headers: { host: 'chat', 'x-ctx-key': session },
  });
  const body = (await res.body.json()) as { instance?: string; caller?: string };
  const error = res.headers['x-ctxmesh-error'];
  return { status: res.statusCode, instance: body.instance, caller: body.caller, error: typeof error === 'string' ? error : undefined, ms: performance.now() - started };
}

interface EndpointRow {
  address: string;
  circuit_breaker: string;
}

/** The gateway's `chat` cluster as it stands (learnt over xDS). */
function chatEndpoints(mesh: Mesh): EndpointRow[] {
  const view = mesh.gateway.clusters() as { clusters: Array<{ name: string; endpoints: EndpointRow[] }> };
  return view.clusters.find((c) => c.name === 'chat')?.endpoints ?? [];
}

function nameOf(mesh: Mesh, address: string): string {
  return mesh.instances.find((i) => i.address === address)?.name ?? address;
}

function breakerStates(mesh: Mesh): string {
  const rows = chatEndpoints(mesh).map((e) => ({ name: nameOf(mesh, e.address), state: e.circuit_breaker }));
  rows.sort((a, b) => (a.name < b.name ? -1 : 1));
  return rows.map((r) => `${r.name}=${r.state}`).join('  ');
}

// The control plane's admin API, as a user would read it.
interface RegistryEndpoint {
  address: string;
  zone: string;
  health: string;
  epoch: number;
  nodeId?: string;
}
interface FailoverRecord {
  at: string;
  kind: string;
  service: string;
  address: string;
  nodeId?: string;
  epoch: number;
  reason: string;
}

async function controlPlane<T>(mesh: Mesh, path: string): Promise<T> {
  const res = await request(`http://127.0.0.1:${mesh.plane.adminPort}${path}`, { dispatcher: client });
  if (res.statusCode !== 200) throw new Error(`GET ${path} on the control plane answered ${res.statusCode}: ${await res.body.text()}`);
  return (await res.body.json()) as T;
}

async function registry(mesh: Mesh): Promise<Array<{ name: string; lb: string; endpoints: RegistryEndpoint[] }>> {
  return (await controlPlane<{ services: Array<{ name: string; lb: string; endpoints: RegistryEndpoint[] }> }>(mesh, '/v1/registry')).services;
}

async function endpointHealth(mesh: Mesh, instance: Instance): Promise<string | undefined> {
  const chat = (await registry(mesh)).find((s) => s.name === 'chat');
  return chat?.endpoints.find((e) => e.address === instance.address)?.health;
}

async function failovers(mesh: Mesh): Promise<FailoverRecord[]> {
  return (await controlPlane<{ failovers: FailoverRecord[] }>(mesh, '/v1/failovers')).failovers;
}

async function printRegistry(mesh: Mesh, indent = '   '): Promise<void> {
  const rows: string[][] = [['service', 'lb', 'endpoint', 'node', 'zone', 'health', 'epoch']];
  for (const service of await registry(mesh)) {
    for (const e of [...service.endpoints].sort((a, b) => ((a.nodeId ?? '') < (b.nodeId ?? '') ? -1 : 1))) {
      rows.push([service.name, service.lb, e.address, e.nodeId ?? '-', e.zone || '-', e.health, String(e.epoch)]);
    }
  }
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => r[col]!.length)));
  for (const row of rows) say(`${indent}${row.map((cell, col) => cell.padEnd(widths[col]!)).join('  ').trimEnd()}`);
}

/** The member table of a sidecar's health monitor (GET /clusters on its admin). */
async function memberStates(instance: Instance): Promise<Map<string, string>> {
  const res = await request(`http://127.0.0.1:${instance.sidecar.ports.admin}/clusters`, { dispatcher: client });
  const view = (await res.body.json()) as { members?: { members?: Array<{ id: string; state: string }> } };
  return new Map((view.members?.members ?? []).map((m) => [m.id, m.state]));
}

/**
 * Until every sidecar's health monitor holds the `subjects` alive and the control plane lists
 * them HEALTHY: observers report what they hold, so after this no stale doubt re-declares one.
 */
async function settled(mesh: Mesh, subjects: Instance[]): Promise<void> {
  await waitFor(async () => {
    for (const observer of mesh.instances) {
      const states = await memberStates(observer);
      if (subjects.some((s) => s !== observer && states.get(s.name) !== 'alive')) return false;
    }
    return true;
  }, `the health monitors to hold ${subjects.map((s) => s.name).join(', ')} alive`);
  await waitFor(async () => {
    for (const s of subjects) if ((await endpointHealth(mesh, s)) !== 'HEALTHY') return false;
    return true;
  }, `the control plane to list ${subjects.map((s) => s.name).join(', ')} HEALTHY`);
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

function describeFailover(f: FailoverRecord): string {
  return `${f.kind} ${f.service} ${f.address} (${f.nodeId ?? '-'}), epoch ${f.epoch}: ${f.reason}`;
}

// The context API of an instance's sidecar, as its service uses it.
interface ContextReply {
  status: number;
  etag: string | undefined;
  body: string;
}

async function contextCall(instance: Instance, key: string, method: 'GET' | 'PUT' | 'PATCH' = 'GET', body?: object): Promise<ContextReply> {
  const contentType = method === 'PATCH' ? 'application/merge-patch+json' : 'application/json';
  const res = await request(`http://127.0.0.1:${instance.sidecar.ports.context}/v1/contexts/${key}`, {
    method,
    dispatcher: client,
    headers: { 'ctxmesh-consistency': 'strong', ...(body ? { 'content-type': contentType } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const etag = res.headers.etag;
  return { status: res.statusCode, etag: typeof etag === 'string' ? etag : undefined, body: await res.body.text() };
}

/** The conversation the failover step wrote, and its version at the end. */
interface Conversation {
  key: string;
  etag: string;
}

async function script(mesh: Mesh): Promise<Conversation> {
  const latencies: number[] = [];
  let clientErrors = 0;
  const record = (turn: Turn): Turn => {
    latencies.push(turn.ms);
    if (turn.status >= 500) clientErrors += 1;
    return turn;
  };

  say('ctxmesh demo: a control plane, 3 AI services behind 3 sidecars (child processes), a gateway sidecar as the client path; mTLS between sidecars.');
  say(`control plane: xDS 127.0.0.1:${mesh.plane.xdsPort}, admin http://127.0.0.1:${mesh.plane.adminPort} (GET /v1/registry, /v1/failovers)`);
  say(`gateway outbound: http://127.0.0.1:${mesh.gateway.ports.outbound} (Host: chat)   logs: ${mesh.dir}/*.log`);

  say('\n1. The sidecars registered through their ADS node; the control plane serves chat to every sidecar over xDS (EDS: 3 endpoints).');
  await printRegistry(mesh);
  say('   replication: every context on all 3 sidecars (RF 3, strong); health monitors probe each other every 200ms.');

  say('\n2. Routing follows context: each session key lands on the instance that owns it (ring hash on x-ctx-key).');
  // Ownership depends on the endpoints' addresses, which change every run: ask the mesh who owns
  // each candidate key and keep a few sessions per instance.
  const owner = new Map<string, string>();
  const perInstance = new Map<string, number>();
  for (const user of USERS) {
    const session = `${user}/s1`;
    const turn = record(await chat(mesh, session));
    const count = perInstance.get(turn.instance ?? '?') ?? 0;
    if (count >= SESSIONS_PER_INSTANCE) continue;
    perInstance.set(turn.instance ?? '?', count + 1);
    owner.set(session, turn.instance ?? '?');
  }
  const SESSIONS = [...owner.keys()];
  for (let round = 0; round < 2; round++) {
    for (const session of SESSIONS) {
      const turn = record(await chat(mesh, session));
      if (owner.get(session) !== turn.instance) throw new Error(`session ${session} moved from ${owner.get(session)} to ${turn.instance}`);
    }
  }
  for (const session of SESSIONS) say(`   ${session.padEnd(10)} → ${owner.get(session)}   (3 turns, same instance each time)`);
  const sample = await chat(mesh, SESSIONS[0]!);
  say(`   the service saw its caller as ${sample.caller} (verified from the mTLS certificate)`);

  const failing = mesh.instances[1]!;
  say(`\n3. ${failing.name} starts failing (503 to every request); the gateway's breaker for it opens, then closes once it recovers.`);
  failing.service.failWith = 503;
  const before = mesh.instances.map((i) => i.service.served);
  // The breaker opens once failures pass its threshold in the rolling window, which still holds the
  // instance's earlier successes: keep the conversations going until it trips.
  let rounds = 0;
  while (!breakerStates(mesh).includes(`${failing.name}=open`) && rounds < MAX_FAILURE_ROUNDS) {
    rounds += 1;
    for (const session of SESSIONS) record(await chat(mesh, session));
  }
  say(`   after ${rounds * SESSIONS.length} more turns the breaker for ${failing.name} opened; breakers: ${breakerStates(mesh)}`);
  const moved = SESSIONS.filter((s) => owner.get(s) === failing.name);
  for (const session of moved) {
    const turn = record(await chat(mesh, session));
    say(`   ${session.padEnd(10)} → ${turn.instance}   (its owner ${failing.name} is failing: the next instance on the ring serves it)`);
  }
  const servedDuring = mesh.instances.map((i, n) => `${i.name}:${i.service.served - before[n]!}`).join(' ');
  say(`   answered during the failure: ${servedDuring}; client-visible errors: ${clientErrors} (failed tries were retried on another instance)`);
  failing.service.failWith = undefined;
  say(`   ${failing.name} recovers; after ${BREAKER.resetTimeout} ms its breaker lets one probe through (half-open) and closes.`);
  await new Promise((resolve) => setTimeout(resolve, BREAKER.resetTimeout + 100));
  for (let round = 0; round < 3; round++) for (const session of moved.length ? moved : SESSIONS) record(await chat(mesh, session));
  const back = moved.length ? record(await chat(mesh, moved[0]!)) : undefined;
  say(`   breakers: ${breakerStates(mesh)}${back ? `   ${moved[0]} → ${back.instance} (home again)` : ''}`);

  const errorsBefore = clientErrors;
  const conversation = await failover(mesh, owner, SESSIONS, record);

  latencies.sort((a, b) => a - b);
  const pct = (p: number): string => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]!.toFixed(2);
  say('\nSummary');
  say(`   requests: ${latencies.length}, client-visible errors: ${clientErrors} (${clientErrors - errorsBefore} during the failover)`);
  say(`   latency through gateway sidecar → mTLS → service sidecar: p50 ${pct(50)} ms, p99 ${pct(99)} ms`);
  say(`   served per instance: ${mesh.instances.map((i) => `${i.name} ${i.service.served}`).join(', ')}`);
  say(`   breakers: ${breakerStates(mesh)}`);
  return conversation;
}

/**
 * One instance's sidecar is SIGKILLed in the middle of a conversation. Its peers' health monitors
 * find it dead and report it; the control plane declares it (a quorum of the others agrees) and
 * pushes EDS without it; the gateway's retries hide the gap meanwhile. The next instance on the
 * ring serves the session and reads its context, replicated there before the kill. Then the
 * sidecar comes back on the same address and data directory and catches up.
 */
async function failover(mesh: Mesh, owner: Map<string, string>, sessions: string[], record: (turn: Turn) => Turn): Promise<Conversation> {
  const victim = mesh.instances[0]!;
  const session = sessions.find((s) => owner.get(s) === victim.name) ?? sessions[0]!;
  const home = mesh.instances.find((i) => i.name === owner.get(session)) ?? victim;
  const key = `${session}/conversation`;
  say(`\n4. Failover keeps the conversation: ${session} talks to ${home.name}, which keeps ${key} in its sidecar's context API.`);
  const put = await contextCall(home, key, 'PUT', { messages: [{ id: 1, role: 'user', text: 'hello' }], model: 'demo-llm' });
  const written = await contextCall(home, key, 'PATCH', { summary: 'greeted the user', turns: 2 });
  if (put.status >= 300 || written.status !== 200) throw new Error(`writing ${key} on ${home.name} failed: ${put.status} ${put.body} / ${written.status} ${written.body}`);
  say(`   PUT then PATCH on ${home.name} → ${written.status}, ETag ${written.etag}, acknowledged by a quorum of the 3 replicas`);
  say(`   ${written.body}`);

  say(`   SIGKILL ${home.name}'s sidecar (pid ${home.sidecar.pid})…`);
  const historyBefore = (await failovers(mesh)).length;
  const killedAt = performance.now();
  await home.sidecar.kill();
  // Keep the conversation going while the mesh finds out; every turn must still be answered.
  let turns = 0;
  let errors = 0;
  const servedBy = new Set<string>();
  let declared: FailoverRecord | undefined;
  while (!declared) {
    if (performance.now() - killedAt > WAIT_TIMEOUT_MS) throw new Error(`the control plane did not declare ${home.name} failed within ${WAIT_TIMEOUT_MS} ms`);
    const turn = record(await chat(mesh, session));
    turns += 1;
    if (turn.status >= 500) errors += 1;
    else if (turn.instance) servedBy.add(turn.instance);
    declared = (await failovers(mesh)).slice(historyBefore).find((f) => f.kind === 'declared' && f.nodeId === home.name);
    if (!declared) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const declaredAfter = performance.now() - killedAt;
  say(`   ${plural(turns, 'turn')} while the mesh found out: answered by ${[...servedBy].join(', ') || 'none'}, client-visible errors: ${errors} (the gateway retried each try that hit the dead sidecar)`);
  say(`   the other sidecars' health monitors reported it dead; the control plane declared it ${(declaredAfter / 1000).toFixed(1)} s after the kill:`);
  say(`   GET /v1/failovers → ${describeFailover(declared)}`);
  await waitFor(() => chatEndpoints(mesh).every((e) => e.address !== home.address), `the gateway to drop ${home.name} after the EDS push`);
  await printRegistry(mesh);

  const turn = record(await chat(mesh, session));
  const replica = mesh.instances.find((i) => i.name === turn.instance);
  if (turn.status !== 200 || !replica || replica === home) throw new Error(`after the failover ${session} got ${turn.status} from ${turn.instance}`);
  say(`   ${session.padEnd(10)} → ${replica.name}   (EDS no longer lists ${home.name}: the next instance on the ring serves the session)`);
  const read = await contextCall(replica, key);
  if (read.status !== 200 || read.etag !== written.etag || read.body !== written.body) {
    throw new Error(`${key} on ${replica.name} after the failover: ${read.status} ${String(read.etag)} ${read.body} (written: ${written.etag} ${written.body})`);
  }
  say(`   GET ${key} on ${replica.name}'s sidecar → ${read.status}, ETag ${read.etag}: the context written on ${home.name} before the kill.`);
  const continued = await contextCall(replica, key, 'PATCH', { summary: 'answered after the failover', turns: 3 });
  if (continued.status !== 200) throw new Error(`continuing ${key} on ${replica.name}: ${continued.status} ${continued.body}`);
  say(`   ${replica.name} continues the conversation: PATCH → ${continued.status}, ETag ${continued.etag}`);

  say(`\n5. ${home.name}'s sidecar comes back (same address, same data directory), registers again and catches up.`);
  const historyAtRestart = (await failovers(mesh)).length;
  home.sidecar = await ChildSidecar.start(home.name, home.config, home.configFile, home.logFile);
  await settled(mesh, [home]);
  await waitFor(() => chatEndpoints(mesh).some((e) => e.address === home.address), `the gateway to route to ${home.name} again`);
  const since = (await failovers(mesh)).slice(historyAtRestart).filter((f) => f.nodeId === home.name);
  say(`   GET /v1/failovers, since the restart:`);
  for (const f of since) say(`     ${describeFailover(f)}`);
  if (since.some((f) => f.kind === 'declared')) {
    const peers = mesh.instances.filter((i) => i !== home).map((i) => i.name).join(' and ');
    say(`     (${peers} still held ${home.name} down for their flap back-off and reported it dead once more; HEALTHY again once they vouched for it)`);
  }
  const caughtUp = await contextCall(home, key);
  if (caughtUp.status !== 200 || caughtUp.etag === undefined || caughtUp.etag !== continued.etag) {
    throw new Error(`${key} on the restarted ${home.name}: ${caughtUp.status} ${String(caughtUp.etag)} (expected ${continued.etag})`);
  }
  say(`   GET ${key} on ${home.name}'s restarted sidecar → ${caughtUp.status}, ETag ${caughtUp.etag}: the same context, the same version as on ${replica.name}.`);
  const again = record(await chat(mesh, session));
  say(`   ${session.padEnd(10)} → ${again.instance}   (home again)`);
  return { key, etag: caughtUp.etag };
}
