// The state agent inside real sidecars over a real redis-server: sharing one Redis, L1 coherence,
// Redis dying and coming back in both write modes, a sidecar SIGKILLed with writes still queued,
// warming, TTL on both tiers, and Redis Cluster by configuration alone.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { RedisL2 } from '../../src/state/cache/redis-l2.js';
import { closeAfterEach, createPki, metricValue, sidecarConfig, startSidecar, until, type ConfigInput, type IdentityFiles, type TestPki } from '../helpers/mesh.js';
import { freePort, startRedis, startRedisCluster, type Closers } from '../helpers/redis.js';

const CLI = join(import.meta.dirname, '../../dist/src/cli/main.js');

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

async function call(base: string, method: 'GET' | 'PUT' | 'DELETE', key: string, body?: string, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await request(`${base}/v1/contexts/${key}`, {
    method,
    body,
    headers: body === undefined ? headers : { 'content-type': 'text/plain', ...headers },
  });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

/** Reads Redis directly, as another client would: what L2 really holds. */
function redisReader(closers: Closers, url: string): RedisL2 {
  const l2 = new RedisL2({ url, keyPrefix: 'ctxmesh:', commandTimeout: 1_000, connectTimeout: 2_000, reconnectBase: 20, reconnectMax: 200, instanceId: 'test-reader' });
  closers.push(() => l2.close());
  return l2;
}

describe('state agent over Redis', () => {
  const closers = closeAfterEach();
  let pki: TestPki;
  let identity: IdentityFiles;

  beforeAll(async () => {
    pki = await createPki();
    identity = await pki.issue('state');
  });

  async function stateSidecar(id: string, url: string, context: ConfigInput = {}, dir?: string) {
    const config = sidecarConfig(identity, {
      node: { id },
      context: {
        port: 0,
        l2: { backend: 'redis', url, reconnectBase: '20ms', reconnectMax: '200ms', commandTimeout: '500ms' },
        wal: { fsync: 'none' },
        ...(dir ? { checkpoint: { dir } } : {}),
        ...context,
      },
    });
    const running = await startSidecar(config);
    closers.push(() => running.sidecar.close());
    return { ...running, api: `http://127.0.0.1:${running.sidecar.ports.context}`, dir: config.context.checkpoint.dir! };
  }

  it('two sidecars sharing one Redis see each other’s writes: L1 copies are invalidated', async () => {
    const redis = await startRedis(closers);
    const a = await stateSidecar('node-a', redis.url);
    const b = await stateSidecar('node-b', redis.url);

    expect((await call(a.api, 'PUT', 'acme/s1', 'v1')).status).toBe(204);
    const first = await call(b.api, 'GET', 'acme/s1');
    expect([first.status, first.body, first.headers['ctxmesh-tier']]).toEqual([200, 'v1', 'l2']);
    expect((await call(b.api, 'GET', 'acme/s1')).headers['ctxmesh-tier']).toBe('l1');

    // A's write reaches Redis and B's cached copy is dropped by the invalidation.
    expect((await call(a.api, 'PUT', 'acme/s1', 'v2')).status).toBe(204);
    await until(async () => (await call(b.api, 'GET', 'acme/s1')).body === 'v2', 5_000, 'B to see v2');
    expect((await call(b.api, 'GET', 'acme/s1')).headers['ctxmesh-tier']).toBe('l1');

    expect((await call(b.api, 'DELETE', 'acme/s1')).status).toBe(204);
    await until(async () => (await call(a.api, 'GET', 'acme/s1')).status === 404, 5_000, 'A to see the delete');

    // A conditional write against a version the other sidecar has replaced fails on either side.
    const put = await call(a.api, 'PUT', 'acme/s2', 'x');
    const etag = put.headers.etag as string;
    expect((await call(b.api, 'PUT', 'acme/s2', 'y', { 'if-match': etag })).status).toBe(204);
    const stale = await call(a.api, 'PUT', 'acme/s2', 'z', { 'if-match': etag });
    expect([stale.status, stale.headers['x-ctxmesh-error']]).toEqual([412, 'precondition_failed']);
  });

  it('ETag race between writers on two sidecars: exactly one conditional write wins', async () => {
    const redis = await startRedis(closers);
    const a = await stateSidecar('node-a', redis.url);
    const b = await stateSidecar('node-b', redis.url);
    const etag = (await call(a.api, 'PUT', 'acme/race', 'base')).headers.etag as string;
    await call(b.api, 'GET', 'acme/race'); // B holds it in L1 too
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => call(i % 2 ? a.api : b.api, 'PUT', 'acme/race', `writer-${i}`, { 'if-match': etag })),
    );
    const winners = replies.map((r, i) => (r.status === 204 ? i : -1)).filter((i) => i >= 0);
    expect(winners).toHaveLength(1);
    expect(replies.filter((r) => r.status === 412)).toHaveLength(19);
    await until(async () => (await call(a.api, 'GET', 'acme/race')).body === `writer-${winners[0]}`, 5_000, 'A to see the winner');
    await until(async () => (await call(b.api, 'GET', 'acme/race')).body === `writer-${winners[0]}`, 5_000, 'B to see the winner');
  });

  it('evicts normal contexts from L1 before critical ones; evicted ones are read back from L2', async () => {
    const redis = await startRedis(closers);
    // Room for about five 4 KiB values.
    const a = await stateSidecar('node-a', redis.url, { l1: { maxBytes: '21KiB' } });
    const big = (tag: string) => tag.padEnd(4096, '.');
    for (let i = 0; i < 3; i++) await call(a.api, 'PUT', `acme/critical${i}`, big(`c${i}`), { 'ctxmesh-retention': 'critical' });
    for (let i = 0; i < 6; i++) await call(a.api, 'PUT', `acme/normal${i}`, big(`n${i}`));
    for (let i = 0; i < 3; i++) {
      const reply = await call(a.api, 'GET', `acme/critical${i}`);
      expect([reply.headers['ctxmesh-tier'], reply.headers['ctxmesh-retention']]).toEqual(['l1', 'critical']);
    }
    const first = await call(a.api, 'GET', 'acme/normal0');
    expect([first.headers['ctxmesh-tier'], first.body]).toEqual(['l2', big('n0')]);
    expect(a.sidecar.state!.store.stats().l1.evictions).toBeGreaterThanOrEqual(4);
  });

  it('flushes L1 when the invalidation link drops, and reads through L2 until it is back', async () => {
    const redis = await startRedis(closers);
    const a = await stateSidecar('node-a', redis.url);
    await call(a.api, 'PUT', 'acme/s1', 'v1');
    expect((await call(a.api, 'GET', 'acme/s1')).headers['ctxmesh-tier']).toBe('l1');

    execFileSync('redis-cli', ['-p', String(redis.port), 'CLIENT', 'KILL', 'TYPE', 'pubsub']);
    await until(() => a.logs.lines.some((l) => String(l.msg).includes('flushed L1')), 5_000, 'the link to drop and come back');
    expect(a.logs.lines.some((l) => String(l.msg).includes('invalidation link down'))).toBe(true);
    // What L1 held from before the drop is gone: the read comes from L2 and is cached again.
    expect((await call(a.api, 'GET', 'acme/s1')).headers['ctxmesh-tier']).toBe('l2');
    expect((await call(a.api, 'GET', 'acme/s1')).headers['ctxmesh-tier']).toBe('l1');
    const state = (await (await request(`${a.admin}/state`)).body.json()) as { l2: { coherent: boolean } };
    expect(state.l2.coherent).toBe(true);
  });

  it('write-through: Redis SIGKILLed mid-run — writes fail fast with l2_unavailable, cached reads are served marked stale, no acknowledged write is lost', async () => {
    // Redis itself must keep what it acknowledged across a SIGKILL: AOF, fsync on every write.
    const redis = await startRedis(closers, { args: ['--appendonly', 'yes', '--appendfsync', 'always'] });
    const a = await stateSidecar('node-a', redis.url);
    const acked = new Map<string, string>();
    let stop = false;
    const refused: string[] = [];
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const key = `acme/w${i}`;
        const reply = await call(a.api, 'PUT', key, `value-${i}`).catch(() => undefined);
        if (reply?.status === 204) acked.set(key, `value-${i}`);
        else if (reply) refused.push(String(reply.headers['x-ctxmesh-error']));
      }
    })();
    await until(() => acked.size >= 50, 10_000, '50 acknowledged writes');
    await call(a.api, 'GET', 'acme/w1'); // cached in L1
    // Written by another client: in Redis, never in this sidecar's L1.
    const reader = redisReader(closers, redis.url);
    await reader.ready();
    await reader.write({ key: 'acme/elsewhere', value: Buffer.from('x'), contentType: 'text/plain', version: '1.0@other', expiresAt: 0, retention: 'normal', updatedAt: 1 }, { kind: 'any' });

    await redis.kill();
    await until(() => refused.length >= 3, 5_000, 'writes refused while Redis is down');
    expect(new Set(refused)).toEqual(new Set(['l2_unavailable']));
    const cached = await call(a.api, 'GET', 'acme/w1');
    expect([cached.status, cached.body, cached.headers['ctxmesh-stale']]).toEqual([200, 'value-1', 'true']);
    const uncached = await call(a.api, 'GET', 'acme/elsewhere');
    expect([uncached.status, uncached.headers['x-ctxmesh-error']]).toEqual([503, 'l2_unavailable']);

    await redis.restart();
    const before = acked.size;
    await until(() => acked.size >= before + 20, 10_000, 'writes acknowledged again after the restart');
    stop = true;
    await writer;

    await until(() => reader.available, 5_000, 'the reader to reconnect');
    const keys = [...acked.keys()];
    const stored = await reader.getMany(keys);
    const lost = keys.filter((k, i) => stored[i]?.value.toString() !== acked.get(k));
    expect(lost).toEqual([]);
    expect((await call(a.api, 'GET', 'acme/w1')).headers['ctxmesh-stale']).toBeUndefined();
  }, 30_000);

  it('write-behind: keeps accepting while Redis is down up to its bound, then 503 write_queue_full; drains in order when Redis returns', async () => {
    const redis = await startRedis(closers);
    const a = await stateSidecar('node-a', redis.url, { writeMode: 'write-behind', writeBehind: { maxQueue: 40 } });
    await redis.kill();

    for (let i = 0; i < 38; i++) expect((await call(a.api, 'PUT', `acme/k${i}`, `v${i}`)).status).toBe(204);
    // Two writes of one key: the later one is what L2 ends with.
    expect((await call(a.api, 'PUT', 'acme/twice', 'first')).status).toBe(204);
    expect((await call(a.api, 'PUT', 'acme/twice', 'second')).status).toBe(204);
    const full = await call(a.api, 'PUT', 'acme/over', 'x');
    expect([full.status, full.headers['x-ctxmesh-error']]).toEqual([503, 'write_queue_full']);
    expect(Number(full.headers['retry-after'])).toBeGreaterThan(0);
    // Reads see the sidecar's own queued writes.
    const queued = await call(a.api, 'GET', 'acme/twice');
    expect([queued.body, queued.headers['ctxmesh-tier']]).toEqual(['second', 'queue']);

    await redis.restart();
    await until(() => a.sidecar.state!.store.stats().writeBehind.queued === 0, 10_000, 'the queue to drain');
    const reader = redisReader(closers, redis.url);
    await reader.ready();
    const keys = [...Array.from({ length: 38 }, (_, i) => `acme/k${i}`), 'acme/twice'];
    const stored = await reader.getMany(keys);
    expect(stored.map((r) => r?.value.toString())).toEqual([...Array.from({ length: 38 }, (_, i) => `v${i}`), 'second']);
    expect((await call(a.api, 'PUT', 'acme/over', 'x')).status).toBe(204);
  }, 30_000);

  it('write-behind: a sidecar SIGKILLed with writes still queued delivers them from its WAL when it starts again', async () => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
    const redis = await startRedis(closers);
    await redis.kill();
    const work = mkdtempSync(join(tmpdir(), 'ctxmesh-wb-'));
    const contextPort = await freePort();
    const configPath = join(work, 'sidecar.yaml');
    writeFileSync(
      configPath,
      JSON.stringify({
        node: { id: 'node-wb' },
        identity,
        inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9' },
        outbound: { port: 0 },
        admin: { port: 0 },
        context: {
          port: contextPort,
          writeMode: 'write-behind',
          l2: { backend: 'redis', url: redis.url, reconnectBase: '20ms', reconnectMax: '200ms', connectTimeout: '300ms' },
          wal: { fsync: 'always' },
          checkpoint: { dir: join(work, 'data') },
        },
      }),
    );
    const api = `http://127.0.0.1:${contextPort}`;
    const start = async (): Promise<ChildProcess> => {
      const child = spawn(process.execPath, [CLI, 'sidecar', '-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
      closers.push(async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      });
      let out = '';
      child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
      await until(() => out.includes('sidecar ready'), 10_000, 'the sidecar to start');
      return child;
    };

    const child = await start();
    for (let i = 0; i < 20; i++) expect((await call(api, 'PUT', `acme/k${i}`, `v${i}`)).status).toBe(204);
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));

    await redis.restart();
    await start();
    const reader = redisReader(closers, redis.url);
    await reader.ready();
    const keys = Array.from({ length: 20 }, (_, i) => `acme/k${i}`);
    await until(async () => (await reader.getMany(keys)).every(Boolean), 10_000, 'the requeued writes to reach Redis');
    expect((await reader.getMany(keys)).map((r) => r!.value.toString())).toEqual(keys.map((_, i) => `v${i}`));
  }, 30_000);

  it('warms L1 at start with the previous run’s hottest contexts', async () => {
    const redis = await startRedis(closers);
    const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-warm-'));
    const first = await stateSidecar('node-a', redis.url, {}, dir);
    for (let i = 0; i < 10; i++) await call(first.api, 'PUT', `acme/k${i}`, `v${i}`);
    await first.sidecar.close();

    const second = await stateSidecar('node-a', redis.url, {}, dir);
    expect(second.sidecar.state!.store.stats().l1.entries).toBe(10);
    const reply = await call(second.api, 'GET', 'acme/k3');
    expect([reply.body, reply.headers['ctxmesh-tier']]).toEqual(['v3', 'l1']);
  });

  it('expires contexts on both tiers and shows the tiers in /metrics and /state', async () => {
    const redis = await startRedis(closers);
    const a = await stateSidecar('node-a', redis.url);
    await call(a.api, 'PUT', 'acme/short', 'x', { 'ctxmesh-ttl': '600ms' });
    expect((await call(a.api, 'GET', 'acme/short')).headers['ctxmesh-tier']).toBe('l1');
    const pttl = Number(execFileSync('redis-cli', ['-p', String(redis.port), 'PTTL', 'ctxmesh:{acme}/short']).toString());
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(600);
    await until(async () => (await call(a.api, 'GET', 'acme/short')).status === 404, 5_000, 'the context to expire');
    expect(execFileSync('redis-cli', ['-p', String(redis.port), 'EXISTS', 'ctxmesh:{acme}/short']).toString().trim()).toBe('0');

    expect(await metricValue(a.admin, 'ctxmesh_context_cache_hits_total', { tier: 'l1' })).toBeGreaterThanOrEqual(1);
    expect(await metricValue(a.admin, 'ctxmesh_context_l2_up')).toBe(1);
    const state = (await (await request(`${a.admin}/state`)).body.json()) as { l1: { hitRatio: number }; l2: { backend: string } };
    expect(state.l2.backend).toBe('redis');
    expect(state.l1.hitRatio).toBeGreaterThan(0);
  });

  it('runs on Redis Cluster by configuration alone', async () => {
    const cluster = await startRedisCluster(closers);
    const a = await stateSidecar('node-a', cluster.url);
    const b = await stateSidecar('node-b', cluster.url);
    const tenants = ['acme', 'globex', 'initech', 'umbrella', 'hooli', 'stark'];
    for (const t of tenants) for (let i = 0; i < 3; i++) expect((await call(a.api, 'PUT', `${t}/s${i}`, `${t}-${i}`)).status).toBe(204);
    for (const t of tenants) expect((await call(b.api, 'GET', `${t}/s2`)).body).toBe(`${t}-2`);
    const list = (await (await request(`${b.api}/v1/contexts?prefix=globex/`)).body.json()) as { keys: string[] };
    expect(list.keys).toEqual(['globex/s0', 'globex/s1', 'globex/s2']);
  }, 60_000);
});
