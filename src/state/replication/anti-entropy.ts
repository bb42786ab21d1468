// Anti-entropy: replicas of the same keys compare Merkle trees and exchange only what differs.
//
// Every sidecar keeps a KeyIndex (key-index.ts): one tree per peer over the keys the two of them
// replicate, fed by the replica store's change hook. A round between this sidecar (A) and a peer
// (B) is driven by A, one message per step:
//
//   ae-summary  A → B {from, ring}: B answers its tree for A, levels 0..2 (273 hashes, ~2 KiB),
//               or 409 when its ring differs (the two would compare different key sets: retried).
//   ae-nodes    A → B {from, ring, level, indices}: the children of the nodes that differ, one
//               level per message, until the differing leaves are known (merkle.ts `diff`).
//   ae-entries  A → B {from, ring, leaves}: B's (key, digest) pairs in those leaves; A compares
//               them with its own and names the keys that differ.
//   ae-records  A → B {from, ring, want} + A's records of the differing keys it holds: B applies
//               them and answers its records of the wanted keys, which A applies. Both sides go
//               through ReplicaStore.apply, so which version wins is decided in one place
//               (order.ts) and a repeated or late record changes nothing.
//
// When rounds run: every `antiEntropy.interval` with each peer (the lower id of a pair starts);
// when placement changes, with every peer that is new to the ring (a joining or returning member:
// its replicas stream it what it lacks) and, for changed pairs, from the lower id; when a member
// becomes alive again. Rounds run one at a time per sidecar.
//
// Rebalancing (rebalance.ts) hands keys that are no longer placed here to their replicas through
// `ae-records` too (push only, no wants), then drops them.
import HashRing from 'hashring';
import { Counter, type Registry } from 'prom-client';
import { MeshError } from '../../errors/table.js';
import type { Member, MemberState } from '../../membership/membership.js';
import { PeerClient, type PeerResponse } from '../../peer/client.js';
import type { PeerReply } from '../../peer/router.js';
import type { Logger } from '../../telemetry/logger.js';
import type { L1Cache } from '../cache/l1.js';
import type { ListPage } from '../cache/l2.js';
import type { ContextRecord } from '../record.js';
import { decodeRecordList, encodeRecordList, encodedSize } from './codec.js';
import { KeyIndex, recordDigest } from './key-index.js';
import { MERKLE_DEPTH, MERKLE_FANOUT, decodeSummary, diff, diffEntries } from './merkle.js';
import { compareRecords } from './order.js';
import { Rebalancer, type PushRecords } from './rebalance.js';
import type { ApplyOutcome, ReplicaStore } from './replica-store.js';
import type { Peering, ReplicationConfig } from './replicator.js';
import type { PlacementRing } from './ring.js';

export const AE_SUMMARY = 'ae-summary';
export const AE_NODES = 'ae-nodes';
export const AE_ENTRIES = 'ae-entries';
export const AE_RECORDS = 'ae-records';
const HANDLERS = [AE_SUMMARY, AE_NODES, AE_ENTRIES, AE_RECORDS];

/** Summary levels sent in the first message: 1 + 16 + 256 hashes. */
const SUMMARY_TO_LEVEL = 2;
/** Attempts of a round refused for a differing ring (membership news still spreading), 250 ms apart and growing. */
const MISMATCH_RETRIES = 40;
const MISMATCH_RETRY_MS = 250;
/** Room under maxMessageBytes for a record message's head (the wanted keys are bounded separately). */
const HEAD_ROOM = 64 * 1024;

export type RoundResult = 'in_sync' | 'repaired' | 'ring_mismatch' | 'error' | 'skipped';

export interface RoundStats {
  peer: string;
  result: RoundResult;
  /** Tree nodes compared on the way down. */
  nodesCompared: number;
  leavesDiffering: number;
  /** (key, digest) pairs of the differing leaves, both sides. */
  entriesCompared: number;
  keysDiffering: number;
  recordsSent: number;
  recordsReceived: number;
  /** Records that changed this replica / the peer. */
  repairedHere: number;
  repairedThere: number;
  messages: number;
  bytesSent: number;
  bytesReceived: number;
  durationMs: number;
  error?: string;
}

export type AntiEntropyConfig = ReplicationConfig['antiEntropy'];

export interface AntiEntropyOptions {
  nodeId: string;
  config: ReplicationConfig;
  replica: ReplicaStore;
  ring: PlacementRing;
  peering: Peering;
  /** The local store's listing (tombstones included): what the index is loaded from. */
  list: (prefix: string, after: string | undefined, limit: number) => Promise<ListPage>;
  logger: Logger;
  registry: Registry;
  /**
   * The local L1: keys this sidecar becomes primary or replica for when placement changes (a
   * failover, a rebalance) are loaded into it from L2 at once, so the new owner's first reads of
   * them are not cold misses. Without it nothing is warmed.
   */
  l1?: L1Cache;
  /** Bytes warmed per placement change (context.warm.maxBytes). Default 64MiB. */
  warmBudgetBytes?: number;
}

/** Keys read per step of ownership warming. */
const WARM_BATCH = 128;

interface Queued {
  attempts: number;
  waiters: Array<(stats: RoundStats) => void>;
}

export class AntiEntropy {
  readonly index: KeyIndex;
  readonly rebalancer: Rebalancer;
  /** This sidecar's replica store, which rounds read from and apply to. */
  readonly replica: ReplicaStore;
  private readonly config: AntiEntropyConfig;
  private readonly logger: Logger;
  private readonly queue = new Map<string, Queued>();
  private working = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private readonly memberStates = new Map<string, MemberState>();
  private readonly unsubscribe: () => void;
  private closed = false;
  private readonly rounds: Counter<'peer' | 'result'>;
  private readonly repaired: Counter<'peer'>;
  private readonly bytes: Counter<'peer' | 'direction'>;
  /** The last round with each peer. */
  readonly lastRound = new Map<string, RoundStats>();
  private readonly warmedKeys: Counter;
  private warming: Promise<void> | undefined;
  private warmAgain = false;
  /** Live ring members at the last warming: a key is warmed when it is newly placed here. */
  private warmedFor: readonly string[] = [];

  /** Builds the index from the store, registers the peer handlers and starts the interval. */
  static async start(options: AntiEntropyOptions): Promise<AntiEntropy> {
    const ae = new AntiEntropy(options);
    const loaded = await ae.index.load(options.replica, (after, limit) => options.list('', after, limit));
    if (loaded > 0) options.logger.info({ keys: loaded, strays: ae.index.strayCount }, 'anti-entropy index loaded');
    if (ae.index.strayCount > 0) ae.rebalancer.schedule();
    return ae;
  }

  private constructor(private readonly options: AntiEntropyOptions) {
    this.config = options.config.antiEntropy;
    this.replica = options.replica;
    this.logger = options.logger.child({ component: 'anti-entropy' });
    this.index = new KeyIndex(options.nodeId, options.ring);
    const push: PushRecords = (peerId, records) => this.push(peerId, records);
    this.rebalancer = new Rebalancer({
      nodeId: options.nodeId,
      index: this.index,
      replica: options.replica,
      ring: options.ring,
      push,
      concurrency: this.config.concurrency,
      batchKeys: this.config.batchKeys,
      maxBatchBytes: this.maxBatchBytes,
      logger: this.logger,
      registry: options.registry,
    });
    this.unsubscribe = options.replica.onChange((key, record) => {
      this.index.update(key, record);
      if (record && this.index.isStray(key)) this.rebalancer.schedule(50);
    });

    const registers = [options.registry];
    this.rounds = new Counter({ name: 'ctxmesh_anti_entropy_rounds_total', help: 'Anti-entropy rounds started here, by peer and result (in_sync | repaired | ring_mismatch | error | skipped).', labelNames: ['peer', 'result'] as const, registers });
    this.repaired = new Counter({ name: 'ctxmesh_anti_entropy_keys_repaired_total', help: 'Records an anti-entropy round started here applied, here or at the peer.', labelNames: ['peer'] as const, registers });
    this.warmedKeys = new Counter({ name: 'ctxmesh_ownership_warmed_keys_total', help: 'Keys loaded into L1 because placement made this sidecar their primary or a replica (failover, rebalance).', registers });
    this.bytes = new Counter({ name: 'ctxmesh_anti_entropy_bytes_total', help: 'Bytes of the messages of rounds started here, by peer and direction (sent | received).', labelNames: ['peer', 'direction'] as const, registers });

    const router = options.peering.router;
    router.add(AE_SUMMARY, (body) => this.onSummary(body));
    router.add(AE_NODES, (body) => this.onNodes(body));
    router.add(AE_ENTRIES, (body) => this.onEntries(body));
    router.add(AE_RECORDS, (body) => this.onRecords(body));

    for (const member of options.peering.membership.members()) this.memberStates.set(member.id, member.state);
    this.warmedFor = [...options.ring.liveIds()];
    options.ring.on('change', this.onRingChange);
    options.peering.membership.on('change', this.onMembershipChange);
    this.timer = setInterval(() => this.periodic(), this.config.interval).unref();
  }

  private get maxBatchBytes(): number {
    return Math.max(1, this.options.config.maxMessageBytes - HEAD_ROOM);
  }

  private get timeoutMs(): number {
    return Math.max(5 * this.options.config.peerTimeout, 5_000);
  }

  // ── scheduling ───────────────────────────────────────────────────────────────────────────

  /** Queues a round with `peerId` (coalesced with one already queued); resolves with its figures. */
  requestRound(peerId: string): Promise<RoundStats> {
    return new Promise((resolve) => {
      const queued = this.queue.get(peerId);
      if (queued) queued.waiters.push(resolve);
      else this.queue.set(peerId, { attempts: 0, waiters: [resolve] });
      void this.work();
    });
  }

  /** Rounds with every peer this sidecar starts them with (what the interval runs). */
  async roundAll(): Promise<RoundStats[]> {
    return Promise.all(this.pairsToStart().map((id) => this.requestRound(id)));
  }

  private pairsToStart(): string[] {
    const self = this.options.nodeId;
    return this.index.members.filter((id) => id !== self && self < id);
  }

  private periodic(): void {
    if (this.closed) return;
    if (this.index.outdated) this.index.rebuild();
    for (const id of this.pairsToStart()) void this.requestRound(id);
    if (this.index.strayCount > 0) this.rebalancer.schedule();
  }

  private readonly onRingChange = (): void => {
    if (this.closed) return;
    const before = new Set(this.index.members);
    this.index.rebuild();
    const self = this.options.nodeId;
    for (const id of this.index.members) {
      if (id !== self && (!before.has(id) || self < id)) void this.requestRound(id);
    }
    this.rebalancer.schedule();
    this.warmOwnership();
  };

  /** Coalesced: one warming pass at a time, another after it when placement changed meanwhile. */
  private warmOwnership(): void {
    if (!this.options.l1 || this.closed) return;
    if (this.warming) {
      this.warmAgain = true;
      return;
    }
    this.warming = this.warmPass()
      .catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, 'warming L1 for new ownership failed'))
      .finally(() => {
        this.warming = undefined;
        if (this.warmAgain) {
          this.warmAgain = false;
          this.warmOwnership();
        }
      });
  }

  /**
   * Loads into L1 the held keys that placement newly puts here — primary first, then replica — up
   * to the byte budget. Reading a key through the local store fills L1 from L2 (read-through).
   */
  private async warmPass(): Promise<void> {
    const l1 = this.options.l1!;
    const ring = this.options.ring;
    const self = this.options.nodeId;
    const previous = new HashRing([...this.warmedFor]);
    const previousSize = Math.min(ring.factor, this.warmedFor.length);
    this.warmedFor = [...ring.liveIds()];
    const primary: string[] = [];
    const replica: string[] = [];
    for (const [key] of this.index.entries()) {
      const now = ring.replicas(key).map((m) => m.id);
      const at = now.indexOf(self);
      if (at < 0 || l1.peek(key) !== undefined) continue;
      const before = previousSize > 0 ? (previous.range(key, previousSize, true) as string[]) : [];
      // Newly primary, or newly a replica: what a failover or a rebalance moved here.
      if (at === 0 && before[0] !== self) primary.push(key);
      else if (!before.includes(self)) replica.push(key);
    }
    let budget = this.options.warmBudgetBytes ?? 64 * 1024 ** 2;
    let warmed = 0;
    const keys = [...primary, ...replica];
    for (let from = 0; from < keys.length && budget > 0 && !this.closed; from += WARM_BATCH) {
      const records = await this.replica.readMany(keys.slice(from, from + WARM_BATCH));
      for (const record of records) {
        if (!record) continue;
        warmed++;
        budget -= encodedSize(record);
      }
    }
    if (warmed > 0) {
      this.warmedKeys.inc(warmed);
      this.logger.info({ keys: warmed, primary: primary.length, replica: replica.length }, 'L1 warmed with keys newly placed here');
    }
  }

  private readonly onMembershipChange = (members: readonly Member[]): void => {
    if (this.closed) return;
    for (const member of members) {
      const previous = this.memberStates.get(member.id);
      this.memberStates.set(member.id, member.state);
      if (member.id === this.options.nodeId || member.state !== 'alive') continue;
      if (previous === undefined || previous === 'dead' || previous === 'suspect') void this.requestRound(member.id);
    }
  };

  private async work(): Promise<void> {
    if (this.working) return;
    this.working = true;
    try {
      while (!this.closed && this.queue.size > 0) {
        const [peerId, queued] = this.queue.entries().next().value as [string, Queued];
        this.queue.delete(peerId);
        const stats = await this.round(peerId);
        if (stats.result === 'ring_mismatch' && queued.attempts + 1 < MISMATCH_RETRIES && !this.closed) {
          // Membership news reaches sidecars one by one: try again once both see the same ring.
          const timer = setTimeout(() => {
            this.retryTimers.delete(timer);
            const again = this.queue.get(peerId);
            if (again) again.waiters.push(...queued.waiters);
            else this.queue.set(peerId, { attempts: queued.attempts + 1, waiters: queued.waiters });
            void this.work();
          }, MISMATCH_RETRY_MS * Math.min(8, queued.attempts + 1));
          timer.unref();
          this.retryTimers.add(timer);
          continue;
        }
        for (const resolve of queued.waiters) resolve(stats);
      }
    } finally {
      this.working = false;
    }
  }

  // ── a round, from the side that starts it ────────────────────────────────────────────────

  /** One round with `peerId` now (callers normally go through `requestRound`, which serialises). */
  async round(peerId: string): Promise<RoundStats> {
    const started = performance.now();
    const stats: RoundStats = {
      peer: peerId,
      result: 'skipped',
      nodesCompared: 0,
      leavesDiffering: 0,
      entriesCompared: 0,
      keysDiffering: 0,
      recordsSent: 0,
      recordsReceived: 0,
      repairedHere: 0,
      repairedThere: 0,
      messages: 0,
      bytesSent: 0,
      bytesReceived: 0,
      durationMs: 0,
    };
    try {
      stats.result = await this.runRound(peerId, stats);
    } catch (err) {
      stats.result = 'error';
      stats.error = (err as Error).message;
      this.logger.debug({ peer: peerId, err: stats.error }, 'anti-entropy round failed');
    }
    stats.durationMs = performance.now() - started;
    this.rounds.labels(peerId, stats.result).inc();
    if (stats.repairedHere + stats.repairedThere > 0) this.repaired.labels(peerId).inc(stats.repairedHere + stats.repairedThere);
    this.bytes.labels(peerId, 'sent').inc(stats.bytesSent);
    this.bytes.labels(peerId, 'received').inc(stats.bytesReceived);
    this.lastRound.set(peerId, stats);
    if (stats.result === 'repaired') {
      const { keysDiffering, repairedHere, repairedThere, bytesSent, bytesReceived } = stats;
      this.logger.info({ peer: peerId, keysDiffering, repairedHere, repairedThere, bytes: bytesSent + bytesReceived, ms: Math.round(stats.durationMs) }, 'anti-entropy round repaired keys');
    }
    return stats;
  }

  private async runRound(peerId: string, stats: RoundStats): Promise<RoundResult> {
    const self = this.options.nodeId;
    const member = this.options.peering.membership.get(peerId);
    if (peerId === self || !member) return 'skipped';
    if (this.index.outdated) this.index.rebuild();
    if (!this.index.members.includes(peerId)) return 'skipped';
    const ring = this.index.fingerprint;
    const head = { from: self, ring };

    const first = await this.call(member, AE_SUMMARY, json(head), stats);
    if (first === 'mismatch') return 'ring_mismatch';
    // The tree as it is now: writes landing during the round only add a few keys to compare.
    const tree = this.index.treeFor(peerId);
    const summary = decodeSummary(first.body);
    let walk = diff(summary, tree);
    while (walk.request) {
      const reply = await this.call(member, AE_NODES, json({ ...head, level: walk.request.level, indices: walk.request.indices }), stats);
      if (reply === 'mismatch') return 'ring_mismatch';
      summary.add(decodeSummary(reply.body));
      walk = diff(summary, tree);
    }
    stats.nodesCompared = walk.compared;
    stats.leavesDiffering = walk.leaves.length;
    if (walk.leaves.length === 0) return 'in_sync';

    const entriesReply = await this.call(member, AE_ENTRIES, json({ ...head, leaves: walk.leaves }), stats);
    if (entriesReply === 'mismatch') return 'ring_mismatch';
    const theirs = parseEntries(entriesReply);
    const mine = tree.entriesIn(walk.leaves);
    stats.entriesCompared = mine.length + theirs.length;
    const differing = diffEntries(mine, theirs);
    stats.keysDiffering = differing.length;
    if (differing.length === 0) return 'in_sync';
    const held = new Set(mine.map(([key]) => key));
    const theirKeys = new Set(theirs.map(([key]) => key));
    const result = await this.exchange(member, ring, differing.filter((k) => held.has(k)), differing.filter((k) => theirKeys.has(k)), stats);
    return result ?? 'repaired';
  }

  /** Sends our records of `push`, fetches theirs of `want`, in messages bounded in keys and bytes. */
  private async exchange(member: Member, ring: string, push: readonly string[], want: readonly string[], stats: RoundStats): Promise<RoundResult | undefined> {
    const batch = this.config.batchKeys;
    let pushed = 0;
    let wanted = 0;
    while (pushed < push.length || wanted < want.length) {
      const keys = push.slice(pushed, pushed + batch);
      const records = await this.options.replica.readMany(keys);
      const sending: ContextRecord[] = [];
      let bytes = 0;
      let consumed = 0;
      for (let i = 0; i < keys.length; i++) {
        const record = records[i];
        if (record && sending.length > 0 && bytes + encodedSize(record) > this.maxBatchBytes) break;
        consumed++;
        this.refresh(keys[i]!, record);
        if (!record) continue;
        sending.push(record);
        bytes += encodedSize(record);
      }
      pushed += consumed;
      const wantKeys = want.slice(wanted, wanted + batch);
      const reply = await this.call(member, AE_RECORDS, frame({ from: this.options.nodeId, ring, want: wantKeys }, sending), stats);
      if (reply === 'mismatch') return 'ring_mismatch';
      const answer = parseRecordsReply(reply.body, sending.length);
      stats.recordsSent += sending.length;
      stats.repairedThere += answer.outcomes.filter((o) => o === 'applied').length;
      if (wantKeys.length > 0 && answer.served === 0 && sending.length === 0) throw new MeshError('upstream_reset', `peer ${member.id} served none of the records asked for`);
      wanted += answer.served;
      stats.recordsReceived += answer.records.filter(Boolean).length;
      const outcomes = await Promise.all(answer.records.map((r) => (r ? this.options.replica.apply(r) : Promise.resolve<ApplyOutcome>('stale'))));
      stats.repairedHere += outcomes.filter((o) => o === 'applied').length;
    }
    return undefined;
  }

  /** Keeps the index true to the store for a key just read (it may have changed outside the hook). */
  private refresh(key: string, record: ContextRecord | undefined): void {
    const digest = record ? recordDigest(record) : undefined;
    if (this.index.digestOf(key) !== digest) this.index.update(key, record);
  }

  /** Hands records to a replica of theirs: whether it now holds each one's version or a newer one. */
  private async push(peerId: string, records: readonly ContextRecord[]): Promise<{ confirmed: boolean[] } | { mismatch: true }> {
    const member = this.options.peering.membership.get(peerId);
    if (!member) throw new MeshError('connect_failure', `peer ${peerId} is no longer a member`);
    const stats = { messages: 0, bytesSent: 0, bytesReceived: 0 };
    const reply = await this.call(member, AE_RECORDS, frame({ from: this.options.nodeId, ring: this.index.fingerprint, want: [] }, records), stats);
    if (reply === 'mismatch') return { mismatch: true };
    const answer = parseRecordsReply(reply.body, records.length);
    return {
      confirmed: records.map((record, i) => {
        if (answer.outcomes[i] === 'applied') return true;
        const heldVersion = answer.held[i];
        return typeof heldVersion === 'string' && (heldVersion === record.version || compareRecords({ ...record, version: heldVersion }, record) > 0);
      }),
    };
  }

  private async call(member: Member, name: string, body: Buffer, stats: { messages: number; bytesSent: number; bytesReceived: number }): Promise<PeerResponse | 'mismatch'> {
    stats.messages++;
    stats.bytesSent += body.length;
    const response = await this.options.peering.client.call(member.address, name, body, { timeoutMs: this.timeoutMs, bulk: true });
    stats.bytesReceived += response.body.length;
    if (response.status === 409) return 'mismatch';
    return PeerClient.ok(response, member.address, name);
  }

  // ── the peer handlers ────────────────────────────────────────────────────────────────────

  private checkRing(head: { ring?: unknown }, what: string): PeerReply | undefined {
    if (typeof head.ring !== 'string') throw new MeshError('bad_request', `${what} takes {"from": string, "ring": string, …}`);
    if (this.index.outdated) this.index.rebuild();
    if (head.ring !== this.index.fingerprint) return { status: 409, body: { error: 'ring_mismatch', message: `${what}: this sidecar places keys on a different ring`, ring: this.index.fingerprint, members: this.index.members } };
    return undefined;
  }

  private onSummary(body: Buffer): PeerReply {
    const head = parseJson<{ from?: unknown; ring?: unknown }>(body, AE_SUMMARY);
    const from = peerIdOf(head, AE_SUMMARY);
    const refused = this.checkRing(head, AE_SUMMARY);
    if (refused) return refused;
    return { body: this.index.treeFor(from).encodeLevels(0, SUMMARY_TO_LEVEL) };
  }

  private onNodes(body: Buffer): PeerReply {
    const head = parseJson<{ from?: unknown; ring?: unknown; level?: unknown; indices?: unknown }>(body, AE_NODES);
    const from = peerIdOf(head, AE_NODES);
    const refused = this.checkRing(head, AE_NODES);
    if (refused) return refused;
    const { level, indices } = head;
    if (typeof level !== 'number' || !Number.isInteger(level) || level < 0 || level > MERKLE_DEPTH) throw new MeshError('bad_request', `${AE_NODES}: level must be 0..${MERKLE_DEPTH}`);
    const count = MERKLE_FANOUT ** level;
    if (!Array.isArray(indices) || !indices.every((i) => Number.isInteger(i) && i >= 0 && i < count)) throw new MeshError('bad_request', `${AE_NODES}: indices must be node numbers of level ${level}`);
    return { body: this.index.treeFor(from).encodeNodes(level, indices as number[]) };
  }

  private onEntries(body: Buffer): PeerReply {
    const head = parseJson<{ from?: unknown; ring?: unknown; leaves?: unknown }>(body, AE_ENTRIES);
    const from = peerIdOf(head, AE_ENTRIES);
    const refused = this.checkRing(head, AE_ENTRIES);
    if (refused) return refused;
    const leaves = head.leaves;
    const count = MERKLE_FANOUT ** MERKLE_DEPTH;
    if (!Array.isArray(leaves) || !leaves.every((i) => Number.isInteger(i) && i >= 0 && i < count)) throw new MeshError('bad_request', `${AE_ENTRIES}: leaves must be leaf numbers (0..${count - 1})`);
    return { body: { entries: this.index.treeFor(from).entriesIn(leaves as number[]) } };
  }

  private async onRecords(body: Buffer): Promise<PeerReply> {
    const { head, records } = unframe<{ from?: unknown; ring?: unknown; want?: unknown }>(body, AE_RECORDS);
    peerIdOf(head, AE_RECORDS);
    const refused = this.checkRing(head, AE_RECORDS);
    if (refused) return refused;
    const want = head.want;
    if (!Array.isArray(want) || !want.every((k) => typeof k === 'string')) throw new MeshError('bad_request', `${AE_RECORDS}: want must be a list of keys`);
    const replica = this.options.replica;
    const outcomes = await Promise.all(records.map((r) => (r ? replica.apply(r) : Promise.resolve<ApplyOutcome>('stale'))));
    // What is held after applying: a pusher drops its copy only when this is as new as what it sent.
    const heldAfter = await replica.readMany(records.map((r, i) => (r && outcomes[i] !== 'applied' ? r.key : '')).filter(Boolean));
    let at = 0;
    const held = records.map((r, i) => (r && outcomes[i] !== 'applied' ? (heldAfter[at++]?.version ?? null) : (r?.version ?? null)));
    const wanted = await replica.readMany(want as string[]);
    const serving: Array<ContextRecord | undefined> = [];
    let bytes = 0;
    for (let i = 0; i < wanted.length; i++) {
      const record = wanted[i];
      this.refresh((want as string[])[i]!, record);
      const size = record ? encodedSize(record) : 4;
      if (serving.length > 0 && bytes + size > this.maxBatchBytes) break;
      serving.push(record);
      bytes += size;
    }
    return { body: frame({ outcomes, held, served: serving.length }, serving) };
  }

  /** Keys this sidecar holds (tombstones marked), with versions and whether the ring places them here. */
  async held(prefix: string, after: string | undefined, limit: number): Promise<{ keys: Array<{ key: string; version: string; tombstone: boolean; stray: boolean; l1: boolean }>; next?: string }> {
    const page = await this.options.list(prefix, after, limit);
    // Before reading: a read through the local store fills L1 itself.
    const cached = new Set(page.keys.filter((key) => this.options.l1?.peek(key) !== undefined));
    const records = await this.options.replica.readMany(page.keys);
    const keys = records.flatMap((r) => (r ? [{ key: r.key, version: r.version, tombstone: r.tombstone === true, stray: this.index.isStray(r.key), l1: cached.has(r.key) }] : []));
    return page.next === undefined ? { keys } : { keys, next: page.next };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const timer of this.retryTimers) clearTimeout(timer);
    this.retryTimers.clear();
    this.unsubscribe();
    this.options.ring.off('change', this.onRingChange);
    this.options.peering.membership.off('change', this.onMembershipChange);
    for (const name of HANDLERS) this.options.peering.router.remove(name);
    await this.rebalancer.close();
    for (const queued of this.queue.values()) for (const resolve of queued.waiters) resolve({ ...emptyStats(''), result: 'skipped' });
    this.queue.clear();
  }
}

function emptyStats(peer: string): RoundStats {
  return { peer, result: 'skipped', nodesCompared: 0, leavesDiffering: 0, entriesCompared: 0, keysDiffering: 0, recordsSent: 0, recordsReceived: 0, repairedHere: 0, repairedThere: 0, messages: 0, bytesSent: 0, bytesReceived: 0, durationMs: 0 };
}

function json(value: object): Buffer {
  return Buffer.from(JSON.stringify(value));
}

function peerIdOf(head: { from?: unknown }, what: string): string {
  if (typeof head.from !== 'string' || head.from.length === 0) throw new MeshError('bad_request', `${what} takes {"from": "<node id>", …}`);
  return head.from;
}

function parseEntries(response: PeerResponse): Array<[string, string]> {
  const { entries } = response.json<{ entries?: unknown }>();
  if (!Array.isArray(entries) || !entries.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string' && typeof e[1] === 'string')) {
    throw new MeshError('upstream_reset', `${AE_ENTRIES}: malformed answer`);
  }
  return entries as Array<[string, string]>;
}

function parseRecordsReply(body: Buffer, sent: number): { outcomes: ApplyOutcome[]; held: Array<string | null>; served: number; records: Array<ContextRecord | undefined> } {
  const { head, records } = unframe<{ outcomes?: unknown; held?: unknown; served?: unknown }>(body, AE_RECORDS);
  const { outcomes, held, served } = head;
  if (!Array.isArray(outcomes) || outcomes.length !== sent || !Array.isArray(held) || held.length !== sent || typeof served !== 'number' || served !== records.length) {
    throw new MeshError('upstream_reset', `${AE_RECORDS}: malformed answer`);
  }
  return { outcomes: outcomes as ApplyOutcome[], held: held as Array<string | null>, served, records };
}

/** A record message: `u32 length, JSON head, record list` (values travel as stored). */
function frame(head: object, records: ReadonlyArray<ContextRecord | undefined>): Buffer {
  const text = Buffer.from(JSON.stringify(head));
  const length = Buffer.allocUnsafe(4);
  length.writeUInt32BE(text.length, 0);
  return Buffer.concat([length, text, encodeRecordList(records)]);
}

function unframe<T>(body: Buffer, what: string): { head: T; records: Array<ContextRecord | undefined> } {
  if (body.length < 4 || body.readUInt32BE(0) > body.length - 4) throw new MeshError('bad_request', `${what}: truncated message`);
  const end = 4 + body.readUInt32BE(0);
  return { head: parseJson<T>(body.subarray(4, end), what), records: decodeRecordList(body.subarray(end)) };
}

function parseJson<T>(body: Buffer, what: string): T {
  try {
    const value = JSON.parse(body.toString('utf8')) as unknown;
    if (typeof value !== 'object' || value === null) throw new Error('not an object');
    return value as T;
  } catch {
    throw new MeshError('bad_request', `${what}: body is not a JSON object`);
  }
}
