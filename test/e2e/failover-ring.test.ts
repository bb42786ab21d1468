// Routing follows context, the pieces in one process: an EDS endpoint's hostname (the node id the
// control plane writes for a registered sidecar) reaches the sidecar's cluster config, and
// ring_hash places endpoints that have one by that id — the ring context replication builds over
// member ids — so a key goes to its context's primary and, when that one is down, to the next
// replica. test/e2e/failover.test.ts shows the same across processes with a real control plane.
import HashRing from 'hashring';
import { beforeAll, describe, expect, it } from 'vitest';
import { composeClusters, decodeResource, type DecodedByKind, type ResourceKind, type XdsResources } from '../../src/xds-client/translate.js';
import { loadXdsProtos, TYPE_URL } from '../../xds/protos.js';
import { buildServiceResources } from '../../xds/resources.js';
import { closeAfterEach, createPki, send, sidecarConfig, startApp, startSidecar, type TestPki } from '../helpers/mesh.js';

const closers = closeAfterEach();
let pki: TestPki;

beforeAll(async () => {
  pki = await createPki();
});

/** Through the wire format and back, as the ADS client sees a resource. */
function decoded<K extends ResourceKind>(kind: K, resource: object): DecodedByKind[K] {
  const protos = loadXdsProtos();
  const result = decodeResource(kind, protos.decodeResource(protos.encodeResource(TYPE_URL[kind], resource)));
  if (!result.valid) throw new Error(result.errors.join('; '));
  return result.result;
}

describe('ring_hash over member ids', () => {
  it('carries the EDS hostname (node id) of a registered sidecar into the cluster config; config endpoints have none', () => {
    const built = buildServiceResources({
      name: 'chat',
      namespace: 'default',
      lb: 'ring_hash',
      hashHeader: 'x-ctx-key',
      tls: 'mesh',
      endpoints: [
        { address: '127.0.0.1:2001', zone: 'z1', priority: 0, health: 'HEALTHY', epoch: 0 },
        { address: '127.0.0.1:2002', zone: 'z1', priority: 0, health: 'HEALTHY', epoch: 3, nodeId: 'chat-b' },
        { address: '127.0.0.1:2003', zone: 'z1', priority: 0, health: 'UNHEALTHY', epoch: 4, nodeId: 'chat-c' },
      ],
    });
    const listener = decoded('listener', built.listener);
    const route = decoded('routeConfiguration', built.routeConfiguration);
    const cluster = decoded('cluster', built.cluster);
    const assignment = decoded('clusterLoadAssignment', built.clusterLoadAssignment);
    const resources: XdsResources = {
      listeners: new Map([[listener.name, listener]]),
      routes: new Map([[route.name, route]]),
      clusters: new Map([[cluster.name, cluster]]),
      endpoints: new Map([[assignment.clusterName, assignment]]),
    };
    const { configs, errors } = composeClusters(resources);
    expect(errors).toEqual([]);
    expect(configs[0]!.lb).toBe('ring_hash');
    // The declared (UNHEALTHY) one is left out; the registered one keeps its node id.
    expect(configs[0]!.endpoints).toEqual([
      { address: '127.0.0.1:2001', priority: 0, zone: 'z1' },
      { address: '127.0.0.1:2002', priority: 0, zone: 'z1', hostname: 'chat-b' },
    ]);
  });

  it('sends a key to the endpoint whose hostname owns it on the ring of ids, and to the next id when that one is down', async () => {
    const ids = ['node-x', 'node-y', 'node-z'];
    const started = await Promise.all(ids.map((id) => startApp(id)));
    for (const app of started) closers.push(() => app.close());
    const running = await startSidecar(
      sidecarConfig(await pki.issue('ring'), {
        clusters: [
          {
            name: 'svc',
            domains: ['svc'],
            tls: 'none',
            lb: 'ring_hash',
            // Listed in another order than the ids sort in, with addresses whose ring would differ.
            endpoints: [2, 0, 1].map((i) => ({ address: started[i]!.address, hostname: ids[i] })),
            outlierDetection: { consecutive5xx: 0 },
            retry: { attempts: 2, backoff: '1ms' },
          },
        ],
        log: { level: 'warn', accessLog: false },
      }),
    );
    closers.push(() => running.sidecar.close());
    const who = async (key: string): Promise<string> => {
      const reply = await send(running.outbound, '/', { host: 'svc', headers: { 'x-ctx-key': key } });
      expect(reply.status).toBe(200);
      return (JSON.parse(reply.body) as { app: string }).app;
    };

    const byIds = new HashRing([...ids].sort());
    const byAddresses = new HashRing(started.map((a) => a.address));
    const keys = Array.from({ length: 40 }, (_, i) => `tenant/session-${i}`);
    // The two rings disagree on some keys, so the test tells which one the balancer uses.
    expect(keys.some((k) => started[ids.indexOf(byIds.get(k))]!.address !== byAddresses.get(k))).toBe(true);
    for (const key of keys) expect(await who(key), key).toBe(byIds.get(key));

    const down = started[0]!;
    await down.close();
    const owned = keys.filter((k) => byIds.get(k) === 'node-x');
    expect(owned.length).toBeGreaterThan(0);
    for (const key of keys) {
      const [first, second] = byIds.range(key, 3, true);
      expect(await who(key), key).toBe(first === 'node-x' ? second : first);
    }
  });
});
