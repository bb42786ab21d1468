// Membership change under load across sidecar processes (`ctxmesh sidecar`, memory L2, RF=3): four
// sidecars take a steady stream of session writes; a fifth starts and is added to the others
// (`POST /members` on their admin API), later one of the four leaves (`DELETE /members/<id>` on
// itself and the rest) and is SIGKILLed once it has handed its keys off. After quiescence every
// acknowledged write is held by exactly its three replicas on the final ring (checked in each
// sidecar's own store through `GET /members/held`) with its value, and the leaver holds nothing.
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MutableMembership, type Member } from '../../src/membership/membership.js';
import { PlacementRing } from '../../src/state/replication/ring.js';
import { createPki, until } from '../helpers/mesh.js';
import { startProcCluster, type ProcCluster, type SidecarProc } from '../helpers/sidecar-procs.js';

const WRITERS = 4;

interface HeldKey {
  key: string;
  version: string;
  tombstone: boolean;
}

describe('membership change under load across sidecar processes', () => {
  let cluster: ProcCluster;
  const byId = (id: string): SidecarProc => cluster.proc(id);

  beforeAll(async () => {
    const identity = await (await createPki()).issue('replica');
    // The four know each other; the fifth knows the four (they learn of it through the admin API).
    // Membership moves only when the test says so (no local failure verdicts under CPU load).
    cluster = await startProcCluster(identity, ['node-a', 'node-b', 'node-c', 'node-d', 'node-e'], {
      initial: 4,
      fsync: 'none',
      replication: { consistency: 'session', peerTimeout: '2s', writeTimeout: '3s', hints: { interval: '200ms' }, antiEntropy: { interval: '2s' } },
    });
  }, 60_000);

  afterAll(async () => {
    await cluster?.close();
  });

  async function admin(proc: SidecarProc, method: 'GET' | 'POST' | 'DELETE', path: string, body?: object): Promise<{ status: number; json: any }> {
    const res = await request(`http://127.0.0.1:${proc.admin}${path}`, { method, body: body && JSON.stringify(body), headers: body ? { 'content-type': 'application/json' } : {} });
    const text = await res.body.text();
    return { status: res.statusCode, json: text ? JSON.parse(text) : undefined };
  }

  async function held(proc: SidecarProc): Promise<Map<string, HeldKey>> {
    const out = new Map<string, HeldKey>();
    let after: string | undefined;
    for (;;) {
      const { status, json } = await admin(proc, 'GET', `/members/held?prefix=load/&limit=10000${after ? `&after=${encodeURIComponent(after)}` : ''}`);
      expect(status).toBe(200);
      for (const k of json.keys as HeldKey[]) out.set(k.key, k);
      if (json.next === undefined) return out;
      after = json.next;
    }
  }

  function ringOver(ids: string[]): PlacementRing {
    const members = ids.map((id): Member => ({ id, address: `127.0.0.1:${byId(id).inbound}`, state: 'alive', epoch: 0 }));
    return new PlacementRing(new MutableMembership(members[0]!, members.slice(1)), 3);
  }

  it('a fifth sidecar joins and one leaves under writes: every key ends on exactly its three replicas, none lost', async () => {
    const [a, b, c, d, e] = cluster.procs as [SidecarProc, SidecarProc, SidecarProc, SidecarProc, SidecarProc];
    const acked = new Map<string, string>();
    let coordinators = [a, b, c, d];
    let stop = false;
    let n = 0;
    let failures = 0;
    const writer = async (): Promise<void> => {
      while (!stop) {
        const id = n++;
        const key = `load/k${id}`;
        const via = coordinators[id % coordinators.length]!;
        try {
          const res = await request(`http://127.0.0.1:${via.context}/v1/contexts/${key}`, {
            method: 'PUT',
            body: `v${id}`,
            headers: { 'content-type': 'text/plain', 'ctxmesh-consistency': 'session' },
            headersTimeout: 10_000,
          });
          await res.body.text();
          if (res.statusCode === 204) acked.set(key, `v${id}`);
          else failures++;
        } catch {
          failures++;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    const writers = Array.from({ length: WRITERS }, writer);
    const waitForWrites = async (count: number) => {
      const target = acked.size + count;
      await until(() => acked.size >= target, 30_000, `${count} more acknowledged writes`);
    };

    // Bad membership requests are refused and change nothing.
    expect((await admin(a, 'POST', '/members', { id: 'node-x' })).status).toBe(400);
    expect((await admin(a, 'POST', '/members', { id: 'node-x', address: 'no-port' })).status).toBe(400);
    expect((await admin(a, 'DELETE', '/members/node-x')).status).toBe(404);
    expect((await admin(a, 'GET', '/members')).json.members.map((m: Member) => m.id)).toEqual(['node-a', 'node-b', 'node-c', 'node-d']);

    await waitForWrites(150);
    // node-e starts and the four are told of it.
    await cluster.start(e);
    for (const proc of [a, b, c, d]) expect((await admin(proc, 'POST', '/members', { id: e.id, address: `127.0.0.1:${e.inbound}` })).status).toBe(200);
    coordinators = [a, b, c, d, e];
    await waitForWrites(200);

    // node-b leaves: it stops coordinating, drains itself out of the ring, the others forget it.
    coordinators = [a, c, d, e];
    for (const proc of [b, a, c, d, e]) expect((await admin(proc, 'DELETE', `/members/${b.id}`)).status).toBe(200);
    await waitForWrites(200);
    stop = true;
    await Promise.all(writers);
    // Writes refused during the moves are allowed (never acknowledged); the load must mostly pass.
    expect(failures).toBeLessThan(acked.size / 10);

    const finalRing = ringOver(['node-a', 'node-c', 'node-d', 'node-e']);
    const problems = async (): Promise<string[]> => {
      const holdings = new Map<string, Map<string, HeldKey>>();
      for (const proc of [a, b, c, d, e]) holdings.set(proc.id, await held(proc));
      const found: string[] = [];
      if (holdings.get(b.id)!.size > 0) found.push(`node-b still holds ${holdings.get(b.id)!.size} keys`);
      for (const key of acked.keys()) {
        const want = finalRing.replicas(key).map((m) => m.id).sort();
        const have = [...holdings].filter(([, keys]) => keys.has(key)).map(([id]) => id).sort();
        if (have.join() !== want.join()) found.push(`${key} held by [${have}], placed on [${want}]`);
        const versions = new Set(have.map((id) => holdings.get(id)!.get(key)!.version));
        if (versions.size > 1) found.push(`${key} held at ${versions.size} versions`);
      }
      return found;
    };
    let last: string[] = [];
    await until(
      async () => {
        last = await problems();
        return last.length === 0;
      },
      60_000,
      'quiescence: every key on exactly its three replicas',
    ).catch((err: Error) => {
      throw new Error(`${err.message}; ${last.length} problems, e.g.\n${last.slice(0, 8).join('\n')}`);
    });

    // The leaver is gone for good; every acknowledged write reads back with its value.
    await cluster.kill(b);
    const wrong: string[] = [];
    const keys = [...acked.keys()];
    for (let i = 0; i < keys.length; i += 32) {
      await Promise.all(
        keys.slice(i, i + 32).map(async (key, j) => {
          const via = [a, c, d, e][(i + j) % 4]!;
          const res = await request(`http://127.0.0.1:${via.context}/v1/contexts/${key}`, { headers: { 'ctxmesh-consistency': 'session' } });
          const body = await res.body.text();
          if (res.statusCode !== 200 || body !== acked.get(key)) wrong.push(`${key} via ${via.id}: ${res.statusCode} ${body}`);
        }),
      );
    }
    expect(wrong).toEqual([]);
    expect(acked.size).toBeGreaterThanOrEqual(550);
  }, 180_000);
});
