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
