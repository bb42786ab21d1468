// A cluster: its endpoints, its balancer, its health policies and its load counters. It is built
// from config (later also from xDS) and replaced whole when its definition changes, so a request
// sees either the old cluster or the new one, never a mix.
import type { ClusterConfig } from '../../config/schema.js';
import { MeshError } from '../../errors/table.js';
import type { BreakerState } from '../../resilience/circuit-breaker.js';
import { systemClock, type Clock, type Random } from '../../resilience/clock.js';
import { ConsecutiveFailureDetector } from '../../resilience/outlier-detection.js';
import type { MeshMetrics } from '../../telemetry/metrics.js';
import type { Logger } from '../../telemetry/logger.js';
import type { MeshIdentity } from '../../tls/identity.js';
import { LeastRequestBalancer, RingHashBalancer, RoundRobinBalancer, type Balancer } from './balancers.js';
import { meshConnector, plainConnector } from './connect.js';
import type { UpstreamCall } from './dispatch.js';
import { Endpoint } from './endpoint.js';

export interface ClusterDeps {
  identity: MeshIdentity | undefined;
  metrics: MeshMetrics;
  logger: Logger;
  clock?: Clock;
  random?: Random;
  /**
   * The health monitor's local verdict: endpoints at these addresses (peer sidecars it found dead
   * or suspect) are skipped before any control-plane push arrives. Unset: no effect.
   */
  unreachable?: (address: string) => boolean;
  /**
   * This sidecar's zone (node.zone). Within a priority level, round_robin and least_request prefer
   * available endpoints of this zone and use other zones only when it has none (zone-aware
   * routing, simple form). ring_hash keeps its placement: a key goes to its context's owner,
   * whatever the zone. Empty or unset: no preference.
   */
  localZone?: string;
}

export class Cluster {
  readonly name: string;
  readonly endpoints: readonly Endpoint[];
  readonly outliers: ConsecutiveFailureDetector<Endpoint>;
  readonly clock: Clock;
  readonly random: Random;
  readonly metrics: MeshMetrics;
  /** Requests in flight (admitted and not yet finished). */
  active = 0;
  /** Requests waiting for an upstream connection: Σ max(0, endpoint.active − maxConnections). */
  pending = 0;
  /** Retries in flight. */
  retriesActive = 0;
  private readonly balancer: Balancer;
  /** Endpoints grouped by priority, highest priority (0) first. */
  private readonly levels: readonly (readonly Endpoint[])[];
  private readonly unreachable: ((address: string) => boolean) | undefined;
  /** The zone to prefer within a level, or undefined (no zone, or ring_hash). */
  private readonly preferredZone: string | undefined;

  constructor(
    readonly config: ClusterConfig,
    deps: ClusterDeps,
  ) {
    this.name = config.name;
    this.clock = deps.clock ?? systemClock;
    this.random = deps.random ?? Math.random;
    this.metrics = deps.metrics;
    this.unreachable = deps.unreachable;
    this.preferredZone = deps.localZone && config.lb !== 'ring_hash' ? deps.localZone : undefined;
    if (config.tls === 'mesh' && !deps.identity) throw new Error(`cluster ${config.name}: tls: mesh needs an identity`);
    const connector =
      config.tls === 'mesh' ? meshConnector(deps.identity!, config.connectTimeout) : plainConnector(config.connectTimeout);
    const onBreakerChange = (endpoint: Endpoint, state: BreakerState): void => {
      deps.metrics.breakerTransitions.labels(this.name, endpoint.address, state).inc();
      deps.logger.warn({ cluster: this.name, endpoint: endpoint.address, state }, 'circuit breaker state changed');
    };
    this.endpoints = config.endpoints.map((e) => new Endpoint(e, config, connector, onBreakerChange));
    const priorities = [...new Set(this.endpoints.map((e) => e.priority))].sort((a, b) => a - b);
    this.levels = priorities.map((p) => this.endpoints.filter((e) => e.priority === p));
    this.balancer =
      config.lb === 'ring_hash'
        ? new RingHashBalancer(this.endpoints)
        : config.lb === 'least_request'
          ? new LeastRequestBalancer(this.random)
          : new RoundRobinBalancer();
    this.outliers = new ConsecutiveFailureDetector(config.outlierDetection, () => this.endpoints, this.clock, (endpoint, until) => {
      deps.metrics.ejections.labels(this.name, endpoint.address).inc();
      deps.logger.warn(
        { cluster: this.name, endpoint: endpoint.address, ejectedForMs: Math.round(until - this.clock.now()) },
        'endpoint ejected by outlier detection',
      );
    });
  }

  /** Whether an endpoint may receive traffic: not ejected, its breaker admits, and the health monitor has not found its peer down. */
  isAvailable(endpoint: Endpoint): boolean {
    return endpoint.breaker.admits && !this.outliers.isEjected(endpoint) && !this.unreachable?.(endpoint.address);
  }

  /**
   * Chooses the endpoint for the next try. Backups (priority 1) serve only when no primary is
   * available; a retry prefers any available endpoint it has not tried yet, at any priority,
   * before trying one again. Within a level, endpoints of the local zone come first (see
   * ClusterDeps.localZone): another zone is used only when the local one has none available.
   */
  choose(call: UpstreamCall): Endpoint | MeshError {
    let sawOpenBreaker = false;
    let fallback: readonly Endpoint[] | undefined;
    const zone = this.preferredZone;
    for (const level of this.levels) {
      let available: Endpoint[] | undefined;
      let untried: Endpoint[] | undefined;
      let untriedLocal: Endpoint[] | undefined;
      let availableLocal: Endpoint[] | undefined;
      for (const endpoint of level) {
        if (this.outliers.isEjected(endpoint) || this.unreachable?.(endpoint.address)) continue;
        if (!endpoint.breaker.admits) {
          sawOpenBreaker = true;
          continue;
        }
        const local = zone !== undefined && endpoint.zone === zone;
        (available ??= []).push(endpoint);
        if (local) (availableLocal ??= []).push(endpoint);
        if (!call.tried.includes(endpoint)) {
          (untried ??= []).push(endpoint);
          if (local) (untriedLocal ??= []).push(endpoint);
        }
      }
      if (untriedLocal) return this.balancer.pick(untriedLocal, call);
      if (untried) return this.balancer.pick(untried, call);
      fallback ??= availableLocal ?? available;
    }
    if (fallback) return this.balancer.pick(fallback, call);
    if (sawOpenBreaker) return new MeshError('circuit_open', `every endpoint of cluster ${this.name} has its circuit breaker open`);
    return new MeshError('no_healthy_upstream', `cluster ${this.name} has no healthy endpoint`);
  }

  /** JSON for the admin API's /clusters. */
  describe(): object {
    return {
      name: this.name,
      lb: this.config.lb,
      tls: this.config.tls,
      domains: this.config.domains,
      active_requests: this.active,
      pending_requests: this.pending,
      active_retries: this.retriesActive,
      endpoints: this.endpoints.map((e) => ({
        address: e.address,
        priority: e.priority,
        zone: e.zone,
        healthy: this.isAvailable(e),
        active_requests: e.active,
        circuit_breaker: e.breaker.state,
        ejected: this.outliers.isEjected(e),
        unreachable: this.unreachable?.(e.address) ?? false,
        times_ejected: e.outlier.timesEjected,
        consecutive_failures: e.outlier.consecutiveFailures,
      })),
    };
  }

  async close(): Promise<void> {
    this.outliers.close();
    await Promise.all(this.endpoints.map((e) => e.close()));
  }

  async destroy(): Promise<void> {
    this.outliers.close();
    await Promise.all(this.endpoints.map((e) => e.destroy()));
  }
}
