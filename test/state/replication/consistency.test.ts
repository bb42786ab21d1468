// Consistency levels, read repair and hinted handoff on three in-process sidecars replicating over
// real mTLS (RF=3: every sidecar holds every key). Staleness is made real, not simulated: a
// replica's peer handler is held or failed, or the sidecar is stopped.
import { describe, expect, it } from 'vitest';
import { metricValue, until } from '../../helpers/mesh.js';
import { call, interceptPeer, clusterPerTest, type TestCluster } from './cluster.js';

describe('replicated context store', () => {
  const launch = clusterPerTest();

  async function cluster(): Promise<TestCluster> {
    const c = await launch(['node-a', 'node-b', 'node-c']);
    return c;
  }

  it('a write through any sidecar is read through every other, at every level; deletes and listings too', async () => {
    const c = await cluster();
    const [a, b, n3] = c.nodes as [typeof c.nodes[0], typeof c.nodes[0], typeof c.nodes[0]];
    expect((await call(a.api(), 'PUT', 'acme/s1', { body: 'one', consistency: 'strong' })).status).toBe(204);
    for (const node of [a, b, n3]) {
      const got = await call(node.api(), 'GET', 'acme/s1', { consistency: 'strong' });
      expect([got.status, got.body, got.headers['ctxmesh-consistency']]).toEqual([200, 'one', 'strong']);
    }
    expect((await call(b.api(), 'PUT', 'acme/s2', { body: 'two', consistency: 'eventual' })).status).toBe(204);
    await until(async () => (await call(n3.api(), 'GET', 'acme/s2', { consistency: 'eventual' })).body === 'two', 5_000, 'eventual write to reach node-c');

    // If-Match is checked against the newest replica's version, wherever the write comes in.
    const etag = (await call(a.api(), 'GET', 'acme/s1', { consistency: 'strong' })).headers.etag as string;
    expect((await call(n3.api(), 'PUT', 'acme/s1', { body: 'stale', consistency: 'strong', headers: { 'if-match': '"1.0@x"' } })).status).toBe(412);
    expect((await call(n3.api(), 'PUT', 'acme/s1', { body: 'three', consistency: 'strong', headers: { 'if-match': etag } })).status).toBe(204);
    expect((await call(b.api(), 'GET', 'acme/s1', { consistency: 'strong' })).body).toBe('three');

    // PATCH through a third sidecar merges into the replicated document.
    expect((await call(a.api(), 'PUT', 'acme/doc', { body: '{"a":1}', consistency: 'strong', headers: { 'content-type': 'application/json' } })).status).toBe(204);
    const patched = await call(b.api(), 'PATCH', 'acme/doc', { body: '{"b":2}', consistency: 'strong', headers: { 'content-type': 'application/merge-patch+json' } });
    expect([patched.status, JSON.parse(patched.body)]).toEqual([200, { a: 1, b: 2 }]);
    expect(JSON.parse((await call(n3.api(), 'GET', 'acme/doc', { consistency: 'strong' })).body)).toEqual({ a: 1, b: 2 });

    const list = await fetch(`${n3.api()}/v1/contexts?prefix=acme/`).then((r) => r.json());
    expect(list).toEqual({ keys: ['acme/doc', 'acme/s1', 'acme/s2'] });

    expect((await call(b.api(), 'DELETE', 'acme/s1', { consistency: 'strong' })).status).toBe(204);
    for (const node of [a, b, n3]) expect((await call(node.api(), 'GET', 'acme/s1', { consistency: 'strong' })).status).toBe(404);
    expect((await call(a.api(), 'DELETE', 'acme/s1', { consistency: 'strong' })).status).toBe(404);
    expect(await fetch(`${a.api()}/v1/contexts?prefix=acme/`).then((r) => r.json())).toEqual({ keys: ['acme/doc', 'acme/s2'] });
  });

  it('session: read-your-writes on another sidecar whose own replica has not caught up', async () => {
    const c = await cluster();
    const [a, , n3] = c.nodes as [typeof c.nodes[0], typeof c.nodes[0], typeof c.nodes[0]];
    expect((await call(a.api(), 'PUT', 'acme/chat', { body: 'v1', consistency: 'strong' })).status).toBe(204);
    await until(async () => (await call(n3.api(), 'GET', 'acme/chat', { consistency: 'eventual' })).body === 'v1', 5_000, 'v1 on node-c');

    // node-c stops taking replication (held, not failed: no hint either).
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const restore = interceptPeer(n3, 'replicate', () => held.then(() => 'pass' as const));
    try {
      const write = await call(a.api(), 'PUT', 'acme/chat', { body: 'v2', consistency: 'session' });
      expect(write.status).toBe(204);
      const token = write.headers['ctxmesh-session'] as string;
      expect(token).toMatch(/^\d+\.\d+$/);

      // Without the token, node-c answers from its own stale replica: the staleness is real.
      expect((await call(n3.api(), 'GET', 'acme/chat', { consistency: 'eventual' })).body).toBe('v1');
      // With it, node-c sees its replica is behind the session and answers the newest.
      const read = await call(n3.api(), 'GET', 'acme/chat', { consistency: 'session', session: token });
      expect([read.status, read.body]).toEqual([200, 'v2']);
      // Monotonic: the token it hands back keeps the session at least where it was.
      const again = await call(n3.api(), 'GET', 'acme/chat', { consistency: 'session', session: read.headers['ctxmesh-session'] as string });
      expect(again.body).toBe('v2');
    } finally {
      release();
      restore();
    }
    await until(async () => (await call(n3.api(), 'GET', 'acme/chat', { consistency: 'eventual' })).body === 'v2', 5_000, 'v2 on node-c once released');
  });

  it('strong: acknowledged with one replica down, indeterminate (504, never success) when hints would be needed to reach W', async () => {
    const c = await cluster();
    const a = c.node('node-a');
    await c.stop('node-c');
    const ok = await call(a.api(), 'PUT', 'acme/k1', { body: 'w1', consistency: 'strong' });
    expect(ok.status).toBe(204);
    expect((await call(c.node('node-b').api(), 'GET', 'acme/k1', { consistency: 'strong' })).body).toBe('w1');

    await c.stop('node-b');
    // Only node-a can take it; hints for b and c do not count: W = 2 is not reached.
    const refused = await call(a.api(), 'PUT', 'acme/k2', { body: 'w2', consistency: 'strong' });
    expect([refused.status, refused.headers['x-ctxmesh-error']]).toEqual([504, 'indeterminate']);
    expect(JSON.parse(refused.body).message).toMatch(/strong write of acme\/k2 .* [01] of 3 replicas acknowledged, 2 needed .*node-b: .*ECONNREFUSED/);
    const read = await call(a.api(), 'GET', 'acme/k1', { consistency: 'strong' });
    expect([read.status, read.headers['x-ctxmesh-error']]).toEqual([503, 'quorum_unavailable']);
    // Eventual needs one replica: node-a itself.
    expect((await call(a.api(), 'PUT', 'acme/k3', { body: 'w3', consistency: 'eventual' })).status).toBe(204);
    // The failed strong write never reached a replica (no promise quorum): only the eventual one is hinted.
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_hints', { peer: 'node-b' })).toBeGreaterThanOrEqual(1);
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_writes_total', { consistency: 'strong', outcome: 'indeterminate' })).toBe(1);
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_lag_bytes', { peer: 'node-c' })).toBeGreaterThan(0);
  });

  it('hinted handoff: writes a replica missed while down are delivered when it returns', async () => {
    const c = await cluster();
    const a = c.node('node-a');
    await c.stop('node-c');
    for (let i = 0; i < 20; i++) expect((await call(a.api(), 'PUT', `acme/h${i}`, { body: `v${i}`, consistency: 'strong' })).status).toBe(204);
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_hints', { peer: 'node-c' })).toBe(20);

    const n3 = await c.start('node-c');
    await until(async () => (await metricValue(a.running!.admin, 'ctxmesh_replication_hints', { peer: 'node-c' })) === 0, 10_000, 'hints to node-c delivered');
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_hints_delivered_total')).toBe(20);
    // node-c's own replica has every write (eventual reads on a replica answer locally).
    for (let i = 0; i < 20; i++) expect((await call(n3.api(), 'GET', `acme/h${i}`, { consistency: 'eventual' })).body).toBe(`v${i}`);
  });

  it('hints survive a restart of the coordinator that kept them', async () => {
    const c = await cluster();
    await c.stop('node-c');
    expect((await call(c.node('node-a').api(), 'PUT', 'acme/kept', { body: 'kept', consistency: 'strong' })).status).toBe(204);
    await c.stop('node-a');
    await c.start('node-a');
    const a = c.node('node-a');
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_hints', { peer: 'node-c' })).toBe(1);
    const n3 = await c.start('node-c');
    await until(async () => (await call(n3.api(), 'GET', 'acme/kept', { consistency: 'eventual' })).body === 'kept', 10_000, 'the kept hint on node-c');
  });

  it('read repair: a strong read writes the newest version back to a stale replica', async () => {
    const c = await cluster();
    const [a, , n3] = c.nodes as [typeof c.nodes[0], typeof c.nodes[0], typeof c.nodes[0]];
    expect((await call(a.api(), 'PUT', 'acme/r', { body: 'old', consistency: 'strong' })).status).toBe(204);
    await until(async () => (await call(n3.api(), 'GET', 'acme/r', { consistency: 'eventual' })).body === 'old', 5_000, 'old on node-c');

    // node-c refuses replication and hint delivery: only read repair can bring it up to date.
    const refuse = interceptPeer(n3, 'replicate', () => 503);
    const refuseAccepts = interceptPeer(n3, 'accept', () => 503);
    const refuseHints = interceptPeer(n3, 'hint-deliver', () => 503);
    expect((await call(a.api(), 'PUT', 'acme/r', { body: 'new', consistency: 'strong' })).status).toBe(204);
    refuse();
    refuseAccepts();
    expect((await call(n3.api(), 'GET', 'acme/r', { consistency: 'eventual' })).body).toBe('old');

    const read = await call(n3.api(), 'GET', 'acme/r', { consistency: 'strong' });
    expect(read.body).toBe('new');
    // Repaired before the answer: node-c's own replica now has it.
    expect((await call(n3.api(), 'GET', 'acme/r', { consistency: 'eventual' })).body).toBe('new');
    expect(await metricValue(n3.running!.admin, 'ctxmesh_replication_read_repairs_total')).toBeGreaterThanOrEqual(1);
    refuseHints();
  });
});
