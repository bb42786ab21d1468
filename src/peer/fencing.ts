// Fencing of peer calls by ownership epoch. The control plane raises a member's epoch on every
// health transition (declared failed, recovered, drained, re-registered) and never lowers it; each
// sidecar learns the epochs from EDS (membership-sync). Every peer call carries the sender's node id
// and its own epoch as the sender knows it; the receiver refuses (409 `stale_epoch`) a call whose
// epoch is below the one it holds for that node, or one from a node the control plane declared
// failed or removed at the epoch the sender claims. A sender so refused — or one that sees itself
// declared failed in EDS — is *fenced*: its context API refuses replicated writes (503 `fenced`)
// until EDS gives it an epoch at least as new as the one it was refused for. So a sidecar resumed
// after a pause long enough to be declared failed cannot acknowledge writes for keys whose
// ownership moved on while it was frozen.
//
// Epochs only fence a sidecar once somebody tells it (a peer's 409, an EDS push). A *lease* closes
// the gap before that, as leader leases do in Raft or Chubby: a sidecar with live peers may
// acknowledge replicated writes only while it holds a lease, renewed by evidence of membership — a
// round of pings a majority of the mesh (itself included) acknowledged — within the last
// `health.lease` ms, counted from when that round was *sent*. The lease is shorter than the time
// the mesh needs to declare a member failed (a missed probe plus the shortest suspicion window), so
// it always runs out before the others can move this sidecar's keys. It is measured on the
// monotonic clock (performance.now), which keeps counting while the process is SIGSTOPped: after
// such a pause the lease has expired, and the first write is refused (503 `fenced`) until a fresh
// round renews it — not acknowledged on the strength of a local replica whose ownership may be
// gone. A sidecar with no peers at all (or no health monitor to renew it) holds no lease and is
// never fenced by it. The lease is held from start: a process that just started was not paused.
//
// Only epochs the control plane stated count: without xDS (static peers) nothing is fenced, since
// there is no authority whose epochs could move on. Probes (ping, ping-req) are never fenced: they
// are how a fenced member proves it is alive and gets re-admitted.
import type { IncomingHttpHeaders } from 'node:http';
import { MeshError } from '../errors/table.js';
import type { Member, MemberState } from '../membership/membership.js';
import type { ContextStore } from '../state/store.js';
import { PEER_NODE_HEADER } from '../state/replication/faults.js';

/** The sender's own epoch as it knows it (decimal). */
export const PEER_EPOCH_HEADER = 'x-ctxmesh-peer-epoch';
/** Peer handlers that are never fenced: liveness must be provable by a fenced member. */
const UNFENCED_CALLS = new Set(['ping', 'ping-req']);

/** What the receiver holds for a sender it refused: sent back in the 409 body. */
export interface FenceVerdict {
  node: string;
  /** The epoch the sender claimed. */
  epoch: number;
  /** The epoch the receiver holds for the sender, from the control plane. */
  knownEpoch: number;
  /** The sender's state at the receiver: dead (declared failed), removed (no longer in EDS), or alive/draining/suspect. */
  knownState: MemberState | 'removed';
}

interface Known {
  epoch: number;
  state: MemberState | 'removed';
}

/** The membership lease as the admin API shows it. */
export interface LeaseStatus {
  /** Whether writes need it now: the sidecar has live peers and a health monitor renewing it. */
  required: boolean;
  /** health.lease, ms. */
  ms: number;
  /** Ms of lease left (0: expired); null when never renewed. */
  remainingMs: number | null;
  renewals: number;
  /** Writes refused because the lease had run out, since start. */
  refusedWrites: number;
}

export interface FencingStatus {
  fenced: boolean;
  selfEpoch: number;
  /** The epoch this sidecar needs from EDS before it takes writes again (while fenced by a refusal). */
  requiredEpoch: number | null;
  reason: string | null;
  /** Peer calls this sidecar refused as stale, since start. */
  refused: number;
  lease: LeaseStatus;
}

export class Fencing {
  /** Per node, the latest epoch and state the control plane stated (EDS of our own service). */
  private readonly known = new Map<string, Known>();
  private selfEpoch = 0;
  private selfState: MemberState = 'alive';
  /** Peers (address) that refused our epoch, with the epoch each needs from us. */
  private readonly refusers = new Map<string, { needed: number; reason: string }>();
  private refusedCount = 0;
  // The lease (see the top of the file). Monotonic ms: performance.now().
  private leaseMs = 0;
  private leaseRequired = false;
  /** Send time of the newest round of pings a majority acknowledged. */
  private leaseFrom: number | undefined;
  private leaseRenewals = 0;
  private leaseRefusals = 0;
  /** Called when a write finds the lease expired: the keeper renews at once instead of at its next tick. */
  private onLeaseLapsed: (() => void) | undefined;

  constructor(readonly selfId: string) {}

  /**
   * Turns the lease on (the health monitor's lease keeper calls it): writes then need a lease
   * renewed within `leaseMs`. `lapsed` is called when a write finds it expired.
   */
  keepLease(leaseMs: number, lapsed?: () => void): void {
    if (!Number.isFinite(leaseMs) || leaseMs <= 0) throw new Error(`lease must be a positive number of ms, got ${leaseMs}`);
    this.leaseMs = leaseMs;
    this.onLeaseLapsed = lapsed;
    // A sidecar that has just started has not been paused, which is all the lease guards against
    // (a restarted member is fenced by its new epoch instead): it starts holding one, so the first
    // writes do not wait for the first round of pings.
    this.leaseFrom ??= performance.now();
  }

  /** Whether writes need the lease now: false while the sidecar has no live peer (alone, nobody can take its keys). */
  setLeaseRequired(required: boolean): void {
    this.leaseRequired = required && this.leaseMs > 0;
  }

  /** A majority acknowledged a round of pings sent at `sentAt` (performance.now() ms). */
  renewLease(sentAt: number): void {
    if (this.leaseFrom === undefined || sentAt > this.leaseFrom) this.leaseFrom = sentAt;
    this.leaseRenewals++;
  }

  /** Whether the lease has run out (always false when no lease is required). */
  leaseExpired(now = performance.now()): boolean {
    if (!this.leaseRequired) return false;
    return this.leaseFrom === undefined || now - this.leaseFrom >= this.leaseMs;
  }

  private leaseRemaining(now: number): number | null {
    return this.leaseFrom === undefined ? null : Math.max(0, Math.round(this.leaseFrom + this.leaseMs - now));
  }

  /** The headers every outgoing peer call carries. */
  headers(): Record<string, string> {
    return { [PEER_NODE_HEADER]: this.selfId, [PEER_EPOCH_HEADER]: String(this.selfEpoch) };
  }

  /**
   * The control plane's current view of our service's members (from EDS): their epochs, and our
   * own. Members that were listed before and are not now are remembered as removed at their last
   * epoch, so a node that was removed while paused is refused until it registers again.
   */
  observe(members: readonly Member[]): void {
    const listed = new Set<string>();
    for (const member of members) {
      listed.add(member.id);
      // The latest push is the truth, even with a lower epoch: pushes on one stream are ordered,
      // and epochs only go back when a control plane with the in-memory store restarted (the
      // Redis store never lowers them). Keeping the higher ones would fence a re-registered node
      // for good, or let a declared one through.
      if (member.id === this.selfId) {
        this.selfEpoch = member.epoch;
        this.selfState = member.state;
        continue;
      }
      this.known.set(member.id, { epoch: member.epoch, state: member.state });
    }
    for (const [id, known] of this.known) if (!listed.has(id) && known.state !== 'removed') this.known.set(id, { epoch: known.epoch, state: 'removed' });
    if (this.selfState !== 'dead') {
      for (const [peer, refusal] of this.refusers) if (this.selfEpoch >= refusal.needed) this.refusers.delete(peer);
    }
  }

  /** Whether a call of this name is judged by epoch (probes are not). */
  static judges(call: string): boolean {
    return !UNFENCED_CALLS.has(call);
  }

  /**
   * Receiver side: the verdict on an incoming peer call, or undefined to serve it. A call without
   * the headers (an older sidecar, a tool) or from a node EDS never named is served.
   */
  judge(call: string, headers: IncomingHttpHeaders | Record<string, string>): FenceVerdict | undefined {
    if (!Fencing.judges(call)) return undefined;
    const node = header(headers, PEER_NODE_HEADER);
    const epochText = header(headers, PEER_EPOCH_HEADER);
    if (node === undefined || epochText === undefined || node === this.selfId) return undefined;
    const known = this.known.get(node);
    if (!known) return undefined;
    const epoch = Number(epochText);
    if (!Number.isSafeInteger(epoch) || epoch < 0) return { node, epoch: -1, knownEpoch: known.epoch, knownState: known.state };
    // A higher epoch than ours: our view lags the control plane; the sender knows better.
    if (epoch > known.epoch) return undefined;
    if (epoch < known.epoch || known.state === 'dead' || known.state === 'removed') {
      this.refusedCount++;
      return { node, epoch, knownEpoch: known.epoch, knownState: known.state };
    }
    return undefined;
  }

  /** Sender side: a peer refused our call as stale. We take no writes until EDS catches us up. */
  refusedBy(peer: string, verdict: FenceVerdict): void {
    // Declared failed or removed at knownEpoch: re-admission comes with a higher epoch.
    const needed = verdict.knownState === 'dead' || verdict.knownState === 'removed' ? verdict.knownEpoch + 1 : verdict.knownEpoch;
    if (needed <= this.selfEpoch && this.selfState !== 'dead') return;
    this.refusers.set(peer, { needed, reason: `peer ${peer} holds epoch ${verdict.knownEpoch} (${verdict.knownState}) for this sidecar, which knows epoch ${this.selfEpoch}` });
  }

  /**
   * Sender side: a peer that refused us took a judged call since: its view of our epoch caught up
   * (e.g. it learnt our re-admission first, or a control plane that restarted with the in-memory
   * store numbers epochs afresh, so ours may never reach what it asked).
   */
  acceptedBy(peer: string): void {
    this.refusers.delete(peer);
  }

  private get requiredEpoch(): number | undefined {
    let needed: number | undefined;
    for (const refusal of this.refusers.values()) needed = Math.max(needed ?? 0, refusal.needed);
    return needed;
  }

  /** Whether the epochs fence this sidecar (declared failed, or refused by a peer), lease aside. */
  private get fencedByEpoch(): boolean {
    return this.selfState === 'dead' || this.refusers.size > 0;
  }

  /** Whether this sidecar must not acknowledge replicated writes now. */
  get fenced(): boolean {
    return this.fencedByEpoch || this.leaseExpired();
  }

  /** The refusal a write gets while fenced, else undefined. */
  writeRefusal(): MeshError | undefined {
    if (this.fencedByEpoch) {
      const why = this.selfState === 'dead' ? 'the control plane declared this sidecar failed' : ([...this.refusers.values()][0]?.reason ?? 'its epoch is stale');
      return new MeshError('fenced', `this sidecar takes no writes until the control plane re-admits it with a new epoch: ${why}`, { retryAfter: 1 });
    }
    const now = performance.now();
    if (!this.leaseExpired(now)) return undefined;
    const age = this.leaseFrom === undefined ? 'it never was renewed' : `it was last renewed ${Math.round(now - this.leaseFrom)} ms ago`;
    return new MeshError('fenced', `this sidecar's membership lease (health.lease ${this.leaseMs} ms) has expired — ${age} — and it takes no writes until a majority of the mesh acknowledges it again`, { retryAfter: 1 });
  }

  /** The guard on the write path: the refusal, counting lease refusals and asking for a renewal. */
  guardWrite(): MeshError | undefined {
    const refusal = this.writeRefusal();
    if (refusal && !this.fencedByEpoch) {
      this.leaseRefusals++;
      this.onLeaseLapsed?.();
    }
    return refusal;
  }

  status(): FencingStatus {
    const now = performance.now();
    return {
      fenced: this.fenced,
      selfEpoch: this.selfEpoch,
      requiredEpoch: this.requiredEpoch ?? null,
      reason: this.fenced ? (this.writeRefusal()?.message ?? null) : null,
      refused: this.refusedCount,
      lease: { required: this.leaseRequired, ms: this.leaseMs, remainingMs: this.leaseRemaining(now), renewals: this.leaseRenewals, refusedWrites: this.leaseRefusals },
    };
  }
}

/**
 * The context store the context API writes through, refusing writes while the sidecar is fenced.
 * Reads go on: a fenced sidecar's data is still the best it has, and reads acknowledge nothing.
 */
export function fencedWrites(store: ContextStore, fencing: Fencing): ContextStore {
  const refuse = (): void => {
    const refusal = fencing.guardWrite();
    if (refusal) throw refusal;
  };
  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== 'function') return value;
      if (property === 'put' || property === 'update' || property === 'delete') {
        return async (...args: unknown[]) => {
          refuse();
          const result = await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          // Fenced while the write was in flight (a peer refused it, EDS said we are failed, the
          // lease ran out — e.g. paused mid-write): it may have been applied here, but it is not
          // acknowledged.
          refuse();
          return result;
        };
      }
      return (value as (...a: unknown[]) => unknown).bind(target);
    },
  });
}

/** An HTTP call's headers or a framed call's meta. */
function header(headers: IncomingHttpHeaders | Record<string, string>, name: string): string | undefined {
  const value = headers[name];
  return typeof value === 'string' ? value : undefined;
}
