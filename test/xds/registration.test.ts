// Sidecar registration (ADS node metadata, POST /v1/register), the TTL that outlives a stream,
// health declaration by quorum through the admin API, planned drain, and admin input errors.
import { describe, expect, it } from 'vitest';
import { closeAfterEach, until } from '../helpers/mesh.js';
import { SotwClient, TYPE_URL } from './ads-client.js';
import { adminGet, adminPost, startControlPlane, xdsAddress } from './harness.js';
import type { ControlPlane } from '../../xds/control-plane.js';
import { fromStruct } from '../../xds/resources.js';

const closers = closeAfterEach();

function sidecarStream(plane: ControlPlane, id: string, address: string, zone = 'z1'): SotwClient {
  const client = new SotwClient(xdsAddress(plane), {
    id,
    cluster: 'chat',
    zone,
    metadata: { 'ctxmesh.address': address, 'ctxmesh.role': 'sidecar' },
  });
  closers.push(async () => client.close());
  return client;
}

async function endpoints(plane: ControlPlane, service: string): Promise<any[]> {
  const { services } = await adminGet<{ services: any[] }>(plane, '/v1/registry');
  return services.find((s) => s.name === service)?.endpoints ?? [];
}

describe('registration through the ADS node', () => {
  it('lists a sidecar while its stream is open and for the TTL after it closes', async () => {
    const plane = await startControlPlane(closers, { registration: { ttl: '400ms' } });
    const sidecar = sidecarStream(plane, 'node-a', '127.0.0.1:25006', 'z2');
    sidecar.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    const response = await sidecar.next(TYPE_URL.clusterLoadAssignment);
    const [assignment] = sidecar.decode(response);
    const locality = assignment.endpoints[0];
    expect(locality.locality.zone).toBe('z2');
    const lb = locality.lb_endpoints[0];
    expect(lb.endpoint.hostname).toBe('node-a');
    expect(lb.endpoint.address.socket_address).toMatchObject({ address: '127.0.0.1', port_value: 25006 });
    expect(fromStruct(lb.metadata.filter_metadata.ctxmesh)).toEqual({ node_id: 'node-a', epoch: 0 });

    // A sidecar-registered service is a mesh service: its cluster carries an UpstreamTlsContext.
    sidecar.ack(response, ['chat']);
    sidecar.request(TYPE_URL.cluster, []);
    const [cluster] = sidecar.decode(await sidecar.next(TYPE_URL.cluster));
    expect(cluster.transport_socket.name).toBe('envoy.transport_sockets.tls');

    expect(await endpoints(plane, 'chat')).toMatchObject([{ nodeId: 'node-a', source: 'registered', health: 'HEALTHY', registration: { openStreams: 1 } }]);
    sidecar.close();
    await until(async () => (await endpoints(plane, 'chat'))[0]?.registration?.openStreams === 0, 5_000, 'stream closed');
    // Still listed right after the stream closed: a restart or a brief drop does not empty EDS.
    expect(await endpoints(plane, 'chat')).toHaveLength(1);
    await until(async () => (await endpoints(plane, 'chat')).length === 0, 5_000, 'registration expired');
    const { failovers } = await adminGet<{ failovers: any[] }>(plane, '/v1/failovers');
    expect(failovers.map((f) => f.kind)).toEqual(['registered', 'expired']);
  });

  it('refuses a stream whose node metadata has a malformed address', async () => {
    const plane = await startControlPlane(closers);
    const client = sidecarStream(plane, 'node-bad', 'not an address');
    client.request(TYPE_URL.cluster, []);
    await expect(client.next(TYPE_URL.cluster)).rejects.toThrow(/ctxmesh\.address/);
  });

  it('registers an IPv6 address in its canonical text, however the node wrote it', async () => {
    const plane = await startControlPlane(closers);
    const sidecar = sidecarStream(plane, 'node-v6', '[FD00:0:0::7]:25006', 'z1');
    sidecar.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    const [assignment] = sidecar.decode(await sidecar.next(TYPE_URL.clusterLoadAssignment));
    expect(assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address).toMatchObject({ address: 'fd00::7', port_value: 25006 });
    expect(await endpoints(plane, 'chat')).toMatchObject([{ nodeId: 'node-v6', address: '[fd00::7]:25006' }]);
    sidecar.close();
  });

  it('keeps a heartbeat registration for one TTL per call', async () => {
    const plane = await startControlPlane(closers, { registration: { ttl: '300ms' } });
    const body = { nodeId: 'node-h', service: 'search', address: '127.0.0.1:26006', zone: 'z1' };
    expect((await adminPost(plane, '/v1/register', body)).body).toEqual({ registered: 'node-h', ttlMs: 300 });
    expect(await endpoints(plane, 'search')).toHaveLength(1);
    await until(async () => (await endpoints(plane, 'search')).length === 0, 5_000, 'heartbeat lapsed');
  });
});

describe('health declaration and drain', () => {
  async function fiveMembers(plane: ControlPlane): Promise<void> {
    for (const [i, id] of ['a', 'b', 'c', 'd', 'e'].entries()) {
      await adminPost(plane, '/v1/register', { nodeId: id, service: 'chat', address: `127.0.0.1:${25000 + i}`, zone: 'z1' });
    }
  }
  const reportDead = (plane: ControlPlane, observer: string, subject: string) =>
    adminPost(plane, '/v1/health/reports', { observer, reports: [{ subject, status: 'dead', incarnation: 0 }] });

  it('a minority cannot declare a member failed; a majority does, and EDS is pushed', async () => {
    const plane = await startControlPlane(closers, { registration: { ttl: '60s' } });
    await fiveMembers(plane);
    const watcher = new SotwClient(xdsAddress(plane), { id: 'watcher' });
    closers.push(async () => watcher.close());
    watcher.request(TYPE_URL.clusterLoadAssignment, ['chat']);
    watcher.ack(await watcher.next(TYPE_URL.clusterLoadAssignment), ['chat']);

    // Partition {d, e} | {a, b, c}: d and e accuse a — two of a's four voters, not a majority.
    expect((await reportDead(plane, 'd', 'a')).body.results[0].outcome).toBe('unchanged');
    const minority = await reportDead(plane, 'e', 'a');
    expect(minority.body.results[0]).toMatchObject({ outcome: 'unchanged', verdict: { voters: 4, needed: 3 } });
    expect((await endpoints(plane, 'chat')).find((e) => e.nodeId === 'a').health).toBe('HEALTHY');

    // The majority side {a, b, c} accuses e.
    await reportDead(plane, 'a', 'e');
    await reportDead(plane, 'b', 'e');
    const declared = await reportDead(plane, 'c', 'e');
    expect(declared.body.results[0].outcome).toBe('declared');
    expect((await endpoints(plane, 'chat')).find((e) => e.nodeId === 'e')).toMatchObject({ health: 'UNHEALTHY', epoch: 1 });

    const push = await watcher.next(TYPE_URL.clusterLoadAssignment);
    const lbEndpoints = watcher.decode(push)[0].endpoints.flatMap((l: any) => l.lb_endpoints);
    const e = lbEndpoints.find((lb: any) => lb.endpoint.hostname === 'e');
    expect(e.health_status).toBe('UNHEALTHY');
    expect(fromStruct(e.metadata.filter_metadata.ctxmesh)).toEqual({ node_id: 'e', epoch: 1 });
    const { failovers } = await adminGet<{ failovers: any[] }>(plane, '/v1/failovers');
    expect(failovers.at(-1)).toMatchObject({ kind: 'declared', nodeId: 'e', epoch: 1 });
    expect(failovers.at(-1).reason).toMatch(/3\/4 members/);

    // A majority vouching for it again brings it back, with a new epoch.
    for (const observer of ['a', 'b', 'c']) {
      await adminPost(plane, '/v1/health/reports', { observer, reports: [{ subject: 'e', status: 'alive', incarnation: 1 }] });
    }
    expect((await endpoints(plane, 'chat')).find((x) => x.nodeId === 'e')).toMatchObject({ health: 'HEALTHY', epoch: 2 });
  });

  it('a member that re-registers with a higher incarnation is healthy again', async () => {
    const plane = await startControlPlane(closers, { registration: { ttl: '60s' } });
    await fiveMembers(plane);
    for (const observer of ['a', 'b', 'c']) await reportDead(plane, observer, 'e');
    expect((await endpoints(plane, 'chat')).find((x) => x.nodeId === 'e').health).toBe('UNHEALTHY');
    await adminPost(plane, '/v1/register', { nodeId: 'e', service: 'chat', address: '127.0.0.1:25004', zone: 'z1', incarnation: 1 });
    expect((await endpoints(plane, 'chat')).find((x) => x.nodeId === 'e')).toMatchObject({ health: 'HEALTHY', epoch: 2 });
  });

  it('a restarted member is not declared again by reports about its previous run (regression)', async () => {
    const plane = await startControlPlane(closers, { registration: { ttl: '60s' } });
    await fiveMembers(plane);
    await adminPost(plane, '/v1/register', { nodeId: 'e', service: 'chat', address: '127.0.0.1:25004', zone: 'z1', incarnation: 100 });
    const accuse = (observer: string, incarnation: number) =>
      adminPost(plane, '/v1/health/reports', { observer, reports: [{ subject: 'e', status: 'dead', incarnation }] });
    for (const observer of ['a', 'b', 'c']) await accuse(observer, 100);
    expect((await endpoints(plane, 'chat')).find((x) => x.nodeId === 'e')).toMatchObject({ health: 'UNHEALTHY', epoch: 1 });

    // e restarts: a higher incarnation clears the declaration.
    await adminPost(plane, '/v1/register', { nodeId: 'e', service: 'chat', address: '127.0.0.1:25004', zone: 'z1', incarnation: 200 });
    expect((await endpoints(plane, 'chat')).find((x) => x.nodeId === 'e')).toMatchObject({ health: 'HEALTHY', epoch: 2 });
    // Its peers still hold it down and repeat what they saw of the previous run: ignored, not a new declaration.
    for (const observer of ['a', 'b', 'c', 'd']) {
      const result = (await accuse(observer, 100)).body.results[0];
      expect(result).toMatchObject({ outcome: 'ignored' });
      expect(result.reason).toMatch(/stale: about incarnation 100, registered 200/);
    }
    expect((await endpoints(plane, 'chat')).find((x) => x.nodeId === 'e')).toMatchObject({ health: 'HEALTHY', epoch: 2 });
    const { failovers } = await adminGet<{ failovers: any[] }>(plane, '/v1/failovers');
    expect(failovers.filter((f) => f.kind === 'declared' && f.nodeId === 'e')).toHaveLength(1);

    // Suspicion about the new run still counts: a real second failure is declared.
    for (const observer of ['a', 'b', 'c']) await accuse(observer, 200);
    expect((await endpoints(plane, 'chat')).find((x) => x.nodeId === 'e')).toMatchObject({ health: 'UNHEALTHY', epoch: 3 });
  });

  it('drains an endpoint, and answers bad requests through the error table', async () => {
    const plane = await startControlPlane(closers, { services: [{ name: 'chat', endpoints: [{ address: '127.0.0.1:25006' }] }] });
    const drained = await adminPost(plane, '/v1/endpoints/drain', { service: 'chat', address: '127.0.0.1:25006', reason: 'rollout' });
    expect(drained.body.endpoint).toMatchObject({ health: 'DRAINING', epoch: 1, source: 'config' });
    const { failovers } = await adminGet<{ failovers: any[] }>(plane, '/v1/failovers');
    expect(failovers).toMatchObject([{ kind: 'drain', service: 'chat', address: '127.0.0.1:25006', reason: 'rollout' }]);

    const unknown = await adminPost(plane, '/v1/endpoints/drain', { service: 'chat', address: '127.0.0.1:1' });
    expect([unknown.status, unknown.error]).toEqual([404, 'not_found']);
    const invalid = await adminPost(plane, '/v1/endpoints/drain', { service: 'chat' });
    expect([invalid.status, invalid.error]).toEqual([400, 'bad_request']);
    expect(invalid.body.message).toMatch(/address/);
    const notJson = await adminPost(plane, '/v1/health/reports', '{');
    expect([notJson.status, notJson.error]).toEqual([400, 'bad_request']);
    const badStatus = await adminPost(plane, '/v1/health/reports', { observer: 'a', reports: [{ subject: 'b', status: 'gone' }] });
    expect(badStatus.body.message).toMatch(/reports\.0\.status/);
  });
});
