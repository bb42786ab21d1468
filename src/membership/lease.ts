// The membership lease's keeper (the lease itself, and why, is in src/peer/fencing.ts). Every
// quarter of `health.lease` it pings every live peer directly; once a majority of the mesh — this
// sidecar plus ⌊(peers+1)/2⌋ of its live peers — has acknowledged, the lease is renewed from the
// moment those pings were *sent*, so an answer that arrives late (a round sent before a pause and
// read after it) renews nothing that is not already past. A write that finds the lease expired
// asks for a round at once.
import type { SidecarConfig } from '../config/schema.js';
import type { Fencing } from '../peer/fencing.js';
import type { Logger } from '../telemetry/logger.js';
import type { Membership } from './membership.js';
import type { HealthProber } from './prober.js';

/** health.lease, resolved: the configured value, else the shortest suspicion window. */
export function leaseMsOf(health: SidecarConfig['health']): number {
  return health.lease ?? shortestSuspicionMs(health);
}

/** The least time a suspicion lasts before a member is declared (what the prober uses). */
export function shortestSuspicionMs(health: Pick<SidecarConfig['health'], 'suspicionTimeout' | 'suspicionMinTimeout'>): number {
  return health.suspicionMinTimeout ?? Math.round(health.suspicionTimeout / 3);
}

export interface LeaseKeeperOptions {
  prober: HealthProber;
  membership: Membership;
  fencing: Fencing;
  leaseMs: number;
  probeTimeoutMs: number;
  logger: Logger;
}

export class LeaseKeeper {
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> | undefined;
  private lastRoundAt = Number.NEGATIVE_INFINITY;
  private closed = false;
  private expiredLogged = false;

  constructor(private readonly options: LeaseKeeperOptions) {}

  private get tickMs(): number {
    return Math.max(10, Math.floor(this.options.leaseMs / 4));
  }

  start(): void {
    this.options.fencing.keepLease(this.options.leaseMs, () => this.renewNow());
    this.tick();
    this.timer = setInterval(() => this.tick(), this.tickMs);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    this.options.fencing.setLeaseRequired(false);
  }

  private livePeers(): string[] {
    const self = this.options.membership.self.id;
    return this.options.membership.live().filter((m) => m.id !== self).map((m) => m.id);
  }

  private tick(): void {
    if (this.closed) return;
    const peers = this.livePeers();
    // The lease catches this sidecar's own pauses: after one, its peers still look live to it, so
    // the lease is required and has run out. With no live peer (alone, or on the minority side of
    // a partition once its probes gave up) it is not required: eventual and session writes stay
    // available there by design (active-active, merged after the heal), strong ones need a quorum
    // anyway, and epochs fence the node once the control plane has moved its keys.
    this.options.fencing.setLeaseRequired(peers.length > 0);
    if (peers.length === 0) return;
    if (this.options.fencing.leaseExpired()) {
      if (!this.expiredLogged) this.options.logger.warn({ leaseMs: this.options.leaseMs }, 'membership lease expired: refusing writes until a majority acknowledges this sidecar');
      this.expiredLogged = true;
    } else {
      this.expiredLogged = false;
    }
    if (performance.now() - this.lastRoundAt >= this.tickMs) this.renewNow();
  }

  /** Starts a round unless one is in flight. */
  private renewNow(): void {
    if (this.closed || this.round) return;
    this.round = this.runRound().finally(() => (this.round = undefined));
  }

  private async runRound(): Promise<void> {
    const peers = this.livePeers();
    if (peers.length === 0) return;
    const needed = Math.floor((peers.length + 1) / 2);
    const sentAt = performance.now();
    this.lastRoundAt = sentAt;
    // Well inside the lease, so a round's answer can still renew it.
    const timeoutMs = Math.max(1, Math.min(this.options.probeTimeoutMs, Math.floor(this.options.leaseMs / 2)));
    let acks = 0;
    await Promise.all(
      peers.map(async (id) => {
        const acked = await this.options.prober.pingForLease(id, timeoutMs).catch(() => false);
        if (acked && ++acks === needed && !this.closed) this.options.fencing.renewLease(sentAt);
      }),
    );
  }
}
