// The resource builders, checked by the validators of a real xDS client: gRPC's own
// (@grpc/grpc-js-xds decodes and validates each resource exactly as when it arrives over ADS),
// across every lb policy and both TLS modes, with every optional policy set.
import { createRequire } from 'node:module';
import * as grpcXds from '@grpc/grpc-js-xds';
import { describe, expect, it } from 'vitest';
import { ControlPlaneConfigSchema } from '../../src/config/schema.js';
import { loadXdsProtos, TYPE_URL } from '../../xds/protos.js';
import { buildServiceResources, fromStruct, MESH_CERTIFICATE_PROVIDER, type ServiceView } from '../../xds/resources.js';

// grpc-js-xds exposes no public validator; its resource types are what its XdsClient runs.
const require = createRequire(import.meta.url);
const RESOURCE_TYPES = {
  [TYPE_URL.listener]: require('@grpc/grpc-js-xds/build/src/xds-resource-type/listener-resource-type.js').ListenerResourceType,
  [TYPE_URL.routeConfiguration]: require('@grpc/grpc-js-xds/build/src/xds-resource-type/route-config-resource-type.js').RouteConfigurationResourceType,
  [TYPE_URL.cluster]: require('@grpc/grpc-js-xds/build/src/xds-resource-type/cluster-resource-type.js').ClusterResourceType,
  [TYPE_URL.clusterLoadAssignment]: require('@grpc/grpc-js-xds/build/src/xds-resource-type/endpoint-resource-type.js').EndpointResourceType,
};
grpcXds.register(); // registers the LB policies the cluster validator converts to
const DECODE_CONTEXT = { server: {}, bootstrap: { certificateProviders: { [MESH_CERTIFICATE_PROVIDER]: {} } } };

function service(overrides: Record<string, unknown>): ServiceView {
  const [config] = ControlPlaneConfigSchema.parse({ services: [{ name: 'chat', ...overrides }] }).services;
  const { endpoints, ...definition } = config!;
  return { ...definition, endpoints: endpoints.map((e, i) => ({ ...e, health: 'HEALTHY', epoch: i, nodeId: `node-${i}` })) };
}

function grpcDecode(typeUrl: keyof typeof RESOURCE_TYPES, message: object): { name: string; value?: any; error?: string } {
  const any = loadXdsProtos().encodeResource(typeUrl, message);
  return RESOURCE_TYPES[typeUrl].get().decode(DECODE_CONTEXT, any);
}

const FULL_POLICY = {
  timeout: '2s',
  connectTimeout: '500ms',
  retry: { attempts: 2, perTryTimeout: '1s' },
  circuitBreaker: { maxRequests: 100 },
  outlierDetection: { consecutive5xx: 3, interval: '1s' },
  endpoints: [
    { address: '127.0.0.1:7001', zone: 'z1', priority: 0 },
    { address: '127.0.0.1:7002', zone: 'z2', priority: 0 },
    { address: '127.0.0.1:7003', zone: 'z1', priority: 3 },
  ],
};

describe('resources as gRPC validates them', () => {
  for (const lb of ['round_robin', 'least_request', 'ring_hash'] as const) {
    for (const tls of ['mesh', 'none'] as const) {
      it(`accepts a ${lb} service with tls ${tls}`, () => {
        const resources = buildServiceResources(service({ lb, tls, ...FULL_POLICY }));
        for (const [typeUrl, message] of [
          [TYPE_URL.listener, resources.listener],
          [TYPE_URL.routeConfiguration, resources.routeConfiguration],
          [TYPE_URL.cluster, resources.cluster],
          [TYPE_URL.clusterLoadAssignment, resources.clusterLoadAssignment],
        ] as const) {
          const result = grpcDecode(typeUrl, message);
          expect(result.error, `${typeUrl}: ${result.error}`).toBeUndefined();
          expect(result.name).toBe('chat');
        }
      });
    }
  }

  it('maps service policy onto the Envoy fields', () => {
    const resources = buildServiceResources(service({ lb: 'ring_hash', hashHeader: 'X-Session', ...FULL_POLICY })) as any;
    const route = resources.routeConfiguration.virtual_hosts[0];
    expect(route.domains).toEqual(['chat', 'chat.default', 'chat.default.svc', 'chat.default.svc.cluster.local']);
    expect(route.routes[0].route).toMatchObject({ cluster: 'chat', hash_policy: [{ header: { header_name: 'x-session' } }], timeout: { seconds: 2, nanos: 0 } });
    expect(route.routes[0].route.retry_policy.num_retries).toEqual({ value: 2 });
    expect(resources.cluster).toMatchObject({ lb_policy: 'RING_HASH', connect_timeout: { seconds: 0, nanos: 500_000_000 } });
    expect(resources.cluster.circuit_breakers.thresholds[0].max_requests).toEqual({ value: 100 });
    expect(resources.cluster.outlier_detection.consecutive_5xx).toEqual({ value: 3 });
    expect(fromStruct(resources.cluster.metadata.filter_metadata.ctxmesh)).toEqual({ lb: 'ring_hash', hashHeader: 'x-session', tls: 'mesh', namespace: 'default' });
    // Priorities 0 and 3 become 0 and 1; one locality per (zone, priority).
    expect(resources.clusterLoadAssignment.endpoints.map((l: any) => [l.locality.zone, l.priority, l.load_balancing_weight.value])).toEqual([
      ['z1', 0, 1],
      ['z2', 0, 1],
      ['z1', 1, 1],
    ]);
  });

  it('refuses host names as endpoint addresses at config time', () => {
    const result = ControlPlaneConfigSchema.safeParse({ services: [{ name: 'chat', endpoints: [{ address: 'localhost:7001' }] }] });
    expect(result.success).toBe(false);
    expect(result.error!.issues[0]!.path).toEqual(['services', 0, 'endpoints', 0, 'address']);
  });

  it('leaves out what the service does not set, and the TLS socket for tls none', () => {
    const resources = buildServiceResources(service({ tls: 'none' })) as any;
    expect(resources.cluster.transport_socket).toBeUndefined();
    expect(resources.cluster.circuit_breakers).toBeUndefined();
    expect(resources.routeConfiguration.virtual_hosts[0].routes[0].route).toEqual({ cluster: 'chat' });
    expect(resources.clusterLoadAssignment.endpoints).toEqual([]);
  });

  it('is checked by a validator that does reject bad resources', () => {
    const bad = buildServiceResources({ ...service({}), endpoints: [{ address: 'localhost:7001', zone: '', priority: 0, health: 'HEALTHY', epoch: 0 }] });
    expect(grpcDecode(TYPE_URL.clusterLoadAssignment, bad.clusterLoadAssignment).error).toMatch(/not a valid IPv4 or IPv6 address/);
  });
});
