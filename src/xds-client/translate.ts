// Envoy v3 resources (decoded by xds/protos.ts: snake_case keys, enums and longs as strings,
// defaults filled, oneofs named) → the sidecar's ClusterConfig. Two stages, as Envoy does it:
//   1. each resource is validated on its own into a typed value (`decode*`); one bad resource
//      rejects the whole response, which the ADS client NACKs with these errors as error_detail;
//   2. the accepted resources are joined (Listener → RouteConfiguration → Cluster →
//      ClusterLoadAssignment) into ClusterConfig[] (`composeClusters`), checked by ClusterSchema.
// A piece not received yet (a route config, a cluster's endpoints) is no error: what depends on
// it is left out until it arrives, as Envoy keeps a cluster warming until its EDS comes.
import { isIP } from 'node:net';
import { ClusterSchema, type ClusterConfig } from '../config/schema.js';
import { formatHostPort } from '../config/host-port.js';
import type { Member, MemberState } from '../membership/membership.js';
import { EMBEDDED_TYPE_URL, loadXdsProtos, TYPE_URL, type AnyMessage } from '../../xds/protos.js';

/** Filter-metadata key of ctxmesh's own endpoint facts (node_id, epoch), as the control plane writes it. */
export const CTXMESH_METADATA_KEY = 'ctxmesh';

/** Where a listener's routes come from: RDS by name, or inline. */
export interface ListenerRoutes {
  name: string;
  routeConfigName?: string;
  inlineRoutes?: RouteTable;
}

export interface RoutePolicy {
  timeoutMs?: number;
  retry?: { attempts: number; perTryTimeoutMs?: number; backoffMs?: number; retryOn?: number[] };
  hashHeader?: string;
}

/** The one route per virtual host that the sidecar (which routes by Host only) follows. */
export interface VirtualHostRoute {
  name: string;
  domains: string[];
  cluster: string;
  policy: RoutePolicy;
}

export interface RouteTable {
  name: string;
  virtualHosts: VirtualHostRoute[];
}

export type LbKind = ClusterConfig['lb'];

export interface UpstreamCluster {
  name: string;
  /** ClusterLoadAssignment name for an EDS cluster. */
  edsServiceName?: string;
  /** Endpoints given inline (STATIC / STRICT_DNS / LOGICAL_DNS clusters). */
  inlineEndpoints?: EndpointGroup;
  lb: LbKind;
  tls: 'mesh' | 'none';
  connectTimeoutMs?: number;
  circuitBreaker?: Partial<Record<'maxConnections' | 'maxPendingRequests' | 'maxRequests' | 'maxRetries', number>>;
  retryBudget?: { budgetPercent?: number; minRetryConcurrency?: number };
  outlierDetection?: Partial<Record<'consecutive5xx' | 'interval' | 'baseEjectionTime' | 'maxEjectionTime' | 'maxEjectionPercent', number>>;
}

export type EndpointHealth = 'UNKNOWN' | 'HEALTHY' | 'UNHEALTHY' | 'DRAINING' | 'TIMEOUT' | 'DEGRADED';

export interface XdsEndpoint {
  address: string;
  zone: string;
  priority: number;
  health: EndpointHealth;
  /** The sidecar behind the endpoint: filter_metadata ctxmesh.node_id, else endpoint.hostname. */
  nodeId?: string;
  /** filter_metadata ctxmesh.epoch. */
  epoch?: number;
}

export interface EndpointGroup {
  clusterName: string;
  endpoints: XdsEndpoint[];
}

/** The accepted resources, by name. */
export interface XdsResources {
  listeners: Map<string, ListenerRoutes>;
  routes: Map<string, RouteTable>;
  clusters: Map<string, UpstreamCluster>;
  endpoints: Map<string, EndpointGroup>;
}

export type ResourceKind = 'listener' | 'routeConfiguration' | 'cluster' | 'clusterLoadAssignment';

export interface DecodedByKind {
  listener: ListenerRoutes;
  routeConfiguration: RouteTable;
  cluster: UpstreamCluster;
  clusterLoadAssignment: EndpointGroup;
}

export type Decoded<T> = { valid: true; result: T } | { valid: false; errors: string[] };

type Obj = Record<string, unknown>;

/** Collects the problems of one resource, each naming the resource and the field. */
class Problems {
  readonly errors: string[] = [];
  constructor(private readonly resource: string) {}
  add(field: string, message: string): void {
    this.errors.push(`${this.resource}: ${field}: ${message}`);
  }
}

const KIND_LABEL: Record<ResourceKind, string> = {
  listener: 'Listener',
  routeConfiguration: 'RouteConfiguration',
  cluster: 'Cluster',
  clusterLoadAssignment: 'ClusterLoadAssignment',
};

export const KIND_OF_TYPE_URL: Record<string, ResourceKind> = {
  [TYPE_URL.listener]: 'listener',
  [TYPE_URL.routeConfiguration]: 'routeConfiguration',
  [TYPE_URL.cluster]: 'cluster',
  [TYPE_URL.clusterLoadAssignment]: 'clusterLoadAssignment',
};

/** Validates one decoded resource of `kind`. */
export function decodeResource<K extends ResourceKind>(kind: K, resource: unknown): Decoded<DecodedByKind[K]> {
  const object = asObj(resource);
  const name = kind === 'clusterLoadAssignment' ? str(object.cluster_name) : str(object.name);
  const problems = new Problems(`${KIND_LABEL[kind]} "${name || '?'}"`);
  if (!name) problems.add(kind === 'clusterLoadAssignment' ? 'cluster_name' : 'name', 'missing');
  const result =
    kind === 'listener'
      ? readListener(object, name ?? '', problems)
      : kind === 'routeConfiguration'
        ? readRouteTable(object, name ?? '', problems, '')
        : kind === 'cluster'
          ? readCluster(object, name ?? '', problems)
          : readEndpointGroup(object, name ?? '', problems, '');
  if (problems.errors.length > 0) return { valid: false, errors: problems.errors };
  return { valid: true, result: result as DecodedByKind[K] };
}

/**
 * Decodes and validates the Any resources of one discovery response. Every resource must be of
 * the response's type and valid, and names must be unique; else the errors of all of them.
 */
export function decodeResponseResources<K extends ResourceKind>(
  kind: K,
  typeUrl: string,
  resources: readonly AnyMessage[],
): Decoded<Map<string, DecodedByKind[K]>> {
  const protos = loadXdsProtos();
  const out = new Map<string, DecodedByKind[K]>();
  const errors: string[] = [];
  resources.forEach((any, index) => {
    if (any.type_url !== typeUrl) {
      errors.push(`resources[${index}]: type ${any.type_url} in a response of type ${typeUrl}`);
      return;
    }
    let decoded: unknown;
    try {
      decoded = protos.decodeResource(any);
    } catch (err) {
      errors.push(`resources[${index}]: cannot decode ${typeUrl}: ${(err as Error).message}`);
      return;
    }
    const result = decodeResource(kind, decoded);
    if (!result.valid) return void errors.push(...result.errors);
    const name = resourceName(kind, result.result);
    if (out.has(name)) errors.push(`${KIND_LABEL[kind]} "${name}": name: appears twice in one response`);
    out.set(name, result.result);
  });
  return errors.length > 0 ? { valid: false, errors } : { valid: true, result: out };
}

export function resourceName(kind: ResourceKind, resource: DecodedByKind[ResourceKind]): string {
  return kind === 'clusterLoadAssignment' ? (resource as EndpointGroup).clusterName : (resource as { name: string }).name;
}

// --- Listener -------------------------------------------------------------------------------

function readListener(listener: Obj, name: string, problems: Problems): ListenerRoutes {
  // Client-side listeners (what gRPC asks for) carry the HttpConnectionManager in api_listener;
  // Envoy-style ones in a filter chain. Either is followed.
  let hcmAny: AnyMessage | undefined;
  let field = 'api_listener.api_listener';
  const api = obj(obj(listener.api_listener)?.api_listener);
  if (api) hcmAny = api as unknown as AnyMessage;
  else {
    arr(listener.filter_chains).forEach((chain, c) => {
      arr(obj(chain)?.filters).forEach((filter, f) => {
        const typed = obj(obj(filter)?.typed_config);
        if (!hcmAny && typed?.type_url === EMBEDDED_TYPE_URL.httpConnectionManager) {
          hcmAny = typed as unknown as AnyMessage;
          field = `filter_chains[${c}].filters[${f}].typed_config`;
        }
      });
    });
  }
  if (!hcmAny) {
    problems.add('api_listener', 'missing: no HttpConnectionManager in api_listener or in a filter chain');
    return { name };
  }
  if (hcmAny.type_url !== EMBEDDED_TYPE_URL.httpConnectionManager) {
    problems.add(field, `expected ${EMBEDDED_TYPE_URL.httpConnectionManager}, got ${hcmAny.type_url || '(empty)'}`);
    return { name };
  }
  let hcm: Obj;
  try {
    hcm = asObj(loadXdsProtos().decodeResource(hcmAny));
  } catch (err) {
    problems.add(field, `cannot decode HttpConnectionManager: ${(err as Error).message}`);
    return { name };
  }
  const specifier = str(hcm.route_specifier);
  if (specifier === 'rds') {
    const routeConfigName = str(obj(hcm.rds)?.route_config_name);
    if (!routeConfigName) problems.add(`${field}.rds.route_config_name`, 'missing');
    return { name, routeConfigName: routeConfigName ?? '' };
  }
  if (specifier === 'route_config') {
    return { name, inlineRoutes: readRouteTable(asObj(hcm.route_config), name, problems, `${field}.route_config.`) };
  }
  problems.add(field, specifier ? `route specifier ${specifier} is not supported (rds or route_config)` : 'missing rds or route_config');
  return { name };
}

// --- RouteConfiguration ---------------------------------------------------------------------

function readRouteTable(table: Obj, name: string, problems: Problems, prefix: string): RouteTable {
  const virtualHosts: VirtualHostRoute[] = [];
  arr(table.virtual_hosts).forEach((vhValue, v) => {
    const vh = asObj(vhValue);
    const at = `${prefix}virtual_hosts[${v}]`;
    const domains: string[] = [];
    const rawDomains = arr(vh.domains);
    if (rawDomains.length === 0) problems.add(`${at}.domains`, 'missing');
    rawDomains.forEach((d, i) => {
      const domain = normaliseDomain(str(d) ?? '');
      if (domain instanceof Error) problems.add(`${at}.domains[${i}]`, domain.message);
      else if (!domains.includes(domain)) domains.push(domain);
    });
    // The sidecar routes by Host only: the virtual host's catch-all route decides its cluster.
    const routes = arr(vh.routes).map(asObj);
    const index = routes.findIndex((r) => isCatchAll(asObj(r.match)) && str(r.action) === 'route');
    if (index === -1) {
      problems.add(`${at}.routes`, 'no route action with a catch-all match (prefix "/" or "") — ctxmesh routes by host only');
      return;
    }
    const action = asObj(routes[index]!.route);
    const routeAt = `${at}.routes[${index}].route`;
    const specifier = str(action.cluster_specifier);
    const cluster = str(action.cluster);
    if (specifier !== 'cluster' || !cluster) {
      problems.add(`${routeAt}.cluster`, specifier && specifier !== 'cluster' ? `${specifier} is not supported (a single cluster)` : 'missing');
      return;
    }
    virtualHosts.push({ name: str(vh.name) ?? '', domains, cluster, policy: readRoutePolicy(action, problems, routeAt) });
  });
  return { name, virtualHosts };
}

function isCatchAll(match: Obj): boolean {
  const specifier = str(match.path_specifier);
  if (arr(match.headers).length > 0 || arr(match.query_parameters).length > 0) return false;
  return specifier === undefined || (specifier === 'prefix' && (str(match.prefix) === '' || str(match.prefix) === '/'));
}

function normaliseDomain(domain: string): string | Error {
  const lower = domain.trim().toLowerCase();
  if (lower === '') return new Error('empty domain');
  if (lower.endsWith('*') && lower !== '*') return new Error(`suffix wildcards ("${domain}") are not supported; use "*.example" or "*"`);
  if (lower.indexOf('*', 1) !== -1) return new Error(`"${domain}": only a leading "*." wildcard is supported`);
  // The Host's port is ignored when routing, so a domain's port is too.
  const colon = lower.lastIndexOf(':');
  return colon > 0 && !lower.startsWith('[') && /^\d+$/.test(lower.slice(colon + 1)) ? lower.slice(0, colon) : lower;
}

function readRoutePolicy(action: Obj, problems: Problems, at: string): RoutePolicy {
  const policy: RoutePolicy = {};
  const timeout = durationMs(action.timeout, problems, `${at}.timeout`);
  // Envoy reads 0 as "no timeout"; the sidecar always bounds a request, so 0 keeps its default.
  if (timeout !== undefined && timeout > 0) policy.timeoutMs = timeout;
  const retryPolicy = obj(action.retry_policy);
  if (retryPolicy) {
    const numRetries = wrapped(retryPolicy.num_retries);
    const retry: NonNullable<RoutePolicy['retry']> = { attempts: numRetries ?? 1 };
    const perTry = durationMs(retryPolicy.per_try_timeout, problems, `${at}.retry_policy.per_try_timeout`);
    if (perTry !== undefined && perTry > 0) retry.perTryTimeoutMs = perTry;
    const backoff = durationMs(obj(retryPolicy.retry_back_off)?.base_interval, problems, `${at}.retry_policy.retry_back_off.base_interval`);
    if (backoff !== undefined) retry.backoffMs = backoff;
    const statuses = arr(retryPolicy.retriable_status_codes).map(Number).filter((s) => s >= 500 && s <= 599);
    if (statuses.length > 0) retry.retryOn = statuses;
    policy.retry = retry;
  }
  for (const hash of arr(action.hash_policy).map(asObj)) {
    const header = str(obj(hash.header)?.header_name);
    if (header) {
      policy.hashHeader = header.toLowerCase();
      break;
    }
  }
  return policy;
}

// --- Cluster --------------------------------------------------------------------------------

const LB_POLICIES: Record<string, LbKind> = { ROUND_ROBIN: 'round_robin', LEAST_REQUEST: 'least_request', RING_HASH: 'ring_hash' };
const LB_EXTENSIONS: Record<string, LbKind> = {
  [EMBEDDED_TYPE_URL.leastRequest]: 'least_request',
  [EMBEDDED_TYPE_URL.roundRobin]: 'round_robin',
  [EMBEDDED_TYPE_URL.wrrLocality]: 'round_robin',
  'type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash': 'ring_hash',
};

function readCluster(cluster: Obj, name: string, problems: Problems): UpstreamCluster {
  const out: UpstreamCluster = { name, lb: readLbPolicy(cluster, problems), tls: readTls(cluster, problems) };
  const discovery = str(cluster.cluster_discovery_type);
  const type = discovery === 'type' ? str(cluster.type) : discovery === undefined ? 'STATIC' : discovery;
  if (type === 'EDS') {
    const eds = obj(cluster.eds_cluster_config);
    out.edsServiceName = str(eds?.service_name) || name;
  } else if (type === 'STATIC' || type === 'STRICT_DNS' || type === 'LOGICAL_DNS') {
    const assignment = obj(cluster.load_assignment);
    if (!assignment) problems.add('load_assignment', `missing (required by a ${type} cluster)`);
    else out.inlineEndpoints = readEndpointGroup(assignment, name, problems, 'load_assignment.');
  } else {
    problems.add('type', `${type} clusters are not supported (EDS, STATIC, STRICT_DNS or LOGICAL_DNS)`);
  }
  const connectTimeout = durationMs(cluster.connect_timeout, problems, 'connect_timeout');
  if (connectTimeout !== undefined) {
    if (connectTimeout <= 0) problems.add('connect_timeout', 'must be greater than 0');
    else out.connectTimeoutMs = connectTimeout;
  }
  const thresholds = arr(obj(cluster.circuit_breakers)?.thresholds).map(asObj);
  const defaults = thresholds.find((t) => (str(t.priority) ?? 'DEFAULT') === 'DEFAULT');
  if (defaults) {
    const breaker: NonNullable<UpstreamCluster['circuitBreaker']> = {};
    const limits = [
      ['maxConnections', 'max_connections'],
      ['maxPendingRequests', 'max_pending_requests'],
      ['maxRequests', 'max_requests'],
      ['maxRetries', 'max_retries'],
    ] as const;
    for (const [key, field] of limits) {
      const value = wrapped(defaults[field]);
      if (value !== undefined) breaker[key] = value;
    }
    out.circuitBreaker = breaker;
    const budget = obj(defaults.retry_budget);
    if (budget) {
      out.retryBudget = {};
      const percent = wrapped(budget.budget_percent);
      if (percent !== undefined) out.retryBudget.budgetPercent = percent;
      const min = wrapped(budget.min_retry_concurrency);
      if (min !== undefined) out.retryBudget.minRetryConcurrency = min;
    }
  }
  const outlier = obj(cluster.outlier_detection);
  if (outlier) {
    const detection: NonNullable<UpstreamCluster['outlierDetection']> = {};
    const count = wrapped(outlier.consecutive_5xx);
    if (count !== undefined) detection.consecutive5xx = count;
    const percent = wrapped(outlier.max_ejection_percent);
    if (percent !== undefined) detection.maxEjectionPercent = percent;
    const times = [
      ['interval', 'interval'],
      ['baseEjectionTime', 'base_ejection_time'],
      ['maxEjectionTime', 'max_ejection_time'],
    ] as const;
    for (const [key, field] of times) {
      const ms = durationMs(outlier[field], problems, `outlier_detection.${field}`);
      if (ms !== undefined) detection[key] = ms;
    }
    out.outlierDetection = detection;
  }
  return out;
}

function readLbPolicy(cluster: Obj, problems: Problems): LbKind {
  // load_balancing_policy, when set, overrides lb_policy (as in Envoy): its first policy this
  // sidecar implements wins.
  const policies = arr(obj(cluster.load_balancing_policy)?.policies).map(asObj);
  if (policies.length > 0) {
    for (const policy of policies) {
      const typeUrl = str(obj(obj(policy.typed_extension_config)?.typed_config)?.type_url);
      const lb = typeUrl ? LB_EXTENSIONS[typeUrl] : undefined;
      if (lb) return lb;
    }
    problems.add('load_balancing_policy', 'none of its policies is supported (least_request, round_robin, wrr_locality, ring_hash)');
    return 'round_robin';
  }
  const policy = str(cluster.lb_policy) ?? 'ROUND_ROBIN';
  const lb = LB_POLICIES[policy];
  if (!lb) {
    problems.add('lb_policy', `unsupported policy ${policy} (ROUND_ROBIN, LEAST_REQUEST or RING_HASH)`);
    return 'round_robin';
  }
  return lb;
}

function readTls(cluster: Obj, problems: Problems): 'mesh' | 'none' {
  const socket = obj(cluster.transport_socket);
  if (!socket) return 'none';
  const typeUrl = str(obj(socket.typed_config)?.type_url);
  if (typeUrl === EMBEDDED_TYPE_URL.upstreamTlsContext) return 'mesh';
  const name = str(socket.name);
  if (!typeUrl && name === 'envoy.transport_sockets.tls') return 'mesh';
  if (!typeUrl && (name === '' || name === undefined || name === 'envoy.transport_sockets.raw_buffer')) return 'none';
  if (typeUrl?.endsWith('.RawBuffer')) return 'none';
  // Sending plain text where the control plane asked for a transport we do not know would be worse
  // than refusing the cluster.
  problems.add('transport_socket', `unsupported transport socket ${typeUrl ?? name} (UpstreamTlsContext or raw buffer)`);
  return 'none';
}

// --- ClusterLoadAssignment ------------------------------------------------------------------

const HEALTH: readonly EndpointHealth[] = ['UNKNOWN', 'HEALTHY', 'UNHEALTHY', 'DRAINING', 'TIMEOUT', 'DEGRADED'];

function readEndpointGroup(assignment: Obj, clusterName: string, problems: Problems, prefix: string): EndpointGroup {
  const endpoints: XdsEndpoint[] = [];
  arr(assignment.endpoints).forEach((localityValue, l) => {
    const locality = asObj(localityValue);
    const zone = str(obj(locality.locality)?.zone) ?? '';
    const priority = Number(locality.priority ?? 0);
    arr(locality.lb_endpoints).forEach((lbValue, e) => {
      const at = `${prefix}endpoints[${l}].lb_endpoints[${e}]`;
      const lbEndpoint = asObj(lbValue);
      const endpoint = obj(lbEndpoint.endpoint);
      if (!endpoint) return problems.add(`${at}.endpoint`, 'missing');
      const address = readSocketAddress(endpoint, problems, `${at}.endpoint.address`);
      if (address === undefined) return;
      const health = (str(lbEndpoint.health_status) ?? 'UNKNOWN') as EndpointHealth;
      if (!HEALTH.includes(health)) return problems.add(`${at}.health_status`, `unknown status ${health}`);
      const meta = structToJson(obj(obj(obj(lbEndpoint.metadata)?.filter_metadata)?.[CTXMESH_METADATA_KEY]));
      const nodeId = (typeof meta.node_id === 'string' && meta.node_id) || str(endpoint.hostname) || undefined;
      const epoch = typeof meta.epoch === 'number' ? meta.epoch : undefined;
      endpoints.push({
        address,
        zone,
        priority,
        health,
        ...(nodeId ? { nodeId } : {}),
        ...(epoch !== undefined ? { epoch } : {}),
      });
    });
  });
  return { clusterName, endpoints };
}

const HOSTNAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

function readSocketAddress(endpoint: Obj, problems: Problems, at: string): string | undefined {
  const socket = obj(obj(endpoint.address)?.socket_address);
  if (!socket) {
    problems.add(at, 'missing socket_address (pipes and internal addresses are not supported)');
    return undefined;
  }
  const host = str(socket.address) ?? '';
  if (host === '') return void problems.add(`${at}.socket_address.address`, 'missing');
  if (isIP(host) === 6 && host.includes('%')) return void problems.add(`${at}.socket_address.address`, `IPv6 zone ids ("${host}") are not supported`);
  if (isIP(host) === 0 && !HOSTNAME.test(host)) return void problems.add(`${at}.socket_address.address`, `"${host}" is not an IPv4 address or a host name`);
  if (str(socket.port_specifier) === 'named_port') return void problems.add(`${at}.socket_address.named_port`, 'named ports are not supported');
  const port = Number(socket.port_value ?? 0);
  if (!Number.isInteger(port) || port < 1 || port > 65_535) return void problems.add(`${at}.socket_address.port_value`, `${port} is not a port (1-65535)`);
  return formatHostPort(host, port);
}

// --- Composition ----------------------------------------------------------------------------

export interface Composition {
  configs: ClusterConfig[];
  errors: string[];
}

/**
 * Joins the accepted resources into the sidecar's dynamic clusters: one per Cluster that some
 * listener's virtual host routes to and whose endpoints are known, its domains the union of
 * those virtual hosts' domains. Two routes to one cluster with different policies: the first
 * listener (by name) decides, since a sidecar cluster carries one timeout and retry policy.
 */
export function composeClusters(resources: XdsResources): Composition {
  const routed = new Map<string, { domains: string[]; policy: RoutePolicy }>();
  for (const name of [...resources.listeners.keys()].sort()) {
    const listener = resources.listeners.get(name)!;
    const table = listener.inlineRoutes ?? (listener.routeConfigName ? resources.routes.get(listener.routeConfigName) : undefined);
    if (!table) continue;
    for (const vh of table.virtualHosts) {
      let entry = routed.get(vh.cluster);
      if (!entry) routed.set(vh.cluster, (entry = { domains: [], policy: vh.policy }));
      for (const d of vh.domains) if (!entry.domains.includes(d)) entry.domains.push(d);
    }
  }
  const configs: ClusterConfig[] = [];
  const errors: string[] = [];
  for (const name of [...routed.keys()].sort()) {
    const cluster = resources.clusters.get(name);
    if (!cluster) continue;
    const group = cluster.inlineEndpoints ?? (cluster.edsServiceName !== undefined ? resources.endpoints.get(cluster.edsServiceName) : undefined);
    if (!group) continue;
    const parsed = ClusterSchema.safeParse(clusterInput(cluster, routed.get(name)!, group));
    if (parsed.success) configs.push(parsed.data);
    else for (const issue of parsed.error.issues) errors.push(`Cluster "${name}": ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return { configs, errors };
}

function clusterInput(cluster: UpstreamCluster, route: { domains: string[]; policy: RoutePolicy }, group: EndpointGroup): Record<string, unknown> {
  const { policy } = route;
  const retry: Record<string, unknown> = { ...cluster.retryBudget };
  if (policy.retry) {
    retry.attempts = policy.retry.attempts;
    if (policy.retry.perTryTimeoutMs !== undefined) retry.perTryTimeout = policy.retry.perTryTimeoutMs;
    if (policy.retry.backoffMs !== undefined) retry.backoff = policy.retry.backoffMs;
    if (policy.retry.retryOn) retry.retryOn = policy.retry.retryOn;
  }
  return {
    name: cluster.name,
    domains: route.domains,
    lb: cluster.lb,
    ...(policy.hashHeader ? { hashHeader: policy.hashHeader } : {}),
    tls: cluster.tls,
    endpoints: routableEndpoints(group),
    circuitBreaker: { ...cluster.circuitBreaker },
    outlierDetection: { ...cluster.outlierDetection },
    retry,
    ...(policy.timeoutMs !== undefined ? { timeout: policy.timeoutMs } : {}),
    ...(cluster.connectTimeoutMs !== undefined ? { connectTimeout: cluster.connectTimeoutMs } : {}),
  };
}

/**
 * Endpoints that may take new requests: UNHEALTHY, TIMEOUT and DRAINING ones are left out
 * (requests already on a draining endpoint finish there: they hold the old cluster). Priorities
 * above 1 join the backup level, the deepest the sidecar's clusters have. An address listed twice
 * keeps its best priority.
 */
export function routableEndpoints(group: EndpointGroup): Array<{ address: string; priority: number; zone: string; hostname?: string }> {
  const byAddress = new Map<string, { address: string; priority: number; zone: string; hostname?: string }>();
  for (const e of group.endpoints) {
    if (e.health === 'UNHEALTHY' || e.health === 'TIMEOUT' || e.health === 'DRAINING') continue;
    const priority = Math.min(e.priority, 1);
    const seen = byAddress.get(e.address);
    // The node id goes with the endpoint so that ring_hash places it where replication places its keys.
    if (!seen || priority < seen.priority) byAddress.set(e.address, { address: e.address, priority, zone: e.zone, ...(e.nodeId ? { hostname: e.nodeId } : {}) });
  }
  return [...byAddress.values()];
}

/** The sidecars among a ClusterLoadAssignment's endpoints, as members (endpoints without a node id are skipped). */
export function endpointMembers(group: EndpointGroup): Member[] {
  const members = new Map<string, Member>();
  for (const e of group.endpoints) {
    if (!e.nodeId) continue;
    const member: Member = { id: e.nodeId, address: e.address, state: MEMBER_STATE[e.health], epoch: e.epoch ?? 0, ...(e.zone ? { zone: e.zone } : {}) };
    const seen = members.get(e.nodeId);
    // A node listed twice (re-registered at a new address): the higher epoch is the newer truth.
    if (!seen || member.epoch > seen.epoch) members.set(e.nodeId, member);
  }
  return [...members.values()];
}

const MEMBER_STATE: Record<EndpointHealth, MemberState> = {
  UNKNOWN: 'alive',
  HEALTHY: 'alive',
  DEGRADED: 'alive',
  UNHEALTHY: 'dead',
  TIMEOUT: 'dead',
  DRAINING: 'draining',
};

// --- Decoded-object readers ------------------------------------------------------------------

function obj(value: unknown): Obj | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Obj) : undefined;
}

function asObj(value: unknown): Obj {
  return obj(value) ?? {};
}

function arr(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** google.protobuf.UInt32Value / DoubleValue / Percent ({ value }) → number; unset → undefined. */
function wrapped(value: unknown): number | undefined {
  const inner = obj(value)?.value;
  if (inner === undefined || inner === null) return undefined;
  const n = Number(inner);
  return Number.isFinite(n) ? n : undefined;
}

/** google.protobuf.Duration (seconds as a long string) → milliseconds; unset → undefined. */
function durationMs(value: unknown, problems: Problems, field: string): number | undefined {
  const duration = obj(value);
  if (!duration) return undefined;
  const ms = Number(duration.seconds ?? 0) * 1000 + Number(duration.nanos ?? 0) / 1e6;
  if (!Number.isFinite(ms) || ms < 0) {
    problems.add(field, 'not a valid duration');
    return undefined;
  }
  return Math.round(ms);
}

type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/**
 * google.protobuf.Struct → JSON. protobufjs decodes the well-known Struct with camelCase member
 * names (`stringValue`) even when the rest is snake_case, so both spellings are read.
 */
export function structToJson(struct: Obj | undefined): Record<string, Json> {
  const out: Record<string, Json> = {};
  for (const [key, value] of Object.entries(asObj(struct?.fields))) out[key] = structValue(asObj(value));
  return out;
}

function structValue(value: Obj): Json {
  const pick = (snake: string, camel: string): unknown => value[snake] ?? value[camel];
  if (typeof pick('string_value', 'stringValue') === 'string') return pick('string_value', 'stringValue') as string;
  if (typeof pick('number_value', 'numberValue') === 'number') return pick('number_value', 'numberValue') as number;
  if (typeof pick('bool_value', 'boolValue') === 'boolean') return pick('bool_value', 'boolValue') as boolean;
  const list = obj(pick('list_value', 'listValue'));
  if (list) return arr(list.values).map((v) => structValue(asObj(v)));
  const nested = obj(pick('struct_value', 'structValue'));
  if (nested) return structToJson(nested);
  return null;
}
