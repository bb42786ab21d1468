// Strong writes' rounds on three in-process sidecars over real mTLS: hints only for replicas that
// really missed a write, a refused epoch (409 stale_epoch) never hinted nor acknowledged, and the
// prepare round skipped on a promise left by the coordinator's previous write on the key — while
// racing coordinators' histories stay linearizable.
import { describe, expect, it } from 'vitest';
import { MeshError } from '../../../src/errors/table.js';
import type { PeerHandler } from '../../../src/peer/router.js';
import { checkLinearizable, History, type Value } from '../../helpers/history.js';
import { metricValue, until } from '../../helpers/mesh.js';
import { call, interceptPeer, clusterPerTest, type Node, type TestCluster } from './cluster.js';

/** Makes a node's peer handler answer as fencing does: 409 stale_epoch, before the handler runs. */
function refuseEpoch(node: Node, name: string): () => void {
  const router = node.running!.sidecar.peers;
  const original = router.get(name)!;
  const refusing: PeerHandler = () => {
    throw new MeshError('stale_epoch', `injected: ${name} from a stale epoch`);
  };
  router.replace(name, refusing);
  return () => router.replace(name, original);
}

describe('strong write rounds', () => {
  const launch = clusterPerTest();

  async function cluster(): Promise<TestCluster> {
    const c = await launch(['node-a', 'node-b', 'node-c']);
    // A sidecar with live peers takes writes once it holds its membership lease (peer/fencing.ts).
    for (const node of c.nodes) {
      await until(async () => (await call(node.api(), 'PUT', `warmup/${node.id}`, { body: 'w', consistency: 'eventual' })).status === 204, 15_000, `${node.id} taking writes`);
    }
    return c;
  }

  const hints = async (node: Node, peer: string) => (await metricValue(node.running!.admin, 'ctxmesh_replication_hints', { peer })) ?? 0;

  it('hints only the replica whose accept failed, once it failed; none while every replica takes the writes', async () => {
    const c = await cluster();
    const a = c.node('node-a');
    for (let i = 0; i < 30; i++) expect((await call(a.api(), 'PUT', `acme/all${i % 5}`, { body: `v${i}`, consistency: 'strong' })).status).toBe(204);
    // Let any accept still in flight to the third replica settle: none of them fails here.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect([await hints(a, 'node-b'), await hints(a, 'node-c')]).toEqual([0, 0]);
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_hints_delivered_total')).toBe(0);

    const refuse = interceptPeer(c.node('node-c'), 'accept', () => 503);
    try {
      expect((await call(a.api(), 'PUT', 'acme/missed', { body: 'm', consistency: 'strong' })).status).toBe(204);
      await until(async () => (await hints(a, 'node-c')) === 1, 5_000, 'a hint for node-c, whose accept failed');
      expect(await hints(a, 'node-b')).toBe(0);
    } finally {
      refuse();
    }
    await until(async () => (await call(c.node('node-c').api(), 'GET', 'acme/missed', { consistency: 'eventual' })).body === 'm', 5_000, 'the hint delivered to node-c');
  });

  it('a replica refusing our epoch (409 stale_epoch): the write is not acknowledged and not hinted', async () => {
    const c = await cluster();
    const a = c.node('node-a');
    const n3 = c.node('node-c');
    // node-b answers late, so that node-c's refusal is in before a quorum is.
    const late = (name: string) => interceptPeer(c.node('node-b'), name, () => new Promise<'pass'>((resolve) => setTimeout(resolve, 300, 'pass')));
    // Strong, refused at the prepare: nothing stored, answered 503 fenced.
    const restorePrepare = refuseEpoch(n3, 'prepare');
    const lateB = late('prepare');
    const fenced = await call(a.api(), 'PUT', 'acme/f1', { body: 'x', consistency: 'strong' });
    expect([fenced.status, fenced.headers['x-ctxmesh-error']]).toEqual([503, 'fenced']);
    restorePrepare();
    lateB();

    // Strong, refused at the accept: node-a stored it, node-c refused it; not acknowledged
    // (indeterminate), although node-b's accept makes a quorum.
    const restoreAccept = refuseEpoch(n3, 'accept');
    const lateAccept = late('accept');
    const answer = await call(a.api(), 'PUT', 'acme/f2', { body: 'y', consistency: 'strong' });
    lateAccept();
    expect([answer.status, answer.headers['x-ctxmesh-error']]).toEqual([504, 'indeterminate']);
    expect(JSON.parse(answer.body).message).toMatch(/ownership epoch/);

    // Eventual: node-c's refusal leaves no hint either.
    const restoreReplicate = refuseEpoch(n3, 'replicate');
    const eventual = await call(a.api(), 'PUT', 'acme/f3', { body: 'z', consistency: 'eventual' });
    // Acknowledged when node-a's own replica took it before node-c's refusal came, else not.
    expect([204, 504]).toContain(eventual.status);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await hints(a, 'node-c')).toBe(0);
    expect(await hints(a, 'node-b')).toBe(0);
    restoreAccept();
    restoreReplicate();
  });

  it('skips the prepare round on its own promise, and answers from the quorum once another coordinator wrote', async () => {
    const c = await cluster();
    const [a, b] = [c.node('node-a'), c.node('node-b')];
    for (let i = 0; i < 5; i++) expect((await call(a.api(), 'PUT', 'acme/hot', { body: `a${i}`, consistency: 'strong' })).status).toBe(204);
    // Each of the four later writes may skip it (once the previous write's accepts all answered).
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_strong_prepares_skipped_total')).toBeGreaterThanOrEqual(1);

    // node-b writes: node-a's own replica sees it, so node-a's promise no longer stands.
    const etagBefore = (await call(a.api(), 'GET', 'acme/hot', { consistency: 'strong' })).headers.etag as string;
    expect((await call(b.api(), 'PUT', 'acme/hot', { body: 'b0', consistency: 'strong' })).status).toBe(204);
    // A compare-and-set against what node-a wrote last is refused: the state it held is stale.
    expect((await call(a.api(), 'PUT', 'acme/hot', { body: 'stale', consistency: 'strong', headers: { 'if-match': etagBefore } })).status).toBe(412);
    expect((await call(a.api(), 'GET', 'acme/hot', { consistency: 'strong' })).body).toBe('b0');

    // node-a's replica misses node-b's rounds: node-a's promise still looks good to it, but the
    // quorum has moved on. The skipped prepare must not cost correctness: the CAS sees b1.
    expect((await call(a.api(), 'PUT', 'acme/hot2', { body: 'a-first', consistency: 'strong' })).status).toBe(204);
    expect((await call(a.api(), 'PUT', 'acme/hot2', { body: 'a-second', consistency: 'strong' })).status).toBe(204);
    const restorePrepare = interceptPeer(a, 'prepare', () => 503);
    const restoreAccept = interceptPeer(a, 'accept', () => 503);
    const hintsBlocked = interceptPeer(a, 'hint-deliver', () => 503);
    expect((await call(b.api(), 'PUT', 'acme/hot2', { body: 'b1', consistency: 'strong' })).status).toBe(204);
    restorePrepare();
    restoreAccept();
    const skippedBefore = (await metricValue(a.running!.admin, 'ctxmesh_replication_strong_prepares_skipped_total'))!;
    const blind = await call(a.api(), 'PUT', 'acme/hot2', { body: 'a-third', consistency: 'strong' });
    // It went straight to the accept, which node-b and node-c refused: never a success it did not
    // have; its lower ballot can never be adopted over b1, which a quorum holds at a higher one.
    expect(await metricValue(a.running!.admin, 'ctxmesh_replication_strong_prepares_skipped_total')).toBe(skippedBefore + 1);
    expect([blind.status, blind.headers['x-ctxmesh-error']]).toEqual([504, 'indeterminate']);
    expect((await call(b.api(), 'GET', 'acme/hot2', { consistency: 'strong' })).body).toBe('b1');
    hintsBlocked();
    // node-b's hint of b1 reaches node-a now (a hint at a ballot above node-a's promise applies).
    await until(async () => (await hints(b, 'node-a')) === 0, 5_000, "node-b's hints for node-a delivered");
    expect((await call(a.api(), 'GET', 'acme/hot2', { consistency: 'eventual' })).body).toBe('b1');
  });

  it('racing coordinators writing and compare-and-setting two keys stay linearizable', async () => {
    const c = await cluster();
    const history = new History();
    const keys = ['lin/x', 'lin/y'];
    let seed = 11;
    const random = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
    let written = 0;
    const read = async (process: string, node: Node, key: string): Promise<{ value: Value; etag?: string } | undefined> => {
      const op = history.invoke(process, key, 'read');
      const res = await call(node.api(), 'GET', key, { consistency: 'strong' });
      if (res.status === 200) return (history.ok(op, { result: res.body }), { value: res.body, etag: res.headers.etag as string });
      if (res.status === 404) return (history.ok(op, { result: null }), { value: null });
      history.fail(op, `${res.status}`);
      return undefined;
    };
    const mutate = async (process: string, node: Node, key: string, kind: 'write' | 'cas', value: string, expected?: { value: Value; etag?: string }) => {
      const op = history.invoke(process, key, kind, kind === 'cas' ? { value, expected: expected!.value } : { value });
      const headers = kind === 'write' ? {} : expected!.value === null ? { 'if-none-match': '*' } : { 'if-match': expected!.etag! };
      const res = await call(node.api(), 'PUT', key, { body: value, consistency: 'strong', headers });
      if (res.status === 204) history.ok(op, { version: res.headers.etag as string });
      else if (res.status === 412) history.fail(op, '412');
      else history.info(op, `${res.status}`);
    };
    // Two clients per sidecar, so that one coordinator also races itself on a key.
    const client = async (process: string, node: Node): Promise<void> => {
      for (let i = 0; i < 40; i++) {
        const key = keys[Math.floor(random() * keys.length)]!;
        const roll = random();
        const value = `${process}-${written++}`;
        if (roll < 0.3) await read(process, node, key);
        else if (roll < 0.7) await mutate(process, node, key, 'write', value);
        else {
          const seen = await read(process, node, key);
          if (seen) await mutate(process, node, key, 'cas', value, seen);
        }
      }
    };
    await Promise.all(c.nodes.flatMap((node) => [client(`${node.id}-1`, node), client(`${node.id}-2`, node)]));
    for (const key of keys) for (const node of c.nodes) await read('final', node, key);

    const skipped = await Promise.all(c.nodes.map((n) => metricValue(n.running!.admin, 'ctxmesh_replication_strong_prepares_skipped_total')));
    const ok = history.ops.filter((o) => o.kind !== 'read' && o.outcome === 'ok').length;
    const summary = `writes+cas ok ${ok}, unknown ${history.ops.filter((o) => o.outcome === 'info').length}, prepares skipped ${skipped.join('/')}`;
    expect(ok, summary).toBeGreaterThan(40);
    expect(skipped.reduce((sum, n) => sum! + (n ?? 0), 0), summary).toBeGreaterThan(0);
    const bad = checkLinearizable(history.ops).keys.filter((k) => !k.linearizable);
    expect(bad.map((k) => `${k.key}: ${k.explanation}`), summary).toEqual([]);
  });
});
