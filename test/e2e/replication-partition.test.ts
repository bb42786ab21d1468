// A network partition between sidecar processes, made with the peer fault switch (CTXMESH_FAULTS=1,
// POST /faults on each side): {node-a, node-b} | {node-c}. During it, eventual writes go on on both
// sides, to the same keys and to different ones, and strong operations on the minority side fail
// (503/504, never success) while the majority's succeed. After the heal, hints and read repair
// bring every replica to the same value and version per key (last writer wins by HLC), and no
// acknowledged write is lost except one superseded by a newer version of its key.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareVersions } from '../../src/state/version.js';
import { History, describe as describeOp, lostWrites, unexplainedFinals, type Value } from '../helpers/history.js';
import { createPki, until, type IdentityFiles } from '../helpers/mesh.js';
import { api, startProcCluster, type ProcCluster, type SidecarProc } from '../helpers/sidecar-procs.js';

const unquote = (etag: string | undefined) => etag?.replace(/^"|"$/g, '');

describe('partition and heal across sidecar processes', () => {
  let identity: IdentityFiles;
  let cluster: ProcCluster;

  beforeAll(async () => {
    identity = await (await createPki()).issue('replica');
    cluster = await startProcCluster(identity, ['node-a', 'node-b', 'node-c']);
  }, 60_000);

  afterAll(async () => {
    await cluster?.close();
  });

  it('the armed switch is on the admin API, empty at start, and refuses a malformed block list', async () => {
    const [a] = cluster.procs as [SidecarProc];
    const res = await fetch(`http://127.0.0.1:${a.admin}/faults`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ node: 'node-a', blocked: [] });
    const bad = await fetch(`http://127.0.0.1:${a.admin}/faults`, { method: 'POST', body: '{"block": "node-b"}' });
    expect([bad.status, bad.headers.get('x-ctxmesh-error')]).toEqual([400, 'bad_request']);
  });

  it('eventual writes on both sides converge after the heal; strong writes on the minority never succeed', async () => {
    const [a, b, c] = cluster.procs as [SidecarProc, SidecarProc, SidecarProc];
    const history = new History();
    let n = 0;

    const write = async (process: string, via: SidecarProc, key: string, consistency: string) => {
      const value = `${process}-${n++}`;
      const op = history.invoke(process, key, 'write', { value });
      try {
        const res = await api(via, 'PUT', key, { body: value, consistency });
        if (res.status === 204) history.ok(op, { version: unquote(res.etag) });
        else history.info(op, `${res.status} ${res.error}`);
        return res.status;
      } catch (err) {
        history.info(op, String(err));
        return 0;
      }
    };

    // Before: a strong value every side agrees on.
    expect(await write('setup', a, 'part/strong', 'strong')).toBe(204);

    await cluster.block(a, ['node-c']);
    await cluster.block(b, ['node-c']);
    await cluster.block(c, ['node-a', 'node-b']);

    // Concurrent eventual writes: shared keys from both sides, and keys of each side's own.
    const side = async (process: string, via: SidecarProc, own: string) => {
      for (let i = 0; i < 12; i++) {
        await write(process, via, `part/shared${i % 4}`, 'eventual');
        await write(process, via, `part/${own}${i % 3}`, 'eventual');
      }
    };
    await Promise.all([side('ab1', a, 'ab'), side('ab2', b, 'ab'), side('c', c, 'c')]);
    const eventual = history.ops.filter((o) => o.process !== 'setup');
    expect(eventual.filter((o) => o.outcome !== 'ok').map(describeOp)).toEqual([]);

    // Strong on the minority: refused (indeterminate or unavailable), never acknowledged.
    for (let i = 0; i < 3; i++) {
      const status = await write('c-strong', c, 'part/strong', 'strong');
      expect([503, 504]).toContain(status);
    }
    const minorityRead = await api(c, 'GET', 'part/strong', { consistency: 'strong' });
    expect([minorityRead.status, minorityRead.error]).toEqual([503, 'quorum_unavailable']);
    // The majority goes on at strong.
    expect(await write('ab-strong', a, 'part/strong', 'strong')).toBe(204);
    expect((await api(b, 'GET', 'part/strong', { consistency: 'strong' })).body).toBe(history.ops.at(-1)!.value);

    // Session guarantees across sidecars on the majority side: a write through b, read through a
    // with the token, sees it (or something newer).
    const sessionWrite = await api(b, 'PUT', 'part/session', { body: 'mine', consistency: 'session' });
    expect(sessionWrite.status).toBe(204);
    const sessionRead = await api(a, 'GET', 'part/session', { consistency: 'session', headers: { 'ctxmesh-session': sessionWrite.session! } });
    expect([sessionRead.status, sessionRead.body]).toEqual([200, 'mine']);

    // The minority really was cut off: its eventual view of a shared key is its own write.
    const cView = await api(c, 'GET', 'part/shared0', { consistency: 'eventual' });
    expect(cView.body.startsWith('c-')).toBe(true);

    // Heal.
    for (const p of [a, b, c]) await cluster.block(p, []);

    const keys = history.keys().concat('part/session');
    const views = async (key: string) => Promise.all([a, b, c].map((p) => api(p, 'GET', key, { consistency: 'eventual' })));
    await until(
      async () => {
        for (const key of keys) {
          const seen = await views(key);
          if (seen.some((s) => s.status !== 200 || s.etag !== seen[0]!.etag || s.body !== seen[0]!.body)) return false;
        }
        return true;
      },
      15_000,
      'every replica to hold the same version of every key',
    );

    const finals = new Map<string, { value: Value; version?: string }>();
    for (const key of history.keys()) {
      const [first] = await views(key);
      finals.set(key, { value: first!.body, version: unquote(first!.etag) });
    }
    expect(lostWrites(history.ops, finals, compareVersions).map(describeOp)).toEqual([]);
    expect(unexplainedFinals(history.ops, finals)).toEqual([]);
    // Same-key writes from both sides: the newest version won everywhere, whichever side it came from.
    for (let i = 0; i < 4; i++) {
      const key = `part/shared${i}`;
      const acked = history.ops.filter((o) => o.key === key && o.outcome === 'ok');
      const newest = acked.reduce((x, y) => (compareVersions(y.version!, x.version!) > 0 ? y : x));
      expect(finals.get(key)).toEqual({ value: newest.value, version: newest.version });
    }
    // The minority's strong writes were never stored anywhere: the majority's value stands.
    expect(finals.get('part/strong')!.value).toBe(history.ops.filter((o) => o.process === 'ab-strong')[0]!.value);
    expect((await api(c, 'GET', 'part/strong', { consistency: 'strong' })).body).toBe(finals.get('part/strong')!.value);
  }, 60_000);
});
