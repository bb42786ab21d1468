// The replicated context store: a ContextStore in front of this sidecar's ReplicaStore that any
// sidecar can coordinate. For a key it finds the replica set on the ring and acknowledges per
// consistency level:
//
//   eventual  stamps a version (the HLC of the local store), applies locally when it is a
//             replica, sends to the others through their PeerLinks; acknowledged after one
//             replica has the write (durably). Reads ask one replica, this sidecar first.
//   session   writes as eventual; the session token carries the HLC high-water mark of everything
//             the session wrote or read. A read whose first answer is older than the mark may be
//             stale, so it asks every replica and answers the newest (repairing the others): the
//             replica that acknowledged the session's write is among them. Read-your-writes and
//             monotonic reads hold on any sidecar, as long as that replica answers.
//   strong    linearizable per key, whichever sidecars coordinate. Every strong operation runs two
//             rounds over a majority Q = ⌊N/2⌋+1 of the replicas, with a ballot from this
//             sidecar's HLC (single-decree Paxos per operation, as in CASPaxos):
//               prepare  each replica promises to refuse lower ballots and answers its record
//                        and the ballot it accepted it at; a refusal names the higher ballot,
//                        which the HLC observes, so a skewed clock only costs a retry;
//               decide   on the record with the highest accepted ballot among Q answers: check
//                        If-Match / If-None-Match, apply PATCH, build the tombstone; a new
//                        record's version is the ballot, so it is newer than anything Q holds;
//               accept   each replica stores the decided record unless it promised a higher
//                        ballot meanwhile (checked and stored under the key's lock).
//             Of two operations racing on a key at most one gets Q accepts, whichever sidecars
//             coordinate them; the other retries (nothing of it was stored), answers 412 (its
//             condition no longer holds) or, when some replicas stored it, 504 indeterminate —
//             never success. A read first asks the replicas without promising: when Q of them
//             agree on record and ballot, that is the answer (stale replicas are sent it); else
//             it runs the rounds with an unchanged record, which writes the newest back to a
//             quorum before answering. A 412 is answered the same way: only after the version
//             it was checked against is on a quorum.
//
// A replica that cannot be reached gets the write as a hint (kept and persisted by HintStore,
// delivered when it answers again); hints never count as acknowledgements, and a strong write
// leaves hints only once it is acknowledged.
//
// Seams for later work: the winner of two versions is decided only in order.ts (dotted version
// vectors and merges go there), placement only in ring.ts (rebalancing streams follow its
// 'change' event), and anti-entropy can reuse the `read`/`replicate` handlers.
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ContextConfig } from '../../config/schema.js';
import { MeshError } from '../../errors/table.js';
import type { Member, Membership } from '../../membership/membership.js';
import { PeerClient } from '../../peer/client.js';
import type { PeerRouter } from '../../peer/router.js';
import type { Logger } from '../../telemetry/logger.js';
import { satisfies, type Expectation, type ListPage } from '../cache/l2.js';
import { compareTimestamps, type HlcTimestamp } from '../hlc.js';
import { KeyedLock } from '../keyed-lock.js';
import type { LocalStore } from '../local-store.js';
import { isExpired, type ContextRecord } from '../record.js';
import type { Access, Consistency, ContextStore, Mutation, ReadResult, StoreStats } from '../store.js';
import { compareVersions, makeVersion, versionTimestamp, type Version } from '../version.js';
import { contextOf, EMPTY_VECTOR, parseDotVersion, type Siblings, type VersionVector } from './clock.js';
import { decodeFramed, decodeRecordList, encodeFramed, encodeRecordList, isSiblingRecord, recordOfState, stateOf, type StoredPayload } from './codec.js';
import { checkResolution, ConflictRegistry, MAX_CONFLICT_LIST_LIMIT, type ConflictPage, type ConflictStore, type ConflictSummary, type SiblingReadResult } from './conflicts.js';
import type { HintStore } from './hints.js';
import { ConflictPolicies, conflictVersion, type ConflictVersion, type Reconciliation } from './merge.js';
import { compareRecords, newestOf } from './order.js';
import { PeerLink, REPLICATE, RoundLink, type RoundAnswer } from './peer-link.js';
import { TOMBSTONE_GRACE_MS, type AcceptAnswer, type AcceptorState, type ApplyOutcome, type PrepareAnswer, type ReplicaStore } from './replica-store.js';
import { PlacementRing } from './ring.js';

export const READ = 'read';
export const HINT_DELIVER = 'hint-deliver';
export const LIST = 'list';
/** Strong operations: a read without promise, then the two rounds (see the top of this file). */
export const PEEK = 'peek';
export const PREPARE = 'prepare';
export const ACCEPT = 'accept';
/** This member's page of the keys it holds in conflict (GET /v1/conflicts gathers them). */
export const CONFLICTS = 'conflicts';
/** Bytes of each version's body a conflict log line shows. */
const LOGGED_BODY_BYTES = 512;
/** Rounds a strong operation may run (each after a randomised pause) before giving up. */
const MAX_STRONG_ATTEMPTS = 12;
/** Keys whose next-ballot promise a coordinator remembers (the oldest are forgotten: a prepare round then). */
const MAX_HELD_PROMISES = 100_000;

/** What the state agent needs from the sidecar to replicate. */
export interface Peering {
  router: PeerRouter;
  client: PeerClient;
  membership: Membership;
}

export type ReplicationConfig = ContextConfig['replication'];

export interface ReplicatorOptions {
  nodeId: string;
  nodeTag: string;
  config: ReplicationConfig;
  /** The local tiers: their clock stamps versions, their stats are reported. */
  store: LocalStore;
  replica: ReplicaStore;
  hints: HintStore;
  peering: Peering;
  logger: Logger;
  registry: Registry;
  now?: () => number;
}

/** The majority of n: W and R of strong consistency. */
export function quorum(n: number): number {
  return Math.floor(n / 2) + 1;
}

/** The default consistency of a key: the longest matching `levels` prefix, else `fallback`. */
export function consistencyResolver(levels: ReplicationConfig['levels'], fallback: Consistency): (key: string) => Consistency {
  const sorted = [...levels].sort((a, b) => b.prefix.length - a.prefix.length);
  if (sorted.length === 0) return () => fallback;
  return (key) => sorted.find((l) => key.startsWith(l.prefix))?.consistency ?? fallback;
}

interface Answer {
  member: Member;
  record: ContextRecord | undefined;
}

/**
 * How a tiered write picks the context its new version supersedes: `read` what the request read
 * (If-Match, PATCH, DELETE, a resolution), `local` what this replica holds (a blind json-merge
 * write: it overwrites what it could have seen, stays concurrent with what it could not), `none`
 * nothing (a blind write under siblings adds a sibling).
 */
type WriteContext = { kind: 'read' } | { kind: 'local' } | { kind: 'none' } | { kind: 'given'; context: VersionVector };

export class Replicator implements ContextStore, ConflictStore {
  readonly ring: PlacementRing;
  /** The conflict tier of each key (context.replication.conflicts). */
  readonly conflicts: ConflictPolicies<StoredPayload>;
  /** The keys this sidecar holds in conflict. */
  readonly conflictRegistry = new ConflictRegistry<StoredPayload>();
  private readonly siblingsDropped: Counter;
  private readonly links = new Map<string, PeerLink>();
  /** Per key, the promise this sidecar's last strong write left on a quorum (see keepPromise). */
  private readonly promises = new Map<string, { ballot: Version; accepted: Version; placement: string }>();
  /** Batching links of strong rounds, per call name and peer. */
  private readonly roundLinks = new Map<string, RoundLink>();
  private readonly locks = new KeyedLock();
  private readonly now: () => number;
  private readonly config: ReplicationConfig;
  private readonly replica: ReplicaStore;
  private readonly hints: HintStore;
  private readonly client: PeerClient;
  private readonly membership: Membership;
  private readonly logger: Logger;
  private readonly timer: NodeJS.Timeout;
  private readonly delivering = new Set<string>();
  private readonly lagging = new Set<string>();
  private readonly writes: Counter<'consistency' | 'outcome'>;
  private readonly repairs: Counter;
  private readonly preparesSkipped: Counter;
  private closed = false;

  constructor(private readonly options: ReplicatorOptions) {
    this.now = options.now ?? Date.now;
    this.config = options.config;
    this.replica = options.replica;
    this.hints = options.hints;
    this.client = options.peering.client;
    this.membership = options.peering.membership;
    this.logger = options.logger.child({ component: 'replication' });
    this.ring = new PlacementRing(this.membership, options.config.factor);
    this.ring.on('change', (ids) => this.logger.info({ members: ids, factor: this.ring.size }, 'replica placement changed'));
    this.conflicts = new ConflictPolicies<StoredPayload>(options.config.conflicts ?? []);
    this.replica.useConflicts(this.conflicts, (key, outcome) => this.track(key, outcome));

    const router = options.peering.router;
    const applyBatch = async (body: Buffer) => {
      const records = decodeRecordList(body);
      const outcomes = await Promise.all(records.map((r) => (r ? this.replica.apply(r) : Promise.resolve<ApplyOutcome>('stale'))));
      return { body: { outcomes } };
    };
    router.add(REPLICATE, applyBatch);
    router.add(HINT_DELIVER, applyBatch);
    router.add(READ, async (body) => {
      const { keys } = parseJson<{ keys?: unknown }>(body, READ);
      if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) throw new MeshError('bad_request', `${READ} takes {"keys": [string]}`);
      return { body: encodeRecordList(await this.replica.readMany(keys as string[])) };
    });
    router.add(LIST, async (body) => {
      const { prefix, after, limit } = parseJson<{ prefix?: unknown; after?: unknown; limit?: unknown }>(body, LIST);
      if (typeof prefix !== 'string' || (after !== undefined && typeof after !== 'string') || typeof limit !== 'number') {
        throw new MeshError('bad_request', `${LIST} takes {"prefix": string, "after"?: string, "limit": number}`);
      }
      return { body: await this.replica.list(prefix, after as string | undefined, limit) };
    });
    // Strong rounds: one item as a JSON body (PEEK, PREPARE) or a framed one (ACCEPT), or a batch
    // of items from a RoundLink (framed, `{"items": [...]}`), answered item by item.
    const peekItem = async (head: Record<string, unknown>): Promise<RoundAnswer> => {
      if (typeof head.key !== 'string') throw new MeshError('bad_request', `${PEEK} takes {"key": string}`);
      const state = await this.replica.peek(head.key);
      return { head: { accepted: state.accepted ?? null }, record: state.record };
    };
    const prepareItem = async (head: Record<string, unknown>): Promise<RoundAnswer> => {
      if (typeof head.key !== 'string' || !isBallot(head.ballot)) throw new MeshError('bad_request', `${PREPARE} takes {"key": string, "ballot": "<wall>.<logical>@<node>"}`);
      const answer = await this.replica.prepare(head.key, head.ballot);
      return answer.ok ? { head: { ok: true, accepted: answer.accepted ?? null }, record: answer.record } : { head: { ok: false, promised: answer.promised }, record: undefined };
    };
    const acceptItem = async (head: Record<string, unknown>, record: ContextRecord | undefined): Promise<RoundAnswer> => {
      if (typeof head.key !== 'string' || !isBallot(head.ballot) || !record || (head.next !== undefined && !isBallot(head.next))) {
        throw new MeshError('bad_request', `${ACCEPT} takes {"key": string, "ballot": string, "next"?: string} and one record`);
      }
      const answer = await this.replica.accept(head.key, head.ballot, record, head.next as Version | undefined);
      return { head: answer, record: undefined };
    };
    const single = (answer: RoundAnswer): { body: Buffer } => ({ body: frame(answer.head, [answer.record]) });
    router.add(PEEK, async (body) => (isJsonBody(body) ? single(await peekItem(parseJson<Record<string, unknown>>(body, PEEK))) : serveItems(body, PEEK, peekItem)));
    router.add(PREPARE, async (body) => (isJsonBody(body) ? single(await prepareItem(parseJson<Record<string, unknown>>(body, PREPARE))) : serveItems(body, PREPARE, prepareItem)));
    router.add(ACCEPT, async (body) => {
      const { head, records } = unframe<Record<string, unknown>>(body, ACCEPT);
      if (Array.isArray(head.items)) return serveItems(body, ACCEPT, acceptItem);
      if (records.length !== 1) throw new MeshError('bad_request', `${ACCEPT} takes {"key": string, "ballot": string} and one record`);
      return { body: (await acceptItem(head, records[0])).head };
    });
    router.add(CONFLICTS, async (body) => {
      const { prefix, after, limit } = parseJson<{ prefix?: unknown; after?: unknown; limit?: unknown }>(body, CONFLICTS);
      if (typeof prefix !== 'string' || (after !== undefined && typeof after !== 'string') || typeof limit !== 'number') {
        throw new MeshError('bad_request', `${CONFLICTS} takes {"prefix": string, "after"?: string, "limit": number}`);
      }
      return { body: this.conflictRegistry.list({ prefix, after: after as string | undefined, limit }) };
    });

    const registers = [options.registry];
    this.writes = new Counter({
      name: 'ctxmesh_replication_writes_total',
      help: 'Replicated writes coordinated here, by consistency level and outcome (acknowledged | indeterminate).',
      labelNames: ['consistency', 'outcome'] as const,
      registers,
    });
    this.repairs = new Counter({ name: 'ctxmesh_replication_read_repairs_total', help: 'Stale replicas sent the newest version by a read.', registers });
    this.preparesSkipped = new Counter({
      name: 'ctxmesh_replication_strong_prepares_skipped_total',
      help: 'Strong writes coordinated here that went straight to the accept round on a promise their previous write on the key left.',
      registers,
    });
    this.siblingsDropped = new Counter({
      name: 'ctxmesh_replication_siblings_dropped_total',
      help: 'Concurrent versions dropped because a key held more than its maxSiblings (context.replication.conflicts).',
      registers,
    });
    new Gauge({
      name: 'ctxmesh_replication_conflicts',
      help: 'Keys this sidecar holds in conflict (siblings no tier merged), as GET /v1/conflicts lists them.',
      registers,
      collect: function (this: Gauge) {
        this.set(replicator.conflictRegistry.size);
      },
    });
    const perPeer = (name: string, help: string, read: (peerId: string) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['peer'] as const,
        registers,
        collect: function (this: Gauge<'peer'>) {
          this.reset();
          for (const id of replicator.peerIds()) this.labels(id).set(read(id));
        },
      });
    const replicator = this;
    perPeer('ctxmesh_replication_lag_seconds', 'Age of the oldest write not yet delivered to the peer (queued, in flight or hinted).', (id) => this.lag(id).seconds);
    perPeer('ctxmesh_replication_lag_bytes', 'Bytes of writes not yet delivered to the peer (queued, in flight or hinted).', (id) => this.lag(id).bytes);
    perPeer('ctxmesh_replication_hints', 'Writes kept as hints for the peer until it answers again.', (id) => this.hints.count(id));
    new Counter({
      name: 'ctxmesh_replication_hints_delivered_total',
      help: 'Hints delivered to their replica.',
      registers,
      collect: function (this: Counter) {
        this.reset();
        this.inc(replicator.hints.deliveredCount);
      },
    });
    new Counter({
      name: 'ctxmesh_replication_hints_dropped_total',
      help: 'Hints dropped because a peer’s hints passed context.replication.hints.maxBytes.',
      registers,
      collect: function (this: Counter) {
        this.reset();
        this.inc(replicator.hints.dropped);
      },
    });

    this.timer = setInterval(() => {
      this.deliverHints();
      this.checkLag();
    }, options.config.hints.interval).unref();
  }

  // ── reads ────────────────────────────────────────────────────────────────────────────────

  async get(key: string, access: Access): Promise<SiblingReadResult | undefined> {
    return this.present(key, await this.readNewest(key, access));
  }

  getMany(keys: readonly string[], access: Access): Promise<Array<ReadResult | undefined>> {
    return Promise.all(keys.map((key) => this.get(key, access)));
  }

  /** The newest version per the access's level, tombstones included. */
  private readNewest(key: string, access: Access): Promise<ContextRecord | undefined> {
    const replicas = this.ring.replicas(key);
    if (access.consistency === 'strong') return this.quorumRead(key, replicas, access);
    if (access.consistency === 'session' && access.session) return this.sessionRead(key, replicas, access.session);
    return this.firstRead(key, replicas).then((a) => a.record);
  }

  /** One replica's answer: this sidecar's when it is a replica, else the first that answers, in ring order. */
  private async firstRead(key: string, replicas: readonly Member[]): Promise<Answer> {
    const selfId = this.options.nodeId;
    const ordered = [...replicas.filter((m) => m.id === selfId), ...replicas.filter((m) => m.id !== selfId)];
    let lastError: unknown;
    for (const member of ordered) {
      try {
        return { member, record: (await this.readFrom(member, [key]))[0] };
      } catch (err) {
        lastError = err;
      }
    }
    throw new MeshError('quorum_unavailable', `no replica of ${key} answered (${ordered.map((m) => m.id).join(', ')}): ${(lastError as Error)?.message ?? 'no replicas'}`);
  }

  private async sessionRead(key: string, replicas: readonly Member[], seen: HlcTimestamp): Promise<ContextRecord | undefined> {
    const first = await this.firstRead(key, replicas);
    const at = first.record && versionTimestamp(first.record.version);
    if (at && compareTimestamps(at, seen) >= 0) return first.record;
    // Older than what the session has seen: possibly stale. Every replica that answers decides.
    const others = replicas.filter((m) => m.id !== first.member.id);
    const answers = [first, ...(await this.gather(key, others, others.length)).answers];
    const newest = this.combine(key, answers.map((a) => a.record));
    if (newest) void this.repair(newest, answers);
    return newest;
  }

  /**
   * The newest version as a linearizable read: the replicas' states when a quorum agrees on one
   * (record and ballot), else the rounds with the record unchanged, which leave it on a quorum.
   */
  private async quorumRead(key: string, replicas: readonly Member[], access: Access): Promise<ContextRecord | undefined> {
    const needed = quorum(replicas.length);
    const peeked = await this.round(replicas, needed, (m) => this.peekAt(m, key), () => true, (answers) => agreement(answers.map((a) => a.value), needed) !== undefined);
    const agreed = agreement(peeked.oks.map((a) => a.value), needed);
    if (agreed) {
      const repair = (answers: ReadonlyArray<{ member: Member; value: AcceptorState }>) => this.repairAt(key, agreed, answers);
      void peeked.late.then(repair);
      // Blocking for the stale replicas that answered: the next read through them finds it there.
      await repair(peeked.oks);
      return agreed.record;
    }
    if (peeked.oks.length < needed) {
      throw new MeshError('quorum_unavailable', `strong read of ${key}: ${peeked.oks.length} of ${replicas.length} replicas answered, ${needed} needed (${describeFailures(peeked.failures)})`);
    }
    return (await this.consensus(key, access, 'read', () => undefined)).current;
  }

  /** Sends the agreed state to the answers that hold something else, at its own ballot. */
  private async repairAt(key: string, agreed: AcceptorState, answers: ReadonlyArray<{ member: Member; value: AcceptorState }>): Promise<void> {
    if (!agreed.record || agreed.accepted === undefined) return;
    const stale = answers.filter((a) => a.value.record?.version !== agreed.record!.version || a.value.accepted !== agreed.accepted);
    if (stale.length === 0) return;
    this.repairs.inc(stale.length);
    await Promise.allSettled(stale.map((a) => this.acceptAt(a.member, key, agreed.accepted!, agreed.record!)));
  }

  /**
   * One strong operation on `key`: prepare, decide, accept (see the top of this file), retried
   * with a higher ballot while racing operations win. `decide` gets the newest live record (and
   * the newest held, tombstones included) and returns the new record for a ballot, or undefined to
   * keep the state (a read); a MeshError it throws is answered once the state it saw is on a
   * quorum. Resolves with the record written, if any, and the state it was decided on.
   */
  private async consensus(
    key: string,
    access: Access,
    kind: 'read' | 'write',
    decide: (live: ContextRecord | undefined, held: ContextRecord | undefined) => ((ballot: Version, wall: number) => ContextRecord) | undefined,
  ): Promise<{ written?: ContextRecord; current: ContextRecord | undefined }> {
    const replicas = this.ring.replicas(key);
    const needed = quorum(replicas.length);
    const clock = this.options.store.clock;
    if (access.session) clock.observe(access.session);
    const deadline = this.now() + this.config.writeTimeout;
    let last = '';
    // A write that may have been stored somewhere is indeterminate; one that was not, or a read, is
    // refused as unavailable — except that a write refused for want of replicas keeps the
    // long-standing answer, indeterminate, so that clients treat every failed strong write alike.
    const fail = (why: string, stored: boolean): MeshError => {
      if (kind === 'read') return new MeshError('quorum_unavailable', `strong read of ${key} ${why}`);
      this.writes.labels('strong', 'indeterminate').inc();
      return new MeshError('indeterminate', `strong write of ${key} ${why}${stored ? '' : ' (not stored on any replica)'}`);
    };
    const self = replicas.some((m) => m.id === this.options.nodeId);
    let atOnce = false;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0 && !atOnce) {
        if (attempt >= MAX_STRONG_ATTEMPTS || this.now() >= deadline) throw fail(`did not complete in ${attempt} rounds: ${last}`, false);
        await pause(Math.random() * Math.min(50, 2 ** attempt * 2));
      }
      atOnce = false;
      const t = clock.tick();
      // A write's first attempt skips the prepare round when this sidecar's last accept on the
      // key left a quorum promised to its next ballot and nothing changed since (see `promised`).
      const fast = attempt === 0 && kind === 'write' && self ? await this.takePromise(key, replicas, access) : undefined;
      let ballot: Version;
      let newest: AcceptorState;
      /** Whether `newest` is on a quorum at one ballot (answerable as it is). */
      let agreed = false;
      let unreachable: Array<{ member: Member; error: Error }> = [];
      if (fast) {
        ballot = fast.ballot;
        newest = fast.state;
      } else {
        ballot = makeVersion(t, this.options.nodeTag);
        const prepared = await this.round(replicas, needed, (m) => this.prepareAt(m, key, ballot), (a) => a.ok);
        for (const r of prepared.refusals) if (!r.value.ok) this.options.store.observe(r.value.promised);
        // A replica that refuses our epoch (fencing): this sidecar must not write at all.
        const fenced = prepared.failures.find((f) => isFenceRefusal(f.error));
        if (fenced) throw this.fencedFailure(key, fenced, false);
        const promises = prepared.oks.map((a) => ({ member: a.member, state: a.value as AcceptorState }));
        if (promises.length < needed) {
          last = `${promises.length} of ${replicas.length} replicas acknowledged, ${needed} needed${prepared.failures.length ? ` (${describeFailures(prepared.failures)})` : ''}`;
          // Not enough replicas answer at all: retrying within this operation would not help.
          if (prepared.failures.length > replicas.length - needed) throw fail(`(ballot ${ballot}) failed: ${last}`, false);
          continue;
        }
        newest = newestState(promises.map((p) => p.state));
        unreachable = prepared.failures;
        agreed = agreement(promises.map((p) => p.state), needed) !== undefined;
      }
      let make: ((ballot: Version, wall: number) => ContextRecord) | undefined;
      let refusal: unknown;
      try {
        make = decide(this.visible(newest.record), newest.record);
      } catch (err) {
        refusal = err;
      }
      let proposal = make?.(ballot, t.wall);
      if (!proposal) {
        // A promise held from the last accept says nothing about the state now: ask the quorum.
        if (fast) {
          atOnce = true;
          continue;
        }
        // The state stays: answer it once it is on a quorum at one ballot.
        if (agreed) {
          if (refusal) throw refusal;
          return { current: newest.record };
        }
      }
      const writing = proposal !== undefined;
      proposal ??= newest.record ?? tombstoneAt(key, ballot, t.wall);
      const toAccept = proposal;
      // The ballot each replica promises along with this accept: this sidecar's next operation on the key.
      // A tick of its own, so that no other operation of this sidecar ever holds it as ballot or version.
      const next = writing && self ? makeVersion(clock.tick(), this.options.nodeTag) : undefined;
      // Every replica that answers may take the accept, not only the first Q that promised.
      const skipped = new Set(unreachable.map((f) => f.member.id));
      const targets = replicas.filter((m) => !skipped.has(m.id));
      if (fast) this.preparesSkipped.inc();
      const accepted = await this.round(targets, needed, (m) => this.acceptAt(m, key, ballot, toAccept, next), (a) => a.ok);
      for (const r of accepted.refusals) if (!r.value.ok) this.options.store.observe(r.value.promised);
      const fenced = accepted.failures.find((f) => isFenceRefusal(f.error));
      if (fenced && writing) throw this.fencedFailure(key, fenced, accepted.oks.length > 0 || accepted.pendingAfter > 0);
      if (accepted.oks.length >= needed) {
        if (writing) {
          this.writes.labels('strong', 'acknowledged').inc();
          if (next) void accepted.all.then(({ oks }) => this.keepPromise(key, replicas, ballot, next, oks));
          this.hintMissed(toAccept, unreachable, accepted.all);
          return { written: toAccept, current: toAccept };
        }
        if (refusal) throw refusal;
        return { current: newest.record };
      }
      // A retry is safe only if no replica took this write: an accept still in flight may yet
      // succeed, and a retry that then found the write would answer for it wrongly.
      const tally = writing ? await accepted.all : accepted;
      // Not acknowledged: the promise of `next` this sidecar's replica made with it is of no use.
      if (next) this.replica.withdraw(key, next, ballot);
      last = `${tally.oks.length} of ${replicas.length} replicas accepted, ${needed} needed${tally.failures.length ? ` (${describeFailures(tally.failures)})` : ''}`;
      if (writing && (tally.oks.length > 0 || tally.failures.length > 0)) {
        // Stored on some replicas (or maybe, where the call failed): a later operation may find it.
        throw fail(`(version ${ballot}) is indeterminate: ${last}`, true);
      }
    }
  }

  /**
   * After a strong write is acknowledged: a hint for each replica that did not take it — one the
   * prepare could not reach, or whose accept failed (once it has failed: an accept still in flight
   * usually lands, and a hint for it would be a second apply for nothing). A replica that refused
   * the accept promised a higher ballot, so the write would be stale there; one that refused our
   * epoch gets nothing (the write must not come back through it after re-admission).
   */
  private hintMissed(record: ContextRecord, unreachable: ReadonlyArray<{ member: Member; error: Error }>, settled: Promise<{ failures: Array<{ member: Member; error: Error }> }>): void {
    const hint = (failed: { member: Member; error: Error }): void => {
      if (failed.member.id === this.options.nodeId || this.closed || isFenceRefusal(failed.error)) return;
      void this.hints.add(failed.member.id, record);
    };
    unreachable.forEach(hint);
    void settled.then(({ failures }) => failures.forEach(hint));
  }

  /** A peer refused this sidecar's epoch: the operation fails, never acknowledged, never hinted. */
  private fencedFailure(key: string, refused: { member: Member; error: Error }, maybeStored: boolean): MeshError {
    const why = `replica ${refused.member.id} refused this sidecar's ownership epoch (${refused.error.message})`;
    if (maybeStored) {
      this.writes.labels('strong', 'indeterminate').inc();
      return new MeshError('indeterminate', `strong write of ${key} is not acknowledged: ${why}; other replicas may hold it`);
    }
    return new MeshError('fenced', `strong operation on ${key} refused: ${why}`, { retryAfter: 1 });
  }

  /**
   * Remembers that every replica promised `next` when it accepted `ballot`: the prepare of this
   * sidecar's next write on the key, already answered with the state accepted. Only when all of
   * them did: the next write's ballot is then older than a fresh one, and a replica that missed
   * it (or holds a higher promise) could not take it later through a hint or a repair; a write
   * with a fresh ballot brings such a replica back.
   */
  private keepPromise(key: string, replicas: readonly Member[], ballot: Version, next: Version, oks: ReadonlyArray<{ member: Member; value: AcceptAnswer }>): void {
    const promisedBy = new Set(oks.filter((a) => a.value.ok && a.value.next === next).map((a) => a.member.id));
    if (this.closed || !replicas.every((m) => promisedBy.has(m.id))) return;
    const kept = this.promises.get(key);
    if (kept && compareVersions(kept.ballot, next) > 0) return;
    this.promises.delete(key);
    this.promises.set(key, { ballot: next, accepted: ballot, placement: placementOf(replicas) });
    while (this.promises.size > MAX_HELD_PROMISES) this.promises.delete(this.promises.keys().next().value as string);
  }

  /**
   * The promise kept for the key's next write, taken (each is used once), if it still stands: the
   * same replicas, every one of them answering lately, this sidecar's own replica still holding
   * exactly that promise over the state it accepted (anything another coordinator did on the key
   * through it shows there), and no session that has seen past the ballot (its write must be
   * newer than what it saw).
   */
  private async takePromise(key: string, replicas: readonly Member[], access: Access): Promise<{ ballot: Version; state: AcceptorState } | undefined> {
    const held = this.promises.get(key);
    if (!held) return undefined;
    this.promises.delete(key);
    if (held.placement !== placementOf(replicas)) return undefined;
    if (replicas.some((m) => m.id !== this.options.nodeId && this.failing(m.id))) return undefined;
    if (access.session && compareTimestamps(access.session, versionTimestamp(held.ballot)!) >= 0) return undefined;
    const state = await this.replica.promisedState(key, held.ballot, held.accepted);
    return state ? { ballot: held.ballot, state } : undefined;
  }

  /** Whether the last call to the peer (a write batch or a strong round) failed. */
  private failing(peerId: string): boolean {
    if (this.links.get(peerId)?.down) return true;
    for (const name of [PREPARE, ACCEPT]) if (this.roundLinks.get(`${name}\u0000${peerId}`)?.failing) return true;
    return false;
  }

  private async peekAt(member: Member, key: string): Promise<AcceptorState> {
    if (member.id === this.options.nodeId) return this.replica.peek(key);
    const { head, record } = await this.roundLink(member.id, PEEK).call({ head: { key } });
    return { record, accepted: isBallot(head.accepted) ? head.accepted : undefined };
  }

  private async prepareAt(member: Member, key: string, ballot: Version): Promise<PrepareAnswer> {
    if (member.id === this.options.nodeId) return this.replica.prepare(key, ballot);
    const { head, record } = await this.roundLink(member.id, PREPARE).call({ head: { key, ballot } });
    if (head.ok === true) return { ok: true, record, accepted: isBallot(head.accepted) ? head.accepted : undefined };
    if (!isBallot(head.promised)) throw new MeshError('upstream_reset', `peer ${member.id} refused ${PREPARE} without naming its ballot`);
    return { ok: false, promised: head.promised };
  }

  /** `next`: the ballot the replica also promises once it accepts (see `promises`). */
  private async acceptAt(member: Member, key: string, ballot: Version, record: ContextRecord, next?: Version): Promise<AcceptAnswer> {
    if (member.id === this.options.nodeId) return this.replica.accept(key, ballot, record, next);
    const { head } = await this.roundLink(member.id, ACCEPT).call({ head: next ? { key, ballot, next } : { key, ballot }, record });
    if (typeof head.ok !== 'boolean' || (!head.ok && !isBallot(head.promised))) throw new MeshError('upstream_reset', `peer ${member.id} answered ${ACCEPT} with a malformed reply`);
    return head as AcceptAnswer;
  }

  private roundLink(peerId: string, name: string): RoundLink {
    const id = `${name}\u0000${peerId}`;
    let link = this.roundLinks.get(id);
    if (!link) {
      link = new RoundLink(peerId, name, {
        client: this.client,
        membership: this.membership,
        timeoutMs: this.config.peerTimeout,
        maxBatchBytes: Math.max(1, this.config.maxMessageBytes - 1024),
      });
      this.roundLinks.set(id, link);
    }
    return link;
  }

  private async callPeer(member: Member, name: string, body: Buffer | object): Promise<Buffer> {
    return PeerClient.ok(await this.client.call(member.address, name, body, { timeoutMs: this.config.peerTimeout }), member.address, name).body;
  }

  /**
   * Calls `members` concurrently; resolves once `needed` answers pass `ok`, or once that can no
   * longer happen, or once `enough` says so. `late` resolves with the passing answers after that.
   */
  private round<T>(
    members: readonly Member[],
    needed: number,
    call: (member: Member) => Promise<T>,
    ok: (answer: T) => boolean,
    enough?: (oks: ReadonlyArray<{ member: Member; value: T }>) => boolean,
  ): Promise<RoundResult<T>> {
    return new Promise((resolve) => {
      const oks: Array<{ member: Member; value: T }> = [];
      const refusals: Array<{ member: Member; value: T }> = [];
      const failures: Array<{ member: Member; error: Error }> = [];
      const late: Array<{ member: Member; value: T }> = [];
      let done = false;
      let outstanding = members.length;
      let settleLate: (answers: Array<{ member: Member; value: T }>) => void = () => undefined;
      const lateDone = new Promise<Array<{ member: Member; value: T }>>((r) => (settleLate = r));
      const all = lateDone.then((more) => ({ oks: [...oks, ...more], refusals, failures }));
      const finish = (): void => {
        if (done) return;
        done = true;
        resolve({ oks: [...oks], refusals: [...refusals], failures: [...failures], pendingAfter: outstanding, late: lateDone, all });
      };
      if (members.length === 0) {
        finish();
        settleLate([]);
        return;
      }
      for (const member of members) {
        call(member).then(
          (value) => (ok(value) ? (done ? late : oks) : refusals).push({ member, value }),
          (error: Error) => failures.push({ member, error }),
        ).finally(() => {
          outstanding--;
          const full = enough ? oks.length >= needed && enough(oks) : oks.length >= needed;
          if (full || oks.length + outstanding < needed || outstanding === 0) finish();
          if (outstanding === 0) settleLate(late);
        });
      }
    });
  }

  /**
   * Reads the key from `members` concurrently; resolves once `needed` have answered or too many
   * have failed. `late` resolves with the answers that came after.
   */
  private gather(key: string, members: readonly Member[], needed: number): Promise<{ answers: Answer[]; late: Promise<Answer[]> }> {
    return new Promise((resolve) => {
      const answers: Answer[] = [];
      const late: Answer[] = [];
      let failed = 0;
      let done = false;
      let settle: (answers: Answer[]) => void = () => undefined;
      const lateDone = new Promise<Answer[]>((r) => (settle = r));
      const finish = (): void => {
        if (done) return;
        done = true;
        resolve({ answers: [...answers], late: lateDone });
      };
      if (members.length === 0 || needed === 0) {
        finish();
        settle([]);
        return;
      }
      let outstanding = members.length;
      for (const member of members) {
        this.readFrom(member, [key]).then(
          (records) => (done ? late : answers).push({ member, record: records[0] }),
          () => failed++,
        ).finally(() => {
          outstanding--;
          if (answers.length >= needed || members.length - failed < needed || outstanding === 0) finish();
          if (outstanding === 0) settle(late);
        });
      }
    });
  }

  private async readFrom(member: Member, keys: string[]): Promise<Array<ContextRecord | undefined>> {
    if (member.id === this.options.nodeId) return this.replica.readMany(keys);
    const response = PeerClient.ok(await this.client.call(member.address, READ, { keys }, { timeoutMs: this.config.peerTimeout }), member.address, READ);
    const records = decodeRecordList(response.body);
    if (records.length !== keys.length) throw new MeshError('upstream_reset', `peer ${member.id} answered ${READ} with ${records.length} records for ${keys.length} keys`);
    return records;
  }

  /** Sends `newest` to every answer that is older or missing it; resolves when they have replied. */
  private async repair(newest: ContextRecord, answers: readonly Answer[]): Promise<void> {
    // A sibling set combined from the answers is new to every replica that holds another one.
    const tiered = this.conflicts.tiered(newest.key);
    const stale = answers.filter((a) => !a.record || (tiered ? a.record.version !== newest.version : compareRecords(newest, a.record) > 0));
    if (stale.length === 0) return;
    this.repairs.inc(stale.length);
    await Promise.allSettled(stale.map((a) => this.sendTo(a.member, newest, false)));
  }

  // ── writes ───────────────────────────────────────────────────────────────────────────────

  async put(key: string, mutation: Mutation, expected: Expectation, access: Access): Promise<ContextRecord> {
    if (access.consistency === 'strong') {
      const { written } = await this.consensus(key, access, 'write', (live, held) => {
        check(expected, live?.version, key);
        return (ballot, wall) => this.settledAt(held, this.recordAt(key, mutation, ballot, wall));
      });
      return this.shown(written!);
    }
    if (this.conflicts.tiered(key)) {
      // If-Match names what the writer read: its new version supersedes exactly that.
      const blind = expected.kind !== 'version';
      const how: WriteContext = !blind ? { kind: 'read' } : this.conflicts.strategyFor(key) === 'siblings' ? { kind: 'none' } : { kind: 'local' };
      return (await this.writeTiered(key, access, expected, how, () => this.payloadOf(mutation)))!;
    }
    if (expected.kind === 'any') return this.write(this.stamp(key, mutation, undefined, access), access.consistency);
    return this.locks.run(key, async () => {
      const current = await this.readNewest(key, access);
      check(expected, this.visible(current)?.version, key);
      return this.write(this.stamp(key, mutation, current, access), access.consistency);
    });
  }

  async update(key: string, change: (current: ContextRecord | undefined) => Mutation, expected: Expectation, access: Access): Promise<ContextRecord> {
    if (access.consistency === 'strong') {
      const { written } = await this.consensus(key, access, 'write', (live, held) => {
        check(expected, live?.version, key);
        const mutation = change(live);
        return (ballot, wall) => this.settledAt(held, this.recordAt(key, mutation, ballot, wall));
      });
      return this.shown(written!);
    }
    // A read-modify-write: the new version supersedes the state it was computed from.
    if (this.conflicts.tiered(key)) return (await this.writeTiered(key, access, expected, { kind: 'read' }, (live) => this.payloadOf(change(live))))!;
    return this.locks.run(key, async () => {
      const current = await this.readNewest(key, access);
      const live = this.visible(current);
      check(expected, live?.version, key);
      return this.write(this.stamp(key, change(live), current, access), access.consistency);
    });
  }

  async delete(key: string, expected: Expectation, access: Access): Promise<ContextRecord | undefined> {
    if (access.consistency === 'strong') {
      const { written } = await this.consensus(key, access, 'write', (live, held) => {
        if (!live) return undefined;
        check(expected, live.version, key);
        return (ballot, wall) => this.settledAt(held, tombstoneAt(key, ballot, wall));
      });
      return written;
    }
    if (this.conflicts.tiered(key)) {
      // A deletion removes what it saw; versions it did not see stay (as siblings or merged).
      return this.writeTiered(key, access, expected, { kind: 'read' }, (live) => (live ? this.deletionPayload() : undefined));
    }
    return this.locks.run(key, async () => {
      const current = await this.readNewest(key, access);
      const live = this.visible(current);
      if (!live) return undefined;
      check(expected, live.version, key);
      const tombstone = this.stamp(key, { value: Buffer.alloc(0), contentType: '', retention: 'normal' }, current, access);
      tombstone.tombstone = true;
      return this.write(tombstone, access.consistency);
    });
  }

  // ── tiered keys (json-merge, siblings) ───────────────────────────────────────────────────

  /**
   * A write to a key that keeps sibling sets (see merge.ts and clock.ts): checks the request's
   * condition against what it reads (not for blind writes), stamps a dot against this replica's
   * held set (a non-replica coordinator stamps against what it read), and ships the whole new set.
   * Resolves with the key as a read now serves it (undefined: `make` had nothing to write).
   */
  private async writeTiered(
    key: string,
    access: Access,
    expected: Expectation,
    how: WriteContext,
    make: (live: ContextRecord | undefined) => StoredPayload | undefined,
  ): Promise<ContextRecord | undefined> {
    const resolver = this.conflicts.resolverFor(key);
    const self = this.ring.replicas(key).some((m) => m.id === this.options.nodeId);
    // A blind write reads nothing unless it has to (a non-replica coordinator needs a state to stamp against).
    const needsRead = expected.kind !== 'any' || how.kind === 'read' || (!self && how.kind === 'local');
    const current = needsRead ? await this.readNewest(key, access) : undefined;
    const live = this.visible(current);
    check(expected, live?.version, key);
    const payload = make(live);
    if (payload === undefined) return undefined;
    const read = stateOf(current);
    const clock = this.options.store.clock;
    if (access.session) clock.observe(access.session);
    const step = (local: Siblings<StoredPayload>): Reconciliation<StoredPayload> => {
      const base = resolver.reconcile(key, local, read).state;
      const context = how.kind === 'read' ? contextOf(read) : how.kind === 'local' ? contextOf(base) : how.kind === 'given' ? how.context : EMPTY_VECTOR;
      return resolver.write(key, base, context, payload, this.options.nodeTag, clock);
    };
    let record: ContextRecord | undefined;
    if (self) {
      record = await this.replica.coordinate(key, step);
    } else {
      const outcome = step([]);
      record = recordOfState(key, outcome.state, TOMBSTONE_GRACE_MS);
    }
    if (!record) throw new MeshError('internal', `write of ${key} stored nothing`);
    await this.write(record, access.consistency);
    return this.shown(record);
  }

  /** What a read of `record` serves: the view of a sibling set (version: the set's), else the record. */
  private shown(record: ContextRecord): ContextRecord {
    return (isSiblingRecord(record) ? this.present(record.key, record)?.record : undefined) ?? record;
  }

  private payloadOf(mutation: Mutation): StoredPayload {
    const now = this.now();
    return {
      value: mutation.value,
      contentType: mutation.contentType,
      expiresAt: mutation.ttlMs === undefined ? 0 : now + mutation.ttlMs,
      retention: mutation.retention,
      updatedAt: now,
    };
  }

  private deletionPayload(): StoredPayload {
    return { value: Buffer.alloc(0), contentType: '', tombstone: true, expiresAt: 0, retention: 'normal', updatedAt: this.now() };
  }

  /**
   * A strong write's record on a tiered key: a sibling set of one version whose dot is the ballot
   * and whose context is the state the quorum decided on, so it supersedes that state wherever
   * it meets it (an eventual write the quorum did not see stays concurrent).
   */
  private settledAt(held: ContextRecord | undefined, record: ContextRecord): ContextRecord {
    if (!this.conflicts.tiered(record.key)) return record;
    const dot = parseDotVersion(record.version);
    if (!dot) throw new MeshError('internal', `ballot ${record.version} is not a dot`);
    const payload: StoredPayload = record.tombstone
      ? { ...this.deletionPayload(), updatedAt: record.updatedAt }
      : { value: record.value, contentType: record.contentType, expiresAt: record.expiresAt, retention: record.retention, updatedAt: record.updatedAt };
    return recordOfState(record.key, [{ clock: { dot, past: contextOf(stateOf(held)) }, value: payload }], TOMBSTONE_GRACE_MS);
  }

  /**
   * The answer of a read: a plain record when live; for a sibling set, the tier's view — the one
   * version, the json-merge result or, in conflict, the newest live version — carrying the set's
   * version as ETag, with the siblings beside it.
   */
  private present(key: string, record: ContextRecord | undefined): SiblingReadResult | undefined {
    if (!record) return undefined;
    if (!isSiblingRecord(record)) {
      const live = record.tombstone || isExpired(record, this.now()) ? undefined : record;
      return live ? { record: live, stale: false, tier: 'l2' } : undefined;
    }
    const state = stateOf(record);
    const view = this.conflicts.resolverFor(key).view(key, state);
    let payload = view.value;
    if (payload === undefined && view.conflict) {
      const live = state.filter((v) => !v.value.tombstone);
      payload = live.at(-1)?.value;
    }
    if (!payload || payload.tombstone || (payload.expiresAt !== 0 && payload.expiresAt <= this.now())) return undefined;
    const shown: ContextRecord = {
      key,
      value: payload.value,
      contentType: payload.contentType,
      version: record.version,
      expiresAt: payload.expiresAt,
      retention: payload.retention,
      updatedAt: payload.updatedAt,
    };
    return { record: shown, stale: false, tier: 'l2', siblings: state.map(conflictVersion), conflict: view.conflict };
  }

  /** The state several replicas' answers add up to: the newest record, or for tiered keys their sibling sets merged. */
  private combine(key: string, records: ReadonlyArray<ContextRecord | undefined>): ContextRecord | undefined {
    if (!this.conflicts.tiered(key)) return newestOf(records);
    const held = records.filter((r): r is ContextRecord => r !== undefined);
    if (held.length === 0) return undefined;
    if (held.every((r) => r.version === held[0]!.version)) return held[0];
    const resolver = this.conflicts.resolverFor(key);
    let state: Siblings<StoredPayload> = [];
    for (const record of held) state = resolver.reconcile(key, state, stateOf(record)).state;
    return recordOfState(key, state, TOMBSTONE_GRACE_MS);
  }

  /** The conflict registry follows every stored change; new conflicts and dropped siblings are logged once, here. */
  private track(key: string, outcome: Reconciliation<StoredPayload>): void {
    const change = this.conflictRegistry.track(key, outcome.state, outcome.conflict);
    if (change === 'new' && outcome.conflict) {
      this.logger.warn(
        { key, strategy: outcome.conflict.strategy, reason: outcome.conflict.reason, siblings: outcome.conflict.siblings.map(describeVersion) },
        'context in conflict: concurrent versions kept as siblings (GET /v1/conflicts)',
      );
    }
    if (outcome.dropped.length > 0) {
      this.siblingsDropped.inc(outcome.dropped.length);
      this.logger.warn(
        { key, maxSiblings: this.conflicts.resolverFor(key).maxSiblings, dropped: outcome.dropped.map((v) => describeVersion(conflictVersion(v))) },
        'sibling cap reached: the oldest concurrent versions were dropped',
      );
    }
  }

  /** Keys in conflict across every live member (each knows the keys it holds), merged in key order. */
  async listConflicts(prefix: string, after: string | undefined, limit: number): Promise<ConflictPage> {
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_CONFLICT_LIST_LIMIT) throw new MeshError('bad_request', `limit must be an integer from 1 to ${MAX_CONFLICT_LIST_LIMIT}`);
    const members = this.ring.liveIds().map((id) => this.membership.get(id)!).filter(Boolean);
    const pages = await Promise.allSettled(
      members.map(async (member) => {
        if (member.id === this.options.nodeId) return this.conflictRegistry.list({ prefix, after, limit });
        return parseJson<ConflictPage>(await this.callPeer(member, CONFLICTS, { prefix, after, limit }), CONFLICTS);
      }),
    );
    const answered = pages.filter((p): p is PromiseFulfilledResult<ConflictPage> => p.status === 'fulfilled').map((p) => p.value);
    if (answered.length === 0) throw new MeshError('quorum_unavailable', `no member answered the conflict listing of ${prefix}`);
    let bound: string | undefined;
    for (const page of answered) if (page.next !== undefined && (bound === undefined || page.next < bound)) bound = page.next;
    // Replicas that have not converged yet may list a key with different siblings: show the one that knows most.
    const byKey = new Map<string, ConflictSummary>();
    for (const summary of answered.flatMap((p) => p.conflicts)) {
      if (bound !== undefined && summary.key > bound) continue;
      const held = byKey.get(summary.key);
      if (!held || summary.versions.length > held.versions.length || (summary.versions.length === held.versions.length && compareVersions(summary.version, held.version) > 0)) byKey.set(summary.key, summary);
    }
    const merged = [...byKey.keys()].sort();
    const conflicts = merged.slice(0, limit).map((key) => byKey.get(key)!);
    if (merged.length > limit || bound !== undefined) return { conflicts, next: conflicts.at(-1)?.key ?? bound };
    return { conflicts };
  }

  async resolveConflict(key: string, mutation: Mutation, seen: string, access: Access): Promise<ContextRecord> {
    if (!this.conflicts.tiered(key)) throw new MeshError('not_found', `${key} is under last-writer-wins: it is never in conflict`);
    // Every replica answers, so that the check sees each sibling the client may have been shown.
    const replicas = this.ring.replicas(key);
    const answers = (await this.gather(key, replicas, replicas.length)).answers;
    if (answers.length === 0) throw new MeshError('quorum_unavailable', `no replica of ${key} answered`);
    const current = this.combine(key, answers.map((a) => a.record));
    if (!current) throw new MeshError('not_found', `no context ${key}`);
    const context = checkResolution(stateOf(current), seen);
    // The check is done: the write goes with the context it checked, against the state just read.
    // (A strong resolution is acknowledged by a quorum; it does not run the strong rounds.)
    return this.writeResolution(key, current, context, this.payloadOf(mutation), access);
  }

  private async writeResolution(key: string, current: ContextRecord, context: VersionVector, payload: StoredPayload, access: Access): Promise<ContextRecord> {
    const resolver = this.conflicts.resolverFor(key);
    const read = stateOf(current);
    const clock = this.options.store.clock;
    if (access.session) clock.observe(access.session);
    const step = (local: Siblings<StoredPayload>): Reconciliation<StoredPayload> =>
      resolver.write(key, resolver.reconcile(key, local, read).state, context, payload, this.options.nodeTag, clock);
    const self = this.ring.replicas(key).some((m) => m.id === this.options.nodeId);
    const record = self ? await this.replica.coordinate(key, step) : recordOfState(key, step([]).state, TOMBSTONE_GRACE_MS);
    if (!record) throw new MeshError('internal', `resolution of ${key} stored nothing`);
    await this.write(record, access.consistency);
    return this.shown(record);
  }

  /** A strong write's record: its version is the operation's ballot. */
  private recordAt(key: string, mutation: Mutation, ballot: Version, wall: number): ContextRecord {
    return {
      key,
      value: mutation.value,
      contentType: mutation.contentType,
      version: ballot,
      expiresAt: mutation.ttlMs === undefined ? 0 : this.now() + mutation.ttlMs,
      retention: mutation.retention,
      updatedAt: wall,
    };
  }

  private stamp(key: string, mutation: Mutation, current: ContextRecord | undefined, access: Access): ContextRecord {
    const clock = this.options.store.clock;
    // A write must supersede what it replaces and what its session has seen, whatever this
    // sidecar's wall clock says.
    const replaced = current && versionTimestamp(current.version);
    if (replaced) clock.observe(replaced);
    if (access.session) clock.observe(access.session);
    const t = clock.tick();
    return {
      key,
      value: mutation.value,
      contentType: mutation.contentType,
      version: makeVersion(t, this.options.nodeTag),
      expiresAt: mutation.ttlMs === undefined ? 0 : this.now() + mutation.ttlMs,
      retention: mutation.retention,
      updatedAt: t.wall,
    };
  }

  /** Sends the record to its replicas; resolves once the level's acknowledgements are in. */
  private write(record: ContextRecord, level: Consistency): Promise<ContextRecord> {
    const replicas = this.ring.replicas(record.key);
    const required = level === 'strong' ? quorum(replicas.length) : 1;
    return new Promise((resolve, reject) => {
      let acks = 0;
      let failures = 0;
      let settled = false;
      const reasons: string[] = [];
      const finish = (err?: MeshError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.writes.labels(level, err ? 'indeterminate' : 'acknowledged').inc();
        if (err) reject(err);
        else resolve(record);
      };
      const indeterminate = (why: string): MeshError =>
        new MeshError(
          'indeterminate',
          `${level} write of ${record.key} (version ${record.version}) ${why}: ${acks} of ${replicas.length} replicas acknowledged, ${required} needed` +
            (reasons.length ? ` (${reasons.join('; ')})` : ''),
        );
      const timer = setTimeout(() => finish(indeterminate(`timed out after ${this.config.writeTimeout} ms`)), this.config.writeTimeout);
      if (replicas.length === 0) finish(indeterminate('has no replicas'));
      for (const member of replicas) {
        this.sendTo(member, record, true).then(
          () => {
            acks++;
            if (acks >= required) finish();
          },
          (err: Error) => {
            failures++;
            reasons.push(`${member.id}: ${err.message}`);
            // A replica refused this sidecar's epoch: not acknowledged, whatever others answer —
            // indeterminate while other replicas may store it, else refused outright.
            if (isFenceRefusal(err)) {
              const why = `replica ${member.id} refused this sidecar's ownership epoch (${err.message})`;
              const maybeStored = replicas.length - failures > 0;
              finish(maybeStored ? indeterminate(`is not acknowledged: ${why}`) : new MeshError('fenced', `${level} write of ${record.key} refused: ${why}`, { retryAfter: 1 }));
            }
            if (replicas.length - failures < required) finish(indeterminate('failed'));
          },
        );
      }
    });
  }

  /**
   * Applies locally or sends through the peer's link; a remote failure leaves a hint (when
   * `hint`) — unless the peer refused this sidecar's epoch: kept, the write would reach it after
   * re-admission although this sidecar was fenced when it took it.
   */
  private async sendTo(member: Member, record: ContextRecord, hint: boolean): Promise<ApplyOutcome> {
    if (member.id === this.options.nodeId) return this.replica.apply(record);
    try {
      return await this.link(member.id).send(record);
    } catch (err) {
      if (hint && !this.closed && !isFenceRefusal(err)) void this.hints.add(member.id, record);
      throw err;
    }
  }

  private link(peerId: string): PeerLink {
    let link = this.links.get(peerId);
    if (!link) {
      link = new PeerLink(peerId, {
        client: this.client,
        membership: this.membership,
        timeoutMs: this.config.peerTimeout,
        // Leave room for the message's own framing under the peer's body limit.
        maxBatchBytes: Math.max(1, this.config.maxMessageBytes - 1024),
        retryAfterMs: this.config.hints.interval,
        now: this.now,
      });
      this.links.set(peerId, link);
    }
    return link;
  }

  // ── listing ──────────────────────────────────────────────────────────────────────────────

  /** Keys under `prefix` across every live member (each holds only its replicas), merged in order. */
  async list(prefix: string, after: string | undefined, limit: number): Promise<ListPage> {
    const members = this.ring.liveIds().map((id) => this.membership.get(id)!).filter(Boolean);
    const pages = await Promise.allSettled(
      members.map(async (member) => {
        if (member.id === this.options.nodeId) return this.replica.list(prefix, after, limit);
        const response = PeerClient.ok(await this.client.call(member.address, LIST, { prefix, after, limit }, { timeoutMs: this.config.peerTimeout }), member.address, LIST);
        return response.json<ListPage>();
      }),
    );
    const answered = pages.filter((p): p is PromiseFulfilledResult<ListPage> => p.status === 'fulfilled').map((p) => p.value);
    if (answered.length === 0) throw new MeshError('quorum_unavailable', `no member answered the listing of ${prefix}`);
    // A member with more keys bounds the merged page: past its cursor, its next keys are unknown.
    let bound: string | undefined;
    for (const page of answered) if (page.next !== undefined && (bound === undefined || page.next < bound)) bound = page.next;
    const merged = [...new Set(answered.flatMap((p) => p.keys))].filter((k) => bound === undefined || k <= bound).sort();
    const keys = merged.slice(0, limit);
    if (merged.length > limit || bound !== undefined) return { keys, next: keys.at(-1) ?? bound };
    return { keys };
  }

  // ── hints, lag ───────────────────────────────────────────────────────────────────────────

  private deliverHints(): void {
    for (const peerId of this.hints.peerIds()) {
      if (this.delivering.has(peerId)) continue;
      const member = this.membership.get(peerId);
      if (!member || member.state === 'dead') continue;
      this.delivering.add(peerId);
      void this.deliverTo(member).finally(() => this.delivering.delete(peerId));
    }
  }

  private async deliverTo(member: Member): Promise<void> {
    let delivered = 0;
    try {
      while (!this.closed) {
        const batch = this.hints.take(member.id, this.config.maxMessageBytes - 1024);
        if (batch.length === 0) break;
        const body = encodeRecordList(batch.map((h) => h.record));
        PeerClient.ok(await this.client.call(member.address, HINT_DELIVER, body, { timeoutMs: this.config.peerTimeout, bulk: true }), member.address, HINT_DELIVER);
        this.hints.markDelivered(member.id, batch);
        this.links.get(member.id)?.markUp();
        delivered += batch.length;
      }
    } catch (err) {
      this.logger.debug({ peer: member.id, err: (err as Error).message }, 'hint delivery failed; will retry');
    }
    if (delivered > 0) this.logger.info({ peer: member.id, delivered, left: this.hints.count(member.id) }, 'delivered hinted writes to a returning replica');
  }

  private peerIds(): string[] {
    const ids = new Set<string>([...this.links.keys(), ...this.hints.peerIds()]);
    for (const m of this.membership.members()) if (m.id !== this.options.nodeId) ids.add(m.id);
    return [...ids].sort();
  }

  /** How far behind a peer is: undelivered bytes and the age of the oldest undelivered write. */
  lag(peerId: string): { seconds: number; bytes: number } {
    const backlog = this.links.get(peerId)?.backlog() ?? { bytes: 0, oldest: undefined };
    const hinted = this.hints.oldest(peerId);
    const oldest = backlog.oldest === undefined ? hinted : hinted === undefined ? backlog.oldest : Math.min(backlog.oldest, hinted);
    return { seconds: oldest === undefined ? 0 : Math.max(0, this.now() - oldest) / 1_000, bytes: backlog.bytes + this.hints.bytes(peerId) };
  }

  private checkLag(): void {
    for (const peerId of this.peerIds()) {
      const lag = this.lag(peerId);
      const behind = lag.seconds * 1_000 > this.config.lagWarning;
      if (behind && !this.lagging.has(peerId)) {
        this.lagging.add(peerId);
        this.logger.warn({ peer: peerId, lagSeconds: lag.seconds, lagBytes: lag.bytes, hints: this.hints.count(peerId) }, 'replica is lagging past context.replication.lagWarning');
      } else if (!behind && this.lagging.delete(peerId)) {
        this.logger.info({ peer: peerId }, 'replica caught up');
      }
    }
  }

  // ── the rest ─────────────────────────────────────────────────────────────────────────────

  /** The live value a condition is checked against and PATCH applies to (a sibling set's view). */
  private visible(record: ContextRecord | undefined): ContextRecord | undefined {
    return record ? this.present(record.key, record)?.record : undefined;
  }

  stats(): StoreStats {
    const peers = Object.fromEntries(this.peerIds().map((id) => [id, { ...this.lag(id), hints: this.hints.count(id), down: this.links.get(id)?.down ?? false }]));
    return {
      ...this.options.store.stats(),
      replication: { factor: this.ring.size, members: this.ring.liveIds(), applied: this.replica.applied, stale: this.replica.stale, peers },
    } as StoreStats;
  }

  /** Stops delivering; lets writes in flight to peers finish (bounded), keeps undelivered ones as hints. */
  async close(timeoutMs = 1_000): Promise<void> {
    if (this.closed) return;
    clearInterval(this.timer);
    await Promise.all([...this.links.values()].map((l) => l.idle(timeoutMs)));
    // Writes still queued become hints (sendTo's failure path) before the hint files close.
    for (const link of this.links.values()) link.abandon();
    for (const link of this.roundLinks.values()) link.abandon();
    await new Promise((resolve) => setImmediate(resolve));
    this.closed = true;
    for (const name of [REPLICATE, HINT_DELIVER, READ, LIST, PEEK, PREPARE, ACCEPT, CONFLICTS]) this.options.peering.router.remove(name);
    this.ring.close();
    await this.hints.close();
  }
}

function check(expected: Expectation, current: string | undefined, key: string): void {
  if (!satisfies(expected, current)) {
    throw new MeshError('precondition_failed', current === undefined ? `context ${key} does not exist` : `context ${key} is at version "${current}"`);
  }
}

interface RoundResult<T> {
  oks: Array<{ member: Member; value: T }>;
  /** Answers that did not pass (a replica that promised a higher ballot). */
  refusals: Array<{ member: Member; value: T }>;
  failures: Array<{ member: Member; error: Error }>;
  /** Calls still outstanding when the round resolved. */
  pendingAfter: number;
  late: Promise<Array<{ member: Member; value: T }>>;
  /** Every answer, once the last call has settled. */
  all: Promise<Pick<RoundResult<T>, 'oks' | 'refusals' | 'failures'>>;
}

/** The state `needed` answers hold at one ballot, if they do: it is on a quorum, so it stays. */
function agreement(states: readonly AcceptorState[], needed: number): AcceptorState | undefined {
  const counts = new Map<string, { state: AcceptorState; n: number }>();
  for (const state of states) {
    const id = `${state.record?.version ?? '-'}|${state.accepted ?? '-'}`;
    const entry = counts.get(id) ?? { state, n: 0 };
    entry.n++;
    counts.set(id, entry);
    if (entry.n >= needed) return entry.state;
  }
  return undefined;
}

/** The state accepted at the highest ballot (then the newest record). */
function newestState(states: readonly AcceptorState[]): AcceptorState {
  let best: AcceptorState = { record: undefined, accepted: undefined };
  for (const state of states) {
    if (state.accepted === undefined) continue;
    const byBallot = best.accepted === undefined ? 1 : compareVersions(state.accepted, best.accepted);
    if (byBallot > 0 || (byBallot === 0 && state.record && (!best.record || compareRecords(state.record, best.record) > 0))) best = state;
  }
  return best;
}

function tombstoneAt(key: string, ballot: Version, wall: number): ContextRecord {
  return { key, value: Buffer.alloc(0), contentType: '', version: ballot, expiresAt: 0, retention: 'normal', updatedAt: wall, tombstone: true };
}

function isBallot(value: unknown): value is Version {
  return typeof value === 'string' && value.includes('@') && versionTimestamp(value) !== undefined;
}

/** A peer's 409 stale_epoch: it refuses this sidecar's ownership epoch (peer/fencing.ts). */
function isFenceRefusal(err: unknown): boolean {
  return err instanceof MeshError && err.code === 'stale_epoch';
}

/** The replica set as one comparable text. */
function placementOf(replicas: readonly Member[]): string {
  return replicas.map((m) => m.id).join('\u0000');
}

function describeFailures(failures: ReadonlyArray<{ member: Member; error: Error }>): string {
  return failures.map((f) => `${f.member.id}: ${f.error.message}`).join('; ');
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A strong-operation message: `u32 length, JSON head, record list` (binary, values as stored). */
const frame = encodeFramed;
const unframe = decodeFramed;

/** A single-item PEEK or PREPARE is a JSON body; a framed one starts with its head's length (u32, < 16 MiB). */
function isJsonBody(body: Buffer): boolean {
  return body.length > 0 && body[0] === 0x7b;
}

/**
 * Answers a batch of strong-round items (see RoundLink) item by item, concurrently: the replica
 * serialises per key, and one item's refusal (a bad item, a failed store) fails that item alone.
 */
async function serveItems(
  body: Buffer,
  what: string,
  serve: (head: Record<string, unknown>, record: ContextRecord | undefined) => Promise<RoundAnswer>,
): Promise<{ body: Buffer }> {
  const { head, records } = unframe<{ items?: unknown }>(body, what);
  const items = head.items;
  if (!Array.isArray(items) || records.length !== items.length) throw new MeshError('bad_request', `${what}: a batch takes {"items": [object]} and one record slot per item`);
  const settled = await Promise.allSettled(
    items.map((item, i) => (item !== null && typeof item === 'object' ? serve(item as Record<string, unknown>, records[i]) : Promise.reject(new MeshError('bad_request', `${what}: item ${i} is not an object`)))),
  );
  const answers = settled.map((s) => {
    if (s.status === 'fulfilled') return s.value.head;
    const err = s.reason instanceof MeshError ? s.reason : new MeshError('internal', (s.reason as Error)?.message ?? String(s.reason));
    return { error: err.code, message: err.message };
  });
  return { body: frame({ answers }, settled.map((s) => (s.status === 'fulfilled' ? s.value.record : undefined))) };
}

function parseJson<T>(body: Buffer, what: string): T {
  try {
    return JSON.parse(body.toString('utf8')) as T;
  } catch {
    throw new MeshError('bad_request', `${what}: body is not JSON`);
  }
}

/** A version as a conflict log line shows it: the body as text, cut short. */
function describeVersion(version: ConflictVersion): { version: string; contentType: string; tombstone: boolean; value: string; bytes: number } {
  const text = version.value.subarray(0, LOGGED_BODY_BYTES).toString('utf8');
  return { version: version.version, contentType: version.contentType, tombstone: version.tombstone, value: text, bytes: version.value.length };
}
