// The per-endpoint circuit breaker, end to end: real upstreams answering 500s trip it, traffic
// then skips the endpoint, every breaker open means 503 circuit_open, and after resetTimeout one
// half-open probe decides whether it closes again. State is read from the admin API.
import type { ServerResponse } from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EndpointBreaker, type BreakerState } from '../../src/resilience/circuit-breaker.js';
import {
  createPki,
  endpointStatus,
  metricValue,
  send,
  sidecarConfig,
  startApp,
  startSidecar,
  until,
  type Reply,
  type RunningSidecar,
  type TestApp,
} from '../helpers/mesh.js';

type Mode = 'ok' | 'fail' | 'hold';

/** An upstream whose behaviour the test switches: 200, 500, or hold the request open. */
interface SwitchableApp extends TestApp {
  mode: Mode;
  held: ServerResponse[];
}

async function switchableApp(name: string, mode: Mode): Promise<SwitchableApp> {
  const held: ServerResponse[] = [];
  const app = Object.assign(
    await startApp(name, (_req, res) => {
      if (app.mode === 'hold') return void held.push(res);
      res.statusCode = app.mode === 'fail' ? 500 : 200;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ app: name }));
    }),
    { mode, held },
  );
  return app;
}

// Breakers trip after 4 requests in the window with more than 50% failing. Outlier detection is
// off so that the breaker alone decides; 500 is not in retryOn, so nothing is retried either.
const BREAKER = { volumeThreshold: 4, errorThresholdPercentage: 50 } as const;
const RESET_TIMEOUT_MS = 300;

describe('per-endpoint circuit breaker', () => {
  let bad: SwitchableApp;
  let good: SwitchableApp;
  let failingA: SwitchableApp;
  let failingB: SwitchableApp;
  let flaky: SwitchableApp;
  let mesh: RunningSidecar;

  beforeAll(async () => {
    const pki = await createPki();
    bad = await switchableApp('bad', 'fail');
    good = await switchableApp('good', 'ok');
    failingA = await switchableApp('failing-a', 'fail');
    failingB = await switchableApp('failing-b', 'fail');
    flaky = await switchableApp('flaky', 'fail');
    const cluster = (name: string, endpoints: TestApp[], resetTimeout: string) => ({
      name,
      domains: [name],
      tls: 'none',
      lb: 'round_robin',
      endpoints: endpoints.map((app) => ({ address: app.address })),
      circuitBreaker: { ...BREAKER, resetTimeout },
      outlierDetection: { consecutive5xx: 0 },
    });
    mesh = await startSidecar(
      sidecarConfig(await pki.issue('breaker'), {
        clusters: [
          // Long reset timeouts where the test needs the breaker to stay open while it looks.
          cluster('mixed', [bad, good], '1h'),
          cluster('all-failing', [failingA, failingB], '1h'),
          cluster('recovering', [flaky], `${RESET_TIMEOUT_MS}ms`),
        ],
      }),
    );
  });

  afterAll(async () => {
    await mesh?.sidecar.close();
    for (const app of [bad, good, failingA, failingB, flaky]) {
      for (const res of app?.held.splice(0) ?? []) res.destroy();
      await app?.close();
    }
  });

  const breakerOf = async (cluster: string, app: TestApp) => (await endpointStatus(mesh.admin, cluster, app.address)).circuit_breaker;
  const stateGauge = (cluster: string, app: TestApp) =>
    metricValue(mesh.admin, 'ctxmesh_circuit_breaker_state', { cluster, endpoint: app.address });

  it('trips the breaker of an endpoint answering 500s, and traffic then skips it', async () => {
    expect(await breakerOf('mixed', bad)).toBe('closed');
    expect(await stateGauge('mixed', bad)).toBe(0);
    const statuses: number[] = [];
    await until(async () => {
      statuses.push((await send(mesh.outbound, '/', { host: 'mixed' })).status);
      return (await breakerOf('mixed', bad)) === 'open';
    }, 5_000, 'the breaker of the failing endpoint to open');
    // Round robin alternates: the failing endpoint answered its 500s to the clients until it tripped.
    expect(statuses).toContain(500);
    expect(bad.received.length).toBeGreaterThanOrEqual(BREAKER.volumeThreshold);
    expect(await stateGauge('mixed', bad)).toBe(2);
    expect(await stateGauge('mixed', good)).toBe(0);
    expect(await breakerOf('mixed', good)).toBe('closed');

    const seenByBad = bad.received.length;
    for (let i = 0; i < 10; i++) {
      const reply = await send(mesh.outbound, '/', { host: 'mixed' });
      expect(reply.status).toBe(200);
      expect(JSON.parse(reply.body).app).toBe('good');
    }
    expect(bad.received.length).toBe(seenByBad);
    const status = await endpointStatus(mesh.admin, 'mixed', bad.address);
    expect(status.healthy).toBe(false);
    expect(status.ejected).toBe(false);
    expect(
      await metricValue(mesh.admin, 'ctxmesh_circuit_breaker_transitions_total', { cluster: 'mixed', endpoint: bad.address, state: 'open' }),
    ).toBe(1);
  });

  it('answers 503 circuit_open without calling upstream once every breaker is open', async () => {
    await until(async () => {
      await send(mesh.outbound, '/', { host: 'all-failing' });
      return (await breakerOf('all-failing', failingA)) === 'open' && (await breakerOf('all-failing', failingB)) === 'open';
    }, 5_000, 'both breakers to open');
    const seen = failingA.received.length + failingB.received.length;

    const reply = await send(mesh.outbound, '/', { host: 'all-failing' });
    expect(reply.status).toBe(503);
    expect(reply.headers['x-ctxmesh-error']).toBe('circuit_open');
    expect(JSON.parse(reply.body).error).toBe('circuit_open');
    expect(failingA.received.length + failingB.received.length).toBe(seen);
    const line = mesh.logs.access().at(-1);
    expect(line).toMatchObject({ authority: 'all-failing', status: 503, error: 'circuit_open', attempts: 0 });
  });

  it('lets exactly one probe through when half-open, and closes again when it succeeds', async () => {
    await until(async () => {
      await send(mesh.outbound, '/', { host: 'recovering' });
      return (await metricValue(mesh.admin, 'ctxmesh_circuit_breaker_transitions_total', { cluster: 'recovering', state: 'open' })) !== undefined;
    }, 5_000, 'the breaker to open');
    const tripped = flaky.received.length;
    expect(tripped).toBeGreaterThanOrEqual(BREAKER.volumeThreshold);

    // After resetTimeout with no traffic, the breaker waits half-open for its probe.
    await until(async () => (await breakerOf('recovering', flaky)) === 'half_open', 5_000, 'half-open');
    expect(await stateGauge('recovering', flaky)).toBe(1);
    expect(flaky.received.length).toBe(tripped);

    // The upstream has recovered; hold the probe open to show that nothing else gets through.
    flaky.mode = 'hold';
    const probe = send(mesh.outbound, '/', { host: 'recovering' });
    await until(() => flaky.held.length === 1, 5_000, 'the probe to arrive');
    const others: Reply[] = [];
    for (let i = 0; i < 3; i++) others.push(await send(mesh.outbound, '/', { host: 'recovering' }));
    for (const reply of others) {
      expect(reply.status).toBe(503);
      expect(reply.headers['x-ctxmesh-error']).toBe('circuit_open');
    }
    expect(flaky.received.length).toBe(tripped + 1);
    expect(await breakerOf('recovering', flaky)).toBe('half_open');

    flaky.mode = 'ok';
    flaky.held.shift()!.end('{"app":"flaky"}');
    expect((await probe).status).toBe(200);
    await until(async () => (await breakerOf('recovering', flaky)) === 'closed', 5_000, 'the breaker to close');
    expect(await stateGauge('recovering', flaky)).toBe(0);
    for (let i = 0; i < 3; i++) expect((await send(mesh.outbound, '/', { host: 'recovering' })).status).toBe(200);
    expect(flaky.received.length).toBe(tripped + 4);
    expect(await breakerOf('recovering', flaky)).toBe('closed');
  });

  it('opens again when the half-open probe fails', async () => {
    flaky.mode = 'fail';
    const opens = async () =>
      (await metricValue(mesh.admin, 'ctxmesh_circuit_breaker_transitions_total', { cluster: 'recovering', state: 'open' })) ?? 0;
    const before = await opens();
    await until(async () => {
      await send(mesh.outbound, '/', { host: 'recovering' });
      return (await opens()) > before;
    }, 5_000, 'the breaker to open again');
    await until(async () => (await breakerOf('recovering', flaky)) === 'half_open', 5_000, 'half-open');
    const seen = flaky.received.length;

    const probe = await send(mesh.outbound, '/', { host: 'recovering' });
    expect(probe.status).toBe(500);
    expect(flaky.received.length).toBe(seen + 1);
    expect(await opens()).toBe(before + 2);
    expect(await breakerOf('recovering', flaky)).not.toBe('closed');
  });
});

describe('EndpointBreaker', () => {
  const breakers: EndpointBreaker[] = [];
  afterEach(() => {
    for (const b of breakers.splice(0)) b.close();
  });

  function breaker(resetTimeout = 50): { breaker: EndpointBreaker; changes: BreakerState[] } {
    const changes: BreakerState[] = [];
    const b = new EndpointBreaker(
      { maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRetries: 1, ...BREAKER, resetTimeout, rollingWindow: 60_000 },
      (state) => changes.push(state),
    );
    breakers.push(b);
    return { breaker: b, changes };
  }

  /** Settles `n` tries with the given outcome; opossum counts them on later microtasks. */
  async function tries(b: EndpointBreaker, n: number, failure?: Error): Promise<void> {
    for (let i = 0; i < n; i++) b.begin()(failure);
    await new Promise((resolve) => setImmediate(resolve));
  }

  it('opens only with volumeThreshold tries in the window and a failure rate above the threshold', async () => {
    const { breaker: b, changes } = breaker();
    await tries(b, 3, new Error('500'));
    expect(b.state).toBe('closed');
    await tries(b, 1);
    // 3 failures in 4 tries is over 50%, but the breaker judges on a failure: the next one opens it.
    expect(b.state).toBe('closed');
    await tries(b, 1, new Error('500'));
    expect(b.state).toBe('open');
    expect(b.admits).toBe(false);
    expect(changes).toEqual(['open']);

    const { breaker: even } = breaker();
    await tries(even, 2, new Error('500'));
    await tries(even, 2);
    // Exactly 50% is not above the threshold.
    expect(even.state).toBe('closed');
  });

  it('starts a fresh window when it closes: the failures that opened it no longer count', async () => {
    const { breaker: b, changes } = breaker();
    await tries(b, 4, new Error('500'));
    expect(b.state).toBe('open');
    await until(() => b.state === 'half_open', 5_000, 'half-open');
    expect(b.admits).toBe(true);
    const probe = b.begin();
    expect(b.admits).toBe(false);
    probe();
    await new Promise((resolve) => setImmediate(resolve));
    expect(b.state).toBe('closed');

    // One failure in four since recovery is under the threshold, whatever came before.
    await tries(b, 3);
    await tries(b, 1, new Error('500'));
    expect(b.state).toBe('closed');
    await tries(b, 3, new Error('500'));
    expect(b.state).toBe('open');
    expect(changes).toEqual(['open', 'half_open', 'closed', 'open']);
  });
});
