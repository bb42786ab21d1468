// `ctxmesh demo` (npm start): a local mesh on the embedded defaults, nothing but Node needed.
// A dev CA and four identities; three sample AI services, each behind its own sidecar; a gateway
// sidecar whose outbound listener is the client path. The script shows routing that follows the
// context key over mTLS, an instance failing and its circuit breaker opening while retries keep
// the client whole, the breaker closing again once the instance recovers, and a service's context
// surviving a restart of its sidecar.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Agent, request } from 'undici';
import { SidecarConfigSchema } from '../config/schema.js';
import { Sidecar } from '../sidecar.js';
import { createLogger } from '../telemetry/logger.js';
import { initCa, issueCert } from '../tls/ca.js';
import { SampleService } from './sample-service.js';

const SERVICE_NAMES = ['chat-1', 'chat-2', 'chat-3'] as const;
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'niaj', 'olivia', 'peggy', 'rupert', 'sybil', 'trent', 'victor', 'walter', 'yara'];
const SESSIONS_PER_INSTANCE = 2;
const BREAKER_RESET_TIMEOUT_MS = 1_500;
const MAX_FAILURE_ROUNDS = 20;

export interface DemoOptions {
  /** Keep the mesh up after the scripted run, until Ctrl-C. */
  keepRunning: boolean;
  /** Port of the gateway's outbound listener (0 = any). */
  port: number;
}

interface Mesh {
  dir: string;
  services: SampleService[];
  sidecars: Sidecar[];
  gateway: Sidecar;
}

const say = (line = ''): void => void process.stdout.write(`${line}\n`);

export async function runDemo(options: DemoOptions): Promise<void> {
  const mesh = await startMesh(options.port);
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    say('\nstopping the mesh…');
    await stopMesh(mesh);
    say('stopped.');
  };
  process.once('SIGINT', () => void stop().then(() => process.exit(0)));
  process.once('SIGTERM', () => void stop().then(() => process.exit(0)));

  try {
    await script(mesh);
  } catch (err) {
    await stop();
    throw err;
  }
  if (!options.keepRunning) return stop();
  const port = mesh.gateway.ports.outbound;
  say('\nThe mesh keeps running. Try:');
  say(`  curl -H 'Host: chat' -H 'x-ctx-key: alice/s1' http://127.0.0.1:${port}/v1/chat`);
  say(`  curl http://127.0.0.1:${mesh.gateway.ports.admin}/clusters`);
  say('Ctrl-C stops it.');
}

async function startMesh(gatewayPort: number): Promise<Mesh> {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-demo-'));
  const caDir = join(dir, 'ca');
  await initCa({ out: caDir });
  const identity = async (name: string) => {
    await issueCert({ ca: caDir, name, out: join(dir, name) });
    return { cert: join(dir, name, 'cert.pem'), key: join(dir, name, 'key.pem'), ca: join(dir, name, 'ca.pem') };
  };
  // Sidecar logs go to a file so that the console shows the story, not every line.
  const logger = createLogger({ level: 'info', destination: pino.destination({ dest: join(dir, 'mesh.log'), sync: false, mkdir: true }) });

  const services = SERVICE_NAMES.map((name) => new SampleService(name));
  const sidecars: Sidecar[] = [];
  for (const service of services) {
    const app = await service.start();
    sidecars.push(
      await Sidecar.start(
        SidecarConfigSchema.parse({
          node: { id: service.name, cluster: 'chat' },
          identity: await identity(service.name),
          // Only the gateway may call the services.
          inbound: { port: 0, address: '127.0.0.1', app, allow: ['spiffe://ctxmesh.local/ns/default/sa/gateway'] },
          outbound: { port: 0 },
          admin: { port: 0 },
          context: { port: 0, checkpoint: { dir: join(dir, 'data', service.name) } },
        }),
        { logger: logger.child({ node: service.name }) },
      ),
    );
  }
  const gateway = await Sidecar.start(
    SidecarConfigSchema.parse({
      node: { id: 'gateway', cluster: 'gateway' },
      identity: await identity('gateway'),
      inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9', allow: [] },
      outbound: { port: gatewayPort },
      admin: { port: 0 },
      context: { port: 0, checkpoint: { dir: join(dir, 'data', 'gateway') } },
      clusters: [
        {
          name: 'chat',
          domains: ['chat', 'chat.default.svc'],
          lb: 'ring_hash',
          hashHeader: 'x-ctx-key',
          tls: 'mesh',
          endpoints: sidecars.map((s) => ({ address: `127.0.0.1:${s.ports.inbound}` })),
          circuitBreaker: { volumeThreshold: 4, errorThresholdPercentage: 50, resetTimeout: `${BREAKER_RESET_TIMEOUT_MS}ms` },
          // Left to the breaker in this demo, so that one mechanism is on show at a time.
          outlierDetection: { consecutive5xx: 0 },
          retry: { attempts: 2, budgetPercent: 50 },
          timeout: '5s',
        },
      ],
    }),
    { logger: logger.child({ node: 'gateway' }) },
  );
  return { dir, services, sidecars, gateway };
}

async function stopMesh(mesh: Mesh): Promise<void> {
  await Promise.all([mesh.gateway, ...mesh.sidecars].map((s) => s.close()));
  await Promise.all(mesh.services.map((s) => s.close()));
  await client.close();
  rmSync(mesh.dir, { recursive: true, force: true });
}

const client = new Agent({ connections: 8 });

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

function breakerStates(mesh: Mesh): string {
  const chat = mesh.gateway.clusters() as { clusters: Array<{ endpoints: Array<{ circuit_breaker: string }> }> };
  return chat.clusters[0]!.endpoints.map((e, i) => `${SERVICE_NAMES[i]}=${e.circuit_breaker}`).join('  ');
}

/**
 * The service that owns a session keeps the conversation in its own sidecar's state agent (the
 * embedded L2 here, every write in the WAL); the sidecar is stopped and started again on the same
 * ports and data directory, and the context is still there, at the same version.
 */
async function contextSurvivesRestart(mesh: Mesh, session: string, instance: string): Promise<void> {
  const index = mesh.services.findIndex((s) => s.name === instance);
  const sidecar = mesh.sidecars[index]!;
  const key = `${session}/conversation`;
  say(`\n4. Context lives beside its service: ${instance} keeps ${key} in its sidecar's context API (L1 + embedded L2 + WAL).`);
  const api = (s: Sidecar): string => `http://127.0.0.1:${s.ports.context}/v1/contexts/${key}`;
  const put = await request(api(sidecar), {
    method: 'PUT',
    dispatcher: client,
    headers: { 'content-type': 'application/json', 'ctxmesh-retention': 'critical' },
    body: JSON.stringify({ messages: [{ id: 1, role: 'user', text: 'hello' }], model: 'demo-llm' }),
  });
  await put.body.dump();
  const patch = await request(api(sidecar), {
    method: 'PATCH',
    dispatcher: client,
    headers: { 'content-type': 'application/merge-patch+json' },
    body: JSON.stringify({ summary: 'greeted the user', turns: 2 }),
  });
  const written = await patch.body.text();
  const etag = patch.headers.etag as string;
  say(`   PUT then PATCH (JSON merge patch) → ${patch.statusCode}, ETag ${etag}`);
  say(`   ${written}`);

  say(`   restarting ${instance}'s sidecar (same ports, same data directory)…`);
  await sidecar.close();
  const config = sidecar.config;
  const restarted = await Sidecar.start(
    {
      ...config,
      inbound: { ...config.inbound, port: sidecar.ports.inbound },
      outbound: { ...config.outbound, port: sidecar.ports.outbound },
      admin: { ...config.admin, port: sidecar.ports.admin },
      context: { ...config.context, port: sidecar.ports.context },
    },
    { logger: sidecar.logger },
  );
  mesh.sidecars[index] = restarted;
  const read = await request(api(restarted), { dispatcher: client });
  const after = await read.body.text();
  if (read.statusCode !== 200 || read.headers.etag !== etag || after !== written) {
    throw new Error(`context ${key} did not survive the restart: ${read.statusCode} ${String(read.headers.etag)} ${after}`);
  }
  say(`   GET after the restart → ${read.statusCode}, ETag ${String(read.headers.etag)}: the same context, the same version.`);
  const turn = await chat(mesh, session);
  say(`   ${session.padEnd(10)} → ${turn.instance}   (routing still follows the session to the context's owner)`);
}

async function script(mesh: Mesh): Promise<void> {
  const latencies: number[] = [];
  let clientErrors = 0;
  const record = (turn: Turn): Turn => {
    latencies.push(turn.ms);
    if (turn.status >= 500) clientErrors += 1;
    return turn;
  };

  say('ctxmesh demo: 3 AI services behind 3 sidecars, a gateway sidecar as the client path, all over mTLS.');
  say(`gateway outbound: http://127.0.0.1:${mesh.gateway.ports.outbound} (Host: chat)   logs: ${join(mesh.dir, 'mesh.log')}`);

  say('\n1. Routing follows context: each session key lands on the instance that owns it (ring hash on x-ctx-key).');
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

  const victim = mesh.services[1]!;
  say(`\n2. ${victim.name} starts failing (503 to every request).`);
  victim.failWith = 503;
  const before = mesh.services.map((s) => s.served);
  // The breaker opens once failures pass 50% of the tries in its rolling window, which still
  // holds the instance's earlier successes: keep the conversations going until it trips.
  let rounds = 0;
  while (!breakerStates(mesh).includes(`${victim.name}=open`) && rounds < MAX_FAILURE_ROUNDS) {
    rounds += 1;
    for (const session of SESSIONS) record(await chat(mesh, session));
  }
  say(`   after ${rounds * SESSIONS.length} more turns the gateway's breaker for ${victim.name} opened; it is skipped now.`);
  say(`   breakers: ${breakerStates(mesh)}`);
  const moved = SESSIONS.filter((s) => owner.get(s) === victim.name);
  for (const session of moved) {
    const turn = record(await chat(mesh, session));
    say(`   ${session.padEnd(10)} → ${turn.instance}   (its owner ${victim.name} is failing: the next instance on the ring serves it)`);
  }
  const servedDuring = mesh.services.map((s, i) => `${s.name}:${s.served - before[i]!}`).join(' ');
  say(`   answered during the failure: ${servedDuring}; client-visible errors: ${clientErrors} (failed tries were retried on another instance)`);

  say(`\n3. ${victim.name} recovers; after ${BREAKER_RESET_TIMEOUT_MS} ms its breaker lets one probe through (half-open) and closes.`);
  victim.failWith = undefined;
  await new Promise((resolve) => setTimeout(resolve, BREAKER_RESET_TIMEOUT_MS + 100));
  for (let round = 0; round < 3; round++) for (const session of moved.length ? moved : SESSIONS) record(await chat(mesh, session));
  say(`   breakers: ${breakerStates(mesh)}`);
  const back = moved.length ? record(await chat(mesh, moved[0]!)) : undefined;
  if (back) say(`   ${moved[0]!.padEnd(10)} → ${back.instance}   (home again)`);

  await contextSurvivesRestart(mesh, SESSIONS[0]!, owner.get(SESSIONS[0]!)!);

  latencies.sort((a, b) => a - b);
  const pct = (p: number): string => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]!.toFixed(2);
  say('\nSummary');
  say(`   requests: ${latencies.length}, client-visible errors: ${clientErrors}`);
  say(`   latency through gateway sidecar → mTLS → service sidecar: p50 ${pct(50)} ms, p99 ${pct(99)} ms`);
  say(`   served per instance: ${mesh.services.map((s) => `${s.name} ${s.served}`).join(', ')}`);
  say(`   breakers: ${breakerStates(mesh)}`);
}
