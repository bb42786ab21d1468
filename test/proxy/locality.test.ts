// Locality-aware failover (zone-aware routing, simple form), through a real sidecar to real
// node:http upstreams: within a priority level the sidecar prefers endpoints of its own zone
// (node.zone), uses other zones of that level only when its zone has none available, and goes to
// backups only when the whole level is out. ring_hash keeps its placement (routing follows context).
import { beforeAll, describe, expect, it } from 'vitest';
import { closeAfterEach, createPki, endpointStatus, send, sidecarConfig, startApp, startSidecar, until, type ConfigInput, type RunningSidecar, type TestApp, type TestPki } from '../helpers/mesh.js';

let pki: TestPki;
const closers = closeAfterEach();

beforeAll(async () => {
  pki = await createPki();
});

let failing = new Set<string>();
async function app(name: string): Promise<TestApp> {
  const started = await startApp(name, (_req, res) => {
    res.statusCode = failing.has(name) ? 500 : 200;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ app: name }));
  });
  closers.push(() => started.close());
  return started;
}

async function sidecarIn(zone: string, cluster: ConfigInput): Promise<RunningSidecar> {
  const running = await startSidecar(
    sidecarConfig(await pki.issue('zoned'), { node: { id: 'zoned', zone }, log: { level: 'warn', accessLog: false }, clusters: [{ name: 'svc', domains: ['svc'], tls: 'none', ...cluster }] }),
  );
  closers.push(() => running.sidecar.close());
  return running;
}

async function answers(sidecar: RunningSidecar, n: number, headers: Record<string, string> = {}): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const reply = await send(sidecar.outbound, '/', { host: 'svc', headers });
    if (reply.status !== 200) {
      counts[`status ${reply.status}`] = (counts[`status ${reply.status}`] ?? 0) + 1;
      continue;
    }
    const name = (JSON.parse(reply.body) as { app: string }).app;
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

async function eject(sidecar: RunningSidecar, target: TestApp): Promise<void> {
  await until(async () => {
    await send(sidecar.outbound, '/', { host: 'svc' });
    return (await endpointStatus(sidecar.admin, 'svc', target.address)).ejected;
  }, 5_000, `${target.address} ejected`);
}

describe('locality-aware endpoint choice', () => {
  it.each(['round_robin', 'least_request'] as const)('%s: same zone first, other zones of the level when it has none, backups last', async (lb) => {
    failing = new Set();
    const [local1, local2, remote, backup] = [await app('local1'), await app('local2'), await app('remote'), await app('backup')];
    const sidecar = await sidecarIn('z1', {
      lb,
      endpoints: [
        { address: local1.address, zone: 'z1' },
        { address: remote.address, zone: 'z2' },
        { address: local2.address, zone: 'z1' },
        { address: backup.address, zone: 'z1', priority: 1 },
      ],
      outlierDetection: { consecutive5xx: 2, baseEjectionTime: '1h', maxEjectionPercent: 100 },
      retry: { attempts: 0 },
    });
    // Healthy: only the local zone serves.
    const healthy = await answers(sidecar, 12);
    expect(Object.keys(healthy).sort()).toEqual(['local1', 'local2']);
    expect(remote.received.length).toBe(0);

    // One local endpoint out: the other local one takes everything; still no cross-zone traffic.
    failing = new Set(['local1']);
    await eject(sidecar, local1);
    expect(await answers(sidecar, 8)).toEqual({ local2: 8 });
    expect(remote.received.length).toBe(0);

    // The local zone has nothing left in the level: the other zone of the same priority serves, not the backup.
    failing = new Set(['local1', 'local2']);
    await eject(sidecar, local2);
    expect(await answers(sidecar, 8)).toEqual({ remote: 8 });
    expect(backup.received.length).toBe(0);

    // The whole level out: the backup.
    failing = new Set(['local1', 'local2', 'remote']);
    await eject(sidecar, remote);
    expect(await answers(sidecar, 6)).toEqual({ backup: 6 });
  });

  it('without a zone of its own the sidecar spreads over every zone; ring_hash ignores zones', async () => {
    failing = new Set();
    const [a, b] = [await app('a'), await app('b')];
    const endpoints = [
      { address: a.address, zone: 'z1' },
      { address: b.address, zone: 'z2' },
    ];
    const unzoned = await sidecarIn('', { lb: 'round_robin', endpoints });
    expect(await answers(unzoned, 10)).toEqual({ a: 5, b: 5 });

    const hashed = await sidecarIn('z1', { lb: 'ring_hash', hashHeader: 'x-ctx-key', endpoints });
    const owners = new Set<string>();
    for (let i = 0; i < 40; i++) owners.add(Object.keys(await answers(hashed, 1, { 'x-ctx-key': `key-${i}` }))[0]!);
    // Keys owned by the z2 endpoint still go there.
    expect([...owners].sort()).toEqual(['a', 'b']);
  });
});
