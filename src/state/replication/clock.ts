// Causality for replicated contexts: dotted version vectors (DVV) whose counters are hybrid
// logical clock timestamps.
//
// Every stored value carries a `Clock`: the `dot` that names the one write that made it (node +
// HLC timestamp, unique across the mesh) and `past`, the version vector of what the writer had
// seen (the client's context). A value is superseded by another exactly when its dot is covered by
// the other's clock. Keeping the writer's own event out of `past` is what lets two writes from the
// same coordinator be told apart, so a coordinator never has to invent a sibling per client (the
// "sibling explosion" of plain per-node vector clocks that Riak left DVVs for).
//
// Using the HLC timestamp as the per-node counter gives one number two jobs: within a node it
// orders that node's events (the HLC never goes back), and across nodes it is the last-writer-wins
// order (an event's HLC is later than every event it saw, because `event` observes them first).
//
// Invariants the callers must keep (as Riak's vnodes do), without which a context can claim to
// have seen a write it has not:
//   1. A dot is stamped (`event`) only by a node that holds the key's current local state: a
//      replica of the key. A sidecar that is not a replica forwards the write to one.
//   2. Replication ships the coordinator's whole sibling set after the write (`Siblings`), not the
//      lone new value, and receivers combine with `sync`; anti-entropy and read repair likewise.
//   3. A node's HLC never goes back across restarts for the keys it holds (the HLC starts from the
//      wall clock, and `event` observes every timestamp already in the key's state).
// Pure: no I/O, no wall clock except through the HybridClock passed in.
import { createHash } from 'node:crypto';
import { compareTimestamps, parseTimestamp, type HybridClock, type HlcTimestamp } from '../hlc.js';
import { makeVersion, type Version } from '../version.js';

/** One write: the node that coordinated it (a node tag, see `isNodeTag`) and its HLC timestamp. */
export interface Dot {
  readonly node: string;
  readonly ts: HlcTimestamp;
}

/**
 * node tag → the newest timestamp of that node's writes that have been seen; it stands for "every
 * write of that node up to this timestamp". Absent node = none seen. Treat as immutable.
 */
export type VersionVector = ReadonlyMap<string, HlcTimestamp>;

/** The causal identity of one stored value. */
export interface Clock {
  readonly dot: Dot;
  /** What the writer had seen (its context); never covers `dot` itself. */
  readonly past: VersionVector;
}

export interface Versioned<T> {
  readonly clock: Clock;
  readonly value: T;
}

/**
 * The state of one key on one replica: values none of which supersedes another, sorted by dot
 * (`compareDots`, oldest first). One element = no conflict; none = the key was never written.
 */
export type Siblings<T> = ReadonlyArray<Versioned<T>>;

export type Order = 'before' | 'after' | 'equal' | 'concurrent';

export class ClockError extends Error {
  override name = 'ClockError';
}

export const EMPTY_VECTOR: VersionVector = new Map();

/** Node tags are what `versionNodeTag` (src/state/version.ts) makes: safe in an ETag. */
export function isNodeTag(node: string): boolean {
  return /^[A-Za-z0-9._-]{1,255}$/.test(node);
}

/** The last-writer-wins order of writes: HLC timestamp, then node tag (deterministic tie-break). */
export function compareDots(a: Dot, b: Dot): number {
  return compareTimestamps(a.ts, b.ts) || (a.node < b.node ? -1 : a.node > b.node ? 1 : 0);
}

export function sameDot(a: Dot, b: Dot): boolean {
  return a.node === b.node && a.ts.wall === b.ts.wall && a.ts.logical === b.ts.logical;
}

/** Whether a vector (a context, a frontier) includes the write `dot`. */
export function vectorCovers(vector: VersionVector, dot: Dot): boolean {
  const seen = vector.get(dot.node);
  return seen !== undefined && compareTimestamps(seen, dot.ts) >= 0;
}

/** Whether the value with `clock` includes (is, or was written having seen) the write `dot`. */
export function clockCovers(clock: Clock, dot: Dot): boolean {
  return sameDot(clock.dot, dot) || vectorCovers(clock.past, dot);
}

/**
 * The causal order of two values: `before` = `a` is superseded by `b`, `after` = `a` supersedes
 * `b`, `equal` = the same write, `concurrent` = neither saw the other (siblings).
 */
export function compare(a: Clock, b: Clock): Order {
  if (sameDot(a.dot, b.dot)) return 'equal';
  if (vectorCovers(b.past, a.dot)) return 'before';
  if (vectorCovers(a.past, b.dot)) return 'after';
  return 'concurrent';
}

/** Partial order of vectors (contexts, frontiers), entry by entry. */
export function compareVectors(a: VersionVector, b: VersionVector): Order {
  let aAhead = false;
  let bAhead = false;
  for (const [node, ta] of a) {
    const tb = b.get(node);
    const c = tb === undefined ? 1 : compareTimestamps(ta, tb);
    if (c > 0) aAhead = true;
    else if (c < 0) bAhead = true;
  }
  for (const node of b.keys()) if (!a.has(node)) bAhead = true;
  return aAhead ? (bAhead ? 'concurrent' : 'after') : bAhead ? 'before' : 'equal';
}

/** Entry-wise maximum: what someone who saw both has seen. */
export function joinVectors(a: VersionVector, b: VersionVector): VersionVector {
  if (b.size === 0) return a;
  if (a.size === 0) return b;
  const out = new Map(a);
  for (const [node, t] of b) {
    const mine = out.get(node);
    if (mine === undefined || compareTimestamps(t, mine) > 0) out.set(node, t);
  }
  return out;
}

/** A clock as a vector: its past plus its own dot. */
export function clockVector(clock: Clock): VersionVector {
  return withDot(clock.past, clock.dot);
}

function withDot(vector: VersionVector, dot: Dot): VersionVector {
  if (vectorCovers(vector, dot)) return vector;
  const out = new Map(vector);
  out.set(dot.node, dot.ts);
  return out;
}

/**
 * The context a reader of `siblings` hands back with its next write (via the ETag it matched, or
 * an encoded context): writing with it supersedes every one of them.
 */
export function contextOf<T>(siblings: Siblings<T>): VersionVector {
  let vector: VersionVector = EMPTY_VECTOR;
  for (const { clock } of siblings) vector = joinVectors(vector, clockVector(clock));
  return vector;
}

/** Whether `context` covers every sibling: a write with it leaves no sibling behind. */
export function contextCoversAll<T>(context: VersionVector, siblings: Siblings<T>): boolean {
  return siblings.every(({ clock }) => vectorCovers(context, clock.dot));
}

/**
 * A coordinator's write. `local` is the key's state on this node (a replica, invariant 1),
 * `context` what the client had read (`contextOf` of what it was served; the empty vector for a
 * client that read nothing). Observes every timestamp involved into `hlc` before ticking, so the
 * new dot is later than anything the writer or this node has seen. Returns the new local state —
 * the new value plus the siblings the context did not cover — and the new value itself. Ship the
 * whole `state` to the other replicas (invariant 2).
 *
 * A blind write (no context from the client) that should overwrite rather than add a sibling
 * passes `contextOf(local)`: it supersedes what this node holds, and stays concurrent with writes
 * made elsewhere that this node has not received yet.
 */
export function event<T>(
  local: Siblings<T>,
  context: VersionVector,
  node: string,
  hlc: HybridClock,
  value: T,
): { state: Siblings<T>; written: Versioned<T> } {
  if (!isNodeTag(node)) throw new ClockError(`"${node}" is not a node tag (letters, digits, . _ -)`);
  for (const t of context.values()) hlc.observe(t);
  for (const { clock } of local) {
    hlc.observe(clock.dot.ts);
    for (const t of clock.past.values()) hlc.observe(t);
  }
  const written: Versioned<T> = { clock: { dot: { node, ts: hlc.tick() }, past: context }, value };
  const state = local.filter(({ clock }) => !vectorCovers(context, clock.dot));
  state.push(written);
  state.sort(byDot);
  return { state, written };
}

/**
 * Combines two replicas' states of one key: keeps every value that no other value supersedes,
 * once. A join: commutative, associative, idempotent, so replicas that exchange states in any
 * order and any number of times agree. Returns `a` itself when `b` adds nothing (cheap no-op test:
 * `sync(a, b) === a`).
 */
export function sync<T>(a: Siblings<T>, b: Siblings<T>): Siblings<T> {
  if (b.length === 0) return a;
  if (a.length === 0) return [...b].sort(byDot);
  const all = [...a, ...b];
  const kept: Array<Versioned<T>> = [];
  for (const candidate of all) {
    const superseded = all.some((other) => other !== candidate && !sameDot(other.clock.dot, candidate.clock.dot) && vectorCovers(other.clock.past, candidate.clock.dot));
    if (superseded) continue;
    if (kept.some((k) => sameDot(k.clock.dot, candidate.clock.dot))) continue;
    kept.push(candidate);
  }
  kept.sort(byDot);
  if (kept.length === a.length && kept.every((v, i) => sameDot(v.clock.dot, a[i]!.clock.dot))) return a;
  return kept;
}

function byDot<T>(x: Versioned<T>, y: Versioned<T>): number {
  return compareDots(x.clock.dot, y.clock.dot);
}

// ---------------------------------------------------------------------------------------------
// Versions and ETags

/** A dot as a version string, `<wall>.<logical>@<node>`: the same form as today's versions. */
export function dotVersion(dot: Dot): Version {
  return makeVersion(dot.ts, dot.node);
}

export function parseDotVersion(version: string): Dot | undefined {
  const at = version.indexOf('@');
  if (at < 0) return undefined;
  const ts = parseTimestamp(version.slice(0, at));
  const node = version.slice(at + 1);
  return ts && isNodeTag(node) ? { node, ts } : undefined;
}

/**
 * The ETag body (without quotes) of a key's state: the version of its single value — exactly the
 * `<wall>.<logical>@<node>` a client gets today — or, for siblings, `<n>~<hash>` naming the set of
 * dots. Undefined for an empty state. A client's `If-Match` holds iff it equals the current
 * state's tag (`stateMatches`); the context of that write is then `contextOf(state)`, so an ETag
 * never has to carry a vector.
 */
export function stateTag<T>(siblings: Siblings<T>): string | undefined {
  if (siblings.length === 0) return undefined;
  if (siblings.length === 1) return dotVersion(siblings[0]!.clock.dot);
  const hash = createHash('sha256');
  for (const { clock } of siblings) hash.update(dotVersion(clock.dot)).update('\n');
  return `${siblings.length}~${hash.digest('base64url').slice(0, 16)}`;
}

/**
 * The version string a stored sibling set goes by (its record's version and the ETag a client
 * sees): the newest dot's `<wall>.<logical>@<node>` — so HLC ordering, session tokens and ballots
 * read it as they read any version — and, when there are several siblings, `~` and `stateTag`
 * after it, so that two different sets never share a version. Undefined for an empty state.
 */
export function stateVersion<T>(siblings: Siblings<T>): Version | undefined {
  if (siblings.length === 0) return undefined;
  let newest = siblings[0]!.clock.dot;
  for (const { clock } of siblings) if (compareDots(clock.dot, newest) > 0) newest = clock.dot;
  const head = dotVersion(newest);
  return siblings.length === 1 ? head : `${head}~${stateTag(siblings)}`;
}

/** If-Match: whether `tag` (an ETag body, quotes removed) names the current state. */
export function stateMatches<T>(siblings: Siblings<T>, tag: string): boolean {
  return siblings.length > 0 && stateTag(siblings) === tag;
}

// ---------------------------------------------------------------------------------------------
// Binary and string encodings
//
// Vector: varint count, varint baseWall (the smallest wall), then per entry sorted by node:
// varint nodeLength, node bytes (ASCII), varint (wall - baseWall), varint logical.
// Clock: the dot (varint nodeLength, node, varint wall, varint logical), then its past as a vector.
// Walls are milliseconds since the epoch (< 2^53), so varints are done in float arithmetic.

export function encodeVector(vector: VersionVector): Buffer {
  const out = new ByteWriter();
  writeVector(out, vector);
  return out.finish();
}

export function decodeVector(bytes: Buffer): VersionVector {
  const reader = new ByteReader(bytes);
  const vector = readVector(reader);
  reader.end();
  return vector;
}

export function encodeClock(clock: Clock): Buffer {
  const out = new ByteWriter();
  writeClock(out, clock);
  return out.finish();
}

export function decodeClock(bytes: Buffer): Clock {
  const reader = new ByteReader(bytes);
  const clock = readClock(reader);
  reader.end();
  return clock;
}

/**
 * A state's clocks with caller-encoded values: varint count, then per sibling: clock, varint
 * value length, value bytes. For peer messages and stored metadata.
 */
export function encodeSiblings<T>(siblings: Siblings<T>, encodeValue: (value: T) => Buffer): Buffer {
  const out = new ByteWriter();
  out.varint(siblings.length);
  for (const { clock, value } of siblings) {
    writeClock(out, clock);
    out.bytes(encodeValue(value));
  }
  return out.finish();
}

export function decodeSiblings<T>(bytes: Buffer, decodeValue: (bytes: Buffer) => T): Siblings<T> {
  const reader = new ByteReader(bytes);
  const count = reader.varint();
  const siblings: Array<Versioned<T>> = [];
  for (let i = 0; i < count; i++) {
    const clock = readClock(reader);
    siblings.push({ clock, value: decodeValue(reader.bytes()) });
  }
  reader.end();
  return siblings.sort(byDot);
}

/** A context as a short opaque string (base64url of `encodeVector`): e.g. a `ctxmesh-context` header. */
export function encodeContext(vector: VersionVector): string {
  return encodeVector(vector).toString('base64url');
}

/** Throws ClockError on anything `encodeContext` did not make. */
export function decodeContext(text: string): VersionVector {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new ClockError('context is not base64url');
  return decodeVector(Buffer.from(text, 'base64url'));
}

/**
 * Whether a context from a client is believable: no entry more than `maxAheadMs` past `nowMs`. A
 * context from the future would make later real writes look already seen (and be dropped), so the
 * API refuses such contexts instead of writing with them.
 */
export function contextIsPlausible(vector: VersionVector, nowMs: number, maxAheadMs = 60_000): boolean {
  for (const t of vector.values()) if (t.wall > nowMs + maxAheadMs) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Frontier: what a snapshot has seen

/**
 * The newest write seen from each node across a set of values: record it in a snapshot, and after
 * a restore, anti-entropy brings back every write a peer holds that the frontier does not cover.
 * Fold values in with `advanceFrontier` (cheap enough per write).
 */
export type Frontier = VersionVector;

export function advanceFrontier(frontier: Frontier, clock: Clock): Frontier {
  return joinVectors(frontier, clockVector(clock));
}

/** The form snapshot headers hold (`SnapshotHeader.frontier`): node → `<wall>.<logical>`. */
export function frontierToRecord(frontier: Frontier): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [node, t] of [...frontier].sort(([a], [b]) => (a < b ? -1 : 1))) out[node] = `${t.wall}.${t.logical}`;
  return out;
}

export function frontierFromRecord(record: Record<string, string>): Frontier {
  const out = new Map<string, HlcTimestamp>();
  for (const [node, text] of Object.entries(record)) {
    const t = parseTimestamp(text);
    if (t === undefined) throw new ClockError(`frontier entry ${node}: "${text}" is not <wall>.<logical>`);
    out.set(node, t);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

function writeVector(out: ByteWriter, vector: VersionVector): void {
  const entries = [...vector].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  out.varint(entries.length);
  if (entries.length === 0) return;
  const base = Math.min(...entries.map(([, t]) => t.wall));
  out.varint(base);
  for (const [node, t] of entries) {
    out.ascii(node);
    out.varint(t.wall - base);
    out.varint(t.logical);
  }
}

function readVector(reader: ByteReader): VersionVector {
  const count = reader.varint();
  const vector = new Map<string, HlcTimestamp>();
  if (count === 0) return vector;
  const base = reader.varint();
  for (let i = 0; i < count; i++) {
    const node = reader.ascii();
    const wall = base + reader.varint();
    const logical = reader.varint();
    if (vector.has(node)) throw new ClockError(`vector names node ${node} twice`);
    vector.set(node, { wall, logical });
  }
  return vector;
}

function writeClock(out: ByteWriter, clock: Clock): void {
  out.ascii(clock.dot.node);
  out.varint(clock.dot.ts.wall);
  out.varint(clock.dot.ts.logical);
  writeVector(out, clock.past);
}

function readClock(reader: ByteReader): Clock {
  const node = reader.ascii();
  const wall = reader.varint();
  const logical = reader.varint();
  return { dot: { node, ts: { wall, logical } }, past: readVector(reader) };
}

class ByteWriter {
  private chunks: number[] = [];
  private buffers: Buffer[] = [];

  varint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new ClockError(`cannot encode ${n} as a varint`);
    while (n >= 0x80) {
      this.chunks.push((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    this.chunks.push(n);
  }

  ascii(text: string): void {
    if (!isNodeTag(text)) throw new ClockError(`"${text}" is not a node tag`);
    this.varint(text.length);
    for (let i = 0; i < text.length; i++) this.chunks.push(text.charCodeAt(i));
  }

  bytes(value: Buffer): void {
    this.varint(value.length);
    this.flush();
    this.buffers.push(value);
  }

  finish(): Buffer {
    this.flush();
    return this.buffers.length === 1 ? this.buffers[0]! : Buffer.concat(this.buffers);
  }

  private flush(): void {
    if (this.chunks.length > 0) this.buffers.push(Buffer.from(this.chunks));
    this.chunks = [];
  }
}

class ByteReader {
  private at = 0;
  constructor(private readonly buf: Buffer) {}

  varint(): number {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      if (this.at >= this.buf.length) throw new ClockError('truncated clock encoding');
      const byte = this.buf[this.at++]!;
      n += (byte & 0x7f) * scale;
      if (byte < 0x80) {
        if (!Number.isSafeInteger(n)) break;
        return n;
      }
      scale *= 0x80;
    }
    throw new ClockError('varint out of range in clock encoding');
  }

  ascii(): string {
    const length = this.varint();
    if (this.at + length > this.buf.length) throw new ClockError('truncated clock encoding');
    const text = this.buf.toString('latin1', this.at, this.at + length);
    this.at += length;
    if (!isNodeTag(text)) throw new ClockError('clock encoding names an invalid node tag');
    return text;
  }

  bytes(): Buffer {
    const length = this.varint();
    if (this.at + length > this.buf.length) throw new ClockError('truncated sibling encoding');
    const out = this.buf.subarray(this.at, this.at + length);
    this.at += length;
    return out;
  }

  end(): void {
    if (this.at !== this.buf.length) throw new ClockError(`${this.buf.length - this.at} trailing bytes after a clock encoding`);
  }
}
