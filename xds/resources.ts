// Envoy v3 resources for one service, as plain objects (snake_case, enums as strings) ready for
// `encodeResource`. Service X becomes four resources named X: a Listener whose api_listener is an
// HttpConnectionManager fetching RouteConfiguration X over ADS (what gRPC's `xds:///X` asks for),
// the RouteConfiguration (virtual host X, X.ns, X.ns.svc, X.ns.svc.cluster.local → cluster X), a
// Cluster X of type EDS over ADS, and its ClusterLoadAssignment. The shapes stay within what both
// Envoy and gRPC's xDS client accept: IP-literal endpoints, dense priorities, weighted localities.
import type { MeshServiceConfig } from '../src/config/schema.js';
import { EMBEDDED_TYPE_URL, loadXdsProtos } from './protos.js';

export type EndpointHealth = 'HEALTHY' | 'UNHEALTHY' | 'DRAINING';

export interface EndpointView {
  address: string;
  zone: string;
  priority: number;
  health: EndpointHealth;
  /** Rises on every health transition; sidecars fence ownership with it. */
  epoch: number;
  /** Node id of a registered sidecar; absent for endpoints from the config file. */
  nodeId?: string | undefined;
}

export type ServiceDefinition = Omit<MeshServiceConfig, 'endpoints'>;

export interface ServiceView extends ServiceDefinition {
  endpoints: EndpointView[];
}

export interface ServiceResources {
  listener: object;
  routeConfiguration: object;
  cluster: object;
  clusterLoadAssignment: object;
}

/** Name of the HTTP filter and transport socket, as Envoy's extension registry knows them. */
const ROUTER_FILTER = 'envoy.filters.http.router';
const TLS_TRANSPORT_SOCKET = 'envoy.transport_sockets.tls';
/**
 * Certificate-provider instance a consumer's bootstrap must define for `tls: mesh` clusters
 * (gRPC: `certificate_providers`; Envoy: `certificate_provider_instances`). Sidecars dial peers
 * with their own SPIFFE identity and ignore it.
 */
export const MESH_CERTIFICATE_PROVIDER = 'ctxmesh';
/** Key of the filter metadata that carries ctxmesh-only settings and endpoint identity. */
export const CTXMESH_METADATA_KEY = 'ctxmesh';
const ADS_CONFIG_SOURCE = { ads: {}, resource_api_version: 'V3' } as const;

export function buildServiceResources(service: ServiceView): ServiceResources {
  return {
    listener: buildListener(service),
    routeConfiguration: buildRouteConfiguration(service),
    cluster: buildCluster(service),
    clusterLoadAssignment: buildClusterLoadAssignment(service),
  };
}

export function serviceDomains(service: Pick<ServiceView, 'name' | 'namespace'>): string[] {
  const { name, namespace } = service;
  return [name, `${name}.${namespace}`, `${name}.${namespace}.svc`, `${name}.${namespace}.svc.cluster.local`];
}

export function buildListener(service: ServiceView): object {
  const protos = loadXdsProtos();
  const httpConnectionManager = protos.encodeResource(EMBEDDED_TYPE_URL.httpConnectionManager, {
    stat_prefix: service.name,
    codec_type: 'AUTO',
    rds: { route_config_name: service.name, config_source: ADS_CONFIG_SOURCE },
    http_filters: [{ name: ROUTER_FILTER, typed_config: protos.encodeResource(EMBEDDED_TYPE_URL.router, {}) }],
  });
  return { name: service.name, api_listener: { api_listener: httpConnectionManager } };
}

export function buildRouteConfiguration(service: ServiceView): object {
  const action: Record<string, unknown> = { cluster: service.name };
  if (service.lb === 'ring_hash') action.hash_policy = [{ header: { header_name: service.hashHeader } }];
  if (service.timeout !== undefined) action.timeout = duration(service.timeout);
  if (service.retry && service.retry.attempts > 0) {
    const base = service.retry.backoff;
    action.retry_policy = {
      // Envoy reads the HTTP conditions, gRPC the status names; each ignores the other's.
      retry_on: 'connect-failure,reset,retriable-status-codes,unavailable',
      retriable_status_codes: service.retry.retryOn,
      num_retries: { value: service.retry.attempts },
      ...(service.retry.perTryTimeout !== undefined ? { per_try_timeout: duration(service.retry.perTryTimeout) } : {}),
      retry_back_off: { base_interval: duration(base), max_interval: duration(base * 10) },
    };
  }
  return {
    name: service.name,
    virtual_hosts: [
      {
        name: service.name,
        domains: serviceDomains(service),
        routes: [{ match: { prefix: '/' }, route: action }],
      },
    ],
  };
}

export function buildCluster(service: ServiceView): object {
  const cluster: Record<string, unknown> = {
    name: service.name,
    type: 'EDS',
    eds_cluster_config: { eds_config: ADS_CONFIG_SOURCE, service_name: service.name },
    lb_policy: LB_POLICY[service.lb],
    metadata: {
      filter_metadata: { [CTXMESH_METADATA_KEY]: toStruct({ lb: service.lb, hashHeader: service.hashHeader, tls: service.tls, namespace: service.namespace }) },
    },
  };
  if (service.lb === 'ring_hash') cluster.ring_hash_lb_config = { hash_function: 'XX_HASH' };
  if (service.lb === 'least_request') cluster.load_balancing_policy = leastRequestPolicy();
  if (service.connectTimeout !== undefined) cluster.connect_timeout = duration(service.connectTimeout);
  const thresholds: Record<string, unknown> = {};
  if (service.circuitBreaker) {
    const breaker = service.circuitBreaker;
    Object.assign(thresholds, {
      max_connections: { value: breaker.maxConnections },
      max_pending_requests: { value: breaker.maxPendingRequests },
      max_requests: { value: breaker.maxRequests },
      max_retries: { value: breaker.maxRetries },
    });
  }
  if (service.retry) {
    thresholds.retry_budget = {
      budget_percent: { value: service.retry.budgetPercent },
      min_retry_concurrency: { value: service.retry.minRetryConcurrency },
    };
  }
  if (Object.keys(thresholds).length > 0) cluster.circuit_breakers = { thresholds: [{ priority: 'DEFAULT', ...thresholds }] };
  if (service.outlierDetection) {
    const outlier = service.outlierDetection;
    cluster.outlier_detection = {
      consecutive_5xx: { value: outlier.consecutive5xx },
      interval: duration(outlier.interval),
      base_ejection_time: duration(outlier.baseEjectionTime),
      max_ejection_time: duration(outlier.maxEjectionTime),
      max_ejection_percent: { value: outlier.maxEjectionPercent },
    };
  }
  if (service.tls === 'mesh') cluster.transport_socket = meshTransportSocket();
  return cluster;
}

const LB_POLICY = { round_robin: 'ROUND_ROBIN', least_request: 'LEAST_REQUEST', ring_hash: 'RING_HASH' } as const;

// Envoy honours lb_policy LEAST_REQUEST; gRPC only understands it through load_balancing_policy,
// where it takes the first policy it supports — so least request first, round robin as fallback.
function leastRequestPolicy(): object {
  const protos = loadXdsProtos();
  const roundRobin = protos.encodeResource(EMBEDDED_TYPE_URL.roundRobin, {});
  const wrrLocality = protos.encodeResource(EMBEDDED_TYPE_URL.wrrLocality, {
    endpoint_picking_policy: { policies: [{ typed_extension_config: { name: 'envoy.load_balancing_policies.round_robin', typed_config: roundRobin } }] },
  });
  return {
    policies: [
      {
        typed_extension_config: {
          name: 'envoy.load_balancing_policies.least_request',
          typed_config: protos.encodeResource(EMBEDDED_TYPE_URL.leastRequest, { choice_count: { value: 2 } }),
        },
      },
      { typed_extension_config: { name: 'envoy.load_balancing_policies.wrr_locality', typed_config: wrrLocality } },
    ],
  };
}

function meshTransportSocket(): object {
  const protos = loadXdsProtos();
  const provider = { instance_name: MESH_CERTIFICATE_PROVIDER };
  const upstreamTlsContext = protos.encodeResource(EMBEDDED_TYPE_URL.upstreamTlsContext, {
    common_tls_context: {
      tls_certificate_provider_instance: provider,
      validation_context: { ca_certificate_provider_instance: provider, match_subject_alt_names: [{ prefix: 'spiffe://' }] },
    },
  });
  return { name: TLS_TRANSPORT_SOCKET, typed_config: upstreamTlsContext };
}

export function buildClusterLoadAssignment(service: ServiceView): object {
  // gRPC rejects priority N without N-1 and localities of weight 0, so configured priorities are
  // renumbered densely (0, 1, 3 → 0, 1, 2) and each locality weighs its endpoint count.
  const priorities = [...new Set(service.endpoints.map((e) => e.priority))].sort((a, b) => a - b);
  const groups = new Map<string, { zone: string; priority: number; endpoints: EndpointView[] }>();
  for (const endpoint of service.endpoints) {
    const priority = priorities.indexOf(endpoint.priority);
    const key = `${priority}\u0000${endpoint.zone}`;
    let group = groups.get(key);
    if (!group) groups.set(key, (group = { zone: endpoint.zone, priority, endpoints: [] }));
    group.endpoints.push(endpoint);
  }
  const localities = [...groups.values()].sort((a, b) => a.priority - b.priority || a.zone.localeCompare(b.zone));
  return {
    cluster_name: service.name,
    endpoints: localities.map((group) => ({
      locality: { zone: group.zone },
      priority: group.priority,
      load_balancing_weight: { value: group.endpoints.length },
      lb_endpoints: group.endpoints
        .slice()
        .sort((a, b) => a.address.localeCompare(b.address))
        .map((endpoint) => lbEndpoint(endpoint)),
    })),
  };
}

function lbEndpoint(endpoint: EndpointView): object {
  const { host, port } = splitHostPort(endpoint.address);
  const identity: Record<string, JsonValue> = { epoch: endpoint.epoch };
  if (endpoint.nodeId !== undefined) identity.node_id = endpoint.nodeId;
  return {
    endpoint: {
      address: { socket_address: { address: host, port_value: port } },
      ...(endpoint.nodeId !== undefined ? { hostname: endpoint.nodeId } : {}),
    },
    health_status: endpoint.health,
    metadata: { filter_metadata: { [CTXMESH_METADATA_KEY]: toStruct(identity) } },
  };
}

export function splitHostPort(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  const host = address.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  return { host, port: Number(address.slice(colon + 1)) };
}

function duration(ms: number): { seconds: number; nanos: number } {
  return { seconds: Math.floor(ms / 1000), nanos: Math.round(ms % 1000) * 1_000_000 };
}

type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

// google.protobuf.Struct comes from protobufjs's bundled well-known types, whose field names are
// camelCase (`stringValue`) even under keepCase — unlike every Envoy message. The wire format is
// the same either way; these helpers write camelCase and read both spellings.

/** A JSON object as google.protobuf.Struct in proto-loader's object form. */
export function toStruct(object: Record<string, JsonValue>): object {
  return { fields: Object.fromEntries(Object.entries(object).map(([key, value]) => [key, toStructValue(value)])) };
}

function toStructValue(value: JsonValue): object {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toStructValue) } };
  return { structValue: toStruct(value) };
}

/** The inverse of `toStruct`, for decoded node and filter metadata. */
export function fromStruct(struct: { fields?: Record<string, unknown> } | null | undefined): Record<string, JsonValue> {
  const out: Record<string, JsonValue> = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) out[key] = fromStructValue(value as Record<string, unknown>);
  return out;
}

const STRUCT_KINDS = ['string', 'number', 'bool', 'list', 'struct'] as const;

function fromStructValue(value: Record<string, unknown>): JsonValue {
  const member = (kind: string): unknown => value[`${kind}Value`] ?? value[`${kind}_value`];
  const named = typeof value.kind === 'string' ? value.kind.replace(/_value$|Value$/, '') : undefined;
  const kind = named ?? STRUCT_KINDS.find((k) => member(k) !== undefined && member(k) !== null);
  switch (kind) {
    case 'string':
      return member('string') as string;
    case 'number':
      return member('number') as number;
    case 'bool':
      return member('bool') as boolean;
    case 'list':
      return ((member('list') as { values?: Record<string, unknown>[] }).values ?? []).map(fromStructValue);
    case 'struct':
      return fromStruct(member('struct') as { fields?: Record<string, unknown> });
    default:
      return null;
  }
}
