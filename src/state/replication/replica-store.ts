// This sidecar's copy of the keys it replicates. Records arrive already stamped (from a local
// coordinator or a peer) and are applied only when newer than what is held, so delivering the same
// write twice, late, or out of order changes nothing: replication, read repair and hint delivery
// all rely on that.
//
// Deletions are kept as tombstone records (for TOMBSTONE_GRACE_MS) rather than removed: a replica
// that missed a delete must not bring the value back through read repair.
import { KeyedLock } from '../keyed-lock.js';
import { MeshError } from '../../errors/table.js';
import type { Expectation, L2Tier, ListPage } from '../cache/l2.js';
import type { LocalStore } from '../local-store.js';
import type { ContextRecord } from '../record.js';
import { compareVersions, makeVersion, type Version } from '../version.js';
import type { Siblings } from './clock.js';
import { recordOfState, SIBLINGS_CONTENT_TYPE, stateOf, type StoredPayload } from './codec.js';
import type { ConflictPolicies, Reconciliation } from './merge.js';
import { compareRecords } from './order.js';

/** How long a deletion is remembered. A replica away for longer may resurrect what was deleted. */
export const TOMBSTONE_GRACE_MS = 24 * 3_600_000;
/** How a tombstone is stored in the local tiers, where a real tombstone would delete the key. */
export const TOMBSTONE_CONTENT_TYPE = 'application/vnd.ctxmesh.tombstone';
/** Times an apply re-reads after L2 changed under it (another writer sharing a Redis L2). */
const APPLY_ATTEMPTS = 8;

export type ApplyOutcome = 'applied' | 'stale';
/** Told of every reconciliation of a tiered key that changed what is stored (conflicts, dropped siblings). */
export type ReconcileListener = (key: string, outcome: Reconciliation<StoredPayload>) => void;
/** A key's new state on this replica: the record stored, or undefined when the key was dropped. */
export type ReplicaChangeListener = (key: string, record: ContextRecord | undefined) => void;
/** Keys whose promise and accepted ballot are remembered; past it the oldest are folded into the floor. */
const MAX_BALLOT_ENTRIES = 100_000;

/**
 * What a replica answers a strong read or a prepare with: its record and the ballot at which it
 * accepted it (the record's version, or higher when a strong read re-accepted it unchanged).
 */
export interface AcceptorState {
  record: ContextRecord | undefined;
  accepted: Version | undefined;
}

export type PrepareAnswer = ({ ok: true } & AcceptorState) | { ok: false; promised: Version };
/** `next`: the ballot promised along with the accept, when the accept asked for one. */
export type AcceptAnswer = { ok: true; next?: Version } | { ok: false; promised: Version };

interface Ballots {
  promised?: Version;
  accepted?: Version;
}

export interface ReplicaStoreOptions {
  store: LocalStore;
  l2: L2Tier;
  /** The agent's WAL append (the same one the local store uses). */
  appendWal: (record: ContextRecord) => Promise<number>;
  now?: () => number;
}

export class ReplicaStore {
  private readonly store: LocalStore;
  private readonly l2: L2Tier;
  private readonly now: () => number;
  private readonly locks = new KeyedLock();
  /**
   * The acceptor state of strong operations, per key (insertion order = age). In memory: after a
   * restart, `floor` (this replica's clock at start) refuses every ballot issued before it, which
   * stands in for the promises it made before; ballots raised by re-accepts are not recalled.
   */
  private readonly ballots = new Map<string, Ballots>();
  private floor: Version;
  applied = 0;
  stale = 0;
  /** Told of every change this replica stores (anti-entropy's key index follows them). */
  private readonly changeListeners: ReplicaChangeListener[] = [];
  /** The conflict tiers (merge.ts): keys under json-merge or siblings hold sibling sets. */
  private conflicts: ConflictPolicies<StoredPayload> | undefined;
  private onReconcile: ReconcileListener | undefined;

  constructor(private readonly options: ReplicaStoreOptions) {
    this.store = options.store;
    this.l2 = options.l2;
    this.now = options.now ?? Date.now;
    this.floor = makeVersion(options.store.clock.tick(), '');
  }

  /** The held version of a key, tombstones included (as `tombstone: true`). */
  async read(key: string): Promise<ContextRecord | undefined> {
    const result = await this.store.get(key);
    return result ? fromStored(result.record) : undefined;
  }

  readMany(keys: readonly string[]): Promise<Array<ContextRecord | undefined>> {
    return Promise.all(keys.map((key) => this.read(key)));
  }

  /**
   * Stores `record` if it is newer than the held version; durable (WAL) before it resolves. A
   * record older than a ballot this replica promised to a strong operation on the key is stale
   * too: it comes from a write that operation may not have seen (a late hint of a failed write),
   * and taking it now would let it outrank what that operation decides. A record at exactly the
   * promised ballot is that operation's own proposal (a hint of its accept that failed here): a
   * replica that promised a ballot may take its proposal.
   */
  apply(record: ContextRecord): Promise<ApplyOutcome> {
    return this.locks.run(record.key, async () => {
      const promised = this.ballots.get(record.key)?.promised;
      if (promised !== undefined && compareVersions(record.version, promised) < 0) {
        this.stale++;
        return 'stale';
      }
      const conflicts = this.conflicts;
      const outcome = conflicts?.tiered(record.key)
        ? await this.mergeLocked(record.key, (local) => conflicts.resolverFor(record.key).reconcile(record.key, local, stateOf(fromStored(record))))
        : await this.applyLocked(record, false);
      if (outcome === 'applied') {
        const entry = this.ballots.get(record.key);
        if (entry) entry.accepted = record.version;
      }
      return outcome;
    });
  }

  /**
   * Sets the conflict tiers. From then on a record of a tiered key is merged (clock.ts sync, then
   * the tier's cap) into the held sibling set instead of replacing an older one, so replicas
   * converge whatever order writes, repairs and anti-entropy deliver them in. `onReconcile` hears
   * every reconciliation that changed the stored state.
   */
  useConflicts(conflicts: ConflictPolicies<StoredPayload>, onReconcile?: ReconcileListener): void {
    this.conflicts = conflicts;
    this.onReconcile = onReconcile;
  }

  /**
   * A coordinator's step on a tiered key, under the key's lock: `step` gets the held sibling set
   * and returns the reconciliation to store (clock.ts invariant 1: the dot is stamped against the
   * state held here). Resolves with the record stored, or the held one when nothing changed.
   */
  coordinate(key: string, step: (local: Siblings<StoredPayload>) => Reconciliation<StoredPayload>): Promise<ContextRecord | undefined> {
    return this.locks.run(key, async () => {
      let stored: ContextRecord | undefined;
      await this.mergeLocked(key, step, (record) => (stored = record));
      return stored ?? (await this.read(key));
    });
  }

  /**
   * Merges into the held sibling set of `key` (L2 compare-and-set, retried while another writer
   * sharing L2 changes it): 'stale' when the set stays as it is.
   */
  private async mergeLocked(
    key: string,
    step: (local: Siblings<StoredPayload>) => Reconciliation<StoredPayload>,
    onStored?: (record: ContextRecord) => void,
  ): Promise<ApplyOutcome> {
    const queue = this.store.queue;
    for (let attempt = 0; ; attempt++) {
      const current = queue?.pending(key) ?? (await this.l2.get(key));
      const outcome = step(stateOf(current && fromStored(current)));
      if (!outcome.changed || outcome.state.length === 0) {
        this.stale++;
        return 'stale';
      }
      const record = recordOfState(key, outcome.state, TOMBSTONE_GRACE_MS);
      this.store.observe(record.version);
      if (queue) {
        this.store.replayQueued(record, await this.log(record));
      } else {
        const expected: Expectation = current ? { kind: 'version', versions: [current.version] } : { kind: 'absent' };
        if (!(await this.l2.write(record, expected)).ok) {
          if (attempt + 1 >= APPLY_ATTEMPTS) throw new MeshError('internal', `could not merge into ${key}: L2 kept changing under it`);
          continue;
        }
        await this.log(record);
        this.store.l1.set(record);
      }
      this.applied++;
      onStored?.(record);
      this.onReconcile?.(key, outcome);
      this.notifyChange(key, record);
      return 'applied';
    }
  }

  // ── the acceptor of strong operations ──────────────────────────────────────────────────
  // A strong operation on a key runs two rounds over a quorum of its replicas: prepare (promise
  // to refuse lower ballots, answer the held record and its ballot), then accept (store the
  // decided record at that ballot, unless a higher ballot was promised meanwhile). Both check and
  // update under the key's lock, so of two operations racing on a key at most one gets a quorum of
  // accepts: the compare-and-set that makes conditional writes safe across coordinators.

  /** The held record and its ballot, without promising anything (a strong read's first try). */
  peek(key: string): Promise<AcceptorState> {
    return this.locks.run(key, async () => {
      const record = await this.read(key);
      return { record, accepted: this.acceptedBallot(key, record) };
    });
  }

  prepare(key: string, ballot: Version): Promise<PrepareAnswer> {
    return this.locks.run(key, async () => {
      this.store.observe(ballot);
      const record = await this.read(key);
      const accepted = this.acceptedBallot(key, record);
      const bar = maxVersion(maxVersion(this.floor, this.ballots.get(key)?.promised), accepted)!;
      if (compareVersions(ballot, bar) <= 0) return { ok: false, promised: bar };
      this.entry(key).promised = ballot;
      return { ok: true, record, accepted };
    });
  }

  /**
   * Stores `record` as the key's state at `ballot` — replacing whatever is held, even a record
   * with a later version (a write that never reached a quorum): the quorum decided otherwise.
   *
   * `next` (higher than `ballot`, from the same proposer) is promised once the record is
   * accepted: the prepare of the proposer's next operation on the key, answered now with the
   * state just accepted. That proposer may then send its next accept at exactly `next` without a
   * prepare round; any other ballot up to `next` is refused meanwhile, and anything that changes
   * this replica's state (a higher ballot, a newer record) makes that accept fail here.
   */
  accept(key: string, ballot: Version, record: ContextRecord, next?: Version): Promise<AcceptAnswer> {
    if (record.key !== key) return Promise.reject(new MeshError('bad_request', `accept of ${key} carries a record of ${record.key}`));
    return this.locks.run(key, async () => {
      this.store.observe(ballot);
      const held = await this.read(key);
      // A record held without an accept (a hint, a read repair) counts as accepted at its version.
      const bar = maxVersion(maxVersion(this.floor, this.ballots.get(key)?.promised), this.acceptedBallot(key, held))!;
      if (compareVersions(ballot, bar) < 0) return { ok: false, promised: bar };
      if (!held || held.version !== record.version) {
        await this.applyLocked(record, true);
        // A strong write settles a tiered key: whatever conflict it was in is over.
        if (this.conflicts?.tiered(key)) this.onReconcile?.(key, { state: stateOf(fromStored(record)), changed: true, dropped: [] });
      }
      const entry = this.entry(key);
      entry.accepted = ballot;
      if (next !== undefined && compareVersions(next, ballot) > 0) {
        this.store.observe(next);
        entry.promised = next;
        return { ok: true, next };
      }
      entry.promised = ballot;
      return { ok: true };
    });
  }

  /**
   * The key's state if this replica still holds exactly the promise `promised` (made by an accept
   * with `next`) and still holds the state accepted at `accepted`: nothing else was promised,
   * accepted or applied on the key since. Else undefined.
   */
  promisedState(key: string, promised: Version, accepted: Version): Promise<AcceptorState | undefined> {
    const entry = this.ballots.get(key);
    if (entry?.promised !== promised || entry.accepted !== accepted) return Promise.resolve(undefined);
    return this.locks.run(key, async () => {
      const now = this.ballots.get(key);
      if (now?.promised !== promised || now.accepted !== accepted) return undefined;
      const record = await this.read(key);
      return this.acceptedBallot(key, record) === accepted ? { record, accepted } : undefined;
    });
  }

  /**
   * Withdraws the promise of `next` made with an accept at `ballot`, if nothing was promised since:
   * its proposer (this sidecar) will never use it, as the write it came with was not
   * acknowledged. The replica then refuses only what the accept alone would have refused, so hints
   * and repairs of what a quorum decided meanwhile can land here.
   */
  withdraw(key: string, next: Version, ballot: Version): void {
    const entry = this.ballots.get(key);
    if (entry?.promised === next && entry.accepted === ballot) entry.promised = ballot;
  }

  private acceptedBallot(key: string, record: ContextRecord | undefined): Version | undefined {
    return maxVersion(record?.version, this.ballots.get(key)?.accepted);
  }

  private entry(key: string): Ballots {
    let entry = this.ballots.get(key);
    if (entry) {
      // Refresh its age.
      this.ballots.delete(key);
    } else {
      entry = {};
      while (this.ballots.size >= MAX_BALLOT_ENTRIES) {
        const [oldestKey, oldest] = this.ballots.entries().next().value as [string, Ballots];
        this.ballots.delete(oldestKey);
        // Forgetting a key's ballots is safe only if every ballot up to them is refused everywhere.
        this.floor = maxVersion(maxVersion(this.floor, oldest.promised), oldest.accepted)!;
      }
    }
    this.ballots.set(key, entry);
    return entry;
  }

  private async applyLocked(record: ContextRecord, replace: boolean): Promise<ApplyOutcome> {
    this.store.observe(record.version);
    const stored = toStored(record, this.now());
    const queue = this.store.queue;
    for (let attempt = 0; ; attempt++) {
      const current = queue?.pending(record.key) ?? (await this.l2.get(record.key));
      if (!replace && current && compareRecords(current, record) >= 0) {
        this.stale++;
        return 'stale';
      }
      if (queue) {
        // Write-behind: the WAL is the durability point; the queue carries it to L2.
        const lsn = await this.log(stored);
        this.store.replayQueued(stored, lsn);
        break;
      }
      const expected: Expectation = current ? { kind: 'version', versions: [current.version] } : { kind: 'absent' };
      const outcome = await this.l2.write(stored, expected);
      if (!outcome.ok) {
        if (attempt + 1 >= APPLY_ATTEMPTS) throw new MeshError('internal', `could not apply ${record.key}: L2 kept changing under it`);
        continue;
      }
      await this.log(stored);
      if (stored.contentType === TOMBSTONE_CONTENT_TYPE) this.store.l1.delete(record.key);
      else this.store.l1.set(stored);
      break;
    }
    this.applied++;
    this.notifyChange(record.key, record);
    return 'applied';
  }

  /**
   * Calls `listener` after each record this replica stores (apply, accept: the record as given,
   * tombstones flagged) and each key it drops (`undefined`). Returns the unsubscribe function.
   */
  onChange(listener: ReplicaChangeListener): () => void {
    this.changeListeners.push(listener);
    return () => {
      const at = this.changeListeners.indexOf(listener);
      if (at >= 0) this.changeListeners.splice(at, 1);
    };
  }

  private notifyChange(key: string, record: ContextRecord | undefined): void {
    for (const listener of this.changeListeners) listener(key, record);
  }

  /**
   * Removes the key from this replica — no tombstone is kept — if it still holds exactly
   * `version`. Rebalancing calls it once the key's replicas under the new placement confirmed they
   * hold that version or a newer one; a write that arrived meanwhile keeps the key (false).
   */
  drop(key: string, version: Version): Promise<boolean> {
    return this.locks.run(key, async () => {
      const queue = this.store.queue;
      const current = queue?.pending(key) ?? (await this.l2.get(key));
      if (!current || current.tombstone || current.version !== version) return false;
      // A real tombstone deletes the key from L2 and, replayed from the WAL, at the next start.
      const removal: ContextRecord = { key, value: Buffer.alloc(0), contentType: '', version, expiresAt: 0, retention: 'normal', updatedAt: this.now(), tombstone: true };
      if (queue) {
        this.store.replayQueued(removal, await this.log(removal));
      } else {
        const outcome = await this.l2.write(removal, { kind: 'version', versions: [version] });
        if (!outcome.ok) return false;
        await this.log(removal);
      }
      this.store.l1.delete(key);
      this.notifyChange(key, undefined);
      return true;
    });
  }

  /** Live keys under `prefix` held here (tombstones left out). */
  async list(prefix: string, after: string | undefined, limit: number): Promise<ListPage> {
    const page = await this.store.list(prefix, after, limit);
    const held = await this.readMany(page.keys);
    // A sibling set of deletions only is a deleted key too.
    const live = (record: ContextRecord | undefined): boolean =>
      record !== undefined && !record.tombstone && (record.contentType !== SIBLINGS_CONTENT_TYPE || stateOf(record).some((v) => !v.value.tombstone));
    const keys = page.keys.filter((_, i) => live(held[i]));
    return page.next === undefined ? { keys } : { keys, next: page.next };
  }

  private async log(record: ContextRecord): Promise<number> {
    try {
      return await this.options.appendWal(record);
    } catch (err) {
      throw new MeshError('internal', `WAL append failed: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** The form kept in L1/L2/WAL: a tombstone becomes an expiring record the tiers keep. */
export function toStored(record: ContextRecord, now: number): ContextRecord {
  if (!record.tombstone) return record;
  const { tombstone: _tombstone, ...rest } = record;
  return { ...rest, value: Buffer.alloc(0), contentType: TOMBSTONE_CONTENT_TYPE, expiresAt: now + TOMBSTONE_GRACE_MS, retention: 'normal' };
}

function maxVersion(a: Version | undefined, b: Version | undefined): Version | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return compareVersions(a, b) >= 0 ? a : b;
}

export function fromStored(record: ContextRecord): ContextRecord {
  return record.contentType === TOMBSTONE_CONTENT_TYPE ? { ...record, tombstone: true } : record;
}
