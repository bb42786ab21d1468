// The health monitor as the sidecar runs it: the prober on the real peer transport, its peer
// handlers, the deep check through the state agent, reports to the control plane, and the member
// table and gauges for the admin API.
import type { SidecarConfig } from '../config/schema.js';
import type { PeerClient } from '../peer/client.js';
import type { PeerRouter } from '../peer/router.js';
import type { StateAgent } from '../state/agent.js';
import type { Logger } from '../telemetry/logger.js';
import type { MeshMetrics } from '../telemetry/metrics.js';
import type { Fencing } from '../peer/fencing.js';
import { contextPathCheck } from './deep-check.js';
import { LeaseKeeper, leaseMsOf } from './lease.js';
import { HealthReporter, healthReportTarget } from './health-reporter.js';
import type { MemberState, MutableMembership } from './membership.js';
import { PeerProbeTransport, registerProbeHandlers, unregisterProbeHandlers } from './peer-transport.js';
import { HealthProber, type MemberHealth } from './prober.js';

const STATE_GAUGE: Record<MemberState, number> = { alive: 0, suspect: 1, dead: 2, draining: 3 };

export interface HealthMonitorOptions {
  config: SidecarConfig;
  membership: MutableMembership;
  peers: PeerRouter;
  peerClient: PeerClient;
  state: StateAgent | undefined;
  logger: Logger;
  metrics: MeshMetrics;
  /** This sidecar's incarnation, the one it registers with at the control plane (default 0). */
  incarnation?: number;
  /** With it, the monitor keeps the membership lease writes need (lease.ts, src/peer/fencing.ts). */
  fencing?: Fencing;
}

export class HealthMonitor {
  private constructor(
    readonly prober: HealthProber,
    private readonly reporter: HealthReporter | undefined,
    private readonly options: HealthMonitorOptions,
    private readonly lease: LeaseKeeper | undefined,
  ) {}

  /** Whether the config asks for it: `health.enabled`, else on when the sidecar has (or may learn of) peers. */
  static wanted(config: SidecarConfig): boolean {
    return config.health.enabled ?? (config.context.replication.peers.length > 0 || config.xds !== undefined);
  }

  /** Registers the peer handlers and starts probing. Call once the inbound listener is up. */
  static start(options: HealthMonitorOptions): HealthMonitor {
    const { config, membership, logger } = options;
    const log = logger.child({ component: 'health' });
    const prober = new HealthProber({
      membership,
      transport: new PeerProbeTransport(options.peerClient),
      config: config.health,
      deepCheck: options.state ? contextPathCheck(options.state.store, config.node.id) : undefined,
      logger: log,
      metrics: options.metrics,
      ...(options.incarnation !== undefined ? { incarnation: options.incarnation } : {}),
    });
    registerProbeHandlers(options.peers, prober);
    const target = healthReportTarget(config);
    const reporter = target
      ? new HealthReporter({ target, observer: config.node.id, prober, intervalMs: config.health.reportInterval, logger: log, metrics: options.metrics })
      : undefined;
    reporter?.start();
    prober.start();
    const lease = options.fencing
      ? new LeaseKeeper({ prober, membership, fencing: options.fencing, leaseMs: leaseMsOf(config.health), probeTimeoutMs: config.health.probeTimeout, logger: log })
      : undefined;
    lease?.start();
    log.info({ interval: config.health.interval, members: membership.members().length, reportTo: target ?? null, leaseMs: lease ? leaseMsOf(config.health) : null }, 'health monitor started');
    return new HealthMonitor(prober, reporter, options, lease);
  }

  isUnreachable(address: string): boolean {
    return this.prober.isUnreachable(address);
  }

  /** The member table: every member with this sidecar's verdict on it. */
  describe(): { self: { id: string; address: string; incarnation: number; local_health: number; context_path_healthy: boolean }; members: MemberHealth[] } {
    const self = this.options.membership.self;
    return {
      self: { id: self.id, address: self.address, incarnation: this.prober.incarnation, local_health: this.prober.localHealth, context_path_healthy: this.prober.selfHealthy },
      members: this.prober.describe(),
    };
  }

  refreshGauges(): void {
    const metrics = this.options.metrics;
    metrics.healthMemberState.reset();
    for (const member of this.options.membership.members()) {
      if (member.id === this.options.membership.self.id) continue;
      metrics.healthMemberState.labels(member.id).set(STATE_GAUGE[member.state]);
    }
    metrics.healthLocalMultiplier.set(this.prober.localHealth);
  }

  close(): void {
    this.lease?.close();
    this.reporter?.close();
    this.prober.close();
    unregisterProbeHandlers(this.options.peers);
  }
}
