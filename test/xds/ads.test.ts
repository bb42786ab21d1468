// The ADS server over real gRPC streams: state of the world and incremental, versions and nonces,
// ACK and NACK, wildcard and named subscriptions, and pushes limited to what changed.
import { describe, expect, it } from 'vitest';
import { closeAfterEach, until } from '../helpers/mesh.js';
import { DeltaClient, SotwClient, TYPE_URL } from './ads-client.js';
import { adminGet, startControlPlane, xdsAddress } from './harness.js';

const closers = closeAfterEach();

const SERVICES = {
  services: [
    { name: 'alpha', tls: 'none', endpoints: [{ address: '127.0.0.1:7001', zone: 'z1' }] },
    { name: 'beta', tls: 'none', endpoints: [{ address: '127.0.0.1:7101', zone: 'z1' }, { address: '127.0.0.1:7102', zone: 'z2', priority: 1 }] },
  ],
};

function sotw(address: string, id = 'observer'): SotwClient {
  const client = new SotwClient(address, { id });
  closers.push(async () => client.close());
  return client;
}

function delta(address: string, id = 'observer'): DeltaClient {
  const client = new DeltaClient(address, { id });
  closers.push(async () => client.close());
  return client;
}

async function clientTypeStatus(plane: Parameters<typeof adminGet>[0], nodeId: string, typeUrl: string): Promise<any> {
  const { clients } = await adminGet<{ clients: any[] }>(plane, '/v1/clients');
  return clients.find((c) => c.nodeId === nodeId)?.types.find((t: any) => t.typeUrl === typeUrl);
}

describe('state of the world', () => {
  it('serves every cluster to a wildcard CDS request and records the ACK', async () => {
    const plane = await startControlPlane(closers, SERVICES);
    const client = sotw(xdsAddress(plane));
    client.request(TYPE_URL.cluster, []);
    const response = await client.next(TYPE_URL.cluster);
    expect(response.version_info).not.toBe('');
    expect(response.nonce).not.toBe('');
    const clusters = client.decode(response);
    expect(clusters.map((c) => c.name).sort()).toEqual(['alpha', 'beta']);
    expect(clusters[0].type).toBe('EDS');
    expect(clusters[0].eds_cluster_config.eds_config.ads).toBeTruthy();

    client.ack(response, []);
    await until(async () => (await clientTypeStatus(plane, 'observer', TYPE_URL.cluster))?.ackedVersion === response.version_info, 5_000, 'ACK recorded');
    const status = await clientTypeStatus(plane, 'observer', TYPE_URL.cluster);
    expect(status).toMatchObject({ wildcard: true, lastNonce: response.nonce, nacks: 0 });
  });

  it('sends named EDS resources only, and nothing when an unsubscribed service changes', async () => {
    const plane = await startControlPlane(closers, SERVICES);
    const client = sotw(xdsAddress(plane));
    client.request(TYPE_URL.clusterLoadAssignment, ['beta']);
    const first = await client.next(TYPE_URL.clusterLoadAssignment);
    const [assignment] = client.decode(first);
    expect(client.decode(first)).toHaveLength(1);
    expect(assignment.cluster_name).toBe('beta');
    // Two localities: (z1, priority 0) and (z2, priority 1).
    expect(assignment.endpoints.map((l: any) => [l.locality.zone, l.priority])).toEqual([['z1', 0], ['z2', 1]]);
    client.ack(first, ['beta']);

    // alpha changes first, then beta: the stream's next EDS response must be beta's change, which
    // proves alpha's change sent nothing (responses on one stream arrive in order).
    plane.registry.heartbeat({ nodeId: 'alpha-2', service: 'alpha', address: '127.0.0.1:7002', zone: 'z1' });
    plane.registry.drain('beta', '127.0.0.1:7101');
    const second = await client.next(TYPE_URL.clusterLoadAssignment);
    const [changed] = client.decode(second);
    const drained = changed.endpoints[0].lb_endpoints[0];
    expect(drained.health_status).toBe('DRAINING');
    expect(client.responses.drain()).toEqual([]);
    expect(second.version_info).not.toBe(first.version_info);
  });

  it('keeps a NACKing client on its last good version and still pushes later changes', async () => {
    const plane = await startControlPlane(closers, SERVICES);
    const client = sotw(xdsAddress(plane), 'picky');
    client.request(TYPE_URL.cluster, []);
    const good = await client.next(TYPE_URL.cluster);
    client.ack(good, []);
    await until(async () => (await clientTypeStatus(plane, 'picky', TYPE_URL.cluster))?.ackedVersion === good.version_info, 5_000, 'first ACK');

    plane.registry.heartbeat({ nodeId: 'gamma-1', service: 'gamma', address: '127.0.0.1:7201', zone: 'z1' });
    const rejected = await client.next(TYPE_URL.cluster);
    expect(client.decode(rejected).map((c) => c.name).sort()).toEqual(['alpha', 'beta', 'gamma']);
    client.request(TYPE_URL.cluster, [], { version: good.version_info, nonce: rejected.nonce, error: 'cluster gamma: unsupported lb_policy' });

    await until(async () => (await clientTypeStatus(plane, 'picky', TYPE_URL.cluster))?.nacks === 1, 5_000, 'NACK recorded');
    const status = await clientTypeStatus(plane, 'picky', TYPE_URL.cluster);
    expect(status.ackedVersion).toBe(good.version_info);
    expect(status.lastNack).toMatchObject({ nonce: rejected.nonce, keptVersion: good.version_info, error: 'cluster gamma: unsupported lb_policy' });
    const metrics = await adminGet<string>(plane, '/metrics');
    expect(metrics).toMatch(/ctxmesh_xds_nacks_total\{type="cds"\} 1/);

    // The rejected content is not resent; the next change is pushed and can be ACKed.
    plane.registry.heartbeat({ nodeId: 'delta-1', service: 'delta', address: '127.0.0.1:7301', zone: 'z1' });
    const later = await client.next(TYPE_URL.cluster);
    expect(client.responses.drain()).toEqual([]);
    expect(client.decode(later).map((c) => c.name).sort()).toEqual(['alpha', 'beta', 'delta', 'gamma']);
    client.ack(later, []);
    await until(async () => (await clientTypeStatus(plane, 'picky', TYPE_URL.cluster))?.ackedVersion === later.version_info, 5_000, 'later ACK');
  });

  it('ignores a request that answers an older nonce', async () => {
    const plane = await startControlPlane(closers, SERVICES);
    const client = sotw(xdsAddress(plane), 'slow');
    client.request(TYPE_URL.cluster, []);
    const first = await client.next(TYPE_URL.cluster);
    plane.registry.heartbeat({ nodeId: 'gamma-1', service: 'gamma', address: '127.0.0.1:7201', zone: 'z1' });
    const second = await client.next(TYPE_URL.cluster);
    client.ack(first, []); // stale: the server has sent `second` since
    client.ack(second, []);
    await until(async () => (await clientTypeStatus(plane, 'slow', TYPE_URL.cluster))?.ackedVersion === second.version_info, 5_000, 'ACK of the latest');
    expect((await clientTypeStatus(plane, 'slow', TYPE_URL.cluster)).ackedVersion).toBe(second.version_info);
  });
});

describe('incremental (delta)', () => {
  it('sends only the changed resource, and removals', async () => {
    const plane = await startControlPlane(closers, { ...SERVICES, registration: { ttl: '300ms' } });
    const client = delta(xdsAddress(plane));
    client.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['alpha', 'beta'] });
    const first = await client.next(TYPE_URL.clusterLoadAssignment);
    expect(first.resources.map((r) => r.name).sort()).toEqual(['alpha', 'beta']);
    client.ack(first);

    plane.registry.heartbeat({ nodeId: 'alpha-2', service: 'alpha', address: '127.0.0.1:7002', zone: 'z1' });
    const second = await client.next(TYPE_URL.clusterLoadAssignment);
    expect(second.resources.map((r) => r.name)).toEqual(['alpha']);
    expect(second.removed_resources).toEqual([]);
    client.ack(second);

    // A wildcard CDS stream sees a registered-only service come and go.
    const cds = delta(xdsAddress(plane), 'cds-watcher');
    cds.request(TYPE_URL.cluster, { subscribe: ['*'] });
    const clusters = await cds.next(TYPE_URL.cluster);
    expect(clusters.resources.map((r) => r.name).sort()).toEqual(['alpha', 'beta']);
    cds.ack(clusters);
    const release = plane.registry.attachStream({ nodeId: 'gamma-1', service: 'gamma', address: '127.0.0.1:7201', zone: 'z1' });
    const added = await cds.next(TYPE_URL.cluster);
    expect(added.resources.map((r) => r.name)).toEqual(['gamma']);
    cds.ack(added);
    release();
    // Past the registration TTL the service has no endpoint left and disappears.
    const gone = await cds.next(TYPE_URL.cluster);
    expect(gone.resources).toEqual([]);
    expect(gone.removed_resources).toEqual(['gamma']);
  });

  it('sends nothing a reconnecting client already has (initial_resource_versions)', async () => {
    const plane = await startControlPlane(closers, SERVICES);
    const first = delta(xdsAddress(plane), 'first');
    first.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['alpha', 'beta'] });
    const response = await first.next(TYPE_URL.clusterLoadAssignment);
    const alphaVersion = response.resources.find((r) => r.name === 'alpha')!.version;

    const again = delta(xdsAddress(plane), 'again');
    again.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['alpha', 'beta'], initialVersions: { alpha: alphaVersion, beta: 'stale' } });
    const resync = await again.next(TYPE_URL.clusterLoadAssignment);
    expect(resync.resources.map((r) => r.name)).toEqual(['beta']);
  });

  it('unsubscribes, and records a NACK without resending the rejected version', async () => {
    const plane = await startControlPlane(closers, SERVICES);
    const client = delta(xdsAddress(plane), 'nacker');
    client.request(TYPE_URL.clusterLoadAssignment, { subscribe: ['alpha', 'beta'] });
    client.ack(await client.next(TYPE_URL.clusterLoadAssignment));
    client.request(TYPE_URL.clusterLoadAssignment, { unsubscribe: ['alpha'] });

    plane.registry.drain('beta', '127.0.0.1:7101');
    const rejected = await client.next(TYPE_URL.clusterLoadAssignment);
    expect(rejected.resources.map((r) => r.name)).toEqual(['beta']);
    client.request(TYPE_URL.clusterLoadAssignment, { nonce: rejected.nonce, error: 'beta: bad endpoint' });
    await until(async () => (await clientTypeStatus(plane, 'nacker', TYPE_URL.clusterLoadAssignment))?.nacks === 1, 5_000, 'delta NACK recorded');
    const status = await clientTypeStatus(plane, 'nacker', TYPE_URL.clusterLoadAssignment);
    expect(status.lastNack.error).toBe('beta: bad endpoint');
    expect(status.subscribed).toEqual(['beta']);

    // alpha (unsubscribed) changes, then beta: only beta's new version arrives.
    plane.registry.heartbeat({ nodeId: 'alpha-2', service: 'alpha', address: '127.0.0.1:7002', zone: 'z1' });
    plane.registry.heartbeat({ nodeId: 'beta-3', service: 'beta', address: '127.0.0.1:7103', zone: 'z1' });
    const later = await client.next(TYPE_URL.clusterLoadAssignment);
    expect(later.resources.map((r) => r.name)).toEqual(['beta']);
    expect(client.responses.drain()).toEqual([]);
    client.ack(later);
    await until(async () => (await clientTypeStatus(plane, 'nacker', TYPE_URL.clusterLoadAssignment))?.ackedVersion === later.system_version_info, 5_000, 'ACK after NACK');
  });
});
