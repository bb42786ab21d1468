// The embedded L2's index: key → arena slot, an open-addressing hash table in typed arrays whose
// keys are the records' own key bytes in the arena. Why not a Map<string, number>: every key would
// be a string on the V8 heap — 262 K strings and the Map's table, ~20 MiB that every major GC marks,
// copied twice on their way to the old generation during a restore — and in a restore's profile
// the Map was a quarter of the time. Here a key costs two 32-bit numbers off the heap.
//
// Linear probing over a power-of-two table, FNV-1a over the key's UTF-8 bytes, the hash kept per
// slot (a probe compares bytes only when hashes match, and growing never re-reads keys).
import { grownTo, type RecordArena } from './record-arena.js';

const EMPTY = 0;
const DELETED = -1;
const MIN_CAPACITY = 1024;

export class ArenaIndex {
  /** 0: empty; -1: deleted; otherwise slot + 1. */
  private table = new Int32Array(MIN_CAPACITY);
  /** Per slot: its key's hash. */
  private hashes = new Int32Array(MIN_CAPACITY);
  /** Entries live or deleted: what fills the table. */
  private filled = 0;
  private count = 0;
  /** A string key's UTF-8 bytes, for lookups by string. */
  private scratch = Buffer.allocUnsafe(256);

  constructor(private readonly arena: RecordArena) {}

  get size(): number {
    return this.count;
  }

  get(key: string): number | undefined {
    const length = this.encode(key);
    const at = this.find(this.scratch, 0, length, hashBytes(this.scratch, 0, length));
    return at < 0 ? undefined : this.table[at]! - 1;
  }

  /** Points the key of the record in `slot` at that slot; returns the slot it pointed at before. */
  put(slot: number): number | undefined {
    const bytes = this.arena.bytes(slot);
    const start = this.arena.start(slot) + 2;
    const length = (bytes[start - 2]! << 8) | bytes[start - 1]!;
    const hash = hashBytes(bytes, start, length);
    this.hashes = grownTo(this.hashes, slot + 1);
    this.hashes[slot] = hash;
    const at = this.find(bytes, start, length, hash);
    if (at >= 0) {
      const previous = this.table[at]! - 1;
      this.table[at] = slot + 1;
      return previous;
    }
    if ((this.filled + 1) * 2 > this.table.length) this.resize();
    const mask = this.table.length - 1;
    let i = hash & mask;
    while (this.table[i]! > 0) i = (i + 1) & mask;
    if (this.table[i] === EMPTY) this.filled++;
    this.table[i] = slot + 1;
    this.count++;
    return undefined;
  }

  /** Removes the key; returns the slot it pointed at. */
  remove(key: string): number | undefined {
    const length = this.encode(key);
    const at = this.find(this.scratch, 0, length, hashBytes(this.scratch, 0, length));
    if (at < 0) return undefined;
    const slot = this.table[at]! - 1;
    this.table[at] = DELETED;
    this.count--;
    return slot;
  }

  clear(): void {
    this.table = new Int32Array(MIN_CAPACITY);
    this.filled = 0;
    this.count = 0;
  }

  /** Index in the table of the entry whose key is source[start, start + length), or -1. */
  private find(source: Buffer, start: number, length: number, hash: number): number {
    const mask = this.table.length - 1;
    for (let i = hash & mask; ; i = (i + 1) & mask) {
      const entry = this.table[i]!;
      if (entry === EMPTY) return -1;
      if (entry === DELETED) continue;
      const slot = entry - 1;
      if (this.hashes[slot] === hash && this.keyIs(slot, source, start, length)) return i;
    }
  }

  private keyIs(slot: number, source: Buffer, start: number, length: number): boolean {
    const bytes = this.arena.bytes(slot);
    const at = this.arena.start(slot);
    if (((bytes[at]! << 8) | bytes[at + 1]!) !== length) return false;
    for (let i = 0; i < length; i++) if (bytes[at + 2 + i] !== source[start + i]) return false;
    return true;
  }

  /** The key's UTF-8 bytes into scratch; returns their length. */
  private encode(key: string): number {
    if (key.length * 3 > this.scratch.length) this.scratch = Buffer.allocUnsafe(key.length * 3);
    return this.scratch.write(key, 0, 'utf8');
  }

  /** A table with room for twice the live entries, deleted ones dropped. */
  private resize(): void {
    let capacity = MIN_CAPACITY;
    while (capacity < this.count * 4) capacity *= 2;
    const old = this.table;
    this.table = new Int32Array(capacity);
    const mask = capacity - 1;
    for (const entry of old) {
      if (entry <= 0) continue;
      let i = this.hashes[entry - 1]! & mask;
      while (this.table[i] !== EMPTY) i = (i + 1) & mask;
      this.table[i] = entry;
    }
    this.filled = this.count;
  }
}

/** FNV-1a, 32 bits, signed. */
function hashBytes(bytes: Buffer, start: number, length: number): number {
  let hash = 0x811c9dc5;
  for (let i = start; i < start + length; i++) hash = Math.imul(hash ^ bytes[i]!, 0x01000193);
  return hash | 0; // as the Int32Array keeps it (the empty key's hash is the unsigned basis)
}
