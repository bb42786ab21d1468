import { describe, expect, it } from 'vitest';
import { loadXdsProtos, TYPE_URL } from '../../xds/protos.js';
import { buildServiceResources } from '../../xds/resources.js';
import {
  composeClusters,
  decodeResource,
  decodeResponseResources,
  endpointMembers,
  type DecodedByKind,
  type ResourceKind,
  type XdsResources,
} from '../../src/xds-client/translate.js';
import { edsCluster, listener, loadAssignment, meshTransportSocket, routeConfiguration } from '../helpers/ads-server.js';

const URL_OF: Record<ResourceKind, string> = {
  listener: TYPE_URL.listener,
  routeConfiguration: TYPE_URL.routeConfiguration,
  cluster: TYPE_URL.cluster,
  clusterLoadAssignment: TYPE_URL.clusterLoadAssignment,
};

/** Through the wire format and back, as the ADS client sees a resource. */
function decoded<K extends ResourceKind>(kind: K, resource: object): DecodedByKind[K] {
  const protos = loadXdsProtos();
  const result = decodeResource(kind, protos.decodeResource(protos.encodeResource(URL_OF[kind], resource)));
  if (!result.valid) throw new Error(result.errors.join('; '));
  return result.result;
}

function errorsOf(kind: ResourceKind, resource: object): string[] {
  const protos = loadXdsProtos();
  const result = decodeResource(kind, protos.decodeResource(protos.encodeResource(URL_OF[kind], resource)));
  return result.valid ? [] : result.errors;
}

function resources(parts: { listeners?: object[]; routes?: object[]; clusters?: object[]; endpoints?: object[] }): XdsResources {
  const map = <K extends ResourceKind>(kind: K, items: object[] = []) => {
    const out = new Map<string, DecodedByKind[K]>();
    for (const item of items) {
      const d = decoded(kind, item);
      out.set(kind === 'clusterLoadAssignment' ? (d as DecodedByKind['clusterLoadAssignment']).clusterName : (d as { name: string }).name, d);
    }
    return out;
  };
  return {
    listeners: map('listener', parts.listeners),
    routes: map('routeConfiguration', parts.routes),
    clusters: map('cluster', parts.clusters),
    endpoints: map('clusterLoadAssignment', parts.endpoints),
  };
}

describe('xDS → ClusterConfig translation', () => {
  it('joins listener → RDS → cluster → EDS with the route and cluster policies', () => {
    const { configs, errors } = composeClusters(
      resources({
        listeners: [listener('chat')],
        routes: [
          routeConfiguration('chat', [
            {
              domains: ['chat', 'Chat.Default.svc:8080'],
              cluster: 'chat',
              route: {
                timeout: { seconds: 3, nanos: 500_000_000 },
                retry_policy: { num_retries: { value: 4 }, per_try_timeout: { seconds: 1 }, retry_back_off: { base_interval: { nanos: 50_000_000 } }, retriable_status_codes: [502, 503] },
                hash_policy: [{ header: { header_name: 'X-Session' } }],
              },
            },
          ]),
        ],
        clusters: [
          edsCluster('chat', {
            lb_policy: 'RING_HASH',
            connect_timeout: { seconds: 2 },
            circuit_breakers: { thresholds: [{ priority: 'DEFAULT', max_connections: { value: 10 }, max_pending_requests: { value: 11 }, max_requests: { value: 12 }, max_retries: { value: 1 }, retry_budget: { budget_percent: { value: 30 }, min_retry_concurrency: { value: 2 } } }] },
            outlier_detection: { consecutive_5xx: { value: 3 }, interval: { seconds: 2 }, base_ejection_time: { seconds: 7 }, max_ejection_percent: { value: 40 } },
            transport_socket: meshTransportSocket(),
          }),
        ],
        endpoints: [
          loadAssignment('chat', [
            { address: '127.0.0.1:1001', zone: 'z1' },
            { address: '127.0.0.1:1002', zone: 'z2', priority: 1 },
            { address: '127.0.0.1:1003', zone: 'z2', priority: 3 },
            { address: '127.0.0.1:1004', health: 'UNHEALTHY' },
            { address: '127.0.0.1:1005', health: 'DRAINING' },
            { address: 'backend.internal:80', health: 'UNKNOWN' },
          ]),
        ],
      }),
    );
    expect(errors).toEqual([]);
    expect(configs).toHaveLength(1);
    const chat = configs[0]!;
    expect(chat.name).toBe('chat');
    expect(chat.domains).toEqual(['chat', 'chat.default.svc']);
    expect(chat.lb).toBe('ring_hash');
    expect(chat.hashHeader).toBe('x-session');
    expect(chat.tls).toBe('mesh');
    expect(chat.timeout).toBe(3_500);
    expect(chat.connectTimeout).toBe(2_000);
    expect(chat.retry).toMatchObject({ attempts: 4, perTryTimeout: 1_000, backoff: 50, retryOn: [502, 503], budgetPercent: 30, minRetryConcurrency: 2 });
    expect(chat.circuitBreaker).toMatchObject({ maxConnections: 10, maxPendingRequests: 11, maxRequests: 12, maxRetries: 1 });
    expect(chat.outlierDetection).toMatchObject({ consecutive5xx: 3, interval: 2_000, baseEjectionTime: 7_000, maxEjectionPercent: 40 });
    // UNHEALTHY and DRAINING take no new requests; priorities past 1 join the backups.
    expect(chat.endpoints).toEqual([
      { address: '127.0.0.1:1001', priority: 0, zone: 'z1' },
      { address: '127.0.0.1:1002', priority: 1, zone: 'z2' },
      { address: '127.0.0.1:1003', priority: 1, zone: 'z2' },
      { address: 'backend.internal:80', priority: 0, zone: '' },
    ]);
  });

  it('reads what our control plane builds (xds/resources.ts) and keeps sidecar defaults where it says nothing', () => {
    const built = buildServiceResources({
      name: 'search',
      namespace: 'prod',
      lb: 'least_request',
      hashHeader: 'x-ctx-key',
      tls: 'none',
      endpoints: [
        { address: '127.0.0.1:2001', zone: 'z1', priority: 0, health: 'HEALTHY', epoch: 0 },
        { address: '127.0.0.1:2002', zone: 'z1', priority: 2, health: 'HEALTHY', epoch: 1, nodeId: 'node-b' },
      ],
    });
    const { configs, errors } = composeClusters(
      resources({ listeners: [built.listener], routes: [built.routeConfiguration], clusters: [built.cluster], endpoints: [built.clusterLoadAssignment] }),
    );
    expect(errors).toEqual([]);
    expect(configs[0]).toMatchObject({
      name: 'search',
      domains: ['search', 'search.prod', 'search.prod.svc', 'search.prod.svc.cluster.local'],
      lb: 'least_request',
      tls: 'none',
      timeout: 15_000,
      retry: { attempts: 2 },
      endpoints: [
        { address: '127.0.0.1:2001', priority: 0 },
        { address: '127.0.0.1:2002', priority: 1 },
      ],
    });
  });

  it('follows an inline route_config and Envoy-style filter chains', () => {
    const protos = loadXdsProtos();
    const hcm = protos.encodeResource('type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager', {
      stat_prefix: 'x',
      route_config: routeConfiguration('inline', [{ domains: ['*.example'], cluster: 'web' }]),
    });
    const envoyListener = { name: 'envoy', filter_chains: [{ filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] }] };
    const { configs, errors } = composeClusters(
      resources({
        listeners: [envoyListener],
        clusters: [{ name: 'web', type: 'STATIC', load_assignment: loadAssignment('web', [{ address: '127.0.0.1:3001' }]) }],
      }),
    );
    expect(errors).toEqual([]);
    expect(configs).toMatchObject([{ name: 'web', domains: ['*.example'], tls: 'none', endpoints: [{ address: '127.0.0.1:3001' }] }]);
  });

  it('leaves out what is not complete yet (routes or endpoints still to come) without an error', () => {
    const partial = composeClusters(resources({ listeners: [listener('a')], clusters: [edsCluster('a')] }));
    expect(partial).toEqual({ configs: [], errors: [] });
    const noEndpoints = composeClusters(
      resources({ listeners: [listener('a')], routes: [routeConfiguration('a', [{ domains: ['a'], cluster: 'a' }])], clusters: [edsCluster('a')] }),
    );
    expect(noEndpoints).toEqual({ configs: [], errors: [] });
  });

  it('rejects a resource it cannot translate, naming the resource and the field', () => {
    expect(errorsOf('clusterLoadAssignment', loadAssignment('chat', [{ address: 'not an address!:80' }]))).toEqual([
      'ClusterLoadAssignment "chat": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: "not an address!" is not an IPv4 address or a host name',
    ]);
    expect(errorsOf('clusterLoadAssignment', loadAssignment('chat', [{ address: '127.0.0.1:0' }]))[0]).toMatch(/port_value: 0 is not a port/);
    expect(errorsOf('cluster', edsCluster('chat', { lb_policy: 'MAGLEV' }))).toEqual([
      'Cluster "chat": lb_policy: unsupported policy MAGLEV (ROUND_ROBIN, LEAST_REQUEST or RING_HASH)',
    ]);
    expect(errorsOf('cluster', { name: 'static-without-endpoints' })[0]).toMatch(/Cluster "static-without-endpoints": load_assignment: missing/);
    expect(errorsOf('cluster', { name: 'odd', type: 'ORIGINAL_DST' })[0]).toMatch(/Cluster "odd": type: ORIGINAL_DST clusters are not supported/);
    expect(errorsOf('cluster', edsCluster(''))[0]).toMatch(/Cluster "\?": name: missing/);
    expect(errorsOf('listener', { name: 'bare' })[0]).toMatch(/Listener "bare": api_listener: missing/);
    expect(errorsOf('routeConfiguration', routeConfiguration('r', [{ domains: [], cluster: 'x' }]))[0]).toMatch(/RouteConfiguration "r": virtual_hosts\[0\]\.domains: missing/);
    expect(errorsOf('routeConfiguration', { name: 'r', virtual_hosts: [{ domains: ['a'], routes: [{ match: { prefix: '/api' }, route: { cluster: 'x' } }] }] })[0]).toMatch(
      /virtual_hosts\[0\]\.routes: no route action with a catch-all match/,
    );
    expect(errorsOf('cluster', edsCluster('weird-tls', { transport_socket: { name: 'x', typed_config: { type_url: 'type.googleapis.com/some.Other', value: Buffer.alloc(0) } } }))[0]).toMatch(
      /transport_socket: unsupported transport socket/,
    );
  });

  it('rejects a whole response when one resource is bad, or when a type does not match', () => {
    const protos = loadXdsProtos();
    const good = protos.encodeResource(TYPE_URL.clusterLoadAssignment, loadAssignment('a', [{ address: '127.0.0.1:1' }]));
    const bad = protos.encodeResource(TYPE_URL.clusterLoadAssignment, loadAssignment('b', [{ address: '127.0.0.1:99999' }]));
    const result = decodeResponseResources('clusterLoadAssignment', TYPE_URL.clusterLoadAssignment, [good, bad]);
    expect(result.valid).toBe(false);
    if (!result.valid) expect(result.errors).toEqual([expect.stringMatching(/^ClusterLoadAssignment "b": .*port_value: 99999 is not a port/)]);
    const mixed = decodeResponseResources('clusterLoadAssignment', TYPE_URL.clusterLoadAssignment, [protos.encodeResource(TYPE_URL.cluster, edsCluster('c'))]);
    expect(mixed).toEqual({ valid: false, errors: [expect.stringMatching(/resources\[0\]: type .*Cluster in a response of type .*ClusterLoadAssignment/)] });
    const garbage = decodeResponseResources('cluster', TYPE_URL.cluster, [{ type_url: TYPE_URL.cluster, value: Buffer.from([0xff, 0xff, 0xff]) }]);
    expect(garbage.valid).toBe(false);
  });

  it('maps the sidecars among EDS endpoints to members: node id, address, zone, health and epoch', () => {
    const group = decoded(
      'clusterLoadAssignment',
      loadAssignment('chat', [
        { address: '127.0.0.1:4001', zone: 'z1', nodeId: 'node-a', epoch: 3 },
        { address: '127.0.0.1:4002', zone: 'z2', nodeId: 'node-b', health: 'UNHEALTHY', epoch: 5 },
        { address: '127.0.0.1:4003', nodeId: 'node-c', health: 'DRAINING' },
        { address: '127.0.0.1:4004' },
      ]),
    );
    expect(endpointMembers(group)).toEqual([
      { id: 'node-a', address: '127.0.0.1:4001', zone: 'z1', state: 'alive', epoch: 3 },
      { id: 'node-b', address: '127.0.0.1:4002', zone: 'z2', state: 'dead', epoch: 5 },
      { id: 'node-c', address: '127.0.0.1:4003', state: 'draining', epoch: 0 },
    ]);
  });

  it('runs the result through ClusterSchema', () => {
    // A virtual host with a wildcard-only domain list still routes; a cluster name the schema
    // refuses (empty) cannot get here, but an out-of-range percentage does.
    const { configs, errors } = composeClusters(
      resources({
        listeners: [listener('a')],
        routes: [routeConfiguration('a', [{ domains: ['a'], cluster: 'a' }])],
        clusters: [edsCluster('a', { outlier_detection: { max_ejection_percent: { value: 250 } } })],
        endpoints: [loadAssignment('a', [{ address: '127.0.0.1:1' }])],
      }),
    );
    expect(configs).toEqual([]);
    expect(errors).toEqual([expect.stringMatching(/^Cluster "a": outlierDetection\.maxEjectionPercent: /)]);
  });
});
