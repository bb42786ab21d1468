// The embedded L2: in process, for the demo and a single developer. Nothing is shared, so there is
// nothing to invalidate; durability comes from snapshots and the WAL, replayed into it at start.
// Records are kept encoded in an arena, not as objects, and found through an index over their key
// bytes there, not a Map of strings (record-arena.ts and arena-index.ts say why).
//
// Snapshots read it through a copy-on-write view: opening a view costs O(1); while it is open, the
// first change to a key saves that key's previous record (its pre-image) in the view, so the view
// reads the map exactly as it was when it opened, while writes carry on.
import { EventEmitter } from 'node:events';
import { decodeKeyedRecordAt, isExpired, keyedRecordVersion, type ContextRecord, type RecordOrKeyed } from '../record.js';
import { ArenaIndex } from './arena-index.js';
import { RecordArena } from './record-arena.js';
import { satisfies, type Expectation, type L2Tier, type ListPage, type WriteOutcome } from './l2.js';

/** The map as it was when the view opened. */
export class SnapshotView {
  /** Key → its record when the view opened (null: absent then), saved at the key's first change. */
  readonly preImages = new Map<string, ContextRecord | null>();
  constructor(
    /** Keys changed between the previous view and this one: what an incremental snapshot holds. */
    readonly changed: Set<string>,
  ) {}
}

/** Records per array handed to the snapshot writer: small enough to keep the event loop moving. */
const VIEW_BATCH = 512;

/** Records read from a snapshot; with `block` and `spans` (SnapshotBatch), where each lies in the block. */
export interface LoadBatch {
  records: readonly ContextRecord[];
  block?: Buffer;
  spans?: readonly number[];
}

export class MemoryL2 extends EventEmitter implements L2Tier {
  readonly kind = 'memory';
  readonly available = true;
  readonly coherent = true;
  private readonly arena = new RecordArena();
  /** Key → its record's slot in the arena. */
  private readonly index = new ArenaIndex(this.arena);
  private readonly views = new Set<SnapshotView>();
  /** Keys changed since the last view opened. */
  private changed = new Set<string>();

  constructor(private readonly now: () => number = Date.now) {
    super();
  }

  ready(): Promise<void> {
    return Promise.resolve();
  }

  get size(): number {
    return this.index.size;
  }

  /** Bytes the stored records occupy, and the bytes held for them (live plus not yet compacted). */
  get memory(): { liveBytes: number; heldBytes: number } {
    return { liveBytes: this.arena.liveBytes, heldBytes: this.arena.heldBytes };
  }

  /**
   * The record, its value a copy of its own: a caller may keep it (L1 does) and must not pin an
   * arena slab for as long as it does.
   */
  get(key: string): Promise<ContextRecord | undefined> {
    return Promise.resolve(this.read(key, true));
  }

  getMany(keys: readonly string[]): Promise<Array<ContextRecord | undefined>> {
    return Promise.resolve(keys.map((k) => this.read(k, true)));
  }

  write(record: ContextRecord, expected: Expectation): Promise<WriteOutcome> {
    const slot = this.liveSlot(record.key);
    const current = slot === undefined ? undefined : keyedRecordVersion(this.arena.bytes(slot), this.arena.start(slot), this.arena.end(slot));
    if (!satisfies(expected, current)) return Promise.resolve({ ok: false, current });
    this.apply(record);
    return Promise.resolve({ ok: true });
  }

  writeBatch(records: readonly ContextRecord[]): Promise<void> {
    for (const record of records) this.apply(record);
    return Promise.resolve();
  }

  /** Applies a record without a condition, synchronously: WAL replay at start uses it. */
  apply(record: ContextRecord): void {
    this.beforeChange(record.key);
    this.store(record, this.now());
  }

  /**
   * Makes the record the key's current one (a tombstone or an expired record: removes the key):
   * copied into the arena, or, given a slab, placed where it already lies there at [start, end).
   */
  private store(record: ContextRecord, now: number, slab = -1, start = 0, end = 0): void {
    const previous =
      record.tombstone || isExpired(record, now)
        ? this.index.remove(record.key)
        : this.index.put(slab < 0 ? this.arena.add(record) : this.arena.place(slab, start, end, record.expiresAt));
    if (previous !== undefined) this.arena.free(previous);
  }

  /**
   * Loads records read from a snapshot chain, in order, in bulk: a restore's path. Unlike apply,
   * the keys are not marked changed — the state loaded is the chain's tip, which the next
   * incremental builds on (CheckpointManager's `loaded`), so they are not changes since it — and a
   * batch that says where its records lie (SnapshotBatch) is kept where it is, its block adopted by
   * the arena, not copied. With a view open it is apply, record by record.
   */
  loadSnapshot(batch: LoadBatch): void {
    const { records, block, spans } = batch;
    if (this.views.size > 0) {
      for (const record of records) this.apply(record);
      return;
    }
    const now = this.now();
    const slab = block && spans ? this.arena.adopt(block) : -1;
    for (let i = 0; i < records.length; i++) this.store(records[i]!, now, slab, spans?.[2 * i], spans?.[2 * i + 1]);
    if (slab >= 0) this.arena.settle(slab);
  }

  private beforeChange(key: string): void {
    if (this.views.size > 0) {
      let before: ContextRecord | null | undefined;
      for (const view of this.views) {
        if (view.preImages.has(key)) continue;
        if (before === undefined) {
          const slot = this.index.get(key);
          before = slot === undefined ? null : this.decode(key, slot, false);
        }
        view.preImages.set(key, before);
      }
    }
    this.changed.add(key);
  }

  /** Opens a copy-on-write view; it takes over the set of keys changed since the previous one. */
  openView(): SnapshotView {
    const view = new SnapshotView(this.changed);
    this.changed = new Set();
    this.views.add(view);
    return view;
  }

  /** Closes a view; if its snapshot failed, its changed keys go back so the next incremental has them. */
  closeView(view: SnapshotView, succeeded: boolean): void {
    this.views.delete(view);
    if (!succeeded) for (const key of view.changed) this.changed.add(key);
  }

  /**
   * Every live record as of the view's opening, in batches; a record may come twice, identical.
   * Records unchanged since the opening come in their keyed form, a view into the arena, which the
   * snapshot writer copies as each batch arrives: nothing is decoded to be encoded again.
   */
  *viewRecords(view: SnapshotView): Generator<RecordOrKeyed[]> {
    const now = this.now();
    let batch: RecordOrKeyed[] = [];
    const emit = (record: ContextRecord | null | undefined): void => {
      if (record && !isExpired(record, now)) batch.push(record);
    };
    // The store may change between batches. Slot numbers stay the same while a key is unchanged, so
    // walking them meets every key unchanged since the opening once; a changed key has its
    // pre-image, its value as of the opening (null: created since, skipped).
    const savedEmitted = new Set<string>();
    for (let slot = 0; slot < this.arena.slotCount; slot++) {
      if (!this.arena.isLive(slot)) continue;
      const key = view.preImages.size > 0 ? this.arena.key(slot) : '';
      const saved = view.preImages.get(key);
      if (saved === undefined) {
        if (!this.expired(slot, now)) batch.push(this.keyed(slot));
      } else if (saved !== null && !savedEmitted.has(key)) {
        savedEmitted.add(key);
        emit(saved);
      }
      if (batch.length >= VIEW_BATCH) {
        yield batch;
        batch = [];
      }
    }
    // Keys deleted since the opening are no longer in the store.
    for (const [key, saved] of view.preImages) if (saved !== null && !savedEmitted.has(key)) emit(saved);
    if (batch.length > 0) yield batch;
  }

  /** The view's changed keys as of its opening: records, or tombstones for keys gone by then. */
  *viewChanges(view: SnapshotView, tombstoneAt: number): Generator<RecordOrKeyed[]> {
    const now = this.now();
    let batch: RecordOrKeyed[] = [];
    for (const key of view.changed) {
      const saved = view.preImages.get(key);
      const slot = saved === undefined ? this.index.get(key) : undefined;
      if (slot !== undefined && !this.expired(slot, now)) batch.push(this.keyed(slot));
      else if (saved && !isExpired(saved, now)) batch.push(saved);
      else batch.push({ key, value: Buffer.alloc(0), contentType: '', version: '', expiresAt: 0, retention: 'normal', updatedAt: tombstoneAt, tombstone: true });
      if (batch.length >= VIEW_BATCH) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length > 0) yield batch;
  }

  list(prefix: string, after: string | undefined, limit: number): Promise<ListPage> {
    const now = this.now();
    const keys: string[] = [];
    for (let slot = 0; slot < this.arena.slotCount; slot++) {
      if (!this.arena.isLive(slot)) continue;
      const key = this.arena.key(slot);
      if (key.startsWith(prefix) && (after === undefined || key > after) && !this.expired(slot, now)) keys.push(key);
    }
    keys.sort();
    const page = keys.slice(0, limit);
    return Promise.resolve(keys.length > limit ? { keys: page, next: page.at(-1)! } : { keys: page });
  }

  /** Every live record (values are views into the arena: use before the next change). */
  *entries(): IterableIterator<ContextRecord> {
    const now = this.now();
    for (let slot = 0; slot < this.arena.slotCount; slot++) {
      if (this.arena.isLive(slot) && !this.expired(slot, now)) yield this.decode(this.arena.key(slot), slot, false);
    }
  }

  /**
   * Removes a key leaving no trace for snapshots to carry (GDPR erase): not a change an incremental
   * records, so it must run with no view open.
   */
  erase(key: string): void {
    if (this.views.size > 0) throw new Error('erase while a snapshot view is open');
    const slot = this.index.remove(key);
    if (slot !== undefined) this.arena.free(slot);
    this.changed.delete(key);
  }

  /** Drops everything (a restore replaces the whole state). */
  clear(): void {
    for (let slot = 0; slot < this.arena.slotCount; slot++) if (this.arena.isLive(slot)) this.beforeChange(this.arena.key(slot));
    this.index.clear();
    this.arena.clear();
  }

  close(): Promise<void> {
    this.index.clear();
    this.arena.clear();
    return Promise.resolve();
  }

  private expired(slot: number, now: number): boolean {
    const expiresAt = this.arena.expiresAt(slot);
    return expiresAt !== 0 && expiresAt <= now;
  }

  /** The key's slot if it holds a live record; an expired one is removed on the way. */
  private liveSlot(key: string): number | undefined {
    const slot = this.index.get(key);
    if (slot === undefined || !this.expired(slot, this.now())) return slot;
    this.beforeChange(key);
    this.index.remove(key);
    this.arena.free(slot);
    return undefined;
  }

  private read(key: string, copy: boolean): ContextRecord | undefined {
    const slot = this.liveSlot(key);
    return slot === undefined ? undefined : this.decode(key, slot, copy);
  }

  /** The slot's record in its keyed form: a view into the arena. */
  private keyed(slot: number): Buffer {
    return this.arena.bytes(slot).subarray(this.arena.start(slot), this.arena.end(slot));
  }

  /** The slot's record; `copy`: its value in a buffer of its own rather than a view into the arena. */
  private decode(key: string, slot: number, copy: boolean): ContextRecord {
    const record = decodeKeyedRecordAt(this.arena.bytes(slot), this.arena.start(slot), this.arena.end(slot), key);
    if (copy) record.value = Buffer.from(record.value);
    return record;
  }
}
