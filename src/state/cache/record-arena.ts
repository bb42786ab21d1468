// Where the embedded L2 keeps its records: in record.ts's keyed form, in large buffers (slabs) off
// the V8 heap, each record a span of one, found through a slot number.
//
// Why not objects: held as objects, a stored context was about six heap objects (the record, its
// version string, its value's Buffer and ArrayBuffer, a boxed timestamp, its key), so 262 K contexts
// were 1.5 M objects that every major GC marks again — ~150 ms of work on one core however little
// had changed, and the write-latency tail of a sidecar holding a large state. Here a context is its
// key string in the index and a few numbers in typed arrays; a read decodes the record again, which
// costs less than the marking did, and happens on an L1 miss only.
//
// Slabs are append-only: bytes once written are never changed, so a record decoded from a slab (its
// value a view into it) stays valid after the key is rewritten and after the slab is retired. When a
// sealed slab's live bytes fall under half of what it holds, its live records are copied into the
// slab being filled — their slots stay the same, so nothing that holds a slot number notices — and
// the arena lets go of it; whatever still views it keeps it alive until done. So the slabs hold at
// most about as many dead bytes as live ones, and each byte is copied at most once per halving.
//
// A restore's blocks (snapshot-file.ts reads them into buffers it never reuses) are adopted as
// sealed slabs as they are: a restored record is not copied at all.
import { keyedLayout, writeKeyedRecord, type ContextRecord } from '../record.js';

/** Size of the slabs the arena fills; a record over a quarter of it gets a slab of its own. */
export const SLAB_BYTES = 1024 * 1024;
const OWN_SLAB_OVER = SLAB_BYTES / 4;

interface Slab {
  bytes: Buffer;
  /** Bytes of live records in it. */
  live: number;
  /** Bytes of the records ever placed in it: live plus dead. */
  used: number;
  /** Slots placed in it; a slot since moved or freed no longer points here and is skipped. */
  slots: number[];
}

export class RecordArena {
  private slabs: Array<Slab | undefined> = [];
  private freeSlabIds: number[] = [];
  /** The slab being filled, and where its next record goes. */
  private filling = -1;
  private fillAt = 0;
  // Per slot: slab id, span, expiry (epoch ms, 0 = never). Grown by doubling.
  private slotSlab = new Int32Array(1024);
  private slotStart = new Int32Array(1024);
  private slotEnd = new Int32Array(1024);
  private slotExpires = new Float64Array(1024);
  private freeSlots: number[] = [];
  private nextSlot = 0;

  /** Copies the record in, encoded; returns its slot. */
  add(record: ContextRecord): number {
    const layout = keyedLayout(record);
    const [slabId, at] = this.room(layout.length);
    writeKeyedRecord(record, layout, this.slabs[slabId]!.bytes, at);
    return this.place(slabId, at, at + layout.length, record.expiresAt);
  }

  /**
   * Takes `bytes` as a sealed slab whose records are then placed with place(); returns its id. Call
   * settle() once they are: a slab none of whose records was placed is let go.
   */
  adopt(bytes: Buffer): number {
    return this.newSlab(bytes);
  }

  settle(slabId: number): void {
    const slab = this.slabs[slabId]!;
    if (slab.live === 0) this.retire(slabId);
  }

  /** A slot for the keyed record at slab[start, end). */
  place(slabId: number, start: number, end: number, expiresAt: number): number {
    const slab = this.slabs[slabId]!;
    const slot = this.freeSlots.pop() ?? this.newSlot();
    this.slotSlab[slot] = slabId;
    this.slotStart[slot] = start;
    this.slotEnd[slot] = end;
    this.slotExpires[slot] = expiresAt;
    slab.live += end - start;
    slab.used += end - start;
    slab.slots.push(slot);
    return slot;
  }

  /** The slab holding the slot's record; its keyed bytes are at [start(slot), end(slot)). */
  bytes(slot: number): Buffer {
    return this.slabs[this.slotSlab[slot]!]!.bytes;
  }

  start(slot: number): number {
    return this.slotStart[slot]!;
  }

  end(slot: number): number {
    return this.slotEnd[slot]!;
  }

  expiresAt(slot: number): number {
    return this.slotExpires[slot]!;
  }

  /** Slots are numbered below this; live ones are those isLive says. */
  get slotCount(): number {
    return this.nextSlot;
  }

  isLive(slot: number): boolean {
    return this.slotSlab[slot]! >= 0;
  }

  /** The key of the record in the slot. */
  key(slot: number): string {
    const bytes = this.bytes(slot);
    const start = this.slotStart[slot]!;
    return bytes.toString('utf8', start + 2, start + 2 + ((bytes[start]! << 8) | bytes[start + 1]!));
  }

  /** The record in the slot is no longer current. */
  free(slot: number): void {
    const slabId = this.slotSlab[slot]!;
    const slab = this.slabs[slabId]!;
    slab.live -= this.slotEnd[slot]! - this.slotStart[slot]!;
    this.slotSlab[slot] = -1;
    this.freeSlots.push(slot);
    if (slabId === this.filling) return;
    if (slab.live === 0) this.retire(slabId);
    else if (slab.live * 2 < slab.used) this.compact(slabId);
  }

  /** Forgets every record. */
  clear(): void {
    this.slabs = [];
    this.freeSlabIds = [];
    this.filling = -1;
    this.fillAt = 0;
    this.freeSlots = [];
    this.nextSlot = 0;
  }

  /** Bytes held by the slabs, live and dead: what the arena costs in memory. */
  get heldBytes(): number {
    let held = 0;
    for (const slab of this.slabs) if (slab) held += slab.bytes.length;
    return held;
  }

  /** Bytes of live records. */
  get liveBytes(): number {
    let live = 0;
    for (const slab of this.slabs) if (slab) live += slab.live;
    return live;
  }

  /** Room for `length` bytes: in the slab being filled, a new one, or one of its own for a big record. */
  private room(length: number): [slabId: number, at: number] {
    if (length > OWN_SLAB_OVER) return [this.newSlab(Buffer.allocUnsafeSlow(length)), 0];
    if (this.filling < 0 || this.fillAt + length > SLAB_BYTES) {
      if (this.filling >= 0) this.seal(this.filling);
      this.filling = this.newSlab(Buffer.allocUnsafeSlow(SLAB_BYTES));
      this.fillAt = 0;
    }
    const at = this.fillAt;
    this.fillAt += length;
    return [this.filling, at];
  }

  /** The slab being filled is full: from now on it is compacted or retired like any other. */
  private seal(slabId: number): void {
    const slab = this.slabs[slabId]!;
    this.filling = -1;
    if (slab.live === 0) this.retire(slabId);
    else if (slab.live * 2 < slab.used) this.compact(slabId);
  }

  /** Moves the slab's live records into the slab being filled and lets it go. */
  private compact(slabId: number): void {
    const slab = this.slabs[slabId]!;
    this.slabs[slabId] = undefined; // while moving, a seal of the filling slab must not pick this one again
    for (const slot of slab.slots) {
      if (this.slotSlab[slot] !== slabId) continue;
      const [start, end] = [this.slotStart[slot]!, this.slotEnd[slot]!];
      const [targetId, at] = this.room(end - start);
      const target = this.slabs[targetId]!;
      slab.bytes.copy(target.bytes, at, start, end);
      this.slotSlab[slot] = targetId;
      this.slotStart[slot] = at;
      this.slotEnd[slot] = at + (end - start);
      target.live += end - start;
      target.used += end - start;
      target.slots.push(slot);
    }
    this.freeSlabIds.push(slabId);
  }

  private retire(slabId: number): void {
    this.slabs[slabId] = undefined;
    this.freeSlabIds.push(slabId);
  }

  private newSlab(bytes: Buffer): number {
    const id = this.freeSlabIds.pop() ?? this.slabs.length;
    this.slabs[id] = { bytes, live: 0, used: 0, slots: [] };
    return id;
  }

  private newSlot(): number {
    if (this.nextSlot === this.slotSlab.length) {
      this.slotSlab = grownTo(this.slotSlab, this.nextSlot + 1);
      this.slotStart = grownTo(this.slotStart, this.nextSlot + 1);
      this.slotEnd = grownTo(this.slotEnd, this.nextSlot + 1);
      this.slotExpires = grownTo(this.slotExpires, this.nextSlot + 1);
    }
    return this.nextSlot++;
  }
}

/** A per-slot array at least `length` long holding `old`'s values: doubled until it is. */
export function grownTo<T extends Int32Array | Float64Array>(old: T, length: number): T {
  if (old.length >= length) return old;
  let size = old.length;
  while (size < length) size *= 2;
  const next = new (old.constructor as new (n: number) => T)(size);
  next.set(old);
  return next;
}
