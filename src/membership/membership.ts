// Who is in the mesh, as one sidecar sees it. Replication places keys on a ring over the live
// members; the health monitor and the xDS client change membership. Everything that needs the
// member set reads it here and follows its 'change' event, whatever the source: static config
// today, xDS endpoints and health declarations later.
import { EventEmitter } from 'node:events';

/** alive: serving. suspect: missed probes, not yet declared. dead: declared failed. draining: leaving on purpose. */
export type MemberState = 'alive' | 'suspect' | 'dead' | 'draining';

export interface Member {
  /** The sidecar's node.id. */
  readonly id: string;
  /** host:port of its inbound mTLS listener, where peer traffic (replication, probes) arrives. */
  readonly address: string;
  readonly zone?: string;
  readonly state: MemberState;
  /**
   * Ownership epoch: raised each time the member is declared dead or drained and when it rejoins,
   * so that a member coming back from a pause cannot act on ownership it has lost (fencing).
   */
  readonly epoch: number;
}

export interface MembershipEvents {
  /** The member set or a member's state changed; `members` is the whole new view, self included. */
  change: [members: readonly Member[]];
}

export interface Membership extends EventEmitter<MembershipEvents> {
  /** This sidecar. */
  readonly self: Member;
  /** Every known member, self included, in a stable order (by id). */
  members(): readonly Member[];
  /** Members that may own keys: alive or suspect (a suspect still owns until declared dead). */
  live(): readonly Member[];
  get(id: string): Member | undefined;
}

/**
 * A member set that changes only when told: from config (`context.replication.peers`) at start,
 * then from whoever learns better (xDS endpoints, health declarations) through `update`/`upsert`.
 */
export class MutableMembership extends EventEmitter<MembershipEvents> implements Membership {
  private byId = new Map<string, Member>();

  constructor(
    public self: Member,
    peers: readonly Member[] = [],
  ) {
    super();
    this.byId.set(self.id, self);
    for (const peer of peers) if (peer.id !== self.id) this.byId.set(peer.id, peer);
  }

  members(): readonly Member[] {
    return [...this.byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  live(): readonly Member[] {
    return this.members().filter((m) => m.state === 'alive' || m.state === 'suspect');
  }

  get(id: string): Member | undefined {
    return this.byId.get(id);
  }

  /** Adds or changes one member; emits 'change' only when something differs. */
  upsert(member: Member): void {
    const before = this.byId.get(member.id);
    if (before && sameMember(before, member)) return;
    this.byId.set(member.id, member);
    if (member.id === this.self.id) this.self = member;
    this.emit('change', this.members());
  }

  /** Replaces the whole peer set (self is kept); emits 'change' only when something differs. */
  update(peers: readonly Member[]): void {
    const next = new Map<string, Member>([[this.self.id, this.self]]);
    for (const peer of peers) if (peer.id !== this.self.id) next.set(peer.id, peer);
    const changed = next.size !== this.byId.size || [...next].some(([id, m]) => !this.byId.has(id) || !sameMember(this.byId.get(id)!, m));
    if (!changed) return;
    this.byId = next;
    this.emit('change', this.members());
  }
}

function sameMember(a: Member, b: Member): boolean {
  return a.id === b.id && a.address === b.address && a.zone === b.zone && a.state === b.state && a.epoch === b.epoch;
}
