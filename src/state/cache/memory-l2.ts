// The embedded L2: an in-process map, for the demo and a single developer. Nothing is shared, so
// there is nothing to invalidate; durability comes from snapshots and the WAL, replayed into it at
// start.
//
// Snapshots read it through a copy-on-write view: opening a view costs O(1); while it is open, the
// first change to a key saves that key's previous record (its pre-image) in the view, so the view
// reads the map exactly as it was when it opened, while writes carry on.
import { EventEmitter } from 'node:events';
import { isExpired, type ContextRecord } from '../record.js';
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

/**
 * A value whose buffer is at least this big shares it with others: a restore's read slab or a
 * decrypted/inflated block (snapshot-file.ts). Smaller ones (Buffer's 8 KiB pool) are not tracked.
 */
const SHARED_BUFFER_MIN_BYTES = 64 * 1024;

/** The values loaded from one shared buffer, and how many of them are still the current ones. */
interface SharedBuffer {
  keys: string[];
  current: number;
}

export class MemoryL2 extends EventEmitter implements L2Tier {
  readonly kind = 'memory';
  readonly available = true;
  readonly coherent = true;
  private readonly records = new Map<string, ContextRecord>();
  private readonly views = new Set<SnapshotView>();
  /** Keys changed since the last view opened. */
  private changed = new Set<string>();
  /** Buffers that values loaded by loadSnapshot share (weak: one none uses is garbage as usual). */
  private shared = new WeakMap<ArrayBufferLike, SharedBuffer>();
  /** How many of them still hold a current value: while 0, writes skip the bookkeeping. */
  private sharedCount = 0;

  constructor(private readonly now: () => number = Date.now) {
    super();
  }

  ready(): Promise<void> {
    return Promise.resolve();
  }

  get size(): number {
    return this.records.size;
  }

  get(key: string): Promise<ContextRecord | undefined> {
    return Promise.resolve(this.read(key));
  }

  getMany(keys: readonly string[]): Promise<Array<ContextRecord | undefined>> {
    return Promise.resolve(keys.map((k) => this.read(k)));
  }

  write(record: ContextRecord, expected: Expectation): Promise<WriteOutcome> {
    const current = this.read(record.key)?.version;
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
    if (this.sharedCount > 0) this.release(this.records.get(record.key));
    if (record.tombstone || isExpired(record, this.now())) this.records.delete(record.key);
    else this.records.set(record.key, record);
  }

  /**
   * Loads records read from a snapshot chain, in order, in bulk: a restore's path. Unlike apply,
   * the keys are not marked changed — the state loaded is the chain's tip, which the next
   * incremental builds on (CheckpointManager's `loaded`), so they are not changes since it — and
   * values sharing a read buffer are tracked so the last ones still current in a mostly replaced
   * buffer get copied out (see release). With a view open it is apply, record by record.
   */
  loadSnapshot(records: readonly ContextRecord[]): void {
    if (this.views.size > 0) {
      for (const record of records) this.apply(record);
      return;
    }
    const now = this.now();
    for (const record of records) {
      if (this.sharedCount > 0) this.release(this.records.get(record.key));
      if (record.tombstone || isExpired(record, now)) {
        this.records.delete(record.key);
        continue;
      }
      this.records.set(record.key, record);
      const buffer = record.value.buffer;
      if (buffer.byteLength < SHARED_BUFFER_MIN_BYTES) continue;
      let shared = this.shared.get(buffer);
      if (shared === undefined) {
        this.shared.set(buffer, (shared = { keys: [], current: 0 }));
        this.sharedCount++;
      }
      shared.keys.push(record.key);
      shared.current++;
    }
  }

  /**
   * `previous` stops being current. Once fewer than half of a shared buffer's values are current,
   * the rest are copied into buffers of their own and the shared one is left to the GC: a value
   * never keeps more than about its own size again of dead neighbours alive, and each value is
   * copied out at most once.
   */
  private release(previous: ContextRecord | undefined): void {
    if (previous === undefined) return;
    const buffer = previous.value.buffer;
    const shared = this.shared.get(buffer);
    if (shared === undefined) return;
    shared.current--;
    if (shared.current * 2 >= shared.keys.length) return;
    this.shared.delete(buffer);
    this.sharedCount--;
    for (const key of shared.keys) {
      const record = this.records.get(key);
      if (record === undefined || record === previous || record.value.buffer !== buffer) continue;
      const value = Buffer.allocUnsafe(record.value.length);
      record.value.copy(value);
      // The same record, another buffer: not a change (no view or incremental needs to see it).
      this.records.set(key, { ...record, value });
    }
  }

  private beforeChange(key: string): void {
    for (const view of this.views) if (!view.preImages.has(key)) view.preImages.set(key, this.records.get(key) ?? null);
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

  /** Every live record as of the view's opening, in batches. A record may come twice, identical. */
  *viewRecords(view: SnapshotView): Generator<ContextRecord[]> {
    const now = this.now();
    let batch: ContextRecord[] = [];
    const emit = (record: ContextRecord | null | undefined): void => {
      if (record && !isExpired(record, now)) batch.push(record);
    };
    // The map may change between batches; Map iterators tolerate that, and the pre-images give
    // each changed key its value as of the opening (null: created since, skipped).
    const savedEmitted = new Set<string>();
    for (const [key, current] of this.records) {
      const saved = view.preImages.get(key);
      if (saved === undefined) emit(current);
      else if (saved !== null && !savedEmitted.has(key)) {
        savedEmitted.add(key);
        emit(saved);
      }
      if (batch.length >= VIEW_BATCH) {
        yield batch;
        batch = [];
      }
    }
    // Keys deleted since the opening are no longer in the map.
    for (const [key, saved] of view.preImages) if (saved !== null && !savedEmitted.has(key)) emit(saved);
    if (batch.length > 0) yield batch;
  }

  /** The view's changed keys as of its opening: records, or tombstones for keys gone by then. */
  *viewChanges(view: SnapshotView, tombstoneAt: number): Generator<ContextRecord[]> {
    const now = this.now();
    let batch: ContextRecord[] = [];
    for (const key of view.changed) {
      const saved = view.preImages.get(key);
      const record = saved === undefined ? this.records.get(key) : saved;
      batch.push(
        record && !isExpired(record, now)
          ? record
          : { key, value: Buffer.alloc(0), contentType: '', version: '', expiresAt: 0, retention: 'normal', updatedAt: tombstoneAt, tombstone: true },
      );
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
    for (const [key, record] of this.records) {
      if (key.startsWith(prefix) && (after === undefined || key > after) && !isExpired(record, now)) keys.push(key);
    }
    keys.sort();
    const page = keys.slice(0, limit);
    return Promise.resolve(keys.length > limit ? { keys: page, next: page.at(-1)! } : { keys: page });
  }

  /** Every live record: what a snapshot of the embedded tier serialises. */
  *entries(): IterableIterator<ContextRecord> {
    const now = this.now();
    for (const record of this.records.values()) if (!isExpired(record, now)) yield record;
  }

  /**
   * Removes a key leaving no trace for snapshots to carry (GDPR erase): not a change an incremental
   * records, so it must run with no view open.
   */
  erase(key: string): void {
    if (this.views.size > 0) throw new Error('erase while a snapshot view is open');
    if (this.sharedCount > 0) this.release(this.records.get(key));
    this.records.delete(key);
    this.changed.delete(key);
  }

  /** Drops everything (a restore replaces the whole state). */
  clear(): void {
    for (const key of this.records.keys()) this.beforeChange(key);
    this.records.clear();
    this.shared = new WeakMap();
    this.sharedCount = 0;
  }

  close(): Promise<void> {
    this.records.clear();
    return Promise.resolve();
  }

  private read(key: string): ContextRecord | undefined {
    const record = this.records.get(key);
    if (record && isExpired(record, this.now())) {
      this.beforeChange(key);
      if (this.sharedCount > 0) this.release(record);
      this.records.delete(key);
      return undefined;
    }
    return record;
  }
}
