// Placement: which members hold a key. A ketama ring (the `hashring` package) over the live
// members' ids; a key's replica set is the first N distinct members clockwise from its hash, in
// the ring's own order (the first is the key's primary). The ring is rebuilt whenever the member
// set changes, so placement always follows `membership.live()`.
import { EventEmitter } from 'node:events';
import HashRing from 'hashring';
import type { Member, Membership } from '../../membership/membership.js';

/** Replica sets kept by `replicas` (a few KiB per hundred keys). */
const RECENT_LOOKUPS = 1_024;

export interface PlacementEvents {
  /** The ring was rebuilt over a different set of live members. */
  change: [ids: readonly string[]];
}

export class PlacementRing extends EventEmitter<PlacementEvents> {
  private ring: HashRing;
  private ids: string[] = [];
  private members = new Map<string, Member>();
  /** Replica sets of recently looked-up keys, oldest first; cleared whenever the ring is rebuilt. */
  private readonly recent = new Map<string, readonly Member[]>();
  private readonly onChange = (): void => this.rebuild();

  constructor(
    private readonly membership: Membership,
    /** Replicas per key (context.replication.factor); fewer while fewer members are live. */
    readonly factor: number,
  ) {
    super();
    this.ring = new HashRing([]);
    this.rebuild();
    membership.on('change', this.onChange);
  }

  /** Replicas a key has now: the configured factor, or every live member when there are fewer. */
  get size(): number {
    return Math.min(this.factor, this.ids.length);
  }

  /**
   * The key's replica set, primary first. Recent answers are kept (until the ring changes): one
   * write looks its key up several times (the coordinator's round, each replica's apply, the
   * anti-entropy index), and a ring lookup hashes the key.
   */
  replicas(key: string): readonly Member[] {
    const known = this.recent.get(key);
    if (known) return known;
    const replicas: readonly Member[] = this.ids.length === 0 ? [] : Object.freeze(this.ring.range(key, this.size, true).map((id) => this.members.get(id)!));
    if (this.recent.size >= RECENT_LOOKUPS) this.recent.delete(this.recent.keys().next().value!);
    this.recent.set(key, replicas);
    return replicas;
  }

  /** Live member ids the ring is built over, sorted. */
  liveIds(): readonly string[] {
    return this.ids;
  }

  close(): void {
    this.membership.off('change', this.onChange);
  }

  private rebuild(): void {
    const live = this.membership.live();
    this.members = new Map(live.map((m) => [m.id, m]));
    this.recent.clear();
    const ids = live.map((m) => m.id).sort();
    if (ids.length === this.ids.length && ids.every((id, i) => id === this.ids[i])) return;
    this.ids = ids;
    this.ring = new HashRing(ids);
    this.emit('change', ids);
  }
}
