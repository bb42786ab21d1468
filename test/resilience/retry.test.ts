// Retries, timeouts and retry limits through a real sidecar. ring_hash with a key owned by the
// failing endpoint makes the first try's endpoint deterministic; the retry then has to go
// elsewhere on the ring.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  createPki,
  deadAddress,
  keyOwnedBy,
  metricValue,
  send,
  sidecarConfig,
  startApp,
  startHoldingApp,
  startSidecar,
  type AppHandler,
  type ConfigInput,
  type RunningSidecar,
  type TestApp,
  type TestPki,
  closeAfterEach,
} from '../helpers/mesh.js';

let pki: TestPki;
const closers = closeAfterEach();

beforeAll(async () => {
  pki = await createPki();
});


async function app(name: string, handler?: AppHandler): Promise<TestApp> {
  const started = await startApp(name, handler);
  closers.push(() => started.close());
  return started;
}

async function holdingApp(name: string) {
  const started = await startHoldingApp(name);
  closers.push(() => started.close());
  return started;
}

/** A sidecar with one ring_hash cluster `svc` over `addresses`; outlier detection off. */
async function sidecarFor(addresses: string[], cluster: ConfigInput = {}): Promise<RunningSidecar> {
  const running = await startSidecar(
    sidecarConfig(await pki.issue('retry'), {
      clusters: [
        {
          name: 'svc',
          domains: ['svc'],
          tls: 'none',
          lb: 'ring_hash',
          endpoints: addresses.map((address) => ({ address })),
          outlierDetection: { consecutive5xx: 0 },
          ...cluster,
          retry: { backoff: '1ms', ...(cluster.retry as ConfigInput | undefined) },
        },
      ],
    }),
  );
  closers.push(() => running.sidecar.close());
  return running;
}

function lastAccess(sidecar: RunningSidecar, path: string): Record<string, unknown> | undefined {
  return sidecar.logs.access().filter((l) => l.path === path).at(-1);
}

describe('retries', () => {
  it('retries a connect failure on a different endpoint', async () => {
    const dead = await deadAddress();
    const good = await app('good');
    const addresses = [dead, good.address];
    const sidecar = await sidecarFor(addresses);

    const reply = await send(sidecar.outbound, '/connect', { host: 'svc', headers: { 'x-ctx-key': keyOwnedBy(addresses, dead) } });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).app).toBe('good');
    expect(good.received).toHaveLength(1);
    expect(lastAccess(sidecar, '/connect')).toMatchObject({ status: 200, attempts: 2, upstream: good.address });
    expect(await metricValue(sidecar.admin, 'ctxmesh_upstream_retries_total', { cluster: 'svc' })).toBe(1);
  });

  it('retries a 503 from the upstream on a different endpoint', async () => {
    const unavailable = await app('unavailable', (_req, res) => {
      res.statusCode = 503;
      res.end('busy');
    });
    const good = await app('good');
    const addresses = [unavailable.address, good.address];
    const sidecar = await sidecarFor(addresses);

    const reply = await send(sidecar.outbound, '/503', { host: 'svc', headers: { 'x-ctx-key': keyOwnedBy(addresses, unavailable.address) } });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).app).toBe('good');
    expect(unavailable.received).toHaveLength(1);
    expect(good.received).toHaveLength(1);
    expect(lastAccess(sidecar, '/503')).toMatchObject({ status: 200, attempts: 2, upstream: good.address });
  });

  it('returns the last 503 once the tries are used up', async () => {
    const unavailable = await app('unavailable', (_req, res) => {
      res.statusCode = 503;
      res.end('busy');
    });
    const sidecar = await sidecarFor([unavailable.address], { retry: { attempts: 2 } });

    const reply = await send(sidecar.outbound, '/exhausted', { host: 'svc' });
    expect(reply.status).toBe(503);
    expect(reply.body).toBe('busy');
    expect(reply.headers['x-ctxmesh-error']).toBeUndefined();
    expect(unavailable.received).toHaveLength(3);
    expect(lastAccess(sidecar, '/exhausted')).toMatchObject({ status: 503, attempts: 3 });
  });

  it('retries a reset GET, but not a POST whose body was already sent', async () => {
    const resetting = await app('resetting', (req) => req.socket.destroy());
    const good = await app('good');
    const addresses = [resetting.address, good.address];
    const sidecar = await sidecarFor(addresses);
    const key = keyOwnedBy(addresses, resetting.address);

    const get = await send(sidecar.outbound, '/get', { host: 'svc', headers: { 'x-ctx-key': key } });
    expect(get.status).toBe(200);
    expect(resetting.received).toHaveLength(1);
    expect(good.received).toHaveLength(1);

    const post = await send(sidecar.outbound, '/post', { host: 'svc', method: 'POST', body: 'payload', headers: { 'x-ctx-key': key } });
    expect(post.status).toBe(502);
    expect(post.headers['x-ctxmesh-error']).toBe('upstream_reset');
    expect(resetting.received).toHaveLength(2);
    expect(resetting.received[1]).toMatchObject({ method: 'POST', body: 'payload' });
    expect(good.received).toHaveLength(1);
    expect(lastAccess(sidecar, '/post')).toMatchObject({ status: 502, error: 'upstream_reset', attempts: 1 });
  });

  it('gives up a try at perTryTimeout and retries it elsewhere', async () => {
    const hanging = await holdingApp('hanging');
    const good = await app('good');
    const addresses = [hanging.address, good.address];
    const sidecar = await sidecarFor(addresses, { retry: { attempts: 1, perTryTimeout: '200ms' } });

    const started = performance.now();
    const reply = await send(sidecar.outbound, '/slow', { host: 'svc', headers: { 'x-ctx-key': keyOwnedBy(addresses, hanging.address) } });
    const elapsed = performance.now() - started;
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).app).toBe('good');
    expect(hanging.received).toHaveLength(1);
    expect(good.received).toHaveLength(1);
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(3_000);
    expect(lastAccess(sidecar, '/slow')).toMatchObject({ status: 200, attempts: 2, upstream: good.address });
  });

  it('cuts every try at perTryTimeout, and answers 504 when the last one times out too', async () => {
    const hanging = await Promise.all(['a', 'b', 'c', 'd'].map((name) => holdingApp(name)));
    const sidecar = await sidecarFor(
      hanging.map((h) => h.address),
      { lb: 'round_robin', retry: { attempts: 3, perTryTimeout: '100ms' } },
    );

    const started = performance.now();
    const reply = await send(sidecar.outbound, '/tries', { host: 'svc' });
    const elapsed = performance.now() - started;
    expect(reply.status).toBe(504);
    expect(reply.headers['x-ctxmesh-error']).toBe('upstream_timeout');
    // Four tries, each to an endpoint not tried before.
    expect(hanging.map((h) => h.received.length)).toEqual([1, 1, 1, 1]);
    expect(lastAccess(sidecar, '/tries')).toMatchObject({ status: 504, error: 'upstream_timeout', attempts: 4 });
    // 4 × 100ms plus back-off; a timer coarser than the per-try timeout (undici's 500ms ticks
    // alone) would need two seconds and more.
    expect(elapsed).toBeGreaterThanOrEqual(390);
    expect(elapsed).toBeLessThan(1_500);
  });

  it('answers 504 upstream_timeout at the overall timeout when every endpoint hangs', async () => {
    const a = await holdingApp('a');
    const b = await holdingApp('b');
    const sidecar = await sidecarFor([a.address, b.address], { lb: 'round_robin', timeout: '400ms' });

    const started = performance.now();
    const reply = await send(sidecar.outbound, '/hang', { host: 'svc' });
    const elapsed = performance.now() - started;
    expect(reply.status).toBe(504);
    expect(reply.headers['x-ctxmesh-error']).toBe('upstream_timeout');
    expect(elapsed).toBeGreaterThanOrEqual(390);
    expect(elapsed).toBeLessThan(3_000);
    expect(lastAccess(sidecar, '/hang')).toMatchObject({ status: 504, error: 'upstream_timeout' });
  });
});

describe('retry limits', () => {
  it('does not retry with circuitBreaker.maxRetries 0, and counts the refusal', async () => {
    const dead = await deadAddress();
    const good = await app('good');
    const addresses = [dead, good.address];
    const sidecar = await sidecarFor(addresses, { circuitBreaker: { maxRetries: 0 } });

    const reply = await send(sidecar.outbound, '/no-retry', { host: 'svc', headers: { 'x-ctx-key': keyOwnedBy(addresses, dead) } });
    expect(reply.status).toBe(503);
    expect(reply.headers['x-ctxmesh-error']).toBe('connect_failure');
    expect(good.received).toHaveLength(0);
    expect(lastAccess(sidecar, '/no-retry')).toMatchObject({ status: 503, error: 'connect_failure', attempts: 1 });
    expect(await metricValue(sidecar.admin, 'ctxmesh_overflow_total', { cluster: 'svc', limit: 'max_retries' })).toBe(1);
    expect((await metricValue(sidecar.admin, 'ctxmesh_upstream_retries_total', { cluster: 'svc' })) ?? 0).toBe(0);
  });

  it('does not retry beyond the retry budget, and counts the refusal', async () => {
    const dead = await deadAddress();
    const good = await app('good');
    const addresses = [dead, good.address];
    const sidecar = await sidecarFor(addresses, { retry: { budgetPercent: 0, minRetryConcurrency: 0 } });

    const reply = await send(sidecar.outbound, '/budget', { host: 'svc', headers: { 'x-ctx-key': keyOwnedBy(addresses, dead) } });
    expect(reply.status).toBe(503);
    expect(reply.headers['x-ctxmesh-error']).toBe('connect_failure');
    expect(good.received).toHaveLength(0);
    expect(await metricValue(sidecar.admin, 'ctxmesh_overflow_total', { cluster: 'svc', limit: 'retry_budget' })).toBe(1);
  });

  it('lets minRetryConcurrency retries through however small the budget percentage', async () => {
    const dead = await deadAddress();
    const good = await app('good');
    const addresses = [dead, good.address];
    const sidecar = await sidecarFor(addresses, { retry: { budgetPercent: 0, minRetryConcurrency: 1 } });
    const reply = await send(sidecar.outbound, '/min', { host: 'svc', headers: { 'x-ctx-key': keyOwnedBy(addresses, dead) } });
    expect(reply.status).toBe(200);
    expect(await metricValue(sidecar.admin, 'ctxmesh_upstream_retries_total', { cluster: 'svc' })).toBe(1);
    expect(await metricValue(sidecar.admin, 'ctxmesh_overflow_total', { cluster: 'svc', limit: 'retry_budget' })).toBeUndefined();
  });
});
