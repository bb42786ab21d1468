// Cluster concurrency limits through a real sidecar: over maxRequests or maxPendingRequests a
// request fails at once with 503 overflow, while the requests already admitted carry on.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  clusterStatus,
  createPki,
  metricValue,
  send,
  sidecarConfig,
  startHoldingApp,
  startSidecar,
  until,
  type HoldingApp,
  type Reply,
  type RunningSidecar,
  type TestPki,
  closeAfterEach,
} from '../helpers/mesh.js';

let pki: TestPki;
const closers = closeAfterEach();

beforeAll(async () => {
  pki = await createPki();
});


async function setup(circuitBreaker: Record<string, number>): Promise<{ app: HoldingApp; mesh: RunningSidecar }> {
  const app = await startHoldingApp('held');
  closers.push(() => app.close());
  const mesh = await startSidecar(
    sidecarConfig(await pki.issue('limits'), {
      clusters: [{ name: 'svc', domains: ['svc'], tls: 'none', endpoints: [{ address: app.address }], circuitBreaker }],
    }),
  );
  closers.push(() => mesh.sidecar.close());
  return { app, mesh };
}

/** A request that is left in flight; `settled` tells whether it has been answered yet. */
function inFlight(mesh: RunningSidecar, path: string): { reply: Promise<Reply>; settled: () => boolean } {
  let done = false;
  const reply = send(mesh.outbound, path, { host: 'svc' });
  reply.then(() => (done = true), () => (done = true));
  return { reply, settled: () => done };
}

function expectOverflow(reply: Reply): void {
  expect(reply.status).toBe(503);
  expect(reply.headers['x-ctxmesh-error']).toBe('overflow');
  expect(JSON.parse(reply.body).error).toBe('overflow');
}

describe('concurrency limits', () => {
  it('refuses the request over maxRequests at once, while the admitted ones are still in flight', async () => {
    const { app, mesh } = await setup({ maxRequests: 2 });
    const first = inFlight(mesh, '/1');
    const second = inFlight(mesh, '/2');
    await until(() => app.held.length === 2, 5_000, 'two requests held upstream');

    const third = await send(mesh.outbound, '/3', { host: 'svc' });
    expectOverflow(third);
    expect(first.settled()).toBe(false);
    expect(second.settled()).toBe(false);
    expect(app.received).toHaveLength(2);
    expect((await clusterStatus(mesh.admin, 'svc')).active_requests).toBe(2);
    expect(await metricValue(mesh.admin, 'ctxmesh_overflow_total', { cluster: 'svc', limit: 'max_requests' })).toBe(1);
    expect(mesh.logs.access().find((l) => l.path === '/3')).toMatchObject({ status: 503, error: 'overflow', attempts: 0 });

    app.releaseAll();
    expect((await first.reply).status).toBe(200);
    expect((await second.reply).status).toBe(200);
    // Finished requests give their slots back.
    await until(async () => (await clusterStatus(mesh.admin, 'svc')).active_requests === 0, 5_000, 'slots released');
    const after = inFlight(mesh, '/4');
    await until(() => app.held.length === 1, 5_000, 'the next request admitted');
    app.releaseAll();
    expect((await after.reply).status).toBe(200);
  });

  it('refuses the request over maxPendingRequests when every connection is busy', async () => {
    const { app, mesh } = await setup({ maxConnections: 1, maxPendingRequests: 1 });
    const first = inFlight(mesh, '/1');
    await until(() => app.held.length === 1, 5_000, 'the first request held upstream');
    // The second waits in the pool for the one connection.
    const second = inFlight(mesh, '/2');
    await until(async () => (await clusterStatus(mesh.admin, 'svc')).pending_requests === 1, 5_000, 'a pending request');
    expect(app.received).toHaveLength(1);

    const third = await send(mesh.outbound, '/3', { host: 'svc' });
    expectOverflow(third);
    expect(first.settled()).toBe(false);
    expect(second.settled()).toBe(false);
    expect(await metricValue(mesh.admin, 'ctxmesh_overflow_total', { cluster: 'svc', limit: 'max_pending_requests' })).toBe(1);
    expect(await metricValue(mesh.admin, 'ctxmesh_overflow_total', { cluster: 'svc', limit: 'max_requests' })).toBeUndefined();

    // The held request finishes; the pending one gets the connection.
    app.releaseAll();
    expect((await first.reply).status).toBe(200);
    await until(() => app.held.length === 1, 5_000, 'the pending request to reach the upstream');
    expect((await clusterStatus(mesh.admin, 'svc')).pending_requests).toBe(0);
    app.releaseAll();
    expect((await second.reply).status).toBe(200);
    expect(app.received.map((r) => r.url)).toEqual(['/1', '/2']);
  });
});
