// The peer fault switch on in-process sidecars: absent unless CTXMESH_FAULTS=1 armed it when the
// sidecar started, and when armed, blocking a peer on one side alone cuts both directions of
// replication between the two (outgoing calls fail, incoming ones are cut off), with the writes
// kept as hints until the block is lifted.
import { afterEach, describe, expect, it } from 'vitest';
import { metricValue, until } from '../../helpers/mesh.js';
import { call, clusterPerTest } from './cluster.js';

describe('peer fault switch', () => {
  const launch = clusterPerTest();
  afterEach(() => {
    delete process.env.CTXMESH_FAULTS;
  });

  it('does not exist without CTXMESH_FAULTS=1', async () => {
    process.env.CTXMESH_FAULTS = 'yes';
    const c = await launch(['node-a', 'node-b', 'node-c']);
    const admin = `http://127.0.0.1:${c.node('node-a').running!.sidecar.ports.admin}`;
    for (const method of ['GET', 'POST', 'DELETE']) {
      const res = await fetch(`${admin}/faults`, { method, body: method === 'POST' ? '{"block":["node-b"]}' : undefined });
      expect([method, res.status]).toEqual([method, 404]);
    }
    // And the peers still talk.
    expect((await call(c.node('node-a').api(), 'PUT', 'acme/x', { body: 'x', consistency: 'strong' })).status).toBe(204);
  });

  it('blocking on one side cuts both directions; lifting it delivers the hints', async () => {
    process.env.CTXMESH_FAULTS = '1';
    const c = await launch(['node-a', 'node-b', 'node-c']);
    const [a, , n3] = c.nodes as [typeof c.nodes[0], typeof c.nodes[0], typeof c.nodes[0]];
    const admin = (node: typeof a) => `http://127.0.0.1:${node.running!.sidecar.ports.admin}`;
    const blocked = await fetch(`${admin(n3)}/faults`, { method: 'POST', body: JSON.stringify({ block: ['node-a'] }) });
    expect(await blocked.json()).toMatchObject({ node: 'node-c', blocked: ['node-a'] });

    // node-a has no block of its own: its calls reach node-c, which cuts them off.
    expect((await call(a.api(), 'PUT', 'acme/in', { body: 'from-a', consistency: 'eventual' })).status).toBe(204);
    await until(async () => (await metricValue(a.running!.admin, 'ctxmesh_replication_hints', { peer: 'node-c' })) >= 1, 5_000, 'a hint for node-c');
    // node-c's own calls to node-a fail at once.
    expect((await call(n3.api(), 'PUT', 'acme/out', { body: 'from-c', consistency: 'eventual' })).status).toBe(204);
    await until(async () => (await metricValue(n3.running!.admin, 'ctxmesh_replication_hints', { peer: 'node-a' })) >= 1, 5_000, 'a hint for node-a');
    const state = await (await fetch(`${admin(n3)}/faults`)).json();
    expect(state.refused).toBeGreaterThan(0);
    expect(state.dropped).toBeGreaterThan(0);
    expect((await call(n3.api(), 'GET', 'acme/in', { consistency: 'eventual' })).status).toBe(404);

    expect((await (await fetch(`${admin(n3)}/faults`, { method: 'DELETE' })).json()).blocked).toEqual([]);
    await until(async () => (await call(n3.api(), 'GET', 'acme/in', { consistency: 'eventual' })).body === 'from-a', 5_000, 'node-a’s write on node-c');
    await until(async () => (await call(a.api(), 'GET', 'acme/out', { consistency: 'eventual' })).body === 'from-c', 5_000, 'node-c’s write on node-a');
  });
});
