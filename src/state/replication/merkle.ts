// Anti-entropy over ring ranges: a Merkle tree per (replica pair, ring range) that two replicas
// compare top-down to find the few keys whose versions differ, without listing all keys.
//
// Shape: fixed fan-out 16 and depth 4 below the root, so 16^4 = 65,536 leaf buckets, each an equal
// slice of the range's ring positions. At 100k keys per node that is ~1.5 keys per leaf: 1%
// divergence (1,000 keys) touches ~1,000 leaves and streams ~1,500 keys, and the walk exchanges
// ~19k hashes (~150 KiB) instead of a key listing. A shallower tree (4,096 leaves) would stream
// ~20% of the keys for the same divergence.
//
// Hashes are 64-bit. A key contributes h(key, digest) — digest being any string that changes
// whenever the key's replicated state changes (e.g. clock.ts `stateTag`) — and every node is the
// XOR of the contributions below it. XOR makes a write O(depth): the old contribution is XORed out
// of the leaf and its ancestors and the new one in, with no rebuild; and the result does not
// depend on the order keys were added, so equal key sets give equal trees.
//
// Ring positions are ketama's (the `hashring` package: md5 of the key, first 4 bytes little
// endian), so a tree's range can be exactly a ring arc that one replica pair shares.
//
// Exchange between peers (each step is one message; see `diff`):
//   1. A sends `treeA.encodeLevels(0, 2)` (273 hashes, ~2.2 KiB).
//   2. B runs `diff(decodeSummary(msg), treeB)`. While `result.request` is set, B asks A for
//      `treeA.encodeNodes(request.level, request.indices)`, adds the reply to its summary
//      (`summary.add(decodeSummary(reply))`) and runs `diff` again: one level deeper per round.
//   3. When `request` is undefined, `result.leaves` are the buckets that differ. The two sides swap
//      `entriesIn(leaves)` (key, digest) for them and `diffEntries` names the keys to stream.
// Pure: no I/O.
import { createHash } from 'node:crypto';

export const MERKLE_FANOUT = 16;
/** Levels below the root; leaves are at this level. */
export const MERKLE_DEPTH = 4;
export const MERKLE_LEAVES = MERKLE_FANOUT ** MERKLE_DEPTH;

const RING_SIZE = 2 ** 32;
/** offset of level L in the node arrays: (16^L - 1) / 15 */
const LEVEL_OFFSET = Array.from({ length: MERKLE_DEPTH + 2 }, (_, level) => (MERKLE_FANOUT ** level - 1) / (MERKLE_FANOUT - 1));
const NODE_COUNT = LEVEL_OFFSET[MERKLE_DEPTH + 1]!;

/**
 * Ring positions [start, end), unsigned 32-bit, wrapping past 2^32 - 1 when start >= end;
 * start === end is the whole ring.
 */
export interface KeyRange {
  start: number;
  end: number;
}

export const WHOLE_RING: KeyRange = { start: 0, end: 0 };

/** A key's position on the ketama ring: what `hashring` places it by. */
export function ringPosition(key: string): number {
  return createHash('md5').update(key).digest().readUInt32LE(0);
}

export class MerkleError extends Error {
  override name = 'MerkleError';
}

interface Entry {
  digest: string;
  hi: number;
  lo: number;
  leaf: number;
}

export interface MerkleTreeOptions {
  /** Key → ring position; default `ringPosition`. Both sides of an exchange must use the same. */
  position?: (key: string) => number;
}

export class MerkleTree {
  readonly range: KeyRange;
  private readonly span: number;
  private readonly position: (key: string) => number;
  /** Node i's hash: hi word at 2i, lo word at 2i+1; level by level from the root. */
  private readonly hashes = new Uint32Array(NODE_COUNT * 2);
  private readonly entries = new Map<string, Entry>();

  constructor(range: KeyRange = WHOLE_RING, options: MerkleTreeOptions = {}) {
    checkRange(range);
    this.range = { start: range.start, end: range.end };
    this.span = spanOf(range);
    this.position = options.position ?? ringPosition;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Whether the key falls in this tree's range (a key outside it is refused by `set`). */
  covers(key: string): boolean {
    return this.offsetOf(this.position(key)) < this.span;
  }

  /** The leaf bucket of a key (which may be outside the range: check `covers`). */
  leafOf(key: string): number {
    return this.leafOfOffset(this.offsetOf(this.position(key)));
  }

  /** Records the key's current state digest (insert or update): O(depth). */
  set(key: string, digest: string): void {
    const offset = this.offsetOf(this.position(key));
    if (offset >= this.span) throw new MerkleError(`key ${JSON.stringify(key)} is outside the tree's range`);
    const old = this.entries.get(key);
    if (old !== undefined && old.digest === digest) return;
    const [hi, lo] = contribution(key, digest);
    const leaf = old?.leaf ?? this.leafOfOffset(offset);
    this.xorPath(leaf, old ? (old.hi ^ hi) >>> 0 : hi, old ? (old.lo ^ lo) >>> 0 : lo);
    this.entries.set(key, { digest, hi, lo, leaf });
  }

  /** Forgets a key (it left the range, or its tombstone was collected): O(depth). */
  delete(key: string): boolean {
    const old = this.entries.get(key);
    if (old === undefined) return false;
    this.xorPath(old.leaf, old.hi, old.lo);
    this.entries.delete(key);
    return true;
  }

  digestOf(key: string): string | undefined {
    return this.entries.get(key)?.digest;
  }

  /** The root hash, 16 hex digits: equal key sets with equal digests ⇔ equal roots (up to 2^-64). */
  root(): string {
    return hex(this.hashes[0]!, this.hashes[1]!);
  }

  /** Hash of node `index` (0-based within the level) at `level` (0 = root). */
  nodeHash(level: number, index: number): string {
    const i = nodeId(level, index);
    return hex(this.hashes[2 * i]!, this.hashes[2 * i + 1]!);
  }

  /** The ring positions a leaf bucket covers. */
  leafRange(leaf: number): KeyRange {
    if (!Number.isInteger(leaf) || leaf < 0 || leaf >= MERKLE_LEAVES) throw new MerkleError(`no leaf ${leaf}`);
    return { start: (this.range.start + this.leafStart(leaf)) % RING_SIZE, end: (this.range.start + this.leafStart(leaf + 1)) % RING_SIZE };
  }

  /** Whole levels `from..to` (inclusive): a summary to send a peer. Level 2 holds 256 nodes, level 4 65,536. */
  encodeLevels(from: number, to: number): Buffer {
    checkLevel(from);
    checkLevel(to);
    const sections: Buffer[] = [this.header()];
    for (let level = from; level <= to; level++) {
      const count = MERKLE_FANOUT ** level;
      const section = Buffer.allocUnsafe(2 + 8 * count);
      section.writeUInt8(level, 0);
      section.writeUInt8(DENSE, 1);
      const base = LEVEL_OFFSET[level]!;
      for (let i = 0; i < count; i++) {
        section.writeUInt32BE(this.hashes[2 * (base + i)]!, 2 + 8 * i);
        section.writeUInt32BE(this.hashes[2 * (base + i) + 1]!, 6 + 8 * i);
      }
      sections.push(section);
    }
    return Buffer.concat(sections);
  }

  /** Some nodes of one level (what `diff` requests): a summary fragment to send a peer. */
  encodeNodes(level: number, indices: readonly number[]): Buffer {
    checkLevel(level);
    const section = Buffer.allocUnsafe(6 + 12 * indices.length);
    section.writeUInt8(level, 0);
    section.writeUInt8(SPARSE, 1);
    section.writeUInt32BE(indices.length, 2);
    indices.forEach((index, k) => {
      const i = nodeId(level, index);
      section.writeUInt32BE(index, 6 + 12 * k);
      section.writeUInt32BE(this.hashes[2 * i]!, 10 + 12 * k);
      section.writeUInt32BE(this.hashes[2 * i + 1]!, 14 + 12 * k);
    });
    return Buffer.concat([this.header(), section]);
  }

  /** The (key, digest) pairs in the given leaf buckets, sorted by key: one pass over the keys. */
  entriesIn(leaves: Iterable<number>): Array<[key: string, digest: string]> {
    const wanted = new Set(leaves);
    const out: Array<[string, string]> = [];
    for (const [key, entry] of this.entries) if (wanted.has(entry.leaf)) out.push([key, entry.digest]);
    return out.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  }

  /** Every (key, digest), unordered: for rebuilding or checking. */
  *allEntries(): IterableIterator<[key: string, digest: string]> {
    for (const [key, entry] of this.entries) yield [key, entry.digest];
  }

  /** @internal for `diff`: the raw node words. */
  words(level: number, index: number): [number, number] {
    const i = nodeId(level, index);
    return [this.hashes[2 * i]!, this.hashes[2 * i + 1]!];
  }

  private header(): Buffer {
    const header = Buffer.allocUnsafe(HEADER_BYTES);
    header.write(MAGIC, 0, 'latin1');
    header.writeUInt8(MERKLE_FANOUT, 3);
    header.writeUInt8(MERKLE_DEPTH, 4);
    header.writeUInt32BE(this.range.start, 5);
    header.writeUInt32BE(this.range.end, 9);
    return header;
  }

  private xorPath(leaf: number, hi: number, lo: number): void {
    let index = leaf;
    for (let level = MERKLE_DEPTH; level >= 0; level--) {
      const i = LEVEL_OFFSET[level]! + index;
      this.hashes[2 * i] = (this.hashes[2 * i]! ^ hi) >>> 0;
      this.hashes[2 * i + 1] = (this.hashes[2 * i + 1]! ^ lo) >>> 0;
      index = Math.floor(index / MERKLE_FANOUT);
    }
  }

  private offsetOf(position: number): number {
    return (((position - this.range.start) % RING_SIZE) + RING_SIZE) % RING_SIZE;
  }

  // Leaf l starts at ceil(l * span / leaves): exact, as leaves is a power of two.
  private leafOfOffset(offset: number): number {
    return Math.floor((offset * MERKLE_LEAVES) / this.span);
  }

  private leafStart(leaf: number): number {
    return Math.ceil((leaf * this.span) / MERKLE_LEAVES);
  }
}

const MAGIC = 'MK1';
const HEADER_BYTES = 13;
const DENSE = 0;
const SPARSE = 1;

/** What one side knows of a peer's tree: some of its nodes. Grows with `add` as the exchange descends. */
export class MerkleSummary {
  private readonly known = new Map<number, [number, number]>();

  constructor(readonly range: KeyRange) {}

  has(level: number, index: number): boolean {
    return this.known.has(nodeId(level, index));
  }

  words(level: number, index: number): [number, number] | undefined {
    return this.known.get(nodeId(level, index));
  }

  set(level: number, index: number, hi: number, lo: number): void {
    this.known.set(nodeId(level, index), [hi, lo]);
  }

  /** Adds the nodes of another fragment of the same tree. */
  add(other: MerkleSummary): this {
    if (!sameRange(this.range, other.range)) throw new MerkleError('summaries of different ranges');
    for (const [id, words] of other.known) this.known.set(id, words);
    return this;
  }

  get nodeCount(): number {
    return this.known.size;
  }
}

/** Decodes `encodeLevels` / `encodeNodes` output; throws MerkleError on anything else. */
export function decodeSummary(bytes: Buffer): MerkleSummary {
  if (bytes.length < HEADER_BYTES || bytes.toString('latin1', 0, 3) !== MAGIC) throw new MerkleError('not a Merkle summary');
  if (bytes.readUInt8(3) !== MERKLE_FANOUT || bytes.readUInt8(4) !== MERKLE_DEPTH) {
    throw new MerkleError(`Merkle summary of fan-out ${bytes.readUInt8(3)} depth ${bytes.readUInt8(4)}; this node uses ${MERKLE_FANOUT}/${MERKLE_DEPTH}`);
  }
  const summary = new MerkleSummary({ start: bytes.readUInt32BE(5), end: bytes.readUInt32BE(9) });
  let at = HEADER_BYTES;
  while (at < bytes.length) {
    if (at + 2 > bytes.length) throw new MerkleError('truncated Merkle summary');
    const level = bytes.readUInt8(at);
    const kind = bytes.readUInt8(at + 1);
    if (level > MERKLE_DEPTH) throw new MerkleError(`Merkle summary names level ${level}`);
    at += 2;
    if (kind === DENSE) {
      const count = MERKLE_FANOUT ** level;
      if (at + 8 * count > bytes.length) throw new MerkleError('truncated Merkle summary');
      for (let i = 0; i < count; i++) summary.set(level, i, bytes.readUInt32BE(at + 8 * i), bytes.readUInt32BE(at + 8 * i + 4));
      at += 8 * count;
    } else if (kind === SPARSE) {
      if (at + 4 > bytes.length) throw new MerkleError('truncated Merkle summary');
      const count = bytes.readUInt32BE(at);
      at += 4;
      if (at + 12 * count > bytes.length) throw new MerkleError('truncated Merkle summary');
      for (let k = 0; k < count; k++) {
        const index = bytes.readUInt32BE(at + 12 * k);
        if (index >= MERKLE_FANOUT ** level) throw new MerkleError(`Merkle summary names node ${index} of level ${level}`);
        summary.set(level, index, bytes.readUInt32BE(at + 12 * k + 4), bytes.readUInt32BE(at + 12 * k + 8));
      }
      at += 12 * count;
    } else {
      throw new MerkleError(`unknown Merkle summary section kind ${kind}`);
    }
  }
  return summary;
}

export interface MerkleDiff {
  /** Leaf buckets whose hashes differ, ascending (final only when `request` is undefined). */
  leaves: number[];
  /** The same as ring ranges, adjacent leaves merged. */
  ranges: KeyRange[];
  /** Nodes whose hashes were compared in this walk. */
  compared: number;
  /** Nodes the peer must send next (children of differing nodes it has not sent yet). */
  request?: { level: number; indices: number[] };
}

/**
 * Walks down from the root, into a node's children only where its hash differs between the
 * peer's summary and the local tree. Nodes the summary lacks below a differing node become the
 * `request` for the next round (always one level: the walk is breadth-first).
 */
export function diff(remote: MerkleSummary, local: MerkleTree): MerkleDiff {
  if (!sameRange(remote.range, local.range)) throw new MerkleError('trees of different ranges');
  const leaves: number[] = [];
  let compared = 0;
  let frontier = [0];
  for (let level = 0; level <= MERKLE_DEPTH && frontier.length > 0; level++) {
    const missing = frontier.filter((index) => !remote.has(level, index));
    if (missing.length > 0) return { leaves: [], ranges: [], compared, request: { level, indices: missing } };
    const next: number[] = [];
    for (const index of frontier) {
      compared++;
      const [hi, lo] = remote.words(level, index)!;
      const [myHi, myLo] = local.words(level, index);
      if (hi === myHi && lo === myLo) continue;
      if (level === MERKLE_DEPTH) leaves.push(index);
      else for (let c = 0; c < MERKLE_FANOUT; c++) next.push(index * MERKLE_FANOUT + c);
    }
    frontier = next;
  }
  return { leaves, ranges: mergeLeafRanges(local, leaves), compared };
}

/** Keys whose digests differ between two `entriesIn` lists (missing on one side counts), sorted. */
export function diffEntries(mine: ReadonlyArray<readonly [string, string]>, theirs: ReadonlyArray<readonly [string, string]>): string[] {
  const other = new Map(theirs);
  const out = new Set<string>();
  for (const [key, digest] of mine) if (other.get(key) !== digest) out.add(key);
  const own = new Map(mine);
  for (const [key] of theirs) if (!own.has(key)) out.add(key);
  return [...out].sort();
}

function mergeLeafRanges(tree: MerkleTree, leaves: readonly number[]): KeyRange[] {
  const ranges: KeyRange[] = [];
  let runStart = -1;
  let previous = -2;
  for (const leaf of leaves) {
    if (leaf !== previous + 1) {
      if (runStart >= 0) ranges.push({ start: tree.leafRange(runStart).start, end: tree.leafRange(previous).end });
      runStart = leaf;
    }
    previous = leaf;
  }
  if (runStart >= 0) ranges.push({ start: tree.leafRange(runStart).start, end: tree.leafRange(previous).end });
  return ranges;
}

function nodeId(level: number, index: number): number {
  checkLevel(level);
  if (!Number.isInteger(index) || index < 0 || index >= MERKLE_FANOUT ** level) throw new MerkleError(`no node ${index} at level ${level}`);
  return LEVEL_OFFSET[level]! + index;
}

function checkLevel(level: number): void {
  if (!Number.isInteger(level) || level < 0 || level > MERKLE_DEPTH) throw new MerkleError(`no level ${level} (0..${MERKLE_DEPTH})`);
}

function checkRange(range: KeyRange): void {
  for (const bound of [range.start, range.end]) {
    if (!Number.isInteger(bound) || bound < 0 || bound >= RING_SIZE) throw new MerkleError(`range bound ${bound} is not an unsigned 32-bit position`);
  }
}

function spanOf(range: KeyRange): number {
  return range.start === range.end ? RING_SIZE : (((range.end - range.start) % RING_SIZE) + RING_SIZE) % RING_SIZE;
}

function sameRange(a: KeyRange, b: KeyRange): boolean {
  return a.start === b.start && a.end === b.end;
}

function hex(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

/** Two independent 32-bit hashes of key NUL digest (FNV-1a over UTF-16 units, murmur3 finaliser). */
function contribution(key: string, digest: string): [number, number] {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  const feed = (code: number): void => {
    a = Math.imul(a ^ code, 0x01000193);
    b = Math.imul(b ^ code, 0x5bd1e995);
    b ^= b >>> 15;
  };
  for (let i = 0; i < key.length; i++) feed(key.charCodeAt(i));
  feed(0x10000); // separator no UTF-16 unit equals
  for (let i = 0; i < digest.length; i++) feed(digest.charCodeAt(i));
  return [fmix(a ^ key.length), fmix(b ^ Math.imul(digest.length, 0x9e3779b1))];
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
