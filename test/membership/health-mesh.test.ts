// The health monitor across real sidecars: real mTLS peer calls, real state agents, one sidecar as
// a child process running the built CLI that is SIGSTOPped, SIGCONTed and SIGKILLed, and a real
// redis-server frozen under a sidecar's state agent for the deep check.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { ControlPlaneConfigSchema } from '../../src/config/schema.js';
import { ControlPlane } from '../../xds/control-plane.js';
import type { MemberHealth } from '../../src/membership/prober.js';
import { PeerClient } from '../../src/peer/client.js';
import { MeshIdentity } from '../../src/tls/identity.js';
import {
  closeAfterEach,
  createPki,
  endpointStatus,
  metricValue,
  send,
  sidecarConfig,
  startApp,
  startSidecar,
  until,
  type IdentityFiles,
  type RunningSidecar,
  type TestApp,
  type TestPki,
} from '../helpers/mesh.js';
import { freePort, startRedis } from '../helpers/redis.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = join(ROOT, 'dist/src/cli/main.js');

/** Sub-second detection settings, as the design suggests (~200ms probes with a suspicion window). */
const FAST_HEALTH = {
  interval: '200ms',
  probeTimeout: '150ms',
  suspicionTimeout: '1500ms',
  suspicionMinTimeout: '500ms',
  deepCheckEvery: 3,
  flapBackoff: { base: '1s', max: '20s' },
};

interface Node {
  id: string;
  port: number;
  address: string;
  identity: IdentityFiles;
  app: TestApp;
}

interface ChildSidecar {
  process: ChildProcess;
  admin: string;
  lines: Array<Record<string, unknown>>;
  exited: Promise<unknown>;
}

async function plan(pki: TestPki, ids: string[], closers: Array<() => Promise<void>>): Promise<Node[]> {
  const nodes: Node[] = [];
  for (const id of ids) {
    const port = await freePort();
    const app = await startApp(id);
    closers.push(() => app.close());
    nodes.push({ id, port, address: `127.0.0.1:${port}`, identity: await pki.issue(id), app });
  }
  return nodes;
}

/** The config of `self` in a mesh of `nodes`: peers for replication and probing, one cluster over every sidecar. */
function meshConfig(self: Node, nodes: Node[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    node: { id: self.id, cluster: 'chat' },
    inbound: { port: self.port, address: '127.0.0.1', app: self.app.url, allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
    log: { level: 'info', accessLog: false },
    context: { replication: { peers: nodes.filter((n) => n !== self).map((n) => ({ id: n.id, address: n.address })) } },
    clusters: [
      {
        name: 'chat',
        domains: ['chat'],
        lb: 'round_robin',
        endpoints: nodes.map((n) => ({ address: n.address })),
        // Keep the proxy's own outlier detection out of the way: exclusion here must come from the health monitor.
        outlierDetection: { consecutive5xx: 0 },
        retry: { attempts: 0 },
        timeout: '2s',
        connectTimeout: '500ms',
      },
    ],
    health: FAST_HEALTH,
    ...extra,
  };
}

async function spawnChild(node: Node, config: Record<string, unknown>, dir: string, closers: Array<() => Promise<void>>): Promise<ChildSidecar> {
  const file = join(dir, `${node.id}.yaml`);
  // JSON is YAML.
  writeFileSync(file, JSON.stringify({ ...config, identity: node.identity, outbound: { port: 0 }, admin: { port: 0 }, context: { ...(config.context as object), port: 0, checkpoint: { dir: join(dir, `${node.id}-state`) } } }));
  const child = spawn(process.execPath, [CLI, 'sidecar', '-c', file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  closers.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const lines: Array<Record<string, unknown>> = [];
  let partial = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString()).split('\n');
    partial = parts.pop()!;
    for (const line of parts) if (line.trim().startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>);
  });
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await until(() => lines.some((l) => l.msg === 'sidecar ready') || child.exitCode !== null, 15_000, `${node.id} to be ready`);
  const ready = lines.find((l) => l.msg === 'sidecar ready');
  if (!ready) throw new Error(`${node.id} exited with ${child.exitCode}: ${stderr}`);
  return { process: child, admin: `http://127.0.0.1:${(ready.ports as { admin: number }).admin}`, lines, exited };
}

/** The member table a sidecar's admin API shows in GET /clusters. */
async function memberTable(admin: string): Promise<{ self: { incarnation: number }; members: MemberHealth[] }> {
  return (JSON.parse((await send(admin, '/clusters')).body) as { members: { self: { incarnation: number }; members: MemberHealth[] } }).members;
}

async function appsReached(outbound: string, count: number): Promise<string[]> {
  const reached: string[] = [];
  for (let i = 0; i < count; i++) {
    const reply = await send(outbound, `/req-${i}`, { host: 'chat' });
    expect(reply.status).toBe(200);
    reached.push((JSON.parse(reply.body) as { app: string }).app);
  }
  return reached;
}

/**
 * A TCP relay to `target` that can be cut like a network partition: connections in flight are
 * dropped and new ones are accepted but never answered (a black hole, not a refusal).
 */
class CuttableLink {
  address = '';
  private cut = false;
  private readonly sockets = new Set<net.Socket>();
  private readonly server = net.createServer((client) => {
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    client.on('error', () => {});
    if (this.cut) return;
    const upstream = net.connect({ host: '127.0.0.1', port: Number(this.target.split(':')[1]) });
    this.sockets.add(upstream);
    upstream.on('close', () => {
      this.sockets.delete(upstream);
      client.destroy();
    });
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    client.pipe(upstream).pipe(client);
  });

  constructor(private readonly target: string) {}

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.address = `127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
    return this;
  }

  sever(): void {
    this.cut = true;
    for (const socket of this.sockets) socket.destroy();
  }

  async close(): Promise<void> {
    this.sever();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

interface RegistryEndpoint {
  address: string;
  health: string;
}

describe('the health monitor between real sidecars', () => {
  const closers = closeAfterEach();
  let pki: TestPki;
  let dir: string;

  beforeAll(async () => {
    if (!existsSync(CLI)) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'ignore', timeout: 180_000 });
    pki = await createPki();
    dir = mkdtempSync(join(tmpdir(), 'ctxmesh-health-'));
  });

  it('a SIGSTOPped sidecar is declared dead and skipped; after SIGCONT it refutes and returns after the hold-down; SIGKILL takes it out again', async () => {
    const nodes = await plan(pki, ['a', 'b', 'c'], closers);
    const [a, b, c] = nodes as [Node, Node, Node];
    const observers: RunningSidecar[] = [];
    for (const node of [a, b]) {
      const running = await startSidecar(sidecarConfig(node.identity, meshConfig(node, nodes)));
      closers.push(() => running.sidecar.close());
      observers.push(running);
    }
    const child = await spawnChild(c, meshConfig(c, nodes), dir, closers);
    const [sa, sb] = observers as [RunningSidecar, RunningSidecar];
    const stateOfC = (s: RunningSidecar): string | undefined => s.sidecar.membership.get('c')?.state;

    // Everyone probes everyone over mTLS.
    await until(async () => ((await metricValue(sa.admin, 'ctxmesh_health_probes_total', { result: 'ack' })) ?? 0) >= 4, 10_000, 'a to get acks');
    await until(async () => (await memberTable(child.admin)).members.some((m) => m.last_probe?.result === 'ack'), 10_000, 'c to get acks');
    // c started last: a and b may have found it dead before it listened, and hold it down a while.
    const admitted = (s: RunningSidecar): boolean => {
      const row = s.sidecar.health!.prober.describe().find((m) => m.id === 'c');
      return row?.last_probe?.result === 'ack' && row.state === 'alive';
    };
    await until(() => admitted(sa) && admitted(sb), 15_000, 'a and b to admit c');
    const revivalsBefore = sa.sidecar.health!.prober.describe().find((m) => m.id === 'c')!.revivals;
    expect(new Set(await appsReached(sa.outbound, 6))).toEqual(new Set(['a', 'b', 'c']));

    child.process.kill('SIGSTOP');
    await until(() => stateOfC(sa) === 'dead' && stateOfC(sb) === 'dead', 15_000, 'a and b to declare c dead');
    expect(await endpointStatus(sa.admin, 'chat', c.address)).toMatchObject({ healthy: false, unreachable: true });
    expect(await metricValue(sa.admin, 'ctxmesh_health_member_state', { member: 'c' })).toBe(2);
    expect(await metricValue(sa.admin, 'ctxmesh_health_suspicions_total')).toBeGreaterThanOrEqual(1);
    const cBefore = c.app.received.length;
    const reached = await appsReached(sa.outbound, 8);
    expect(reached).not.toContain('c');
    expect(new Set(reached)).toEqual(new Set(['a', 'b']));
    expect(c.app.received.length).toBe(cBefore);

    child.process.kill('SIGCONT');
    // c hears it was declared dead, raises its incarnation, and is believed again — after the hold-down.
    await until(
      () => sa.sidecar.health!.prober.describe().find((m) => m.id === 'c')?.status === 'alive',
      15_000,
      'a to hear c refute',
    );
    const back = performance.now();
    await until(() => stateOfC(sa) === 'alive' && stateOfC(sb) === 'alive', 15_000, 'c to be admitted again');
    expect(performance.now() - back).toBeGreaterThan(300);
    expect((await memberTable(child.admin)).self.incarnation).toBeGreaterThan(0);
    expect((await memberTable(sa.admin)).members.find((m) => m.id === 'c')).toMatchObject({ state: 'alive', revivals: revivalsBefore + 1, excluded: false });
    await until(async () => (await appsReached(sa.outbound, 3)).includes('c'), 10_000, 'traffic to reach c again');

    child.process.kill('SIGKILL');
    await child.exited;
    await until(() => stateOfC(sa) === 'dead' && stateOfC(sb) === 'dead', 15_000, 'a and b to declare the killed c dead');
    expect(await appsReached(sb.outbound, 6)).not.toContain('c');
  }, 90_000);

  it('the deep check fails a sidecar whose state agent is stuck while its TLS listener still answers', async () => {
    const redis = await startRedis(closers);
    const admin = new Redis(redis.port, '127.0.0.1');
    const info = await admin.info('server');
    admin.disconnect();
    const redisPid = Number(/process_id:(\d+)/.exec(info)![1]);
    closers.push(async () => {
      process.kill(redisPid, 'SIGCONT');
    });
    const nodes = await plan(pki, ['d', 'e', 'f'], closers);
    const [d, e, f] = nodes as [Node, Node, Node];
    const running: RunningSidecar[] = [];
    for (const node of nodes) {
      const extra = node === f ? { context: { ...(meshConfig(node, nodes).context as object), l2: { backend: 'redis', url: redis.url, commandTimeout: '10s' } } } : {};
      const s = await startSidecar(sidecarConfig(node.identity, meshConfig(node, nodes, extra)));
      closers.push(() => s.sidecar.close());
      running.push(s);
    }
    const [sd, se, sf] = running as [RunningSidecar, RunningSidecar, RunningSidecar];
    await until(() => sd.sidecar.health!.prober.describe().every((m) => m.last_probe?.result === 'ack'), 10_000, 'd to probe everyone');

    // f's L2 freezes: its context path hangs, its process and TLS listener do not.
    process.kill(redisPid, 'SIGSTOP');
    await until(() => sd.sidecar.membership.get('f')?.state === 'dead' && se.sidecar.membership.get('f')?.state === 'dead', 15_000, 'f declared dead');
    expect(await metricValue(sd.admin, 'ctxmesh_health_probes_total', { result: 'deep_failed' })).toBeGreaterThanOrEqual(1);
    expect(sf.sidecar.health!.prober.selfHealthy).toBe(false);
    expect(sd.sidecar.health!.isUnreachable(f.address)).toBe(true);

    const identity = MeshIdentity.load(d.identity);
    const client = new PeerClient(identity);
    closers.push(async () => {
      await client.close();
      identity.close();
    });
    const shallow = await client.call(f.address, 'ping', { from: 'd', incarnation: 0, target: 'f', timeoutMs: 2_000 }, { timeoutMs: 2_000 });
    expect(shallow.status).toBe(200);
    expect(shallow.json<{ ack: boolean }>().ack).toBe(true);
    const deep = await client.call(f.address, 'ping', { from: 'd', incarnation: 0, target: 'f', deep: true, timeoutMs: 300 }, { timeoutMs: 2_000 });
    expect(deep.json<{ ack: boolean; reason?: string }>()).toMatchObject({ ack: false, reason: 'context_unavailable' });
    expect(await appsReached(sd.outbound, 6)).not.toContain('f');

    process.kill(redisPid, 'SIGCONT');
    try {
      await until(() => sd.sidecar.membership.get('f')?.state === 'alive' && se.sidecar.membership.get('f')?.state === 'alive', 20_000, 'f back');
    } catch (err) {
      console.log(JSON.stringify(sf.logs.lines.filter((l) => l.kind !== 'access').slice(-40), null, 1));
      console.log(JSON.stringify(sd.sidecar.health!.describe(), null, 1));
      throw err;
    }
    expect(sf.sidecar.health!.prober.selfHealthy).toBe(true);
  }, 60_000);

  it('reports reach the control plane: the majority side of a partition gets the minority declared, never the reverse', async () => {
    const plane = await ControlPlane.start(
      ControlPlaneConfigSchema.parse({ port: 0, address: '127.0.0.1', admin: { port: 0 }, registration: { ttl: '120s' }, health: { suspicionWindow: '3s' }, log: { level: 'silent' } }),
    );
    closers.push(() => plane.close());
    const api = `http://127.0.0.1:${plane.adminPort}`;
    const nodes = await plan(pki, ['p', 'q', 'r'], closers);
    // Every observer reaches every peer through a link of its own, so the test can cut exactly the partition.
    const links = new Map<string, CuttableLink>();
    for (const from of nodes) {
      for (const to of nodes) {
        if (from === to) continue;
        const link = await new CuttableLink(to.address).start();
        closers.push(() => link.close());
        links.set(`${from.id}>${to.id}`, link);
      }
    }
    const sidecars = new Map<string, RunningSidecar>();
    for (const node of nodes) {
      const peers = nodes.filter((n) => n !== node).map((n) => ({ id: n.id, address: links.get(`${node.id}>${n.id}`)!.address }));
      const config = meshConfig(node, nodes, {
        clusters: [],
        context: { replication: { peers } },
        health: { ...FAST_HEALTH, reportTo: `127.0.0.1:${plane.adminPort}`, reportInterval: '300ms' },
      });
      const running = await startSidecar(sidecarConfig(node.identity, config));
      closers.push(() => running.sidecar.close());
      sidecars.set(node.id, running);
      // What the sidecar's xDS client does on its ADS stream, done here through the registration API.
      const registered = await send(api, '/v1/register', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ nodeId: node.id, service: 'chat', address: node.address }),
      });
      expect(registered.status).toBe(200);
    }
    const registry = async (): Promise<Map<string, string>> => {
      const { services } = JSON.parse((await send(api, '/v1/registry')).body) as { services: Array<{ name: string; endpoints: RegistryEndpoint[] }> };
      const chat = services.find((svc) => svc.name === 'chat')!;
      return new Map(nodes.map((n) => [n.id, chat.endpoints.find((e) => e.address === n.address)?.health ?? 'absent']));
    };
    const stateIn = (observer: string, subject: string): string | undefined => sidecars.get(observer)!.sidecar.membership.get(subject)?.state;
    await until(
      () => nodes.every((o) => nodes.every((s) => o === s || sidecars.get(o.id)!.sidecar.health!.prober.describe().find((m) => m.id === s.id)?.last_probe?.result === 'ack')),
      10_000,
      'everyone to probe everyone',
    );
    await until(() => nodes.every((o) => nodes.every((s) => o === s || stateIn(o.id, s.id) === 'alive')), 15_000, 'everyone alive everywhere');
    expect([...(await registry()).values()]).toEqual(['HEALTHY', 'HEALTHY', 'HEALTHY']);

    // p on one side, q and r on the other; every side still reaches the control plane.
    for (const [name, link] of links) if (name.startsWith('p>') || name.endsWith('>p')) link.sever();
    await until(() => stateIn('q', 'p') === 'dead' && stateIn('r', 'p') === 'dead', 15_000, 'q and r to find p dead');
    await until(async () => (await registry()).get('p') === 'UNHEALTHY', 10_000, 'the control plane to declare p');
    const declared = JSON.parse((await send(api, '/v1/failovers')).body) as { failovers: Array<{ kind: string; nodeId?: string; reason?: string }> };
    expect(declared.failovers.find((f) => f.kind === 'declared')).toMatchObject({ nodeId: 'p' });

    // The minority reaches the same verdicts about the majority and reports them: no quorum.
    await until(() => stateIn('p', 'q') === 'dead' && stateIn('p', 'r') === 'dead', 15_000, 'p to find q and r dead');
    const sentBy = async (id: string): Promise<number> => (await metricValue(sidecars.get(id)!.admin, 'ctxmesh_health_reports_total', { outcome: 'sent' })) ?? 0;
    const sentAfterVerdict = await sentBy('p');
    await until(async () => (await sentBy('p')) >= sentAfterVerdict + 3, 10_000, 'p to report its verdicts');
    const after = await registry();
    expect(after.get('q')).toBe('HEALTHY');
    expect(after.get('r')).toBe('HEALTHY');
    expect(after.get('p')).toBe('UNHEALTHY');
    const history = JSON.parse((await send(api, '/v1/failovers')).body) as { failovers: Array<{ kind: string; nodeId?: string }> };
    expect(history.failovers.filter((f) => f.kind === 'declared').map((f) => f.nodeId)).toEqual(['p']);
  }, 60_000);
});
