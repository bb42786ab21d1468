// Outlier detection: the timing and counting rules of ConsecutiveFailureDetector on a fake clock
// (no sleeping), then one sidecar with an injected clock showing ejection end to end.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { OutlierDetectionConfig } from '../../src/config/schema.js';
import { ConsecutiveFailureDetector, OutlierState, type OutlierHost } from '../../src/resilience/outlier-detection.js';
import {
  createPki,
  deadAddress,
  endpointStatus,
  metricValue,
  send,
  sidecarConfig,
  startApp,
  startSidecar,
  until,
  type RunningSidecar,
  type TestApp,
} from '../helpers/mesh.js';

const BASE_MS = 30_000;

const CONFIG: OutlierDetectionConfig = {
  consecutive5xx: 5,
  // No review timer: the tests call review() themselves.
  interval: 0,
  baseEjectionTime: BASE_MS,
  maxEjectionTime: 300_000,
  maxEjectionPercent: 50,
};

function hosts(n: number): OutlierHost[] {
  return Array.from({ length: n }, (_, i) => ({ address: `10.0.0.${i + 1}:80`, outlier: new OutlierState() }));
}

describe('ConsecutiveFailureDetector', () => {
  let t = 1_000;
  const clock = { now: () => t };
  const detectors: Array<ConsecutiveFailureDetector<OutlierHost>> = [];
  const ejections: Array<{ address: string; untilMs: number }> = [];

  function detector(list: OutlierHost[], overrides: Partial<OutlierDetectionConfig> = {}): ConsecutiveFailureDetector<OutlierHost> {
    const d = new ConsecutiveFailureDetector({ ...CONFIG, ...overrides }, () => list, clock, (host, untilMs) =>
      ejections.push({ address: host.address, untilMs }),
    );
    detectors.push(d);
    return d;
  }

  function fail(d: ConsecutiveFailureDetector<OutlierHost>, host: OutlierHost, times: number): void {
    for (let i = 0; i < times; i++) d.recordFailure(host);
  }

  afterEach(() => {
    for (const d of detectors.splice(0)) d.close();
    ejections.length = 0;
    t = 1_000;
  });

  it('ejects after consecutive5xx failures in a row, and a success in between starts the count again', () => {
    const list = hosts(4);
    const a = list[0];
    const d = detector(list);
    fail(d, a!, 4);
    d.recordSuccess(a!);
    fail(d, a!, 4);
    expect(d.isEjected(a!)).toBe(false);
    expect(a!.outlier.consecutiveFailures).toBe(4);
    d.recordFailure(a!);
    expect(d.isEjected(a!)).toBe(true);
    expect(a!.outlier.timesEjected).toBe(1);
    expect(ejections).toEqual([{ address: a!.address, untilMs: t + BASE_MS }]);
  });

  it('ejects for baseEjectionTime × times ejected, capped at maxEjectionTime', () => {
    const list = hosts(2);
    const a = list[0]!;
    const d = detector(list, { maxEjectionTime: 75_000 });
    const expected = [BASE_MS, 2 * BASE_MS, 75_000, 75_000];
    const starts: number[] = [];
    for (const duration of expected) {
      const start = t;
      starts.push(start);
      fail(d, a, 5);
      expect(d.isEjected(a)).toBe(true);
      t = start + duration - 1;
      expect(d.isEjected(a)).toBe(true);
      t = start + duration;
      expect(d.isEjected(a)).toBe(false);
      t += 1;
    }
    expect(a.outlier.timesEjected).toBe(4);
    expect(ejections.map((e, i) => e.untilMs - starts[i]!)).toEqual(expected);
  });

  it('does not extend an ejection with failures recorded while ejected', () => {
    const list = hosts(2);
    const a = list[0]!;
    const d = detector(list);
    fail(d, a, 5);
    t += 10_000;
    fail(d, a, 10);
    expect(a.outlier.timesEjected).toBe(1);
    expect(a.outlier.ejectedUntil).toBe(1_000 + BASE_MS);
    expect(ejections).toHaveLength(1);
  });

  it('lowers the multiplier after each review interval without failures, and only then', () => {
    const list = hosts(2);
    const a = list[0]!;
    const d = detector(list);
    fail(d, a, 5);
    t += BASE_MS;
    fail(d, a, 5);
    expect(a.outlier.timesEjected).toBe(2);

    // Ejected during a review: no decay. With failures since the last review: no decay.
    d.review();
    expect(a.outlier.timesEjected).toBe(2);
    t += 2 * BASE_MS;
    d.recordFailure(a);
    d.review();
    expect(a.outlier.timesEjected).toBe(2);
    // A whole healthy interval, then another: trust comes back one step at a time.
    d.review();
    expect(a.outlier.timesEjected).toBe(1);
    d.review();
    expect(a.outlier.timesEjected).toBe(0);
    d.review();
    expect(a.outlier.timesEjected).toBe(0);

    // The next ejection starts again from baseEjectionTime.
    fail(d, a, 4);
    const start = t;
    d.recordFailure(a);
    expect(a.outlier.ejectedUntil).toBe(start + BASE_MS);
  });

  it('caps the ejected share at maxEjectionPercent', () => {
    const list = hosts(10);
    const d = detector(list, { maxEjectionPercent: 20 });
    for (const host of list.slice(0, 3)) fail(d, host, 5);
    expect(list.map((h) => d.isEjected(h))).toEqual([true, true, false, false, false, false, false, false, false, false]);
    fail(d, list[3]!, 5);
    expect(d.isEjected(list[3]!)).toBe(false);
    expect(ejections).toHaveLength(2);

    // When an ejection ends, room frees up for the next outlier.
    t += BASE_MS;
    expect(d.isEjected(list[0]!)).toBe(false);
    d.recordFailure(list[2]!);
    expect(d.isEjected(list[2]!)).toBe(true);
    d.recordFailure(list[3]!);
    expect(d.isEjected(list[3]!)).toBe(true);
    expect(ejections.map((e) => e.address)).toEqual([list[0]!.address, list[1]!.address, list[2]!.address, list[3]!.address]);
  });

  it('always allows one ejection, however small the percentage, but only one', () => {
    for (const maxEjectionPercent of [0, 10, 49]) {
      const list = hosts(2);
      const d = detector(list, { maxEjectionPercent });
      fail(d, list[0]!, 5);
      fail(d, list[1]!, 5);
      expect([d.isEjected(list[0]!), d.isEjected(list[1]!)]).toEqual([true, false]);
    }
    const list = hosts(2);
    const d = detector(list, { maxEjectionPercent: 100 });
    fail(d, list[0]!, 5);
    fail(d, list[1]!, 5);
    expect([d.isEjected(list[0]!), d.isEjected(list[1]!)]).toEqual([true, true]);
  });

  it('never ejects when consecutive5xx is 0', () => {
    const list = hosts(2);
    const d = detector(list, { consecutive5xx: 0 });
    fail(d, list[0]!, 100);
    expect(d.isEjected(list[0]!)).toBe(false);
    expect(ejections).toHaveLength(0);
  });
});

describe('outlier detection through a sidecar', () => {
  let t = 0;
  const clock = { now: () => t };
  let good: TestApp;
  let bad: TestApp;
  let dead: string;
  let mesh: RunningSidecar;

  beforeAll(async () => {
    const pki = await createPki();
    good = await startApp('good');
    bad = await startApp('bad', (_req, res) => {
      res.statusCode = 500;
      res.end('{"app":"bad"}');
    });
    dead = await deadAddress();
    const outlierDetection = { consecutive5xx: 3, baseEjectionTime: '30s', maxEjectionPercent: 50, interval: '1h' };
    mesh = await startSidecar(
      sidecarConfig(await pki.issue('outlier'), {
        clusters: [
          { name: 'http-errors', domains: ['http-errors'], tls: 'none', endpoints: [{ address: good.address }, { address: bad.address }], outlierDetection },
          { name: 'refused', domains: ['refused'], tls: 'none', endpoints: [{ address: good.address }, { address: dead }], outlierDetection, retry: { backoff: '1ms' } },
        ],
      }),
      { clock },
    );
  });

  afterAll(async () => {
    await mesh?.sidecar.close();
    await good?.close();
    await bad?.close();
  });

  it('ejects an endpoint after consecutive 5xx, sends it nothing while ejected, and takes it back after the ejection time', async () => {
    await until(async () => {
      await send(mesh.outbound, '/', { host: 'http-errors' });
      return bad.received.length >= 3;
    }, 5_000, 'three requests at the failing endpoint');
    const status = await endpointStatus(mesh.admin, 'http-errors', bad.address);
    expect(status).toMatchObject({ ejected: true, healthy: false, times_ejected: 1, consecutive_failures: 0, circuit_breaker: 'closed' });
    expect(await metricValue(mesh.admin, 'ctxmesh_outlier_ejections_total', { cluster: 'http-errors', endpoint: bad.address })).toBe(1);
    expect(await metricValue(mesh.admin, 'ctxmesh_endpoint_ejected', { cluster: 'http-errors', endpoint: bad.address })).toBe(1);
    expect(await metricValue(mesh.admin, 'ctxmesh_endpoint_ejected', { cluster: 'http-errors', endpoint: good.address })).toBe(0);
    expect(mesh.logs.lines.some((l) => l.msg === 'endpoint ejected by outlier detection' && l.endpoint === bad.address && l.ejectedForMs === 30_000)).toBe(true);

    for (let i = 0; i < 10; i++) {
      const reply = await send(mesh.outbound, '/', { host: 'http-errors' });
      expect(reply.status).toBe(200);
      expect(JSON.parse(reply.body).app).toBe('good');
    }
    expect(bad.received.length).toBe(3);

    t += 29_999;
    expect((await endpointStatus(mesh.admin, 'http-errors', bad.address)).ejected).toBe(true);
    expect((await send(mesh.outbound, '/', { host: 'http-errors' })).status).toBe(200);
    expect(bad.received.length).toBe(3);

    t += 1;
    expect((await endpointStatus(mesh.admin, 'http-errors', bad.address)).ejected).toBe(false);
    expect(await metricValue(mesh.admin, 'ctxmesh_endpoint_ejected', { cluster: 'http-errors', endpoint: bad.address })).toBe(0);
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await send(mesh.outbound, '/', { host: 'http-errors' })).status);
    expect(statuses.filter((s) => s === 500)).toHaveLength(2);
    expect(bad.received.length).toBe(5);
  });

  it('counts connect failures too, and an ejected endpoint costs no retries', async () => {
    await until(async () => {
      expect((await send(mesh.outbound, '/', { host: 'refused' })).status).toBe(200);
      return (await endpointStatus(mesh.admin, 'refused', dead)).ejected;
    }, 5_000, 'the refusing endpoint to be ejected');
    expect(await metricValue(mesh.admin, 'ctxmesh_outlier_ejections_total', { cluster: 'refused', endpoint: dead })).toBe(1);
    // Every request so far succeeded through a retry to the live endpoint.
    const before = mesh.logs.access().filter((l) => l.authority === 'refused');
    expect(before.filter((l) => l.attempts === 2)).toHaveLength(3);
    expect(before.every((l) => l.status === 200 && l.upstream === good.address)).toBe(true);

    for (let i = 0; i < 5; i++) expect((await send(mesh.outbound, '/', { host: 'refused' })).status).toBe(200);
    const after = mesh.logs.access().filter((l) => l.authority === 'refused').slice(before.length);
    expect(after.map((l) => l.attempts)).toEqual([1, 1, 1, 1, 1]);
  });
});
