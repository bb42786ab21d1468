// Load balancing through a real sidecar to real node:http upstreams: round robin, least request
// (P2C), ring hash on x-ctx-key with failover to the next endpoint on the ring, and priorities.
import HashRing from 'hashring';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  createPki,
  endpointStatus,
  keyOwnedBy,
  send,
  sidecarConfig,
  startApp,
  startHoldingApp,
  startSidecar,
  until,
  type ConfigInput,
  type Reply,
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


async function apps(...names: string[]): Promise<TestApp[]> {
  const started = await Promise.all(names.map((name) => startApp(name)));
  for (const app of started) closers.push(() => app.close());
  return started;
}

async function sidecarWith(cluster: ConfigInput): Promise<RunningSidecar> {
  const running = await startSidecar(
    sidecarConfig(await pki.issue('lb'), { clusters: [{ name: 'svc', domains: ['svc'], tls: 'none', ...cluster }] }),
  );
  closers.push(() => running.sidecar.close());
  return running;
}

/** Which app answered, from the echo body. */
async function whoAnswers(sidecar: RunningSidecar, headers: Record<string, string> = {}): Promise<string> {
  const reply = await send(sidecar.outbound, '/', { host: 'svc', headers });
  expect(reply.status).toBe(200);
  return (JSON.parse(reply.body) as { app: string }).app;
}

function tally(names: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of names) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}

describe('round_robin', () => {
  it('spreads requests evenly over three endpoints', async () => {
    const [a, b, c] = await apps('a', 'b', 'c');
    const sidecar = await sidecarWith({ lb: 'round_robin', endpoints: [a!, b!, c!].map((app) => ({ address: app.address })) });
    const answered: string[] = [];
    for (let i = 0; i < 30; i++) answered.push(await whoAnswers(sidecar));
    expect(tally(answered)).toEqual({ a: 10, b: 10, c: 10 });
    // Not merely even in total: each endpoint gets every third request.
    for (let i = 3; i < answered.length; i++) expect(answered[i]).toBe(answered[i - 3]);
  });
});

describe('least_request (power of two choices)', () => {
  it('sends new requests to the endpoints with fewer requests in flight', async () => {
    const busy = await startHoldingApp('busy');
    closers.push(() => busy.close());
    const [b, c] = await apps('b', 'c');
    const sidecar = await sidecarWith({ lb: 'least_request', endpoints: [busy, b!, c!].map((app) => ({ address: app.address })) });

    // Until one request is held open on `busy`, each request may go anywhere; the one that
    // reaches `busy` stays in flight there.
    const pending: Array<Promise<Reply>> = [];
    for (let i = 0; i < 50 && busy.held.length === 0; i++) {
      const before = busy.received.length;
      let answered = false;
      const reply = send(sidecar.outbound, '/', { host: 'svc' });
      reply.then(() => (answered = true), () => (answered = true));
      await until(() => answered || busy.received.length > before, 5_000, 'the request answered or held');
      if (!answered) pending.push(reply);
    }
    expect(busy.held.length).toBe(1);

    // Any pair P2C draws contains an idle endpoint, which always beats the busy one.
    const answered: string[] = [];
    for (let i = 0; i < 40; i++) answered.push(await whoAnswers(sidecar));
    expect(busy.received.length).toBe(1);
    expect(answered).not.toContain('busy');
    const counts = tally(answered);
    expect(counts.b).toBeGreaterThan(0);
    expect(counts.c).toBeGreaterThan(0);
    expect((await endpointStatus(sidecar.admin, 'svc', busy.address)).active_requests).toBe(1);

    busy.releaseAll();
    expect((await Promise.all(pending)).map((r) => r.status)).toEqual([200]);
  });
});

describe('ring_hash on x-ctx-key', () => {
  it('sends a key to the same endpoint every time, the ring owner, and spreads keys', async () => {
    const started = await apps('a', 'b', 'c');
    const byAddress = new Map(started.map((app, i) => [app.address, ['a', 'b', 'c'][i]!]));
    const addresses = started.map((app) => app.address);
    const sidecar = await sidecarWith({ lb: 'ring_hash', endpoints: addresses.map((address) => ({ address })) });
    const ring = new HashRing(addresses);

    const owners: string[] = [];
    for (let k = 0; k < 24; k++) {
      const key = `conversation-${k}`;
      const expected = byAddress.get(ring.get(key))!;
      for (let i = 0; i < 3; i++) expect(await whoAnswers(sidecar, { 'x-ctx-key': key })).toBe(expected);
      owners.push(expected);
    }
    expect(new Set(owners).size).toBe(3);
  });

  it('sends the keys of a failed owner to the same next endpoint on the ring, every time', async () => {
    const started = await apps('a', 'b', 'c');
    const names = new Map(started.map((app, i) => [app.address, ['a', 'b', 'c'][i]!]));
    const addresses = started.map((app) => app.address);
    const sidecar = await sidecarWith({
      lb: 'ring_hash',
      endpoints: addresses.map((address) => ({ address })),
      // Keep the dead owner in the ring's view as long as the test runs: every request meets the
      // connect failure and must be retried along the ring, not merely routed around an ejection.
      outlierDetection: { consecutive5xx: 0 },
      retry: { attempts: 2, backoff: '1ms' },
    });
    const ring = new HashRing(addresses);
    const down = started[0]!;
    // Keys the dead endpoint owns, two for each possible successor: the test shows the ring's
    // order of preference, not one fixed fallback endpoint.
    const keys: string[] = [];
    const perSuccessor = new Map<string, number>();
    for (let i = 0; keys.length < 4 && i < 10_000; i++) {
      const key = `owned-${i}`;
      const [owner, successor] = ring.range(key, 3, true);
      if (owner !== down.address || (perSuccessor.get(successor!) ?? 0) >= 2) continue;
      perSuccessor.set(successor!, (perSuccessor.get(successor!) ?? 0) + 1);
      keys.push(key);
    }
    expect(keys.length).toBe(4);
    const other = keyOwnedBy(addresses, started[1]!.address, 'other');

    await down.close();
    for (const key of keys) {
      const successor = names.get(ring.range(key, 3, true)[1]!)!;
      for (let i = 0; i < 4; i++) expect(await whoAnswers(sidecar, { 'x-ctx-key': key })).toBe(successor);
    }
    // Keys owned by live endpoints stay where they were.
    for (let i = 0; i < 3; i++) expect(await whoAnswers(sidecar, { 'x-ctx-key': other })).toBe('b');
    const retried = sidecar.logs.access().filter((l) => l.attempts === 2);
    expect(retried.length).toBe(keys.length * 4);
  });
});

describe('priorities', () => {
  it('keeps backups idle while a primary is healthy and uses them when no primary is', async () => {
    let failing = new Set<string>();
    const answering = async (name: string): Promise<TestApp> => {
      const app = await startApp(name, (_req, res) => {
        res.statusCode = failing.has(name) ? 500 : 200;
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ app: name }));
      });
      closers.push(() => app.close());
      return app;
    };
    const p1 = await answering('p1');
    const p2 = await answering('p2');
    const backup = await answering('backup');
    const sidecar = await sidecarWith({
      lb: 'round_robin',
      endpoints: [{ address: p1.address }, { address: backup.address, priority: 1 }, { address: p2.address }],
      outlierDetection: { consecutive5xx: 2, baseEjectionTime: '1h', maxEjectionPercent: 100 },
    });

    const answered: string[] = [];
    for (let i = 0; i < 12; i++) answered.push(await whoAnswers(sidecar));
    expect(tally(answered)).toEqual({ p1: 6, p2: 6 });
    expect(backup.received.length).toBe(0);

    // One primary down (ejected): the other primary takes everything; the backup still waits.
    failing = new Set(['p1']);
    await until(async () => {
      await send(sidecar.outbound, '/', { host: 'svc' });
      return (await endpointStatus(sidecar.admin, 'svc', p1.address)).ejected;
    }, 5_000, 'p1 ejected');
    answered.length = 0;
    for (let i = 0; i < 10; i++) answered.push(await whoAnswers(sidecar));
    expect(tally(answered)).toEqual({ p2: 10 });
    expect(backup.received.length).toBe(0);

    // Every primary down: the backup serves.
    failing = new Set(['p1', 'p2']);
    await until(async () => {
      await send(sidecar.outbound, '/', { host: 'svc' });
      return (await endpointStatus(sidecar.admin, 'svc', p2.address)).ejected;
    }, 5_000, 'p2 ejected');
    answered.length = 0;
    for (let i = 0; i < 10; i++) answered.push(await whoAnswers(sidecar));
    expect(tally(answered)).toEqual({ backup: 10 });
  });

  it('uses the backup once the only primary has its circuit breaker open', async () => {
    const primary = await startApp('primary', (_req, res) => {
      res.statusCode = 500;
      res.end('{"app":"primary"}');
    });
    closers.push(() => primary.close());
    const [backup] = await apps('backup');
    const sidecar = await sidecarWith({
      lb: 'round_robin',
      endpoints: [{ address: primary.address }, { address: backup!.address, priority: 1 }],
      circuitBreaker: { volumeThreshold: 4, errorThresholdPercentage: 50, resetTimeout: '1h' },
      outlierDetection: { consecutive5xx: 0 },
    });
    // 500 is not retried: while the breaker is closed the primary's answers reach the client.
    for (let i = 0; i < 4; i++) expect((await send(sidecar.outbound, '/', { host: 'svc' })).status).toBe(500);
    expect(backup!.received.length).toBe(0);
    await until(async () => (await endpointStatus(sidecar.admin, 'svc', primary.address)).circuit_breaker === 'open', 5_000, 'the breaker to open');

    for (let i = 0; i < 5; i++) expect(await whoAnswers(sidecar)).toBe('backup');
    expect(primary.received.length).toBe(4);
  });

  it('fails over to a backup when the only primary refuses connections', async () => {
    const [primary, backup] = await apps('primary', 'backup');
    const sidecar = await sidecarWith({
      lb: 'round_robin',
      endpoints: [{ address: primary!.address }, { address: backup!.address, priority: 1 }],
      outlierDetection: { consecutive5xx: 0 },
      retry: { backoff: '1ms' },
    });
    expect(await whoAnswers(sidecar)).toBe('primary');
    expect(backup!.received.length).toBe(0);

    await primary!.close();
    for (let i = 0; i < 5; i++) expect(await whoAnswers(sidecar)).toBe('backup');
    expect(backup!.received.length).toBe(5);
  });
});
