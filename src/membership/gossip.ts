// The piggyback buffer of the failure detector: membership news rides on the pings, acks and
// ping-reqs the prober sends anyway, so the mesh learns of a suspicion or a refutation without a
// broadcast of its own. Each piece of news is sent a bounded number of times (a few times the log
// of the mesh size, as in SWIM's infection-style dissemination), least-sent first.

/** What one member says about another (or about itself) at an incarnation. */
export interface MemberUpdate {
  /** The member the news is about. */
  id: string;
  state: 'alive' | 'suspect' | 'dead';
  incarnation: number;
  /** The member that formed this opinion; for `alive`, the member itself. */
  from: string;
}

/** Updates carried by one message at most: keeps a ping small however busy the mesh is. */
export const MAX_PIGGYBACK_UPDATES = 8;
/** SWIM's λ: each update is retransmitted λ·⌈log2(n + 1)⌉ times. */
const RETRANSMIT_MULTIPLIER = 3;

interface Queued {
  update: MemberUpdate;
  sent: number;
}

export class GossipBuffer {
  /** One pending update per subject: newer news about a member replaces the older. */
  private readonly queued = new Map<string, Queued>();

  constructor(private readonly meshSize: () => number) {}

  add(update: MemberUpdate): void {
    this.queued.set(update.id, { update, sent: 0 });
  }

  /** Drops news about a member that left the member set. */
  forget(id: string): void {
    this.queued.delete(id);
  }

  get size(): number {
    return this.queued.size;
  }

  /** Up to `max` updates for one outgoing message, least-sent first; each counts as sent once. */
  take(max = MAX_PIGGYBACK_UPDATES, skip?: string): MemberUpdate[] {
    const limit = RETRANSMIT_MULTIPLIER * Math.max(1, Math.ceil(Math.log2(this.meshSize() + 1)));
    const chosen = [...this.queued.values()]
      .filter((q) => q.update.id !== skip)
      .sort((a, b) => a.sent - b.sent)
      .slice(0, max);
    for (const q of chosen) {
      q.sent++;
      if (q.sent >= limit) this.queued.delete(q.update.id);
    }
    return chosen.map((q) => q.update);
  }
}
