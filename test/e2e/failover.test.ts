// Failover end to end, every part a child process running the built CLI: a control plane, three
// sidecars fronting `chat` apps (registered through their ADS node, probing each other every 200ms,
// reporting to the control plane, replicating context RF=3 strong), and a fourth "client" sidecar
// that routes Host `chat` by ring_hash on x-ctx-key from xDS alone. Under steady load through the
// client (and context writes through the chat sidecars' context APIs):
//   - a key's request reaches the sidecar that owns the key's context (first replica on the ring
//     over member ids), and after that sidecar dies, the next replica;
//   - SIGKILL: traffic is rerouted, the control plane declares the node and pushes EDS without it,
//     and every acknowledged context write is readable from the survivors;
//   - SIGSTOP: the same; after SIGCONT the node refutes, waits out its hold-down, is healthy again
//     and gets its keys' traffic back.
// A partition whose minority cannot evict the majority is test/membership/health-mesh.test.ts's.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import HashRing from 'hashring';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERRORS } from '../../src/errors/table.js';
import { createPki, startApp, until, type IdentityFiles, type TestApp } from '../helpers/mesh.js';
import { freePort } from '../helpers/redis.js';

const CLI = resolve('dist/src/cli/main.js');
const BUILD_TIMEOUT_MS = 180_000;
const READY_TIMEOUT_MS = 15_000;
/** Generous bounds for conditions polled on a shared 2-core machine; none is a timing claim. */
const DECLARE_TIMEOUT_MS = 15_000;
const CHAT_IDS = ['chat-a', 'chat-b', 'chat-c'] as const;
const HASH_HEADER = 'x-ctx-key';

interface Proc {
  name: string;
  configFile: string;
  admin: number;
  child: ChildProcess | undefined;
  exited: Promise<void> | undefined;
  output: string;
}

interface ChatNode extends Proc {
  id: string;
  inbound: number;
  context: number;
  address: string;
  app: TestApp;
}

/** One request of the steady load through the client sidecar. */
interface Exchange {
  key: string;
  startedAt: number;
  endedAt: number;
  status: number;
  /** The app that answered (the chat sidecar it went through). */
  app?: string;
  /** x-ctxmesh-error of a mesh-generated error response. */
  code?: string;
  error?: string;
}

/** One context write through a chat sidecar's context API. */
interface Write {
  key: string;
  value: string;
  via: string;
  outcome: 'acked' | 'refused' | 'lost';
}

const work = mkdtempSync(join(tmpdir(), 'ctxmesh-failover-'));
const agent = new Agent({ connections: 16, keepAliveTimeout: 10_000 });

function spawnProc(proc: Proc, command: 'sidecar' | 'control-plane'): void {
  proc.output = '';
  const child = spawn(process.execPath, [CLI, command, '-c', proc.configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const keep = (chunk: Buffer): void => {
    proc.output = (proc.output + chunk.toString()).slice(-20_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  proc.child = child;
  proc.exited = new Promise((resolveExit) => child.once('exit', () => resolveExit()));
}

async function getJson<T>(url: string): Promise<T> {
  const res = await request(url, { dispatcher: agent, headersTimeout: 3_000, bodyTimeout: 3_000 });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`GET ${url}: ${res.statusCode} ${text}`);
  return JSON.parse(text) as T;
}

async function isReady(adminPort: number): Promise<boolean> {
  return request(`http://127.0.0.1:${adminPort}/ready`, { dispatcher: agent, headersTimeout: 1_000 }).then(
    async (r) => (await r.body.text(), r.statusCode === 200),
    () => false,
  );
}

async function startProc(proc: Proc, command: 'sidecar' | 'control-plane'): Promise<void> {
  spawnProc(proc, command);
  const exited = proc.exited!.then(() => {
    throw new Error(`${proc.name} exited before it was ready:\n${proc.output}`);
  });
  await Promise.race([until(() => isReady(proc.admin), READY_TIMEOUT_MS, `${proc.name} to be ready`), exited]);
  exited.catch(() => undefined);
}

async function signal(proc: Proc, sig: NodeJS.Signals): Promise<void> {
  const child = proc.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill(sig);
  if (sig === 'SIGKILL') {
    await proc.exited;
    proc.child = undefined;
  }
}

/** Steady load through the client sidecar: a few workers, each sending keyed requests back to back (paced). */
class SteadyLoad {
  readonly exchanges: Exchange[] = [];
  private running = true;
  private readonly workers: Promise<void>[];

  constructor(
    private readonly outbound: string,
    private readonly keys: readonly string[],
    workers = 3,
    private readonly pauseMs = 5,
  ) {
    this.workers = Array.from({ length: workers }, (_, w) => this.work(w));
  }

  private async work(worker: number): Promise<void> {
    for (let i = worker; this.running; i += 7) {
      const key = this.keys[i % this.keys.length]!;
      const exchange: Exchange = { key, startedAt: performance.now(), endedAt: 0, status: 0 };
      try {
        const res = await request(`${this.outbound}/turn`, {
          dispatcher: agent,
          headers: { host: 'chat', [HASH_HEADER]: key },
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
        });
        const body = await res.body.text();
        exchange.status = res.statusCode;
        if (res.statusCode === 200) exchange.app = (JSON.parse(body) as { app: string }).app;
        else {
          exchange.code = String(res.headers['x-ctxmesh-error'] ?? '');
          exchange.error = `${exchange.code} ${body.slice(0, 200)}`;
        }
      } catch (err) {
        exchange.error = (err as Error).message;
      }
      exchange.endedAt = performance.now();
      this.exchanges.push(exchange);
      await new Promise((r) => setTimeout(r, this.pauseMs));
    }
  }

  since(t: number): Exchange[] {
    return this.exchanges.filter((e) => e.startedAt >= t);
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.workers);
  }
}

/** Context writes (strong) through the chat sidecars' context APIs, round-robin over those given. */
class ContextWriter {
  readonly writes: Write[] = [];
  private running = true;
  private readonly loop: Promise<void>;

  constructor(private readonly via: () => ChatNode[]) {
    this.loop = Promise.all([this.work(0), this.work(1)]).then(() => undefined);
  }

  private async work(worker: number): Promise<void> {
    for (let i = 0; this.running; i++) {
      const targets = this.via();
      if (targets.length === 0) {
        // Every sidecar is down for the moment (a kill and its restart): wait for one.
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      const node = targets[(i + worker) % targets.length]!;
      const key = `failover/w${worker}-${i}`;
      const write: Write = { key, value: `v-${worker}-${i}-${node.id}`, via: node.id, outcome: 'lost' };
      this.writes.push(write);
      try {
        const res = await request(`http://127.0.0.1:${node.context}/v1/contexts/${key}`, {
          dispatcher: agent,
          method: 'PUT',
          body: write.value,
          headers: { 'content-type': 'text/plain', 'ctxmesh-consistency': 'strong' },
          headersTimeout: 5_000,
        });
        await res.body.text();
        write.outcome = res.statusCode === 204 ? 'acked' : 'refused';
      } catch {
        write.outcome = 'lost';
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  acked(): Write[] {
    return this.writes.filter((w) => w.outcome === 'acked');
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

interface RegistryView {
  services: Array<{ name: string; endpoints: Array<{ address: string; health: string; nodeId?: string }> }>;
}
interface FailoverView {
  failovers: Array<{ kind: string; nodeId?: string; address?: string; service?: string }>;
}
interface ClustersView {
  clusters: Array<{ name: string; endpoints: Array<{ address: string }> }>;
}

describe('failover across a control plane and sidecar processes', () => {
  let identities: Map<string, IdentityFiles>;
  const controlPlane: Proc = { name: 'control-plane', configFile: '', admin: 0, child: undefined, exited: undefined, output: '' };
  const client: Proc = { name: 'client', configFile: '', admin: 0, child: undefined, exited: undefined, output: '' };
  let clientOutbound = '';
  const chats: ChatNode[] = [];
  const byId = (id: string): ChatNode => chats.find((c) => c.id === id)!;
  const cpApi = (): string => `http://127.0.0.1:${controlPlane.admin}`;
  /** The same ring as the chat sidecars' replication builds (src/state/replication/ring.ts). */
  const ring = new HashRing([...CHAT_IDS].sort());
  // Context keys (tenant/name) sent as x-ctx-key: what the ring places is the context key itself.
  const keys = Array.from({ length: 60 }, (_, i) => `chat/conversation-${i}`);

  const chatEndpointsAtClient = async (): Promise<string[]> =>
    ((await getJson<ClustersView>(`http://127.0.0.1:${client.admin}/clusters`)).clusters.find((c) => c.name === 'chat')?.endpoints ?? []).map((e) => e.address).sort();
  const registryHealth = async (node: ChatNode): Promise<string> =>
    (await getJson<RegistryView>(`${cpApi()}/v1/registry`)).services.find((s) => s.name === 'chat')?.endpoints.find((e) => e.address === node.address)?.health ?? 'absent';
  const declared = async (node: ChatNode): Promise<number> =>
    (await getJson<FailoverView>(`${cpApi()}/v1/failovers`)).failovers.filter((f) => f.kind === 'declared' && f.nodeId === node.id).length;
  const allChatAtClient = async (): Promise<boolean> =>
    JSON.stringify(await chatEndpointsAtClient()) === JSON.stringify(chats.map((c) => c.address).sort());
  /** Every chat sidecar is healthy at the control plane and at the client, and the chat sidecars see each other alive. */
  const meshSettled = async (): Promise<boolean> => {
    if (!(await allChatAtClient())) return false;
    for (const node of chats) if ((await registryHealth(node)) !== 'HEALTHY') return false;
    for (const node of chats) {
      const view = await getJson<{ members: Array<{ id: string; state: string }> }>(`http://127.0.0.1:${node.admin}/members`).catch(() => undefined);
      if (!view || CHAT_IDS.some((id) => view.members.find((m) => m.id === id)?.state !== 'alive')) return false;
    }
    return true;
  };
  /** The app that answers a keyed request through the client sidecar. */
  const whoAnswers = async (key: string): Promise<string> => {
    const res = await request(`${clientOutbound}/probe`, { dispatcher: agent, headers: { host: 'chat', [HASH_HEADER]: key }, headersTimeout: 10_000 });
    const body = await res.body.text();
    if (res.statusCode !== 200) return `${res.statusCode} ${String(res.headers['x-ctxmesh-error'] ?? '')}`;
    return (JSON.parse(body) as { app: string }).app;
  };
  const diagnostics = (): string => [controlPlane, client, ...chats].map((p) => `--- ${p.name}\n${p.output.slice(-3_000)}`).join('\n');

  beforeAll(async () => {
    if (!existsSync(CLI)) spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'ignore', timeout: BUILD_TIMEOUT_MS });
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build with npx tsc -p tsconfig.json`);
    const pki = await createPki();
    identities = new Map();
    for (const id of [...CHAT_IDS, 'client']) identities.set(id, await pki.issue(id));

    const xdsPort = await freePort();
    controlPlane.admin = await freePort();
    controlPlane.configFile = join(work, 'control-plane.yaml');
    // JSON is YAML.
    writeFileSync(
      controlPlane.configFile,
      JSON.stringify({
        port: xdsPort,
        address: '127.0.0.1',
        admin: { port: controlPlane.admin },
        registration: { ttl: '60s' },
        health: { suspicionWindow: '3s' },
        services: [
          {
            name: 'chat',
            lb: 'ring_hash',
            hashHeader: HASH_HEADER,
            tls: 'mesh',
            timeout: '5s',
            connectTimeout: '300ms',
            // A try that meets a dead or frozen sidecar goes on to the next replica on the ring.
            retry: { attempts: 2, perTryTimeout: '400ms', backoff: '5ms', budgetPercent: 100 },
          },
        ],
        log: { level: 'warn' },
      }),
    );
    await startProc(controlPlane, 'control-plane');
    const xds = { server: `127.0.0.1:${xdsPort}`, initialFetchTimeout: '5s', reconnect: { base: '50ms', max: '500ms' } };

    for (const id of CHAT_IDS) {
      const app = await startApp(id);
      const inbound = await freePort();
      chats.push({ name: id, id, configFile: join(work, `${id}.yaml`), admin: await freePort(), child: undefined, exited: undefined, output: '', inbound, context: await freePort(), address: `127.0.0.1:${inbound}`, app });
    }
    for (const node of chats) {
      writeFileSync(
        node.configFile,
        JSON.stringify({
          node: { id: node.id, cluster: 'chat', zone: 'z1' },
          identity: identities.get(node.id),
          inbound: { port: node.inbound, address: '127.0.0.1', app: node.app.url, allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
          outbound: { port: 0 },
          admin: { port: node.admin },
          xds,
          health: {
            interval: '200ms',
            probeTimeout: '150ms',
            suspicionTimeout: '600ms',
            suspicionMinTimeout: '300ms',
            flapBackoff: { base: '500ms', max: '5s' },
            reportTo: `127.0.0.1:${controlPlane.admin}`,
            reportInterval: '200ms',
          },
          context: {
            port: node.context,
            l2: { backend: 'memory' },
            wal: { fsync: 'always' },
            checkpoint: { dir: join(work, `${node.id}-data`) },
            replication: {
              factor: 3,
              consistency: 'strong',
              peers: chats.filter((p) => p !== node).map((p) => ({ id: p.id, address: p.address })),
              peerTimeout: '1s',
              writeTimeout: '2s',
              hints: { interval: '100ms' },
            },
          },
          log: { level: 'warn', accessLog: false },
        }),
      );
    }
    await Promise.all(chats.map((node) => startProc(node, 'sidecar')));

    client.admin = await freePort();
    const clientOutboundPort = await freePort();
    clientOutbound = `http://127.0.0.1:${clientOutboundPort}`;
    client.configFile = join(work, 'client.yaml');
    writeFileSync(
      client.configFile,
      JSON.stringify({
        node: { id: 'client', cluster: 'client', zone: 'z1' },
        identity: identities.get('client'),
        inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9' },
        outbound: { port: clientOutboundPort, address: '127.0.0.1' },
        admin: { port: client.admin },
        xds,
        context: { enabled: false },
        health: { enabled: false },
        log: { level: 'warn', accessLog: false },
      }),
    );
    await startProc(client, 'sidecar');
    await until(meshSettled, 20_000, 'every chat sidecar healthy everywhere').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
  }, 90_000);

  afterAll(async () => {
    for (const proc of [client, ...chats, controlPlane]) {
      if (proc.child && proc.child.signalCode === null && proc.child.exitCode === null) proc.child.kill('SIGCONT');
      await signal(proc, 'SIGKILL');
    }
    await Promise.all(chats.map((c) => c.app.close()));
    await agent.close();
    rmSync(work, { recursive: true, force: true });
  });

  it('a keyed request reaches the sidecar that owns the key’s context: the first replica on the ring over member ids', async () => {
    const owners = new Set<string>();
    for (const key of keys.slice(0, 30)) {
      const owner = ring.range(key, 3, true)[0]!;
      owners.add(owner);
      expect(await whoAnswers(key), key).toBe(owner);
    }
    expect(owners.size).toBe(3);

    // The owner holds the context: a write through another sidecar is replicated to the key's replicas, the owner among them.
    const key = keys[0]!;
    const owner = byId(ring.range(key, 3, true)[0]!);
    const other = chats.find((c) => c !== owner)!;
    const put = await request(`http://127.0.0.1:${other.context}/v1/contexts/${key}`, {
      dispatcher: agent,
      method: 'PUT',
      body: 'turn-1',
      headers: { 'content-type': 'text/plain', 'ctxmesh-consistency': 'strong' },
    });
    await put.body.text();
    expect(put.statusCode).toBe(204);
    const held = await getJson<{ keys: Array<{ key: string }> }>(`http://127.0.0.1:${owner.admin}/members/held?prefix=${encodeURIComponent(key)}`);
    expect(held.keys.map((k) => k.key)).toContain(key);
  }, 30_000);

  it('SIGKILL under load: rerouted, declared by the control plane, pushed out by EDS; keys move to the next replica; no acknowledged write lost', async () => {
    const victim = byId('chat-a');
    const survivors = chats.filter((c) => c !== victim);
    const load = new SteadyLoad(clientOutbound, keys);
    const writer = new ContextWriter(() => chats.filter((c) => c.child !== undefined));
    await until(() => load.exchanges.length >= 50 && writer.acked().length >= 20, 15_000, 'load to run');

    // A stalled machine can have a sidecar suspected and declared (then refuting) before the kill:
    // only a declaration after it counts.
    const declaredBefore = await declared(victim);
    const killedAt = performance.now();
    await signal(victim, 'SIGKILL');
    await until(async () => (await declared(victim)) > declaredBefore, DECLARE_TIMEOUT_MS, 'the control plane to declare chat-a').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    expect(await registryHealth(victim)).toBe('UNHEALTHY');
    await until(async () => !(await chatEndpointsAtClient()).includes(victim.address), DECLARE_TIMEOUT_MS, 'EDS without chat-a at the client');
    const pushedAt = performance.now();
    // Some steady traffic after the push.
    await until(() => load.since(pushedAt).length >= 50, 15_000, 'load after the push');
    await load.stop();
    await writer.stop();

    const afterPush = load.since(pushedAt);
    expect(afterPush.filter((e) => e.status !== 200)).toEqual([]);
    expect(afterPush.some((e) => e.app === victim.id)).toBe(false);
    const failed = load.since(killedAt).filter((e) => e.status !== 200);
    expect(failed.filter((e) => e.code === undefined || !(e.code in ERRORS))).toEqual([]);
    console.log(
      `SIGKILL: declared+pushed ${Math.round(pushedAt - killedAt)}ms after the kill; ${failed.length} failed of ${load.since(killedAt).length} requests since` +
        (failed.length ? `, last failure ${Math.round(failed.at(-1)!.endedAt - killedAt)}ms after the kill` : ''),
    );

    // Keys owned by the dead sidecar go to the next replica on the ring; the others stay.
    for (const key of keys.slice(0, 30)) {
      const [first, second] = ring.range(key, 3, true);
      expect(await whoAnswers(key), key).toBe(first === victim.id ? second : first);
    }

    // Every acknowledged write is readable, with its value, from each survivor (strong reads).
    const acked = writer.acked();
    expect(acked.length).toBeGreaterThanOrEqual(20);
    // Some of them were coordinated by the sidecar that died.
    expect(acked.some((w) => w.via === victim.id)).toBe(true);
    const missing: string[] = [];
    for (const write of acked) {
      for (const node of survivors) {
        const res = await request(`http://127.0.0.1:${node.context}/v1/contexts/${write.key}`, { dispatcher: agent, headers: { 'ctxmesh-consistency': 'strong' }, headersTimeout: 5_000 });
        const body = await res.body.text();
        if (res.statusCode !== 200 || body !== write.value) missing.push(`${write.key} via ${node.id}: ${res.statusCode} ${body.slice(0, 80)} (wanted ${write.value})`);
      }
    }
    expect(missing).toEqual([]);

    // It comes back (a new incarnation re-registers) and is healthy everywhere again.
    await startProc(victim, 'sidecar');
    await until(meshSettled, 20_000, 'chat-a back everywhere').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
  }, 60_000);

  it('SIGSTOP under load: rerouted and declared; after SIGCONT it refutes, waits out the hold-down, and gets its keys back', async () => {
    const victim = byId('chat-b');
    const load = new SteadyLoad(clientOutbound, keys);
    await until(() => load.exchanges.length >= 50, 15_000, 'load to run');
    const declaredBefore = await declared(victim);

    const stoppedAt = performance.now();
    await signal(victim, 'SIGSTOP');
    await until(async () => (await declared(victim)) > declaredBefore, DECLARE_TIMEOUT_MS, 'the control plane to declare chat-b').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    await until(async () => !(await chatEndpointsAtClient()).includes(victim.address), DECLARE_TIMEOUT_MS, 'EDS without chat-b at the client');
    const pushedAt = performance.now();
    await until(() => load.since(pushedAt).length >= 50, 15_000, 'load after the push');
    const afterPush = load.since(pushedAt);
    expect(afterPush.filter((e) => e.status !== 200)).toEqual([]);
    expect(afterPush.some((e) => e.app === victim.id)).toBe(false);
    const failed = load.since(stoppedAt).filter((e) => e.status !== 200);
    // Failures before the push, if any, are the proxy's own, with a code from the error table.
    expect(failed.filter((e) => e.code === undefined || !(e.code in ERRORS))).toEqual([]);
    console.log(
      `SIGSTOP: declared+pushed ${Math.round(pushedAt - stoppedAt)}ms after the stop; ${failed.length} failed of ${load.since(stoppedAt).length} requests since` +
        failed.map((e) => `\n  ${Math.round(e.startedAt - stoppedAt)}..${Math.round(e.endedAt - stoppedAt)}ms ${e.key} ${e.status} ${e.error ?? ''}`).join(''),
    );

    const resumedAt = performance.now();
    await signal(victim, 'SIGCONT');
    // Back: healthy at the control plane (a quorum reports it alive again), pushed to the client, alive in its peers' views.
    await until(meshSettled, 20_000, 'chat-b back everywhere').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    // It refuted the accusation with a higher incarnation, and the peers held it down a while before trusting it again.
    const self = await getJson<{ members: { self: { incarnation: number } } }>(`http://127.0.0.1:${victim.admin}/clusters`);
    expect(self.members.self.incarnation).toBeGreaterThan(0);
    expect(performance.now() - resumedAt).toBeGreaterThan(300);
    const recovered = (await getJson<FailoverView>(`${cpApi()}/v1/failovers`)).failovers.filter((f) => f.kind === 'recovered' && f.nodeId === victim.id);
    expect(recovered.length).toBeGreaterThanOrEqual(1);
    const backAt = performance.now();
    await until(() => load.since(backAt).some((e) => e.app === victim.id), 10_000, 'steady load to reach chat-b again');
    await load.stop();
    expect(load.since(backAt).filter((e) => e.status !== 200)).toEqual([]);
    for (const key of keys.slice(0, 30)) expect(await whoAnswers(key), key).toBe(ring.range(key, 3, true)[0]);
  }, 60_000);
});
