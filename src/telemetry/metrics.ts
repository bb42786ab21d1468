// Prometheus metrics. Each sidecar owns a Registry (not prom-client's global one), so several
// sidecars can live in one process, as they do in tests and the demo. Per-request figures live in
// RequestStats; the rest change rarely (retries, ejections, breaker transitions) and use
// prom-client directly.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { RequestStats } from './request-stats.js';

const LATENCY_BUCKETS_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export type Direction = 'inbound' | 'outbound';

export class MeshMetrics {
  readonly registry = new Registry();
  /** ctxmesh_requests_total and ctxmesh_request_duration_seconds, kept off prom-client's hot path. */
  readonly requests = new RequestStats(this.registry, LATENCY_BUCKETS_SECONDS, {
    requests: 'ctxmesh_requests_total',
    latency: 'ctxmesh_request_duration_seconds',
  });
  readonly retries = new Counter({
    name: 'ctxmesh_upstream_retries_total',
    help: 'Retries sent, by cluster.',
    labelNames: ['cluster'] as const,
    registers: [this.registry],
  });
  readonly overflows = new Counter({
    name: 'ctxmesh_overflow_total',
    help: 'Requests or retries refused by a concurrency limit, by cluster and limit.',
    labelNames: ['cluster', 'limit'] as const,
    registers: [this.registry],
  });
  readonly ejections = new Counter({
    name: 'ctxmesh_outlier_ejections_total',
    help: 'Endpoints ejected by outlier detection, by cluster and endpoint.',
    labelNames: ['cluster', 'endpoint'] as const,
    registers: [this.registry],
  });
  readonly breakerTransitions = new Counter({
    name: 'ctxmesh_circuit_breaker_transitions_total',
    help: 'Circuit breaker state changes, by cluster, endpoint and new state.',
    labelNames: ['cluster', 'endpoint', 'state'] as const,
    registers: [this.registry],
  });
  readonly handshakeFailures = new Counter({
    name: 'ctxmesh_inbound_tls_handshake_failures_total',
    help: 'Inbound mTLS handshakes refused, by reason (no certificate, unknown CA, expired, ...).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  /** Filled at scrape time from live state; see `onCollect`. */
  readonly breakerState = new Gauge({
    name: 'ctxmesh_circuit_breaker_state',
    help: 'Per-endpoint breaker state: 0 closed, 1 half-open, 2 open.',
    labelNames: ['cluster', 'endpoint'] as const,
    registers: [this.registry],
  });
  readonly ejected = new Gauge({
    name: 'ctxmesh_endpoint_ejected',
    help: 'Whether outlier detection currently ejects the endpoint (1) or not (0).',
    labelNames: ['cluster', 'endpoint'] as const,
    registers: [this.registry],
  });
  readonly activeRequests = new Gauge({
    name: 'ctxmesh_active_requests',
    help: 'Requests in flight, by cluster.',
    labelNames: ['cluster'] as const,
    registers: [this.registry],
  });

  // The health monitor (src/membership/prober.ts).
  readonly healthProbes = new Counter({
    name: 'ctxmesh_health_probes_total',
    help: 'Failure-detector probes of other members, by result: ack, indirect_ack, failed, deep_failed.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly healthSuspicions = new Counter({
    name: 'ctxmesh_health_suspicions_total',
    help: 'Members this sidecar started to suspect (its own probes or news from others).',
    registers: [this.registry],
  });
  /** Filled at scrape time from the prober's member table. */
  readonly healthMemberState = new Gauge({
    name: 'ctxmesh_health_member_state',
    help: 'Each member as this sidecar sees it: 0 alive, 1 suspect, 2 dead (or held down after coming back), 3 draining.',
    labelNames: ['member'] as const,
    registers: [this.registry],
  });
  readonly healthLocalMultiplier = new Gauge({
    name: 'ctxmesh_health_local_multiplier',
    help: 'Lifeguard local health multiplier: probes slow down by (1 + this) while this sidecar misses acks itself.',
    registers: [this.registry],
  });
  readonly healthReports = new Counter({
    name: 'ctxmesh_health_reports_total',
    help: 'Health reports posted to the control plane, by outcome: sent, failed.',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  /** The sidecar's xDS client (src/xds-client/). */
  readonly xdsUpdates = new Counter({
    name: 'ctxmesh_xds_updates_total',
    help: 'Discovery responses received from the control plane, by type (lds | rds | cds | eds) and result (ack | nack).',
    labelNames: ['type', 'result'] as const,
    registers: [this.registry],
  });
  readonly xdsConnected = new Gauge({
    name: 'ctxmesh_xds_connected',
    help: 'Whether the ADS stream to the control plane is up (1) or not (0).',
    registers: [this.registry],
  });

  private readonly collectors: Array<() => void> = [];

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'ctxmesh_process_' });
  }

  recordRequest(direction: Direction, cluster: string, status: number, error: string | undefined, seconds: number): void {
    this.requests.of(direction, cluster).record(status, error, seconds);
  }

  /** Registers a function that refreshes gauges from live state just before a scrape. */
  onCollect(collector: () => void): void {
    this.collectors.push(collector);
  }

  async render(): Promise<string> {
    for (const collect of this.collectors) collect();
    return this.registry.metrics();
  }
}

/** The control plane's metrics (xds/): ADS streams, pushes, ACKs/NACKs, the registry, failovers. */
export class ControlPlaneMetrics {
  readonly registry = new Registry();
  readonly streams = new Gauge({
    name: 'ctxmesh_xds_streams',
    help: 'Open ADS streams, by variant (sotw | delta).',
    labelNames: ['variant'] as const,
    registers: [this.registry],
  });
  readonly pushes = new Counter({
    name: 'ctxmesh_xds_pushes_total',
    help: 'Discovery responses sent, by resource type.',
    labelNames: ['type'] as const,
    registers: [this.registry],
  });
  readonly acks = new Counter({
    name: 'ctxmesh_xds_acks_total',
    help: 'Responses ACKed by clients, by resource type.',
    labelNames: ['type'] as const,
    registers: [this.registry],
  });
  readonly nacks = new Counter({
    name: 'ctxmesh_xds_nacks_total',
    help: 'Responses rejected (NACKed) by clients, by resource type.',
    labelNames: ['type'] as const,
    registers: [this.registry],
  });
  readonly endpoints = new Gauge({
    name: 'ctxmesh_xds_endpoints',
    help: 'Endpoints in the registry, by service and health.',
    labelNames: ['service', 'health'] as const,
    registers: [this.registry],
  });
  readonly failovers = new Counter({
    name: 'ctxmesh_xds_failovers_total',
    help: 'Registry events, by kind (declared | recovered | drain | registered | expired).',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  private readonly collectors: Array<() => void> = [];

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'ctxmesh_process_' });
  }

  onCollect(collector: () => void): void {
    this.collectors.push(collector);
  }

  async render(): Promise<string> {
    for (const collect of this.collectors) collect();
    return this.registry.metrics();
  }
}
