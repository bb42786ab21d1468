// RedisL2 against real redis-server processes: a single server, a master behind a sentinel, and a
// three-master Cluster. Time passes for real (short TTLs, reconnects), observed with `until`.
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MeshError } from '../../src/errors/table.js';
import type { L2Tier } from '../../src/state/cache/l2.js';
import { RedisL2, type RedisL2Options } from '../../src/state/cache/redis-l2.js';
import { encodeRecord, type ContextRecord } from '../../src/state/record.js';
import { closeAfterEach, until } from '../helpers/mesh.js';
import { freePort, startRedis, startRedisCluster, startRedisSentinel, type Closers, type RedisCluster } from '../helpers/redis.js';

const PREFIX = 't:';
const COMMAND_TIMEOUT_MS = 500;
const CONNECT_TIMEOUT_MS = 1_500;
const RECONNECT_BASE_MS = 20;
const RECONNECT_MAX_MS = 200;
/** "Quickly" for a failure on a dead Redis: fail-fast, not a timeout. */
const FAIL_FAST_MS = 250;

let seq = 0;
function record(key: string, value: string, version = `v${++seq}`, extra: Partial<ContextRecord> = {}): ContextRecord {
  return { key, value: Buffer.from(value), contentType: 'application/json', version, expiresAt: 0, retention: 'normal', updatedAt: 1_700_000_000_000, ...extra };
}

async function openL2(closers: Closers, url: string, options: Partial<RedisL2Options> = {}): Promise<RedisL2> {
  const l2 = new RedisL2({
    url,
    keyPrefix: PREFIX,
    commandTimeout: COMMAND_TIMEOUT_MS,
    connectTimeout: CONNECT_TIMEOUT_MS,
    reconnectBase: RECONNECT_BASE_MS,
    reconnectMax: RECONNECT_MAX_MS,
    instanceId: `i${++seq}`,
    ...options,
  });
  closers.push(() => l2.close());
  await l2.ready();
  return l2;
}

function rawClient(closers: Closers, port: number): Redis {
  const raw = new Redis({ port, host: '127.0.0.1', lazyConnect: false, maxRetriesPerRequest: 1 });
  closers.push(async () => {
    raw.disconnect();
  });
  return raw;
}

/** Collects a tier's events in order. */
function recordEvents(l2: L2Tier): { invalidated: string[]; links: boolean[] } {
  const events = { invalidated: [] as string[], links: [] as boolean[] };
  l2.on('invalidate', (key: string) => events.invalidated.push(key));
  l2.on('link', (up: boolean) => events.links.push(up));
  return events;
}

async function rejection(promise: Promise<unknown>): Promise<{ error: MeshError; ms: number }> {
  const started = performance.now();
  try {
    await promise;
  } catch (error) {
    return { error: error as MeshError, ms: performance.now() - started };
  }
  throw new Error('expected a rejection');
}

describe('RedisL2 on a single redis-server', () => {
  const closers = closeAfterEach();

  it('writes, reads back every field, and reads many at once', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    expect(l2.kind).toBe('redis');
    expect(l2.available).toBe(true);
    expect(l2.coherent).toBe(true);

    const binary = record('acme/cart/1', '', 'v-a', { value: Buffer.from([0, 255, 10, 13, 0x43]), retention: 'critical', contentType: 'application/octet-stream' });
    expect(await l2.write(binary, { kind: 'any' })).toEqual({ ok: true });
    expect(await l2.write(record('acme/cart/2', '{"n":2}', 'v-b'), { kind: 'any' })).toEqual({ ok: true });

    const got = await l2.get('acme/cart/1');
    expect(got).toEqual({ ...binary });
    expect(got!.value.equals(binary.value)).toBe(true);
    expect(await l2.get('acme/missing')).toBeUndefined();

    const many = await l2.getMany(['acme/cart/2', 'acme/nope', 'acme/cart/1']);
    expect(many.map((r) => r?.version)).toEqual(['v-b', undefined, 'v-a']);
    expect(await l2.getMany([])).toEqual([]);

    // The layout other tools (and the Cluster) rely on: hash-tagged data key and tenant index.
    const raw = rawClient(closers, redis.port);
    expect((await raw.getBuffer('t:{acme}/cart/1'))!.equals(encodeRecord(binary))).toBe(true);
    expect(await raw.zrange('t:idx:{acme}', '0', '-1')).toEqual(['acme/cart/1', 'acme/cart/2']);
  });

  it('applies conditions atomically and reports the current version when they fail', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    const key = 'acme/doc';

    expect(await l2.write(record(key, '1', 'v1'), { kind: 'present' })).toEqual({ ok: false, current: undefined });
    expect(await l2.write(record(key, '1', 'v1'), { kind: 'version', versions: ['v0'] })).toEqual({ ok: false, current: undefined });
    expect(await l2.write(record(key, '1', 'v1'), { kind: 'absent' })).toEqual({ ok: true });
    expect(await l2.write(record(key, '2', 'v2'), { kind: 'absent' })).toEqual({ ok: false, current: 'v1' });
    expect(await l2.write(record(key, '2', 'v2'), { kind: 'version', versions: ['v0', 'v9'] })).toEqual({ ok: false, current: 'v1' });
    expect(await l2.write(record(key, '2', 'v2'), { kind: 'version', versions: ['v0', 'v1'] })).toEqual({ ok: true });
    expect(await l2.write(record(key, '3', 'v3'), { kind: 'present' })).toEqual({ ok: true });
    expect((await l2.get(key))?.value.toString()).toBe('3');

    // A failed condition leaves the value alone.
    expect(await l2.write(record(key, 'x', 'vx'), { kind: 'version', versions: ['v2'] })).toEqual({ ok: false, current: 'v3' });
    expect((await l2.get(key))?.version).toBe('v3');
  });

  it('deletes on a tombstone, conditionally too, and drops the key from the index', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    const raw = rawClient(closers, redis.port);
    await l2.write(record('acme/a', '1', 'v1'), { kind: 'any' });

    const tombstone = record('acme/a', '', 'v2', { tombstone: true });
    expect(await l2.write(tombstone, { kind: 'version', versions: ['v0'] })).toEqual({ ok: false, current: 'v1' });
    expect(await l2.write(tombstone, { kind: 'version', versions: ['v1'] })).toEqual({ ok: true });
    expect(await l2.get('acme/a')).toBeUndefined();
    expect(await raw.exists('t:{acme}/a')).toBe(0);
    expect(await raw.zscore('t:idx:{acme}', 'acme/a')).toBeNull();
    expect(await l2.list('acme/', undefined, 10)).toEqual({ keys: [] });
    // Deleting what is absent is fine, and absent afterwards.
    expect(await l2.write(tombstone, { kind: 'any' })).toEqual({ ok: true });
  });

  it('refuses a corrupt value as an internal error rather than a miss', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    const raw = rawClient(closers, redis.port);
    await raw.set('t:{acme}/bad', 'not an envelope');
    await raw.set('t:{acme}/cut', 'CTX1 v1\n{"c":');
    for (const read of [l2.get('acme/bad'), l2.getMany(['acme/cut'])]) {
      const { error } = await rejection(read);
      expect(error).toBeInstanceOf(MeshError);
      expect(error.code).toBe('internal');
    }
    // A conditional write still sees it as present, with a version nobody holds.
    expect(await l2.write(record('acme/bad', '1'), { kind: 'absent' })).toEqual({ ok: false, current: '' });
  });

  it('expires at PXAT expiresAt, seen by Redis (PTTL) and by get once it passes', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    const raw = rawClient(closers, redis.port);
    const TTL_MS = 300;
    const expiresAt = Date.now() + TTL_MS;
    await l2.write(record('acme/short', 's', 'v1', { expiresAt }), { kind: 'any' });
    await l2.write(record('acme/long', 'l', 'v1'), { kind: 'any' });

    const pttl = await raw.pttl('t:{acme}/short');
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(TTL_MS);
    expect(await raw.pexpiretime('t:{acme}/short')).toBe(expiresAt);
    expect(await raw.pttl('t:{acme}/long')).toBe(-1);
    expect((await l2.get('acme/short'))?.expiresAt).toBe(expiresAt);

    await until(async () => (await l2.get('acme/short')) === undefined, 3_000, 'the short context to expire');
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt);
    // Redis drops a key once its clock is past PXAT (strictly); the L2 treats it as gone at it.
    while (Date.now() <= expiresAt) await new Promise((r) => setTimeout(r, 1));
    expect(await raw.exists('t:{acme}/short')).toBe(0);
    expect((await l2.get('acme/long'))?.value.toString()).toBe('l');

    // A record already past its expiry is written as a delete, leaving no index entry.
    await l2.write(record('acme/gone', 'g', 'v1', { expiresAt: Date.now() - 1 }), { kind: 'any' });
    expect(await raw.exists('t:{acme}/gone')).toBe(0);
    expect(await raw.zscore('t:idx:{acme}', 'acme/gone')).toBeNull();
  });

  it('lists a tenant in byte order, page by page, skipping and pruning expired index entries', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    const raw = rawClient(closers, redis.port);
    const expiresAt = Date.now() + 200;
    await l2.writeBatch([
      record('acme/users/3', '3'),
      record('acme/users/1', '1'),
      record('acme/users/2', '2', undefined, { expiresAt }),
      record('acme/users/4', '4', undefined, { expiresAt }),
      record('acme/users/5', '5'),
      record('acme/usersx', 'x'),
      record('acme/orders/1', 'o'),
      record('other/users/1', 'no'),
    ]);
    expect(await l2.list('acme/users/', undefined, 10)).toEqual({ keys: ['acme/users/1', 'acme/users/2', 'acme/users/3', 'acme/users/4', 'acme/users/5'] });

    await until(async () => (await raw.exists('t:{acme}/users/2', 't:{acme}/users/4')) === 0, 3_000, 'two users to expire');
    expect(await raw.zcard('t:idx:{acme}')).toBe(7);

    const first = await l2.list('acme/users/', undefined, 2);
    expect(first).toEqual({ keys: ['acme/users/1', 'acme/users/3'], next: 'acme/users/3' });
    const second = await l2.list('acme/users/', first.next, 2);
    expect(second).toEqual({ keys: ['acme/users/5'] });
    // The dead entries met on the way were removed from the index.
    expect(await raw.zrange('t:idx:{acme}', '0', '-1')).toEqual(['acme/orders/1', 'acme/users/1', 'acme/users/3', 'acme/users/5', 'acme/usersx']);

    // An exact page has no next; `after` before the prefix starts at the beginning.
    expect(await l2.list('acme/users/', undefined, 3)).toEqual({ keys: ['acme/users/1', 'acme/users/3', 'acme/users/5'] });
    expect(await l2.list('acme/users/', 'acme/a', 1)).toEqual({ keys: ['acme/users/1'], next: 'acme/users/1' });
    expect(await l2.list('acme/', 'acme/users/5', 10)).toEqual({ keys: ['acme/usersx'] });
    expect(await l2.list('acme/', undefined, 10)).toEqual({ keys: ['acme/orders/1', 'acme/users/1', 'acme/users/3', 'acme/users/5', 'acme/usersx'] });

    const { error } = await rejection(l2.list('acme', undefined, 10));
    expect(error.code).toBe('bad_request');
  });

  it('lists every tenant for the prefix "", in key byte order, page by page', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    // "a-b/…" sorts before "a/…" ('-' < '/'), although the tenant "a" sorts before "a-b".
    await l2.writeBatch([record('a/x', '1'), record('a-b/y', '2'), record('a-b/z', '3'), record('b/w', '4'), record('a/v', '5')]);
    const all = ['a-b/y', 'a-b/z', 'a/v', 'a/x', 'b/w'];
    expect(await l2.list('', undefined, 10)).toEqual({ keys: all });
    const seen: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await l2.list('', after, 2);
      seen.push(...page.keys);
      if (page.next === undefined) break;
      after = page.next;
    }
    expect(seen).toEqual(all);
  });

  it('applies a batch in order per key', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    await l2.writeBatch([
      record('acme/k', '1', 'v1'),
      record('acme/j', 'j', 'vj'),
      record('acme/k', '2', 'v2'),
      record('acme/j', '', 'vj2', { tombstone: true }),
      record('acme/k', '3', 'v3'),
    ]);
    expect((await l2.get('acme/k'))?.version).toBe('v3');
    expect(await l2.get('acme/j')).toBeUndefined();
    expect(await l2.list('acme/', undefined, 10)).toEqual({ keys: ['acme/k'] });
    await l2.writeBatch([]);
  });

  it('tells other instances about a write and not the writer itself', async () => {
    const redis = await startRedis(closers);
    const a = await openL2(closers, redis.url);
    const b = await openL2(closers, redis.url);
    const aEvents = recordEvents(a);
    const bEvents = recordEvents(b);

    await a.write(record('acme/x', '1'), { kind: 'any' });
    await a.writeBatch([record('acme/y', '1'), record('acme/z', '', undefined, { tombstone: true })]);
    await until(() => bEvents.invalidated.length === 3, 2_000, 'b to hear three invalidations');
    expect(bEvents.invalidated).toEqual(['acme/x', 'acme/y', 'acme/z']);

    // Pub/sub keeps order per connection: once a has heard b's write, it has also heard (and
    // ignored) its own earlier ones.
    await b.write(record('acme/w', '1'), { kind: 'any' });
    await until(() => aEvents.invalidated.length > 0, 2_000, 'a to hear b');
    expect(aEvents.invalidated).toEqual(['acme/w']);
    // A failed condition wrote nothing and announces nothing.
    await a.write(record('acme/x', '2'), { kind: 'absent' });
    await b.write(record('acme/v', '1'), { kind: 'any' });
    await until(() => aEvents.invalidated.length === 2, 2_000, 'a to hear b again');
    expect(bEvents.invalidated).toEqual(['acme/x', 'acme/y', 'acme/z']);
  });

  it('reports the invalidation link down when the subscriber is killed, and up once resubscribed', async () => {
    const redis = await startRedis(closers);
    const a = await openL2(closers, redis.url);
    const b = await openL2(closers, redis.url);
    const events = recordEvents(b);
    const raw = rawClient(closers, redis.port);

    expect(await raw.call('CLIENT', 'KILL', 'TYPE', 'pubsub')).toBe(2);
    await until(() => events.links.length >= 1, 2_000, 'link down');
    expect(events.links[0]).toBe(false);
    await until(() => b.coherent, 2_000, 'link up again');
    expect(events.links).toEqual([false, true]);
    expect(b.available).toBe(true);

    // Up means subscribed: a write right now is heard.
    await a.write(record('acme/after', '1'), { kind: 'any' });
    await until(() => events.invalidated.includes('acme/after'), 2_000, 'invalidation after relink');
  });

  it('fails fast with l2_unavailable when redis-server dies, and recovers after a restart', async () => {
    const redis = await startRedis(closers);
    const draws: number[] = [];
    const l2 = await openL2(closers, redis.url, {
      random: () => {
        draws.push(0.5);
        return 0.5;
      },
    });
    const events = recordEvents(l2);
    // The delays ioredis schedules are the backoff itself; read them off the command connection.
    const delays: number[] = [];
    (l2 as unknown as { client: Redis }).client.on('reconnecting', (ms: number) => delays.push(ms));
    await l2.write(record('acme/before', '1'), { kind: 'any' });

    await redis.kill();
    await until(() => !l2.available && !l2.coherent, 2_000, 'the tier to notice');
    expect(events.links).toEqual([false]);

    const attempts = [
      () => l2.get('acme/before'),
      () => l2.getMany(['acme/before']),
      () => l2.write(record('acme/x', '1'), { kind: 'any' }),
      () => l2.writeBatch([record('acme/y', '1')]),
      () => l2.list('acme/', undefined, 5),
    ];
    for (const attempt of attempts) {
      const { error, ms } = await rejection(attempt());
      expect(error).toBeInstanceOf(MeshError);
      expect(error.code).toBe('l2_unavailable');
      expect(error.status).toBe(503);
      expect(ms).toBeLessThan(FAIL_FAST_MS);
    }

    // Full jitter: 0.5 × min(max, base × 2^attempt), attempt from 0.
    await until(() => delays.length >= 5, 3_000, 'five reconnect attempts');
    expect(delays.slice(0, 5)).toEqual([10, 20, 40, 80, 100]);
    expect(draws.length).toBeGreaterThan(0);

    await redis.restart();
    await until(() => l2.available && l2.coherent, 3_000, 'the tier to come back');
    expect(events.links).toEqual([false, true]);
    // Nothing persisted (--save ''), and the tier works again.
    expect(await l2.get('acme/before')).toBeUndefined();
    expect(await l2.write(record('acme/after', '1', 'v1'), { kind: 'absent' })).toEqual({ ok: true });
    expect((await l2.get('acme/after'))?.version).toBe('v1');
  });

  it('times out a command that Redis does not answer', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    const raw = rawClient(closers, redis.port);
    // Redis holds every client's commands (this one's too) for longer than the command timeout.
    await raw.client('PAUSE', String(COMMAND_TIMEOUT_MS + 300), 'ALL');
    const { error, ms } = await rejection(l2.get('acme/paused'));
    expect(error.code).toBe('l2_unavailable');
    expect(error.message).toMatch(/timed out/i);
    expect(ms).toBeGreaterThanOrEqual(COMMAND_TIMEOUT_MS - 20);
    expect(ms).toBeLessThan(COMMAND_TIMEOUT_MS * 2);
  });

  it('rejects ready() with l2_unavailable after connectTimeout when nothing listens', async () => {
    const port = await freePort();
    const l2 = new RedisL2({
      url: `redis://127.0.0.1:${port}`,
      keyPrefix: PREFIX,
      commandTimeout: COMMAND_TIMEOUT_MS,
      connectTimeout: 300,
      reconnectBase: RECONNECT_BASE_MS,
      reconnectMax: RECONNECT_MAX_MS,
      instanceId: 'lonely',
    });
    closers.push(() => l2.close());
    const { error, ms } = await rejection(l2.ready());
    expect(error.code).toBe('l2_unavailable');
    expect(error.message).toContain(`redis://127.0.0.1:${port}`);
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(1_000);
    expect(l2.available).toBe(false);
    expect((await rejection(l2.get('acme/x'))).error.code).toBe('l2_unavailable');
  });

  it('closes quickly and refuses work afterwards', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    const raw = rawClient(closers, redis.port);
    const started = performance.now();
    await l2.close();
    expect(performance.now() - started).toBeLessThan(500);
    expect(l2.available).toBe(false);
    expect(l2.coherent).toBe(false);
    expect((await rejection(l2.get('acme/x'))).error.code).toBe('l2_unavailable');
    await until(async () => !String(await raw.call('CLIENT', 'LIST')).includes('ctxmesh:'), 2_000, 'connections to go');
  });

  it('refuses keys whose tenant would not make a hash tag', async () => {
    const redis = await startRedis(closers);
    const l2 = await openL2(closers, redis.url);
    expect((await rejection(l2.get('/x'))).error.code).toBe('invalid_key');
    expect((await rejection(l2.write(record('/x', '1'), { kind: 'any' }))).error.code).toBe('invalid_key');
  });
});

describe('RedisL2 through Sentinel', () => {
  const closers = closeAfterEach();

  it('finds the master through the sentinel and reads, writes, lists and invalidates', async () => {
    const sentinel = await startRedisSentinel(closers, 'ctxmaster');
    const a = await openL2(closers, sentinel.url);
    const b = await openL2(closers, sentinel.url);
    const events = recordEvents(b);

    expect(await a.write(record('acme/s', '1', 'v1'), { kind: 'absent' })).toEqual({ ok: true });
    expect(await a.write(record('acme/s', '2', 'v2'), { kind: 'absent' })).toEqual({ ok: false, current: 'v1' });
    await a.writeBatch([record('acme/t', '1'), record('acme/u', '1')]);
    expect((await b.get('acme/s'))?.version).toBe('v1');
    expect(await b.list('acme/', undefined, 2)).toEqual({ keys: ['acme/s', 'acme/t'], next: 'acme/t' });
    await until(() => events.invalidated.length === 3, 2_000, 'invalidations through the sentinel-found master');

    // The data is on the master the sentinel named.
    const raw = rawClient(closers, sentinel.master.port);
    expect(await raw.exists('t:{acme}/s')).toBe(1);
  });
});

describe('RedisL2 on a three-master Cluster', () => {
  const suiteClosers: Closers = [];
  const closers = closeAfterEach();
  let cluster: RedisCluster;
  // Tenants spread over the slots of all three masters (checked below).
  const tenants = Array.from({ length: 12 }, (_, i) => `tenant${i}`);

  beforeAll(async () => {
    cluster = await startRedisCluster(suiteClosers);
  }, 60_000);
  afterAll(async () => {
    for (const close of suiteClosers.splice(0).reverse()) await close();
  });

  function rawCluster(): Cluster {
    const raw = new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0]!.port }]);
    closers.push(async () => {
      raw.disconnect();
    });
    return raw;
  }

  it('writes batches and reads many across tenants on every master', async () => {
    const l2 = await openL2(closers, cluster.url);
    const raw = rawCluster();
    const records = tenants.flatMap((t) => [record(`${t}/a`, `${t}-a1`, `${t}-1`), record(`${t}/b`, `${t}-b`), record(`${t}/a`, `${t}-a2`, `${t}-2`)]);
    await l2.writeBatch(records);

    // The tenants really are spread: each master holds some of the data keys.
    const perNode = await Promise.all(cluster.nodes.map((n) => rawClient(closers, n.port).dbsize()));
    for (const count of perNode) expect(count).toBeGreaterThan(0);

    const keys = tenants.flatMap((t) => [`${t}/a`, `${t}/missing`, `${t}/b`]);
    const many = await l2.getMany(keys);
    expect(many.map((r) => r?.value.toString())).toEqual(tenants.flatMap((t) => [`${t}-a2`, undefined, `${t}-b`]));
    expect((await l2.get('tenant3/a'))?.version).toBe('tenant3-2');
    expect(await raw.zrange('t:idx:{tenant3}', '0', '-1')).toEqual(['tenant3/a', 'tenant3/b']);
  });

  it('applies conditions, tombstones and lists per tenant', async () => {
    const l2 = await openL2(closers, cluster.url);
    for (const t of tenants.slice(0, 4)) {
      expect(await l2.write(record(`${t}/c`, '1', 'v1'), { kind: 'absent' })).toEqual({ ok: true });
      expect(await l2.write(record(`${t}/c`, '2', 'v2'), { kind: 'version', versions: ['v0'] })).toEqual({ ok: false, current: 'v1' });
      expect(await l2.write(record(`${t}/d`, '1', 'v1'), { kind: 'any' })).toEqual({ ok: true });
      expect(await l2.write(record(`${t}/e`, '1', 'v1'), { kind: 'any' })).toEqual({ ok: true });
      expect(await l2.write(record(`${t}/d`, '', 'v2', { tombstone: true }), { kind: 'present' })).toEqual({ ok: true });
      const first = await l2.list(`${t}/`, `${t}/b`, 1);
      expect(first).toEqual({ keys: [`${t}/c`], next: `${t}/c` });
      expect(await l2.list(`${t}/`, first.next, 1)).toEqual({ keys: [`${t}/e`] });
    }
    // The prefix "" reaches the tenants on every master.
    const everything = await l2.list('', undefined, 1_000);
    for (const t of tenants.slice(0, 4)) expect(everything.keys).toEqual(expect.arrayContaining([`${t}/c`, `${t}/e`]));
    expect(everything.keys).toEqual([...everything.keys].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))));
  });

  it('hears invalidations published on every master through one subscriber, and relinks after a kill', async () => {
    const a = await openL2(closers, cluster.url);
    const b = await openL2(closers, cluster.url);
    const events = recordEvents(b);
    const own = recordEvents(a);
    for (const t of tenants) await a.write(record(`${t}/inv`, '1'), { kind: 'any' });
    // The bus may still carry earlier tests' messages: look for these keys, not a count.
    const heardAll = (heard: string[]): boolean => tenants.every((t) => heard.includes(`${t}/inv`));
    await until(() => heardAll(events.invalidated), 3_000, 'invalidations from every master');
    // Both subscribers sit on the same node, which sent a its own messages before b's answer.
    await b.write(record('tenant0/from-b', '1'), { kind: 'any' });
    await until(() => own.invalidated.includes('tenant0/from-b'), 2_000, 'a to hear b');
    expect(own.invalidated.filter((k) => k.endsWith('/inv'))).toEqual([]);

    // Kill every pub/sub connection on every master: b's subscriber is among them.
    for (const node of cluster.nodes) await rawClient(closers, node.port).call('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await until(() => events.links.includes(false), 2_000, 'link down');
    await until(() => b.coherent, 3_000, 'link up');
    await a.write(record('tenant0/after', '1'), { kind: 'any' });
    await until(() => events.invalidated.includes('tenant0/after'), 2_000, 'invalidation after relink');
  });
});
