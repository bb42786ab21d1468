// The Redis registry store in process, against a real redis-server: declarations race from two
// replicas and happen once; health reports from either replica count together and age out of the
// window; a replica that starts while Redis is down serves its config, degraded, and syncs when
// Redis appears; config errors name the field.
import { describe, expect, it } from 'vitest';
import { ControlPlaneConfigSchema } from '../../src/config/schema.js';
import { closeAfterEach, until } from '../helpers/mesh.js';
import { startRedis } from '../helpers/redis.js';
import type { ControlPlane } from '../../xds/control-plane.js';
import { adminGet, startControlPlane } from './harness.js';

const closers = closeAfterEach();

const redisStore = (url: string) => ({ store: { backend: 'redis', url, resyncInterval: '500ms', connectTimeout: '300ms' }, registration: { ttl: '60s' } });

async function registerMembers(plane: ControlPlane, ids: string[]): Promise<void> {
  for (const [i, nodeId] of ids.entries()) await plane.store.heartbeat({ nodeId, service: 'chat', address: `127.0.0.1:${25000 + i}`, zone: 'z1' });
}

describe('redis registry store', () => {
  it('of many concurrent declarations from two replicas, exactly one takes effect, with one epoch', async () => {
    const redis = await startRedis(closers);
    const [a, b] = [await startControlPlane(closers, redisStore(redis.url)), await startControlPlane(closers, redisStore(redis.url))];
    await registerMembers(a, ['m1', 'm2', 'm3']);
    await until(() => b.registry.liveMembers('chat').length === 3, 5_000, 'B sees the members');
    const attempts = Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).store.declareFailed('m3', `attempt ${i}`));
    const results = await Promise.all(attempts);
    expect(results.filter(Boolean)).toHaveLength(1);
    for (const plane of [a, b]) {
      await until(() => plane.registry.describe('chat')!.endpoints.find((e) => e.nodeId === 'm3')!.health === 'UNHEALTHY', 5_000, 'declared everywhere');
      expect(plane.registry.history().filter((f) => f.kind === 'declared')).toMatchObject([{ nodeId: 'm3', epoch: 1 }]);
    }
    // Recovery is once too, and the epoch keeps rising.
    const recovered = await Promise.all([a.store.declareRecovered('m3', 'alive'), b.store.declareRecovered('m3', 'alive')]);
    expect(recovered.filter(Boolean)).toHaveLength(1);
    expect(a.registry.describe('chat')!.endpoints.find((e) => e.nodeId === 'm3')).toMatchObject({ health: 'HEALTHY', epoch: 2 });
    // An unknown node is not declared anywhere.
    expect(await a.store.declareFailed('nobody', 'x')).toBe(false);
  });

  it('counts reports received by either replica, keeps the higher incarnation, and forgets reports older than the window', async () => {
    const redis = await startRedis(closers);
    const [a, b] = [await startControlPlane(closers, redisStore(redis.url)), await startControlPlane(closers, redisStore(redis.url))];
    const at = 1_000_000;
    await a.store.recordReport({ observer: 'x', subject: 's', status: 'dead', incarnation: 3, receivedAt: at }, 5_000);
    const seen = await b.store.recordReport({ observer: 'y', subject: 's', status: 'suspect', incarnation: 3, receivedAt: at + 10 }, 5_000);
    expect(seen.map((r) => [r.observer, r.status]).sort()).toEqual([
      ['x', 'dead'],
      ['y', 'suspect'],
    ]);
    // A report about an older incarnation does not overwrite a newer one.
    const stale = await b.store.recordReport({ observer: 'x', subject: 's', status: 'alive', incarnation: 2, receivedAt: at + 20 }, 5_000);
    expect(stale.find((r) => r.observer === 'x')).toMatchObject({ status: 'dead', incarnation: 3 });
    // Past the window, only the new report remains.
    const later = await a.store.recordReport({ observer: 'z', subject: 's', status: 'alive', incarnation: 3, receivedAt: at + 6_000 }, 5_000);
    expect(later.map((r) => r.observer)).toEqual(['z']);
  });

  it('starts degraded while Redis is down, serving its config, and syncs when Redis appears', async () => {
    const redis = await startRedis(closers);
    const first = await startControlPlane(closers, redisStore(redis.url));
    await registerMembers(first, ['m1']);
    await redis.stop();
    const plane = await startControlPlane(closers, { ...redisStore(redis.url), services: [{ name: 'search', endpoints: [{ address: '127.0.0.1:7001' }] }] });
    const registry = await adminGet(plane, '/v1/registry');
    expect(registry.store).toMatchObject({ backend: 'redis', connected: false, degraded: true });
    expect(registry.services.map((s: any) => s.name)).toEqual(['search']);
    await expect(plane.store.declareFailed('m1', 'x')).rejects.toMatchObject({ code: 'store_unavailable' });
    await redis.restart();
    // Redis came back empty, but the replica that was connected writes back what it knew.
    await until(async () => (await adminGet(plane, '/v1/registry')).store.degraded === false, 10_000, 'in sync');
    await until(() => plane.registry.liveMembers('chat').length === 1, 10_000, 'the member written back by the other replica');
  });

  it('rejects a redis store without a url, or with a malformed one, naming the field', () => {
    const noUrl = ControlPlaneConfigSchema.safeParse({ store: { backend: 'redis' } });
    expect(noUrl.success).toBe(false);
    expect(noUrl.error!.issues[0]).toMatchObject({ path: ['store', 'url'], message: 'url is required when backend is redis' });
    const badPort = ControlPlaneConfigSchema.safeParse({ store: { backend: 'redis', url: 'redis://127.0.0.1:99999' } });
    expect(badPort.error!.issues[0]!.path).toEqual(['store', 'url']);
    expect(badPort.error!.issues[0]!.message).toMatch(/no valid port/);
    expect(ControlPlaneConfigSchema.parse({}).store).toMatchObject({ backend: 'memory', keyPrefix: 'ctxmesh:cp:' });
  });
});
