// What this sidecar holds, arranged for anti-entropy and rebalancing: every held key's state
// digest, one Merkle tree per peer over the keys the two of them replicate (the key's replica set
// on the ring includes both), and the "strays" — keys held here that the ring no longer places
// here, which rebalancing hands to their replicas and then drops.
//
// A pair's tree covers the whole ring (WHOLE_RING) but only the keys both replicate: the two sides
// build it from the same ring, so equal holdings give equal trees, and a key one side lacks shows
// as a difference. That is the "ring ranges between replica pairs" of the design, without having
// to cut arcs: the set of keys two members share is a union of arcs of the ring.
//
// Maintained from the replica store's change hook: each write updates the key's digest and stray
// mark at once (one ring lookup) and its tree entries when a tree is next read (an anti-entropy
// round), so a key written many times between rounds is hashed into the trees once, not per write.
// Rebuilt from the held digests whenever the ring changes (placement moved); loaded from the store
// at start.
import { createHash } from 'node:crypto';
import type { ContextRecord } from '../record.js';
import { MerkleTree, WHOLE_RING } from './merkle.js';
import type { ReplicaStore } from './replica-store.js';
import type { PlacementRing } from './ring.js';

/** Keys listed per page when the index is loaded from the store. */
const LOAD_PAGE = 2_048;

/**
 * The string a key's tree entry hashes: it changes whenever the held state changes. Today the
 * version (plus the tombstone mark); a sibling set would use clock.ts `stateTag` here.
 */
export function recordDigest(record: ContextRecord): string {
  return record.tombstone ? `${record.version}~` : record.version;
}

export class KeyIndex {
  private readonly digests = new Map<string, string>();
  private trees = new Map<string, MerkleTree>();
  private readonly strays = new Set<string>();
  /** Keys whose state changed since their tree entries were last updated (see `settle`). */
  private readonly unsettled = new Set<string>();
  private ringIds: readonly string[] = [];
  private ringFingerprint = '';

  constructor(
    readonly selfId: string,
    private readonly ring: PlacementRing,
  ) {
    this.rebuild();
  }

  get size(): number {
    return this.digests.size;
  }

  /** The ring this index is arranged for: two sides compare trees only when theirs match. */
  get fingerprint(): string {
    return this.ringFingerprint;
  }

  /** Member ids the trees were built over. */
  get members(): readonly string[] {
    return this.ringIds;
  }

  /** Records a key's new state here (undefined: no longer held). */
  update(key: string, record: ContextRecord | undefined): void {
    if (record) this.set(key, recordDigest(record));
    else this.delete(key);
  }

  set(key: string, digest: string): void {
    this.digests.set(key, digest);
    if (this.ring.replicas(key).some((m) => m.id === this.selfId)) this.strays.delete(key);
    else this.strays.add(key);
    this.unsettled.add(key);
  }

  delete(key: string): void {
    if (!this.digests.delete(key)) return;
    this.strays.delete(key);
    this.unsettled.add(key);
  }

  digestOf(key: string): string | undefined {
    return this.digests.get(key);
  }

  /** The tree of the keys this sidecar and `peerId` both replicate (empty when they share none). */
  treeFor(peerId: string): MerkleTree {
    this.settle();
    let tree = this.trees.get(peerId);
    if (!tree) {
      tree = new MerkleTree(WHOLE_RING);
      if (this.ringIds.includes(peerId) && peerId !== this.selfId) this.trees.set(peerId, tree);
    }
    return tree;
  }

  /** Keys held here that the ring places elsewhere. */
  strayKeys(): string[] {
    return [...this.strays];
  }

  get strayCount(): number {
    return this.strays.size;
  }

  isStray(key: string): boolean {
    return this.strays.has(key);
  }

  /** Every held key with its digest. */
  entries(): IterableIterator<[string, string]> {
    return this.digests.entries();
  }

  /**
   * Re-arranges every held key for the ring as it is now: a full pass over the index (about a
   * second per 200k keys), run when placement changes.
   */
  rebuild(): void {
    this.ringIds = [...this.ring.liveIds()];
    this.ringFingerprint = fingerprintOf(this.ringIds, this.ring.size);
    this.trees = new Map();
    this.strays.clear();
    this.unsettled.clear();
    for (const id of this.ringIds) if (id !== this.selfId) this.trees.set(id, new MerkleTree(WHOLE_RING));
    for (const [key, digest] of this.digests) this.place(key, digest);
  }

  /** Whether the ring changed since the last rebuild. */
  get outdated(): boolean {
    const ids = this.ring.liveIds();
    return ids.length !== this.ringIds.length || ids.some((id, i) => id !== this.ringIds[i]);
  }

  /** Loads every key the store holds (tombstones included): at start, before peers can call. */
  async load(replica: ReplicaStore, list: (after: string | undefined, limit: number) => Promise<{ keys: string[]; next?: string }>): Promise<number> {
    let after: string | undefined;
    for (;;) {
      const page = await list(after, LOAD_PAGE);
      const records = await replica.readMany(page.keys);
      page.keys.forEach((key, i) => this.update(key, records[i]));
      if (page.next === undefined || page.keys.length === 0) break;
      after = page.next;
    }
    return this.digests.size;
  }

  /** Brings the trees up to date with the keys changed since they were last read. */
  private settle(): void {
    for (const key of this.unsettled) {
      const digest = this.digests.get(key);
      if (digest !== undefined) {
        this.place(key, digest);
        continue;
      }
      for (const peer of this.peersOf(key)) this.trees.get(peer)?.delete(key);
    }
    this.unsettled.clear();
  }

  private place(key: string, digest: string): void {
    const replicas = this.ring.replicas(key);
    let mine = false;
    for (const member of replicas) if (member.id === this.selfId) mine = true;
    if (!mine) {
      this.strays.add(key);
      return;
    }
    this.strays.delete(key);
    for (const member of replicas) if (member.id !== this.selfId) this.trees.get(member.id)?.set(key, digest);
  }

  private peersOf(key: string): string[] {
    return this.ring.replicas(key).map((m) => m.id).filter((id) => id !== this.selfId);
  }
}

/** Names a placement: the live member ids and the replica count. */
export function fingerprintOf(ids: readonly string[], factor: number): string {
  return createHash('sha256').update(`${factor}|${ids.join(',')}`).digest('hex').slice(0, 16);
}
