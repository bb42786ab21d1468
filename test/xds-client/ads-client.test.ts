// The sidecar following a scripted ADS server: real gRPC stream, real sidecars, real HTTP apps.
import { describe, expect, it } from 'vitest';
import { TYPE_URL } from '../../xds/protos.js';
import { reconnectDelay } from '../../src/xds-client/ads-client.js';
import { edsCluster, listener, loadAssignment, routeConfiguration, ScriptedAdsServer, serviceResources, type ScriptedEndpoint } from '../helpers/ads-server.js';
import {
  closeAfterEach,
  createPki,
  deadAddress,
  metricValue,
  send,
  sidecarConfig,
  startApp,
  startSidecar,
  until,
  type ConfigInput,
  type RunningSidecar,
  type TestApp,
  type TestPki,
} from '../helpers/mesh.js';

const closers = closeAfterEach();
let pki: TestPki | undefined;

async function identity() {
  pki ??= await createPki();
  return pki.issue('xds-client');
}

async function app(name: string): Promise<TestApp> {
  const started = await startApp(name);
  closers.push(() => started.close());
  return started;
}

async function adsServer(port = 0): Promise<ScriptedAdsServer> {
  const server = await new ScriptedAdsServer().start(port);
  closers.push(() => server.stop());
  return server;
}

async function sidecar(server: string, overrides: ConfigInput = {}): Promise<RunningSidecar> {
  const { xds, ...rest } = overrides;
  const config = sidecarConfig(await identity(), {
    node: { id: 'node-a', cluster: 'self-svc', zone: 'z1' },
    xds: { server, initialFetchTimeout: '3s', reconnect: { base: '50ms', max: '400ms' }, ...(xds as object | undefined) },
    context: { enabled: false },
    health: { enabled: false },
    log: { level: 'warn', accessLog: false },
    ...rest,
  });
  const running = await startSidecar(config);
  closers.push(() => running.sidecar.close());
  return running;
}

/** Publishes one plain-HTTP service (Listener, RouteConfiguration, Cluster, CLA) on the server. */
function publish(server: ScriptedAdsServer, services: Array<{ name: string; endpoints: ScriptedEndpoint[]; domains?: string[]; cluster?: object }>) {
  const built = services.map((s) => serviceResources(s.name, s.endpoints, { domains: s.domains, cluster: s.cluster }));
  return {
    lds: server.set(TYPE_URL.listener, built.map((b) => b.listener)),
    rds: server.set(TYPE_URL.routeConfiguration, built.map((b) => b.route)),
    cds: server.set(TYPE_URL.cluster, built.map((b) => b.cluster)),
    eds: server.set(TYPE_URL.clusterLoadAssignment, built.map((b) => b.endpoints)),
  };
}

async function appOf(outbound: string, host: string, path = '/'): Promise<string> {
  const reply = await send(outbound, path, { host });
  if (reply.status !== 200) return `${reply.status} ${String(reply.headers['x-ctxmesh-error'] ?? '')}`;
  return (JSON.parse(reply.body) as { app: string }).app;
}

async function configDump(admin: string): Promise<any> {
  return JSON.parse((await send(admin, '/config_dump')).body);
}

describe('sidecar xDS client', () => {
  it('routes by Host to a cluster learnt over ADS, ACKs each type and announces its node', async () => {
    const server = await adsServer();
    const chat = await app('chat');
    const versions = publish(server, [{ name: 'chat', endpoints: [{ address: chat.address }], domains: ['chat', 'chat.default.svc'] }]);
    const s = await sidecar(server.address);

    // Sidecar.start waited for the first full config: it routes at once.
    expect(await appOf(s.outbound, 'chat')).toBe('chat');
    expect(await appOf(s.outbound, 'chat.default.svc:8080')).toBe('chat');
    expect(await appOf(s.outbound, 'unknown')).toBe('404 no_route');
    await until(() => server.acked(TYPE_URL.clusterLoadAssignment, versions.eds), 5_000, 'EDS ACK');
    for (const [type, version] of [[TYPE_URL.listener, versions.lds], [TYPE_URL.routeConfiguration, versions.rds], [TYPE_URL.cluster, versions.cds]] as const) {
      expect(server.acked(type, version), type).toBe(true);
    }
    // An ACK names the version it accepts and the nonce it answers.
    const ack = server.repliesOf(TYPE_URL.cluster, 'ack')[0]!;
    expect(ack.reportedVersion).toBe(versions.cds);
    // LDS/CDS are wildcard; RDS and EDS name what listeners and clusters reference (+ own service).
    const names = (type: string) => server.requests.filter((r) => r.typeUrl === type).at(-1)!.resourceNames;
    expect(names(TYPE_URL.listener)).toEqual([]);
    expect(names(TYPE_URL.routeConfiguration)).toEqual(['chat']);
    expect(names(TYPE_URL.clusterLoadAssignment)).toEqual(['chat', 'self-svc']);
    expect(server.lastNode()).toEqual({
      id: 'node-a',
      cluster: 'self-svc',
      zone: 'z1',
      metadata: { 'ctxmesh.address': s.inboundAddress, 'ctxmesh.role': 'sidecar', 'ctxmesh.incarnation': expect.any(Number) },
    });

    const dump = await configDump(s.admin);
    expect(dump.xds).toMatchObject({ server: server.address, connected: true, initialFetchDone: true });
    expect(dump.xds.types.cds).toMatchObject({ version: versions.cds, subscribed: '*', last_ack: { version: versions.cds } });
    expect(dump.xds.types.eds.subscribed).toEqual(['chat', 'self-svc']);
    const clusters = JSON.parse((await send(s.admin, '/clusters')).body).clusters as Array<{ name: string; source?: string }>;
    expect(clusters).toContainEqual(expect.objectContaining({ name: 'chat', source: 'xds' }));
    expect(await metricValue(s.admin, 'ctxmesh_xds_connected')).toBe(1);
    expect(await metricValue(s.admin, 'ctxmesh_xds_updates_total', { type: 'cds', result: 'ack' })).toBeGreaterThanOrEqual(1);
  });

  it('swaps an endpoint change atomically; a request in flight finishes on its old endpoint', async () => {
    const server = await adsServer();
    const held: Array<() => void> = [];
    const oldApp = await startApp('old', (req, res) => {
      const answer = () => res.end(JSON.stringify({ app: 'old' }));
      if (req.url === '/slow') held.push(answer);
      else answer();
    });
    closers.push(() => oldApp.close());
    const newApp = await app('new');
    publish(server, [{ name: 'chat', endpoints: [{ address: oldApp.address }] }]);
    const s = await sidecar(server.address);

    const slow = send(s.outbound, '/slow', { host: 'chat' });
    await until(() => held.length === 1, 5_000, 'the slow request to reach the old app');
    const retired = (s.sidecar as unknown as { dynamic: { retired: unknown[] } }).dynamic.retired;
    expect(retired).toEqual([]);

    // Sequential clients during the switch: each sees old … old new … new, never old after new.
    let switching = true;
    const client = async (): Promise<string[]> => {
      const seen: string[] = [];
      while (switching || seen.at(-1) !== 'new') seen.push(await appOf(s.outbound, 'chat'));
      return seen;
    };
    const clients = [client(), client(), client()];
    const version = server.set(TYPE_URL.clusterLoadAssignment, [loadAssignment('chat', [{ address: newApp.address }])]);
    await until(() => server.acked(TYPE_URL.clusterLoadAssignment, version), 5_000, 'ACK of the new endpoints');
    switching = false;
    for (const seen of await Promise.all(clients)) {
      expect(seen.every((a) => a === 'old' || a === 'new'), seen.join(',')).toBe(true);
      expect(seen.slice(seen.indexOf('new')).every((a) => a === 'new'), seen.join(',')).toBe(true);
    }
    expect(await appOf(s.outbound, 'chat')).toBe('new');
    // The replaced cluster waits for the request it still carries.
    expect((s.sidecar as unknown as { dynamic: { retired: unknown[] } }).dynamic.retired).toHaveLength(1);

    // The request that started on the old cluster completes there, after the switch.
    held.shift()!();
    const reply = await slow;
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).app).toBe('old');
    // …and only then is the old cluster closed.
    const dynamic = (s.sidecar as unknown as { dynamic: { retired: unknown[] } }).dynamic;
    await until(() => dynamic.retired.length === 0, 5_000, 'the old cluster to close');
  });

  it('keeps an unchanged cluster object (breaker and outlier state) across updates of others', async () => {
    const server = await adsServer();
    const a = await app('a');
    const b = await app('b');
    publish(server, [
      { name: 'alpha', endpoints: [{ address: a.address }] },
      { name: 'beta', endpoints: [{ address: b.address }] },
    ]);
    const s = await sidecar(server.address);
    const dynamic = (s.sidecar as unknown as { dynamic: { current: Array<{ name: string }> } }).dynamic;
    const before = dynamic.current.find((c) => c.name === 'alpha');
    const version = server.set(TYPE_URL.clusterLoadAssignment, [
      loadAssignment('alpha', [{ address: a.address }]),
      loadAssignment('beta', [{ address: a.address }]),
    ]);
    await until(() => server.acked(TYPE_URL.clusterLoadAssignment, version), 5_000, 'EDS ACK');
    await until(async () => (await appOf(s.outbound, 'beta')) === 'a', 5_000, 'beta to move');
    expect(dynamic.current.find((c) => c.name === 'alpha')).toBe(before);
  });

  it('NACKs an invalid resource with a useful error_detail and keeps routing on the last good config', async () => {
    const server = await adsServer();
    const chat = await app('chat');
    const good = publish(server, [{ name: 'chat', endpoints: [{ address: chat.address }] }]);
    const s = await sidecar(server.address);
    expect(await appOf(s.outbound, 'chat')).toBe('chat');

    const badCds = server.set(TYPE_URL.cluster, [edsCluster('chat', { lb_policy: 'MAGLEV' })]);
    await until(() => server.nacked(TYPE_URL.cluster, badCds) !== undefined, 5_000, 'CDS NACK');
    const nack = server.nacked(TYPE_URL.cluster, badCds)!;
    expect(nack.error).toContain('Cluster "chat": lb_policy: unsupported policy MAGLEV');
    // A NACK reports the version still in force, and answers the rejected response's nonce.
    expect(nack.reportedVersion).toBe(good.cds);
    expect(await appOf(s.outbound, 'chat')).toBe('chat');

    const badEds = server.set(TYPE_URL.clusterLoadAssignment, [loadAssignment('chat', [{ address: 'bad host!:80' }])]);
    await until(() => server.nacked(TYPE_URL.clusterLoadAssignment, badEds) !== undefined, 5_000, 'EDS NACK');
    expect(server.nacked(TYPE_URL.clusterLoadAssignment, badEds)!.error).toMatch(/ClusterLoadAssignment "chat": endpoints\[0\]\.lb_endpoints\[0\]\.endpoint\.address\.socket_address\.address/);
    expect(await appOf(s.outbound, 'chat')).toBe('chat');

    const dump = await configDump(s.admin);
    expect(dump.xds.types.cds).toMatchObject({ version: good.cds, last_nack: { version: badCds, error: expect.stringContaining('MAGLEV') } });
    expect(dump.xds.types.eds.last_nack.version).toBe(badEds);
    expect(await metricValue(s.admin, 'ctxmesh_xds_updates_total', { type: 'cds', result: 'nack' })).toBe(1);
    expect(await metricValue(s.admin, 'ctxmesh_xds_updates_total', { type: 'eds', result: 'nack' })).toBe(1);

    // A good update after the bad ones is taken as usual.
    const other = await app('other');
    const fixed = server.set(TYPE_URL.clusterLoadAssignment, [loadAssignment('chat', [{ address: other.address }])]);
    await until(() => server.acked(TYPE_URL.clusterLoadAssignment, fixed), 5_000, 'EDS ACK after the NACK');
    await until(async () => (await appOf(s.outbound, 'chat')) === 'other', 5_000, 'the fixed endpoints');
  });

  it('serves the last good config while the control plane is gone, then reconnects and resyncs on the same port', async () => {
    const first = await adsServer();
    const chat = await app('chat');
    const versions = publish(first, [{ name: 'chat', endpoints: [{ address: chat.address }] }]);
    const s = await sidecar(first.address);
    expect(await appOf(s.outbound, 'chat')).toBe('chat');

    await first.stop();
    await until(async () => (await configDump(s.admin)).xds.connected === false, 5_000, 'the client to notice');
    expect(await metricValue(s.admin, 'ctxmesh_xds_connected')).toBe(0);
    for (let i = 0; i < 5; i++) expect(await appOf(s.outbound, 'chat')).toBe('chat');

    // A new control plane on the same port, knowing nothing yet: the client comes back to it and
    // reports the versions it holds; what it serves does not change until new resources come.
    const second = await adsServer(first.port);
    await until(() => second.openStreams > 0 && second.requests.length >= 4, 10_000, 'the client to reconnect');
    const resync = (type: string) => second.requests.find((r) => r.typeUrl === type)!;
    expect(resync(TYPE_URL.listener)).toMatchObject({ versionInfo: versions.lds, responseNonce: '' });
    expect(resync(TYPE_URL.cluster)).toMatchObject({ versionInfo: versions.cds, responseNonce: '' });
    expect(resync(TYPE_URL.routeConfiguration)).toMatchObject({ versionInfo: versions.rds, resourceNames: ['chat'] });
    expect(resync(TYPE_URL.clusterLoadAssignment)).toMatchObject({ versionInfo: versions.eds, resourceNames: ['chat', 'self-svc'] });
    expect(await appOf(s.outbound, 'chat')).toBe('chat');
    await until(async () => (await configDump(s.admin)).xds.connected === true, 5_000, 'connected again');

    const moved = await app('moved');
    const eds = second.set(TYPE_URL.clusterLoadAssignment, [loadAssignment('chat', [{ address: moved.address }])]);
    await until(() => second.acked(TYPE_URL.clusterLoadAssignment, eds), 5_000, 'EDS ACK from the new server');
    expect(await appOf(s.outbound, 'chat')).toBe('moved');
  });

  it('combines static and xDS clusters; a static name wins', async () => {
    const server = await adsServer();
    const fixed = await app('static');
    const fromXds = await app('xds');
    publish(server, [
      { name: 'web', endpoints: [{ address: fromXds.address }] },
      { name: 'chat', endpoints: [{ address: fromXds.address }], domains: ['chat-xds'] },
    ]);
    const s = await sidecar(server.address, {
      clusters: [
        { name: 'static-svc', domains: ['static-svc'], tls: 'none', endpoints: [{ address: fixed.address }] },
        { name: 'chat', domains: ['chat-static'], tls: 'none', endpoints: [{ address: fixed.address }] },
      ],
    });
    expect(await appOf(s.outbound, 'web')).toBe('xds');
    expect(await appOf(s.outbound, 'static-svc')).toBe('static');
    expect(await appOf(s.outbound, 'chat-static')).toBe('static');
    // xDS cannot replace the static `chat`: its domains do not route.
    expect(await appOf(s.outbound, 'chat-xds')).toBe('404 no_route');
    const clusters = JSON.parse((await send(s.admin, '/clusters')).body).clusters as Array<{ name: string; source?: string }>;
    expect(clusters.map((c) => `${c.name}:${c.source ?? 'static'}`).sort()).toEqual(['chat:static', 'static-svc:static', 'web:xds']);
  });

  it('updates the member set from the EDS of its own service', async () => {
    const server = await adsServer();
    const s = await sidecar(server.address, {
      node: { id: 'node-a', cluster: 'chat', zone: 'z1' },
      context: { enabled: false, replication: { peers: [{ id: 'node-static', address: '127.0.0.1:9' }] } },
      xds: { initialFetchTimeout: '200ms' },
    });
    const membership = s.sidecar.membership;
    const self = { address: s.inboundAddress, nodeId: 'node-a', zone: 'z1' };
    server.set(TYPE_URL.clusterLoadAssignment, [
      loadAssignment('chat', [
        { ...self, epoch: 4 },
        { address: '127.0.0.1:7002', zone: 'z2', nodeId: 'node-b', epoch: 1 },
        { address: '127.0.0.1:7003', zone: 'z1', nodeId: 'node-c', health: 'DRAINING', epoch: 2 },
        { address: '127.0.0.1:7004' },
      ]),
    ]);
    await until(() => membership.get('node-b') !== undefined, 5_000, 'node-b to join');
    expect(membership.members()).toEqual([
      { id: 'node-a', address: s.inboundAddress, zone: 'z1', state: 'alive', epoch: 4 },
      { id: 'node-b', address: '127.0.0.1:7002', zone: 'z2', state: 'alive', epoch: 1 },
      { id: 'node-c', address: '127.0.0.1:7003', zone: 'z1', state: 'draining', epoch: 2 },
      { id: 'node-static', address: '127.0.0.1:9', state: 'alive', epoch: 0 },
    ]);

    server.set(TYPE_URL.clusterLoadAssignment, [
      loadAssignment('chat', [
        { ...self, epoch: 4 },
        { address: '127.0.0.1:7002', zone: 'z2', nodeId: 'node-b', health: 'UNHEALTHY', epoch: 2 },
      ]),
    ]);
    await until(() => membership.get('node-b')?.state === 'dead', 5_000, 'node-b declared dead');
    expect(membership.get('node-b')!.epoch).toBe(2);
    expect(membership.get('node-c')).toBeUndefined();
    expect(membership.get('node-static')).toBeDefined();
  });

  it('gets ready without a control plane after initialFetchTimeout and serves its static clusters', async () => {
    const fixed = await app('static');
    const nowhere = await deadAddress();
    const s = await sidecar(nowhere, {
      xds: { initialFetchTimeout: '300ms', reconnect: { base: '50ms', max: '200ms' } },
      clusters: [{ name: 'static-svc', domains: ['static-svc'], tls: 'none', endpoints: [{ address: fixed.address }] }],
    });
    expect(s.sidecar.ready).toBe(true);
    expect((await send(s.admin, '/ready')).status).toBe(200);
    expect(await appOf(s.outbound, 'static-svc')).toBe('static');
    const dump = await configDump(s.admin);
    expect(dump.xds).toMatchObject({ connected: false, initialFetchDone: false });
    expect(dump.xds.lastError).toMatch(/UNAVAILABLE/);
  });

  it('backs off exponentially with full jitter, up to the maximum', () => {
    const backoff = { baseMs: 200, maxMs: 10_000 };
    expect([0, 1, 2, 3, 5, 6, 40].map((n) => reconnectDelay(n, backoff, () => 0.999999))).toEqual([200, 400, 800, 1_600, 6_400, 10_000, 10_000]);
    expect(reconnectDelay(3, backoff, () => 0)).toBe(0);
    expect(reconnectDelay(3, backoff, () => 0.5)).toBe(800);
  });

  it('waits for a route configuration the listener names before routing to it', async () => {
    const server = await adsServer();
    const chat = await app('chat');
    server.set(TYPE_URL.listener, [listener('chat', 'chat-routes')]);
    server.set(TYPE_URL.cluster, [edsCluster('chat')]);
    server.set(TYPE_URL.clusterLoadAssignment, [loadAssignment('chat', [{ address: chat.address }])]);
    const s = await sidecar(server.address, { xds: { initialFetchTimeout: '300ms' } });
    expect(await appOf(s.outbound, 'chat')).toBe('404 no_route');
    expect(server.requests.some((r) => r.typeUrl === TYPE_URL.routeConfiguration && r.resourceNames.includes('chat-routes'))).toBe(true);
    const rds = server.set(TYPE_URL.routeConfiguration, [routeConfiguration('chat-routes', [{ domains: ['chat'], cluster: 'chat' }])]);
    await until(() => server.acked(TYPE_URL.routeConfiguration, rds), 5_000, 'RDS ACK');
    expect(await appOf(s.outbound, 'chat')).toBe('chat');
  });
});
