// Two control-plane replicas sharing one Redis, as users run them: the built CLI as child
// processes, a real redis-server, raw ADS streams carrying sidecar node metadata. A registration,
// a drain or a declaration made through one replica reaches the other's clients; a declaration
// with reports split across both happens once; a SIGKILLed replica's clients get the same
// resources from the other; epochs never go backwards across restarts; a Redis outage leaves the
// clients' config alone and the state resyncs when Redis returns (even empty).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { closeAfterEach, until } from '../helpers/mesh.js';
import { freePort, startRedis, type RedisServer } from '../helpers/redis.js';
import { fromStruct } from '../../xds/resources.js';
import { DeltaClient, SotwClient, TYPE_URL, type DeltaResponse, type SotwResponse } from './ads-client.js';

const CLI = resolve('dist/src/cli/main.js');
const START_TIMEOUT_MS = 10_000;
const SYNC_TIMEOUT_MS = 10_000;

const closers = closeAfterEach();
const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-replicas-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));


interface Replica {
  name: string;
  xds: string;
  admin: string;
  config: string;
  adminPort: number;
  child: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
}

async function writeReplicaConfig(name: string, redisUrl: string, ttl: string): Promise<{ config: string; xdsPort: number; adminPort: number }> {
  const [xdsPort, adminPort] = [await freePort(), await freePort()];
  const config = join(dir, `${name}-${xdsPort}.yaml`);
  writeFileSync(
    config,
    [
      `port: ${xdsPort}`,
      'address: 127.0.0.1',
      `admin: { port: ${adminPort} }`,
      'log: { level: warn }',
      `registration: { ttl: ${ttl} }`,
      'health: { suspicionWindow: 30s }',
      `store: { backend: redis, url: "${redisUrl}", resyncInterval: 1s, connectTimeout: 500ms, commandTimeout: 500ms }`,
      'services:',
      '  - name: search',
      '    tls: none',
      '    endpoints: [{ address: 127.0.0.1:7001, zone: z1 }, { address: 127.0.0.1:7002, zone: z2, priority: 1 }]',
    ].join('\n'),
  );
  return { config, xdsPort, adminPort };
}

function spawnReplica(name: string, config: string, xdsPort: number, adminPort: number): Replica {
  const child = spawn(process.execPath, [CLI, 'control-plane', '-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolvePromise) => child.once('exit', (code) => resolvePromise(code)));
  closers.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { name, xds: `127.0.0.1:${xdsPort}`, admin: `http://127.0.0.1:${adminPort}`, config, adminPort, child, exited, output: () => output };
}

async function waitReady(replica: Replica): Promise<void> {
  await until(
    async () => {
      if (replica.child.exitCode !== null) throw new Error(`${replica.name} exited: ${replica.output()}`);
      try {
        const res = await request(`${replica.admin}/ready`);
        await res.body.text();
        return res.statusCode === 200 && res.headers['x-ctxmesh-degraded'] === undefined;
      } catch {
        return false;
      }
    },
    START_TIMEOUT_MS,
    `${replica.name} ready`,
  );
}

async function startReplica(name: string, redisUrl: string, ttl = '10s'): Promise<Replica> {
  const { config, xdsPort, adminPort } = await writeReplicaConfig(name, redisUrl, ttl);
  const replica = spawnReplica(name, config, xdsPort, adminPort);
  await waitReady(replica);
  return replica;
}

/** The same replica (config, ports) started again after it died. */
async function restartReplica(replica: Replica): Promise<Replica> {
  const [, xdsPort] = /:(\d+)$/.exec(replica.xds)!;
  const again = spawnReplica(replica.name, replica.config, Number(xdsPort), replica.adminPort);
  await waitReady(again);
  return again;
}

async function get<T = any>(replica: Replica, path: string): Promise<T> {
  const res = await request(`${replica.admin}${path}`);
  if (res.statusCode !== 200) throw new Error(`GET ${path}: ${res.statusCode} ${await res.body.text()}`);
  return (await res.body.json()) as T;
}

async function post(replica: Replica, path: string, body: unknown): Promise<{ status: number; error: string | undefined; body: any }> {
  const res = await request(`${replica.admin}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const header = res.headers['x-ctxmesh-error'];
  return { status: res.statusCode, error: typeof header === 'string' ? header : undefined, body: await res.body.json() };
}

async function endpoints(replica: Replica, service: string): Promise<any[]> {
  const { services } = await get<{ services: any[] }>(replica, '/v1/registry');
  return services.find((s) => s.name === service)?.endpoints ?? [];
}

async function endpointOf(replica: Replica, service: string, nodeId: string): Promise<any> {
  return (await endpoints(replica, service)).find((e) => e.nodeId === nodeId);
}

function track<T extends { close(): void }>(client: T): T {
  closers.push(async () => client.close());
  return client;
}

function sidecar(replica: Replica, id: string, address: string): SotwClient {
  return track(new SotwClient(replica.xds, { id, cluster: 'chat', zone: 'z1', metadata: { 'ctxmesh.address': address, 'ctxmesh.role': 'sidecar' } }));
}

/** lb endpoints of a SotW EDS response, by hostname (node id) or address. */
function lbEndpoints(client: SotwClient, response: SotwResponse): Array<{ key: string; health: string; epoch: number }> {
  return client.decode(response).flatMap((assignment: any) =>
    assignment.endpoints.flatMap((locality: any) =>
      locality.lb_endpoints.map((lb: any) => ({
        key: lb.endpoint.hostname || `${lb.endpoint.address.socket_address.address}:${lb.endpoint.address.socket_address.port_value}`,
        health: lb.health_status,
        epoch: Number(fromStruct(lb.metadata?.filter_metadata?.ctxmesh).epoch ?? 0),
      })),
    ),
  );
}

/** Reads SotW EDS pushes (ACKing each) until one satisfies `wanted`. */
async function edsUntil(client: SotwClient, names: string[], wanted: (eps: ReturnType<typeof lbEndpoints>) => boolean): Promise<ReturnType<typeof lbEndpoints>> {
  const deadline = Date.now() + SYNC_TIMEOUT_MS;
  for (;;) {
    const response = await client.next(TYPE_URL.clusterLoadAssignment, Math.max(1, deadline - Date.now()));
    client.ack(response, names);
    const eps = lbEndpoints(client, response);
    if (wanted(eps)) return eps;
  }
}

function versionsOf(response: DeltaResponse): Record<string, string> {
  return Object.fromEntries(response.resources.map((r) => [r.name, r.version]));
}

describe('two control-plane replicas on one Redis', () => {
  it('a sidecar registered on A is in the EDS B serves; a drain through B reaches A’s clients; both serve the same versions', async () => {
    const redis = await startRedis(closers);
    const [a, b] = [await startReplica('A', redis.url), await startReplica('B', redis.url)];

    const onA = sidecar(a, 'node-a', '127.0.0.1:25006');
    onA.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    const onB = track(new SotwClient(b.xds, { id: 'watcher-b' }));
    onB.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    expect(await edsUntil(onB, ['chat'], (eps) => eps.some((e) => e.key === 'node-a'))).toEqual([{ key: 'node-a', health: 'HEALTHY', epoch: 0 }]);
    expect(await endpointOf(b, 'chat', 'node-a')).toMatchObject({ source: 'registered', health: 'HEALTHY', epoch: 0 });

    const drained = await post(b, '/v1/endpoints/drain', { service: 'chat', address: '127.0.0.1:25006', reason: 'rollout' });
    expect(drained.body.endpoint).toMatchObject({ nodeId: 'node-a', health: 'DRAINING', epoch: 1 });
    expect(await edsUntil(onA, ['chat'], (eps) => eps[0]?.health === 'DRAINING')).toEqual([{ key: 'node-a', health: 'DRAINING', epoch: 1 }]);

    // Same state, same content, same per-resource versions on both replicas.
    const [deltaA, deltaB] = [track(new DeltaClient(a.xds, { id: 'delta-a' })), track(new DeltaClient(b.xds, { id: 'delta-b' }))];
    deltaA.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['chat', 'search'] });
    deltaB.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['chat', 'search'] });
    const [fromA, fromB] = [versionsOf(await deltaA.next(TYPE_URL.clusterLoadAssignment)), versionsOf(await deltaB.next(TYPE_URL.clusterLoadAssignment))];
    expect(Object.keys(fromA).sort()).toEqual(['chat', 'search']);
    expect(fromB).toEqual(fromA);
    // One history, whichever replica is asked.
    const [historyA, historyB] = [await get(a, '/v1/failovers'), await get(b, '/v1/failovers')];
    expect(historyA.failovers.map((f: any) => [f.kind, f.epoch])).toEqual([
      ['registered', 0],
      ['drain', 1],
    ]);
    expect(historyB).toEqual(historyA);
  });

  it('a declaration with reports split across both replicas happens once, with one epoch', async () => {
    const redis = await startRedis(closers);
    const replicas = [await startReplica('A', redis.url), await startReplica('B', redis.url)];
    const [a, b] = replicas as [Replica, Replica];
    const members = ['a', 'b', 'c', 'd', 'e'];
    for (const [i, id] of members.entries()) {
      await post(replicas[i % 2]!, '/v1/register', { nodeId: id, service: 'chat', address: `127.0.0.1:${25000 + i}`, zone: 'z1' });
    }
    for (const replica of replicas) await until(async () => (await endpoints(replica, 'chat')).length === 5, SYNC_TIMEOUT_MS, `${replica.name} sees five members`);
    const watcher = track(new SotwClient(a.xds, { id: 'watcher' }));
    watcher.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    await edsUntil(watcher, ['chat'], (eps) => eps.length === 5);

    const reportDead = (replica: Replica, observer: string) =>
      post(replica, '/v1/health/reports', { observer, reports: [{ subject: 'e', status: 'dead', incarnation: 0 }] });
    // Two of the four voters, one through each replica: no quorum yet, whichever replica counts.
    expect((await reportDead(a, 'a')).body.results[0].outcome).toBe('unchanged');
    const second = await reportDead(b, 'b');
    expect(second.body.results[0]).toMatchObject({ outcome: 'unchanged', verdict: { voters: 4, needed: 3, suspecting: ['a', 'b'] } });
    // The third and fourth arrive together, one at each replica: both may see a quorum.
    const [third, fourth] = await Promise.all([reportDead(a, 'c'), reportDead(b, 'd')]);
    const outcomes = [third.body.results[0].outcome, fourth.body.results[0].outcome];
    expect(outcomes.filter((o) => o === 'declared')).toHaveLength(1);

    for (const replica of replicas) {
      await until(async () => (await endpointOf(replica, 'chat', 'e'))?.health === 'UNHEALTHY', SYNC_TIMEOUT_MS, `${replica.name} sees e declared`);
      expect(await endpointOf(replica, 'chat', 'e')).toMatchObject({ health: 'UNHEALTHY', epoch: 1 });
      const { failovers } = await get(replica, '/v1/failovers');
      expect(failovers.filter((f: any) => f.kind === 'declared')).toMatchObject([{ nodeId: 'e', epoch: 1 }]);
    }
    expect((await edsUntil(watcher, ['chat'], (eps) => eps.some((e) => e.key === 'e' && e.health === 'UNHEALTHY'))).find((e) => e.key === 'e')).toEqual({
      key: 'e',
      health: 'UNHEALTHY',
      epoch: 1,
    });
  });

  it('after SIGKILL of A, its clients reconnect to B and get the same resources; the registration and its epoch stay', async () => {
    const redis = await startRedis(closers);
    const [a, b] = [await startReplica('A', redis.url), await startReplica('B', redis.url)];
    let node = sidecar(a, 'node-a', '127.0.0.1:25006');
    node.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    await edsUntil(node, ['chat'], (eps) => eps.length === 1);
    await until(async () => (await endpointOf(b, 'chat', 'node-a')) !== undefined, SYNC_TIMEOUT_MS, 'B sees node-a');
    const observer = track(new DeltaClient(a.xds, { id: 'observer' }));
    observer.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['chat', 'search'] });
    const versions = versionsOf(await observer.next(TYPE_URL.clusterLoadAssignment));

    a.child.kill('SIGKILL');
    await a.exited;
    await expect(observer.next(TYPE_URL.clusterLoadAssignment)).rejects.toThrow();
    // The sidecar reconnects to B with the same node: still one endpoint, same epoch, no new history.
    node = sidecar(b, 'node-a', '127.0.0.1:25006');
    node.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    expect(lbEndpoints(node, await node.next(TYPE_URL.clusterLoadAssignment))).toEqual([{ key: 'node-a', health: 'HEALTHY', epoch: 0 }]);
    await until(async () => (await endpointOf(b, 'chat', 'node-a'))?.registration?.openStreams === 1, SYNC_TIMEOUT_MS, 'B holds the stream');

    // A delta client resyncing on B with what A gave it gets nothing: the versions are the same.
    const resync = track(new DeltaClient(b.xds, { id: 'observer' }));
    resync.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['chat', 'search'], initialVersions: versions });
    const fresh = track(new DeltaClient(b.xds, { id: 'fresh' }));
    fresh.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['chat', 'search'] });
    expect(versionsOf(await fresh.next(TYPE_URL.clusterLoadAssignment))).toEqual(versions);
    await post(b, '/v1/endpoints/drain', { service: 'search', address: '127.0.0.1:7001' });
    expect((await resync.next(TYPE_URL.clusterLoadAssignment)).resources.map((r) => r.name)).toEqual(['search']);
    expect((await get(b, '/v1/failovers')).failovers.map((f: any) => f.kind)).toEqual(['registered', 'drain']);
  });

  it('epochs never go backwards across restarts of every replica, even for a node that expired and came back', async () => {
    const redis = await startRedis(closers);
    let a = await startReplica('A', redis.url, '1s');
    let b = await startReplica('B', redis.url, '1s');
    const registration = { nodeId: 'node-e', service: 'chat', address: '127.0.0.1:25004', zone: 'z1' };
    await post(a, '/v1/register', registration);
    expect((await post(b, '/v1/endpoints/drain', { service: 'chat', address: registration.address })).body.endpoint.epoch).toBe(1);

    for (const replica of [a, b]) {
      replica.child.kill('SIGKILL');
      await replica.exited;
    }
    a = await restartReplica(a);
    // The lease outlived the restart; nobody renews it, so it expires (once) and the node returns.
    await until(async () => (await endpoints(a, 'chat')).length === 0, SYNC_TIMEOUT_MS, 'node-e expired');
    b = await restartReplica(b);
    await post(b, '/v1/register', registration);
    await until(async () => (await endpointOf(a, 'chat', 'node-e')) !== undefined, SYNC_TIMEOUT_MS, 'A sees node-e again');
    // Memory would have restarted it at 0: the store continues from the drain's epoch.
    expect(await endpointOf(a, 'chat', 'node-e')).toMatchObject({ health: 'HEALTHY', epoch: 2 });
    const kinds = (await get(a, '/v1/failovers')).failovers.map((f: any) => [f.kind, f.epoch]);
    expect(kinds).toEqual([
      ['registered', 0],
      ['drain', 1],
      ['expired', 1],
      ['registered', 2],
    ]);
  });

  it('with Redis down, clients keep their config and replicas report degraded; when it returns empty, the state is written back', async () => {
    const redis: RedisServer = await startRedis(closers);
    const [a, b] = [await startReplica('A', redis.url, '30s'), await startReplica('B', redis.url, '30s')];
    const node = sidecar(a, 'node-a', '127.0.0.1:25006');
    node.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    await edsUntil(node, ['chat'], (eps) => eps.length === 1);
    await post(b, '/v1/register', { nodeId: 'node-h', service: 'chat', address: '127.0.0.1:25007', zone: 'z1' });
    await post(b, '/v1/endpoints/drain', { service: 'chat', address: '127.0.0.1:25007' });
    const watcher = track(new SotwClient(b.xds, { id: 'watcher' }));
    watcher.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    await edsUntil(watcher, ['chat'], (eps) => eps.length === 2 && eps.some((e) => e.key === 'node-h' && e.health === 'DRAINING' && e.epoch === 1));

    await redis.kill();
    for (const replica of [a, b]) {
      await until(async () => (await get(replica, '/v1/registry')).store.degraded === true, SYNC_TIMEOUT_MS, `${replica.name} degraded`);
      const ready = await request(`${replica.admin}/ready`);
      expect([ready.statusCode, ready.headers['x-ctxmesh-degraded'], await ready.body.text()]).toEqual([200, 'store', expect.stringMatching(/degraded/)]);
    }
    // Last known state still served; operations that need the store say so.
    expect((await endpoints(b, 'chat')).map((e) => [e.nodeId, e.health, e.epoch])).toEqual([
      ['node-a', 'HEALTHY', 0],
      ['node-h', 'DRAINING', 1],
    ]);
    const refused = await post(b, '/v1/endpoints/drain', { service: 'chat', address: '127.0.0.1:25006' });
    expect([refused.status, refused.error]).toEqual([503, 'store_unavailable']);
    // A registration meanwhile is served by the replica that took it, and kept for write-back.
    expect((await post(a, '/v1/register', { nodeId: 'node-n', service: 'chat', address: '127.0.0.1:25008', zone: 'z1' })).status).toBe(200);
    expect((await get(a, '/v1/registry')).store.pendingWrites).toBe(1);
    expect((await edsUntil(node, ['chat'], (eps) => eps.some((e) => e.key === 'node-n'))).map((e) => e.key).sort()).toEqual(['node-a', 'node-h', 'node-n']);

    // Redis returns with nothing (no persistence): the replicas write back what they knew.
    await redis.restart();
    for (const replica of [a, b]) {
      await until(async () => (await get(replica, '/v1/registry')).store.degraded === false, SYNC_TIMEOUT_MS, `${replica.name} back in sync`);
    }
    await until(async () => (await endpoints(b, 'chat')).length === 3, SYNC_TIMEOUT_MS, 'B sees the registration made on A meanwhile');
    expect((await endpoints(b, 'chat')).map((e) => [e.nodeId, e.health, e.epoch])).toEqual([
      ['node-a', 'HEALTHY', 0],
      ['node-h', 'DRAINING', 1],
      ['node-n', 'HEALTHY', 0],
    ]);
    const eps = await edsUntil(watcher, ['chat'], (list) => list.length === 3);
    expect(eps.find((e) => e.key === 'node-h')).toEqual({ key: 'node-h', health: 'DRAINING', epoch: 1 });
    // The next transition continues from the epochs written back, not from 0.
    expect((await post(a, '/v1/endpoints/drain', { service: 'chat', address: '127.0.0.1:25007', reason: 'again' })).body.endpoint.epoch).toBe(1);
    await post(b, '/v1/register', { nodeId: 'node-h', service: 'chat', address: '127.0.0.1:25007', zone: 'z1', incarnation: 1 });
    await until(async () => (await endpointOf(a, 'chat', 'node-h'))?.health === 'HEALTHY', SYNC_TIMEOUT_MS, 'A sees node-h recovered');
    expect(await endpointOf(a, 'chat', 'node-h')).toMatchObject({ health: 'HEALTHY', epoch: 2 });
    // The sidecar's stream on A never broke.
    expect(node.responses.error).toBeUndefined();
  });
});
