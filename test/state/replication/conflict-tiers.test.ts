// The three conflict tiers (context.replication.conflicts) on three in-process sidecars replicating
// over real mTLS: json-merge and lww across a real partition (the peer fault switch), siblings kept,
// listed, shown and resolved through the context API, and the sibling cap.
import { afterEach, describe, expect, it } from 'vitest';
import { compareVersions } from '../../../src/state/version.js';
import { metricValue, until } from '../../helpers/mesh.js';
import { call, clusterPerTest, type Node, type TestCluster } from './cluster.js';

const JSON_TYPE = { 'content-type': 'application/json' };

describe('conflict tiers', () => {
  const launch = clusterPerTest();
  afterEach(() => {
    delete process.env.CTXMESH_FAULTS;
  });

  async function cluster(): Promise<TestCluster> {
    const c = await launch(['node-a', 'node-b', 'node-c'], {
      conflicts: [
        { prefix: 'chat/', strategy: 'json-merge' },
        { prefix: 'doc/', strategy: 'siblings', maxSiblings: 3 },
      ],
    });
    return c;
  }

  const admin = (node: Node) => `http://127.0.0.1:${node.running!.sidecar.ports.admin}`;
  const etagOf = (reply: { headers: Record<string, unknown> }) => reply.headers.etag as string;
  const unquote = (etag: string) => etag.replace(/^"|"$/g, '');

  it('after a partition, both sides’ messages are on every replica in timestamp order (json-merge); plain keys keep the HLC winner (lww)', { timeout: 60_000 }, async () => {
    process.env.CTXMESH_FAULTS = '1';
    const c = await cluster();
    const [a, b, n3] = c.nodes as [Node, Node, Node];
    const base = { title: 'support', messages: [{ id: 'm1', ts: 1, text: 'hello' }] };
    expect((await call(a.api(), 'PUT', 'chat/conv1', { body: JSON.stringify(base), consistency: 'session', headers: JSON_TYPE })).status).toBe(204);
    for (const node of [a, b, n3]) {
      await until(async () => (await call(node.api(), 'GET', 'chat/conv1', { consistency: 'eventual' })).status === 200, 5_000, `the conversation on ${node.id}`);
    }

    // node-c on one side, node-a and node-b on the other.
    const blocked = await fetch(`${admin(n3)}/faults`, { method: 'POST', body: JSON.stringify({ block: ['node-a', 'node-b'] }) });
    expect(blocked.status).toBe(200);

    // Side A reads and appends with If-Match; side C appends blind, later in real time but with an earlier message timestamp.
    const readA = await call(a.api(), 'GET', 'chat/conv1', { consistency: 'eventual' });
    const onA = JSON.parse(readA.body) as typeof base;
    onA.messages.push({ id: 'a1', ts: 20, text: 'from side A' });
    expect((await call(a.api(), 'PUT', 'chat/conv1', { body: JSON.stringify(onA), consistency: 'eventual', headers: { ...JSON_TYPE, 'if-match': etagOf(readA) } })).status).toBe(204);
    const plainA = await call(a.api(), 'PUT', 'plain/k', { body: 'from-a', consistency: 'eventual' });
    expect(plainA.status).toBe(204);

    const onC = JSON.parse((await call(n3.api(), 'GET', 'chat/conv1', { consistency: 'eventual' })).body) as typeof base;
    expect(onC.messages.map((m) => m.id)).toEqual(['m1']);
    onC.messages.push({ id: 'c1', ts: 10, text: 'from side C' });
    expect((await call(n3.api(), 'PUT', 'chat/conv1', { body: JSON.stringify(onC), consistency: 'eventual', headers: JSON_TYPE })).status).toBe(204);
    const plainC = await call(n3.api(), 'PUT', 'plain/k', { body: 'from-c', consistency: 'eventual' });
    expect(plainC.status).toBe(204);

    // Each side sees only its own append meanwhile.
    expect(JSON.parse((await call(b.api(), 'GET', 'chat/conv1', { consistency: 'eventual' })).body).messages.map((m: { id: string }) => m.id)).toEqual(['m1', 'a1']);
    expect(JSON.parse((await call(n3.api(), 'GET', 'chat/conv1', { consistency: 'eventual' })).body).messages.map((m: { id: string }) => m.id)).toEqual(['m1', 'c1']);

    expect((await fetch(`${admin(n3)}/faults`, { method: 'DELETE' })).status).toBe(200);
    const merged = { title: 'support', messages: [base.messages[0], { id: 'c1', ts: 10, text: 'from side C' }, { id: 'a1', ts: 20, text: 'from side A' }] };
    const winner = compareVersions(unquote(etagOf(plainA)), unquote(etagOf(plainC))) > 0 ? 'from-a' : 'from-c';
    for (const node of [a, b, n3]) {
      await until(async () => {
        const got = await call(node.api(), 'GET', 'chat/conv1', { consistency: 'eventual' });
        return got.status === 200 && JSON.stringify(JSON.parse(got.body)) === JSON.stringify(merged);
      }, 10_000, `the merged conversation on ${node.id}`);
      await until(async () => (await call(node.api(), 'GET', 'plain/k', { consistency: 'eventual' })).body === winner, 10_000, `the HLC winner of plain/k on ${node.id}`);
    }
    // Merged, not in conflict: no header, nothing listed; a session read (every replica) agrees.
    const read = await call(b.api(), 'GET', 'chat/conv1', { consistency: 'session', session: '1.0' });
    expect([read.status, read.headers['ctxmesh-conflict'], JSON.parse(read.body)]).toEqual([200, undefined, merged]);
    expect(await (await fetch(`${a.api()}/v1/conflicts`)).json()).toEqual({ conflicts: [] });

    // A write after reading the merge supersedes both versions: one version again, everywhere.
    merged.messages.push({ id: 'a2', ts: 30, text: 'after the heal' });
    expect((await call(b.api(), 'PUT', 'chat/conv1', { body: JSON.stringify(merged), consistency: 'session', headers: { ...JSON_TYPE, 'if-match': etagOf(read) } })).status).toBe(204);
    for (const node of [a, b, n3]) {
      await until(async () => {
        const got = await fetch(`${node.api()}/v1/contexts/chat/conv1?siblings=true`).then((r) => r.json());
        return got.siblings.length === 1 && got.siblings[0].value.messages.length === 4;
      }, 5_000, `a single version on ${node.id}`);
    }
    // Strong writes on a json-merge key still go through the strong rounds.
    expect((await call(n3.api(), 'PUT', 'chat/strong', { body: '{"n":1}', consistency: 'strong', headers: JSON_TYPE })).status).toBe(204);
    expect(JSON.parse((await call(a.api(), 'GET', 'chat/strong', { consistency: 'strong' })).body)).toEqual({ n: 1 });
  });

  it('siblings: kept, shown, listed and resolved on every replica; a stale resolution is refused; the cap drops the oldest', { timeout: 60_000 }, async () => {
    const c = await cluster();
    const [a, b, n3] = c.nodes as [Node, Node, Node];
    const first = await call(a.api(), 'PUT', 'doc/1', { body: 'version one' });
    expect(first.status).toBe(204);
    await until(async () => (await call(b.api(), 'GET', 'doc/1', { consistency: 'eventual' })).status === 200, 5_000, 'doc/1 on node-b');
    // A blind write under the siblings tier adds a sibling.
    expect((await call(b.api(), 'PUT', 'doc/1', { body: 'version two' })).status).toBe(204);

    for (const node of [a, b, n3]) {
      await until(async () => (await call(node.api(), 'GET', 'doc/1', { consistency: 'eventual' })).headers['ctxmesh-conflict'] === '2', 5_000, `the conflict on ${node.id}`);
    }
    const read = await call(n3.api(), 'GET', 'doc/1', { consistency: 'session' });
    expect([read.status, read.body, read.headers['ctxmesh-conflict']]).toEqual([200, 'version two', '2']);
    const shown = await fetch(`${n3.api()}/v1/contexts/doc/1?siblings=true`).then((r) => r.json());
    expect(shown).toMatchObject({ key: 'doc/1', conflict: true, etag: etagOf(read) });
    expect(shown.siblings.map((s: { valueBase64: string }) => Buffer.from(s.valueBase64, 'base64').toString())).toEqual(['version one', 'version two']);
    expect(shown.siblings[0].etag).toBe(etagOf(first));

    for (const node of [a, b, n3]) {
      const listed = await fetch(`${node.api()}/v1/conflicts?prefix=doc/`).then((r) => r.json());
      expect(listed.conflicts.map((s: { key: string; versions: string[] }) => [s.key, s.versions.length])).toEqual([['doc/1', 2]]);
    }
    expect(await fetch(`${a.api()}/v1/conflicts?prefix=chat/`).then((r) => r.json())).toEqual({ conflicts: [] });
    expect((await fetch(`${a.api()}/v1/conflicts?limit=0`)).status).toBe(400);

    // Resolving with what was read before the second version: 412, nothing written.
    const stale = await fetch(`${a.api()}/v1/conflicts/doc/1/resolve`, { method: 'POST', body: 'stale pick', headers: { 'if-match': etagOf(first) } });
    expect(stale.status).toBe(412);
    expect((await fetch(`${a.api()}/v1/conflicts/doc/1/resolve`, { method: 'POST', body: 'no etag' })).status).toBe(428);
    expect((await call(a.api(), 'GET', 'doc/1', { consistency: 'session' })).headers['ctxmesh-conflict']).toBe('2');

    const resolved = await fetch(`${a.api()}/v1/conflicts/doc/1/resolve`, { method: 'POST', body: 'the pick', headers: { 'if-match': etagOf(read), 'content-type': 'text/plain' } });
    expect(resolved.status).toBe(204);
    for (const node of [a, b, n3]) {
      await until(async () => {
        const got = await call(node.api(), 'GET', 'doc/1', { consistency: 'eventual' });
        return got.body === 'the pick' && got.headers['ctxmesh-conflict'] === undefined;
      }, 5_000, `the resolution on ${node.id}`);
      await until(async () => (await fetch(`${node.api()}/v1/conflicts`).then((r) => r.json())).conflicts.length === 0, 5_000, `no conflict listed on ${node.id}`);
    }
    // The same resolution again is stale now.
    expect((await fetch(`${b.api()}/v1/conflicts/doc/1/resolve`, { method: 'POST', body: 'late', headers: { 'if-match': etagOf(read) } })).status).toBe(412);

    // A write with If-Match of the key's state supersedes every sibling it read.
    expect((await call(b.api(), 'PUT', 'doc/3', { body: 'x1' })).status).toBe(204);
    expect((await call(b.api(), 'PUT', 'doc/3', { body: 'x2' })).status).toBe(204);
    const both = await call(b.api(), 'GET', 'doc/3', { consistency: 'session' });
    expect(both.headers['ctxmesh-conflict']).toBe('2');
    expect((await call(b.api(), 'PUT', 'doc/3', { body: 'x3', headers: { 'if-match': etagOf(both) } })).status).toBe(204);
    await until(async () => {
      const settled = await call(n3.api(), 'GET', 'doc/3', { consistency: 'eventual' });
      return settled.body === 'x3' && settled.headers['ctxmesh-conflict'] === undefined;
    }, 5_000, 'x3 alone on node-c');

    // maxSiblings 3: a fourth concurrent version drops the oldest (logged, counted).
    for (const body of ['w1', 'w2', 'w3', 'w4']) expect((await call(a.api(), 'PUT', 'doc/2', { body })).status).toBe(204);
    for (const node of [a, b, n3]) {
      await until(async () => {
        const got = await fetch(`${node.api()}/v1/contexts/doc/2?siblings=true`).then((r) => r.json());
        return JSON.stringify(got.siblings.map((s: { valueBase64: string }) => Buffer.from(s.valueBase64, 'base64').toString())) === '["w2","w3","w4"]';
      }, 5_000, `the three newest siblings on ${node.id}`);
    }
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_siblings_dropped_total')).toBeGreaterThanOrEqual(1);
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_conflicts')).toBe(1);
  });
});
