// Failure detection among the members of the mesh, SWIM-style with Lifeguard's refinements.
//
// Every `interval` the prober pings one member, in a shuffled round-robin order. A member that
// misses the direct ping is pinged on our behalf by `indirectProbes` others (ping-req), so one bad
// link does not condemn it; if nobody reaches it, it becomes *suspect*, and the suspicion travels
// on later messages. A suspect that does not refute (raise its incarnation and say it is alive)
// within the suspicion window is *dead* here. The window shrinks as other members independently
// confirm the suspicion, down to a floor.
//
// A prober that itself misses acks (no answers, not even nacks from the members it asked) raises
// its local health multiplier and probes more slowly with longer timeouts, instead of accusing the
// healthy mesh of its own trouble. Every `deepCheckEvery`-th ping of a member also runs a check of
// its context path (the state agent), so a sidecar whose TLS listener answers while its state is
// stuck is found out; such a member does not refute suspicions until its check passes again.
// A member that comes back from dead is held down (still excluded) for an exponentially growing
// time if it keeps coming and going.
//
// Verdicts here are local evidence: they exclude the member from this sidecar's outbound endpoint
// choice and mark it in the member set at once. Declaring a failure mesh-wide is the control
// plane's job, from the reports of a quorum (see health-reporter.ts).
import { EventEmitter } from 'node:events';
import type { HealthConfig } from '../config/schema.js';
import type { Random } from '../resilience/clock.js';
import type { Logger } from '../telemetry/logger.js';
import type { MeshMetrics } from '../telemetry/metrics.js';
import { GossipBuffer, MAX_PIGGYBACK_UPDATES, type MemberUpdate } from './gossip.js';
import type { Member, MemberState, MutableMembership } from './membership.js';
import type {
  AckMessage,
  IndirectAckMessage,
  PingMessage,
  PingReqMessage,
  ProbeTransport,
} from './probe-messages.js';
import { flapHoldDownMs, suspicionTimeoutMs } from './suspicion.js';

/** Share of a call's timeout the receiver may use for its own work (deep check, relayed ping), so its answer still arrives in time. */
const ANSWER_BUDGET_SHARE = 0.8;

/** Timers and time, injected so the protocol tests drive time instead of sleeping. */
export interface Scheduler {
  /** Milliseconds, monotonic. */
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realScheduler: Scheduler = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** How one probe of a member ended. */
export type ProbeResult = 'ack' | 'indirect_ack' | 'failed' | 'deep_failed';

/** The protocol's own view of a member; the member set gets the derived `MemberState`. */
type ProtocolStatus = 'alive' | 'suspect' | 'dead';

interface Suspicion {
  since: number;
  /** Who raised it first; not counted as a confirmation. */
  originator: string;
  confirmations: Set<string>;
  timer: unknown;
}

interface PeerRecord {
  id: string;
  address: string;
  status: ProtocolStatus;
  incarnation: number;
  suspicion?: Suspicion;
  /** Probes sent to it, for the deep-check cadence. */
  probes: number;
  /** Returns from dead counted towards the flap hold-down; reset after a long enough stay. */
  revivals: number;
  /** Until when a member back from dead is still kept out. */
  holdUntil?: number;
  holdTimer?: unknown;
  /** When it was last (re)admitted as alive. */
  admittedAt: number;
  /**
   * Whether our own probes failed since it was last alive. Only first-hand evidence is reported to
   * the control plane or excludes a suspect locally: news spread by gossip must not let one
   * observer's accusation count as many.
   */
  witnessed: boolean;
  /** The state derived from the above, as last published to the member set and the metrics. */
  effective: MemberState;
  /** The state this prober last wrote into the member set (or found there at first). */
  written: MemberState;
  lastProbe?: { at: number; result: ProbeResult };
}

/** One row of the member table (admin API). */
export interface MemberHealth {
  id: string;
  address: string;
  /** What the member set says: alive | suspect | dead (held down counts as dead) | draining. */
  state: MemberState;
  /** The failure detector's own status. */
  status: ProtocolStatus;
  incarnation: number;
  /** Whether this sidecar's outbound clusters skip its endpoints. */
  excluded: boolean;
  /** Whether this sidecar's own probes failed since the member was last alive (first-hand evidence). */
  witnessed: boolean;
  suspected_for_ms?: number;
  confirmations?: number;
  hold_down_remaining_ms?: number;
  revivals: number;
  last_probe?: { result: ProbeResult; ago_ms: number };
}

export interface ProberEvents {
  /** A member's derived state changed (local evidence). */
  state: [member: Member, previous: MemberState, next: MemberState];
  /** A probe finished. */
  probe: [id: string, result: ProbeResult];
}

export interface HealthProberOptions {
  membership: MutableMembership;
  transport: ProbeTransport;
  config: HealthConfig;
  /** The context-path check a deep ping runs on this member; rejects when the state agent does not answer. */
  deepCheck?: () => Promise<void>;
  logger: Logger;
  metrics?: MeshMetrics;
  scheduler?: Scheduler;
  random?: Random;
  /**
   * This member's starting incarnation. The sidecar passes the incarnation it registers with at the
   * control plane (its start time), so a restarted sidecar's first message already refutes what the
   * peers held against its previous run, and reports about that run are recognisably older. Default 0.
   */
  incarnation?: number;
}

export class HealthProber extends EventEmitter<ProberEvents> {
  /** This member's incarnation: raised to refute a suspicion about it. */
  incarnation = 0;
  /** Lifeguard's local health multiplier: 0 healthy, up to maxLocalHealthMultiplier. */
  localHealth = 0;
  /** Whether the last deep check of this member passed; while not, it does not refute suspicions. */
  selfHealthy = true;
  private readonly selfId: string;
  private readonly peers = new Map<string, PeerRecord>();
  private readonly byAddress = new Map<string, PeerRecord>();
  private readonly gossip: GossipBuffer;
  private readonly scheduler: Scheduler;
  private readonly random: Random;
  private readonly config: HealthConfig;
  private readonly suspicionMinMs: number;
  private order: string[] = [];
  private orderIndex = 0;
  private loopTimer: unknown;
  private running = false;
  private closed = false;
  /** Highest incarnation at which we were accused while unable to refute (failed deep check). */
  private unansweredAccusation: number | undefined;
  private readonly onMembershipChange = (): void => this.syncMembers();

  constructor(private readonly options: HealthProberOptions) {
    super();
    this.config = options.config;
    this.selfId = options.membership.self.id;
    this.scheduler = options.scheduler ?? realScheduler;
    this.random = options.random ?? Math.random;
    this.suspicionMinMs = this.config.suspicionMinTimeout ?? Math.round(this.config.suspicionTimeout / 3);
    this.gossip = new GossipBuffer(() => this.peers.size + 1);
    this.incarnation = options.incarnation ?? 0;
    this.syncMembers();
    options.membership.on('change', this.onMembershipChange);
  }

  start(): void {
    if (this.running || this.closed) return;
    this.running = true;
    // A random phase, so sidecars started together do not probe in lockstep.
    this.schedule(Math.floor(this.random() * this.config.interval));
  }

  close(): void {
    this.closed = true;
    this.running = false;
    this.scheduler.clearTimeout(this.loopTimer);
    for (const record of this.peers.values()) this.clearTimers(record);
    this.options.membership.off('change', this.onMembershipChange);
  }

  /** Whether outbound traffic to `address` should go elsewhere, on this sidecar's own evidence. */
  isUnreachable(address: string): boolean {
    const record = this.byAddress.get(address);
    if (!record) return false;
    if (record.effective === 'dead') return true;
    if (record.effective === 'suspect' && record.suspicion && record.witnessed) {
      return this.scheduler.now() - record.suspicion.since >= this.config.excludeSuspectAfter;
    }
    return false;
  }

  /** The derived state of a member, undefined when it is not a peer. */
  stateOf(id: string): MemberState | undefined {
    return this.peers.get(id)?.effective;
  }

  /** The member table for the admin API. */
  describe(): MemberHealth[] {
    const now = this.scheduler.now();
    return [...this.peers.values()]
      .sort((a, b) => (a.id < b.id ? -1 : 1))
      .map((r) => ({
        id: r.id,
        address: r.address,
        state: this.options.membership.get(r.id)?.state ?? r.effective,
        status: r.status,
        incarnation: r.incarnation,
        excluded: this.isUnreachable(r.address),
        witnessed: r.witnessed,
        ...(r.suspicion ? { suspected_for_ms: Math.round(now - r.suspicion.since), confirmations: r.suspicion.confirmations.size } : {}),
        ...(r.holdUntil !== undefined && r.holdUntil > now ? { hold_down_remaining_ms: Math.round(r.holdUntil - now) } : {}),
        revivals: r.revivals,
        ...(r.lastProbe ? { last_probe: { result: r.lastProbe.result, ago_ms: Math.round(now - r.lastProbe.at) } } : {}),
      }));
  }

  // ── the probe loop ─────────────────────────────────────────────────────────────────────────

  private schedule(delayMs: number): void {
    this.loopTimer = this.scheduler.setTimeout(() => void this.tick(), delayMs);
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    const started = this.scheduler.now();
    const target = this.nextTarget();
    if (target) {
      try {
        await this.probe(target);
      } catch (err) {
        this.options.logger.error({ err: (err as Error).message, member: target.id }, 'health probe failed unexpectedly');
      }
    }
    if (this.closed) return;
    const period = this.config.interval * (1 + this.localHealth);
    this.schedule(Math.max(0, started + period - this.scheduler.now()));
  }

  /** The next member in a shuffled round-robin; reshuffled each round, so every member is probed once a round. */
  private nextTarget(): PeerRecord | undefined {
    for (let attempts = 0; attempts < 2; attempts++) {
      while (this.orderIndex < this.order.length) {
        const record = this.peers.get(this.order[this.orderIndex++]!);
        if (record && this.options.membership.get(record.id)?.state !== 'draining') return record;
      }
      this.order = shuffle([...this.peers.keys()], this.random);
      this.orderIndex = 0;
    }
    return undefined;
  }

  private async probe(record: PeerRecord): Promise<void> {
    record.probes++;
    const every = this.config.deepCheckEvery;
    // A member we already doubt is always checked deep: its way back must go through a working context path.
    const deep = every > 0 && (record.status !== 'alive' || record.effective !== 'alive' || record.probes % every === 0);
    const expectedAlive = record.status === 'alive';
    const timeoutMs = this.config.probeTimeout * (1 + this.localHealth);

    let result: ProbeResult;
    const direct = await this.pingDirect(record, deep, timeoutMs);
    if (this.closed || !this.peers.has(record.id)) return;
    if (direct === 'ack') {
      result = 'ack';
    } else {
      const indirect = await this.pingIndirect(record, deep, timeoutMs);
      if (this.closed || !this.peers.has(record.id)) return;
      result = indirect.acked ? 'indirect_ack' : direct === 'refused' ? 'deep_failed' : 'failed';
      // Members we asked that sent no answer at all, not even a nack: the trouble may be ours.
      if (!indirect.acked && indirect.answered < indirect.asked) this.adjustLocalHealth(+1);
    }

    record.lastProbe = { at: this.scheduler.now(), result };
    this.options.metrics?.healthProbes.labels(result).inc();
    this.emit('probe', record.id, result);
    if (result === 'ack' || result === 'indirect_ack') {
      if (expectedAlive) this.adjustLocalHealth(-1);
      // It answers: our own evidence against it is gone, even while it stays dead or held down
      // here until it refutes at a higher incarnation. Without this, a member that is back (a
      // restart, a resumed pause) would go on being reported failed and be declared again.
      record.witnessed = false;
      return;
    }
    // Only a missed ack of a member believed alive says anything about our own health.
    if (expectedAlive && result === 'failed') this.adjustLocalHealth(+1);
    record.witnessed = true;
    this.applySuspicion(record, record.incarnation, this.selfId);
  }

  /**
   * One direct ping, outside the probe schedule: no indirect probes, no suspicion on a miss.
   * Whether `memberId` acknowledged — the lease keeper's evidence of membership (lease.ts).
   */
  async pingForLease(memberId: string, timeoutMs: number): Promise<boolean> {
    const record = this.peers.get(memberId);
    if (!record || this.closed) return false;
    return (await this.pingDirect(record, false, timeoutMs)) === 'ack';
  }

  /** 'ack'; 'refused' — it answered but failed the check or is another member; 'silent' — no answer. */
  private async pingDirect(record: PeerRecord, deep: boolean, timeoutMs: number): Promise<'ack' | 'refused' | 'silent'> {
    const message: PingMessage = {
      from: this.selfId,
      incarnation: this.incarnation,
      target: record.id,
      deep,
      timeoutMs,
      updates: this.outgoingUpdates(record.id),
    };
    let answer: AckMessage;
    try {
      answer = await withTimeout(this.options.transport.ping(record.address, message, timeoutMs), timeoutMs, this.scheduler);
    } catch {
      return 'silent';
    }
    this.absorb(answer.from, answer.incarnation, answer.updates);
    return answer.ack && answer.from === record.id ? 'ack' : 'refused';
  }

  private async pingIndirect(record: PeerRecord, deep: boolean, timeoutMs: number): Promise<{ acked: boolean; asked: number; answered: number }> {
    const helpers = shuffle(
      [...this.peers.values()].filter((p) => p.id !== record.id && p.status === 'alive' && p.effective === 'alive'),
      this.random,
    ).slice(0, this.config.indirectProbes);
    if (helpers.length === 0) return { acked: false, asked: 0, answered: 0 };
    const relayTimeoutMs = Math.max(1, Math.floor(timeoutMs * ANSWER_BUDGET_SHARE));
    return new Promise((resolve) => {
      let answered = 0;
      let settled = 0;
      let done = false;
      const finish = (acked: boolean): void => {
        if (done) return;
        done = true;
        resolve({ acked, asked: helpers.length, answered });
      };
      for (const helper of helpers) {
        const message: PingReqMessage = {
          from: this.selfId,
          incarnation: this.incarnation,
          target: record.id,
          address: record.address,
          deep,
          timeoutMs: relayTimeoutMs,
          updates: this.outgoingUpdates(helper.id),
        };
        withTimeout(this.options.transport.pingReq(helper.address, message, timeoutMs), timeoutMs, this.scheduler).then(
          (answer: IndirectAckMessage) => {
            answered++;
            this.absorb(answer.from, answer.incarnation, answer.updates);
            if (answer.ack) finish(true);
            if (++settled === helpers.length) finish(false);
          },
          () => {
            if (++settled === helpers.length) finish(false);
          },
        );
      }
    });
  }

  private adjustLocalHealth(delta: number): void {
    this.localHealth = Math.min(this.config.maxLocalHealthMultiplier, Math.max(0, this.localHealth + delta));
  }

  // ── answering other members ────────────────────────────────────────────────────────────────

  /** The `ping` peer handler. */
  async handlePing(message: PingMessage): Promise<AckMessage> {
    if (message.target !== this.selfId) {
      // Another sidecar now listens where the sender thinks `target` is: not an ack for it.
      return { ack: false, from: this.selfId, incarnation: this.incarnation, reason: 'wrong_member', updates: [] };
    }
    let reason: string | undefined;
    if (message.deep && this.options.deepCheck) {
      const budgetMs = Math.max(1, Math.floor(message.timeoutMs * ANSWER_BUDGET_SHARE));
      try {
        await withTimeout(this.options.deepCheck(), budgetMs, this.scheduler);
        this.setSelfHealthy(true);
      } catch (err) {
        reason = 'context_unavailable';
        if (this.selfHealthy) this.options.logger.warn({ err: (err as Error).message }, 'health: deep check of the context path failed');
        this.setSelfHealthy(false);
      }
    }
    this.absorb(message.from, message.incarnation, message.updates);
    return {
      ack: reason === undefined,
      from: this.selfId,
      incarnation: this.incarnation,
      ...(reason ? { reason } : {}),
      updates: this.outgoingUpdates(message.from),
    };
  }

  /** The `ping-req` peer handler: pings `target` for the sender; ack if it answered, nack if not. */
  async handlePingReq(message: PingReqMessage): Promise<IndirectAckMessage> {
    this.absorb(message.from, message.incarnation, message.updates);
    const ping: PingMessage = {
      from: this.selfId,
      incarnation: this.incarnation,
      target: message.target,
      deep: message.deep,
      timeoutMs: message.timeoutMs,
      updates: this.outgoingUpdates(message.target),
    };
    let acked = false;
    try {
      const answer = await withTimeout(this.options.transport.ping(message.address, ping, message.timeoutMs), message.timeoutMs, this.scheduler);
      this.absorb(answer.from, answer.incarnation, answer.updates);
      acked = answer.ack && answer.from === message.target;
    } catch {
      // No answer: a nack.
    }
    return { ack: acked, from: this.selfId, incarnation: this.incarnation, updates: this.outgoingUpdates(message.from) };
  }

  // ── merging what others say ────────────────────────────────────────────────────────────────

  /** Piggybacked news for a message to `recipient`, plus what we hold against the recipient itself, so it can refute at once. */
  private outgoingUpdates(recipient: string): MemberUpdate[] {
    const updates = this.gossip.take(MAX_PIGGYBACK_UPDATES);
    const record = this.peers.get(recipient);
    if (record && record.status !== 'alive' && !updates.some((u) => u.id === recipient)) {
      updates.push({ id: recipient, state: record.status, incarnation: record.incarnation, from: this.selfId });
    }
    return updates;
  }

  private absorb(sender: string, senderIncarnation: number, updates: readonly MemberUpdate[]): void {
    if (this.closed) return;
    const record = this.peers.get(sender);
    // Any message is its sender's claim to be alive at its incarnation.
    if (record && sender !== this.selfId) this.applyAlive(record, senderIncarnation);
    for (const update of updates) this.apply(update);
  }

  private apply(update: MemberUpdate): void {
    if (update.id === this.selfId) {
      if (update.state !== 'alive') this.accused(update.incarnation);
      return;
    }
    const record = this.peers.get(update.id);
    if (!record) return;
    // Another member's "dead" counts here as its suspicion: only our own window declares a member
    // dead for us, so no single observer evicts a member everywhere.
    if (update.state === 'alive') this.applyAlive(record, update.incarnation);
    else this.applySuspicion(record, update.incarnation, update.from);
  }

  private accused(incarnation: number): void {
    if (incarnation < this.incarnation) return;
    if (!this.selfHealthy) {
      this.unansweredAccusation = Math.max(this.unansweredAccusation ?? 0, incarnation);
      return;
    }
    this.refute(incarnation);
  }

  private refute(accusedIncarnation: number): void {
    this.incarnation = Math.max(this.incarnation, accusedIncarnation) + 1;
    this.unansweredAccusation = undefined;
    this.gossip.add({ id: this.selfId, state: 'alive', incarnation: this.incarnation, from: this.selfId });
    // Lifeguard: being suspected is a hint that we ourselves are slow to answer.
    this.adjustLocalHealth(+1);
    this.options.logger.info({ incarnation: this.incarnation }, 'health: refuted a suspicion about this sidecar');
  }

  private setSelfHealthy(healthy: boolean): void {
    const recovered = healthy && !this.selfHealthy;
    this.selfHealthy = healthy;
    if (recovered && this.unansweredAccusation !== undefined) this.refute(this.unansweredAccusation);
  }

  private applyAlive(record: PeerRecord, incarnation: number): void {
    // Only a higher incarnation refutes: the same one is what the suspicion was about.
    if (incarnation <= record.incarnation) return;
    const wasDead = record.status === 'dead';
    record.incarnation = incarnation;
    this.clearSuspicion(record);
    record.status = 'alive';
    record.witnessed = false;
    if (wasDead) {
      record.revivals++;
      const holdMs = flapHoldDownMs(record.revivals, this.config.flapBackoff.base, this.config.flapBackoff.max);
      record.holdUntil = this.scheduler.now() + holdMs;
      this.scheduler.clearTimeout(record.holdTimer);
      record.holdTimer = this.scheduler.setTimeout(() => {
        record.holdTimer = undefined;
        // The timer's firing ends the hold: timers may run a fraction of a ms before now() reaches holdUntil.
        record.holdUntil = undefined;
        record.admittedAt = this.scheduler.now();
        this.refresh(record);
      }, holdMs);
      this.options.logger.info({ member: record.id, incarnation, holdDownMs: holdMs, revivals: record.revivals }, 'health: member is back; held down before re-admission');
    }
    this.gossip.add({ id: record.id, state: 'alive', incarnation, from: record.id });
    this.refresh(record);
  }

  private applySuspicion(record: PeerRecord, incarnation: number, from: string): void {
    if (record.status === 'dead' || incarnation < record.incarnation) return;
    if (record.status === 'alive') {
      record.status = 'suspect';
      record.incarnation = incarnation;
      record.suspicion = { since: this.scheduler.now(), originator: from, confirmations: new Set(), timer: undefined };
      this.options.metrics?.healthSuspicions.inc();
      this.options.logger.warn({ member: record.id, incarnation, by: from }, 'health: member suspected');
      this.gossip.add({ id: record.id, state: 'suspect', incarnation, from });
      this.armSuspicion(record);
      this.refresh(record);
      return;
    }
    const suspicion = record.suspicion!;
    if (incarnation > record.incarnation) record.incarnation = incarnation;
    if (from === suspicion.originator || suspicion.confirmations.has(from)) return;
    suspicion.confirmations.add(from);
    // Pass independent confirmations on, so every observer's window shrinks alike.
    this.gossip.add({ id: record.id, state: 'suspect', incarnation: record.incarnation, from });
    this.armSuspicion(record);
  }

  private armSuspicion(record: PeerRecord): void {
    const suspicion = record.suspicion!;
    const expected = Math.max(0, Math.min(this.config.indirectProbes, this.peers.size - 1));
    const windowMs = suspicionTimeoutMs(suspicion.confirmations.size, expected, Math.min(this.suspicionMinMs, this.config.suspicionTimeout), this.config.suspicionTimeout);
    this.scheduler.clearTimeout(suspicion.timer);
    const remaining = Math.max(0, suspicion.since + windowMs - this.scheduler.now());
    suspicion.timer = this.scheduler.setTimeout(() => this.declareDead(record), remaining);
  }

  private declareDead(record: PeerRecord): void {
    if (this.closed || record.status !== 'suspect') return;
    const now = this.scheduler.now();
    this.clearSuspicion(record);
    record.status = 'dead';
    // A member that stayed up for the longest hold-down has stopped flapping: start again from base.
    if (now - record.admittedAt >= this.config.flapBackoff.max) record.revivals = 0;
    this.scheduler.clearTimeout(record.holdTimer);
    record.holdTimer = undefined;
    record.holdUntil = undefined;
    this.gossip.add({ id: record.id, state: 'dead', incarnation: record.incarnation, from: this.selfId });
    this.options.logger.warn({ member: record.id, address: record.address, incarnation: record.incarnation }, 'health: member declared dead locally');
    this.refresh(record);
  }

  private clearSuspicion(record: PeerRecord): void {
    if (record.suspicion) this.scheduler.clearTimeout(record.suspicion.timer);
    record.suspicion = undefined;
  }

  private clearTimers(record: PeerRecord): void {
    this.clearSuspicion(record);
    this.scheduler.clearTimeout(record.holdTimer);
    record.holdTimer = undefined;
  }

  // ── publishing the derived state ───────────────────────────────────────────────────────────

  private derivedState(record: PeerRecord): MemberState {
    if (record.status === 'dead') return 'dead';
    if (record.status === 'suspect') return 'suspect';
    return record.holdUntil !== undefined && record.holdUntil > this.scheduler.now() ? 'dead' : 'alive';
  }

  private refresh(record: PeerRecord): void {
    const next = this.derivedState(record);
    const previous = record.effective;
    if (next === previous) return;
    record.effective = next;
    this.publish(record, next);
    const member = this.options.membership.get(record.id);
    if (member) this.emit('state', member, previous, next);
  }

  /**
   * Writes our verdict into the member set, without lightening a verdict someone else (the control
   * plane's declaration, a drain) wrote there: local evidence may add doubt, not remove theirs.
   */
  private publish(record: PeerRecord, next: MemberState): void {
    const current = this.options.membership.get(record.id);
    if (!current) return;
    if (current.state === next) {
      record.written = next;
      return;
    }
    const setElsewhere = current.state !== record.written && current.state !== 'alive';
    if (setElsewhere && (current.state === 'draining' || severity(next) < severity(current.state))) return;
    record.written = next;
    this.options.membership.upsert({ ...current, state: next });
  }

  /** Follows the member set: new members are probed, removed ones forgotten, an address change starts afresh. */
  private syncMembers(): void {
    const seen = new Set<string>();
    for (const member of this.options.membership.members()) {
      if (member.id === this.selfId) continue;
      seen.add(member.id);
      let record = this.peers.get(member.id);
      if (record && record.address !== member.address) {
        this.forget(record);
        record = undefined;
      }
      if (!record) {
        record = {
          id: member.id,
          address: member.address,
          status: 'alive',
          incarnation: 0,
          probes: 0,
          revivals: 0,
          admittedAt: this.scheduler.now(),
          witnessed: false,
          effective: 'alive',
          written: member.state,
        };
        this.peers.set(member.id, record);
        this.byAddress.set(member.address, record);
        // A new member joins the current round at a random place rather than waiting for the next.
        this.order.splice(this.orderIndex + Math.floor(this.random() * (this.order.length - this.orderIndex + 1)), 0, member.id);
        continue;
      }
      // Someone else marked it alive while our evidence says otherwise: ours acts until it changes.
      if (member.state === 'alive' && record.effective !== 'alive' && record.written !== 'alive') {
        record.written = 'alive';
        this.publish(record, record.effective);
      }
    }
    for (const record of [...this.peers.values()]) if (!seen.has(record.id)) this.forget(record);
  }

  private forget(record: PeerRecord): void {
    this.clearTimers(record);
    this.peers.delete(record.id);
    if (this.byAddress.get(record.address) === record) this.byAddress.delete(record.address);
    this.gossip.forget(record.id);
  }
}

function severity(state: MemberState): number {
  return state === 'alive' ? 0 : state === 'suspect' ? 1 : 2;
}

function shuffle<T>(items: T[], random: Random): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** Rejects after `ms` on the injected scheduler (a transport's own timeout may run on real time). */
function withTimeout<T>(promise: Promise<T>, ms: number, scheduler: Scheduler): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = scheduler.setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        scheduler.clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        scheduler.clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
