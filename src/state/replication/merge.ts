// What a replica keeps, and what a reader gets, when writes to one key were concurrent. Three
// tiers, chosen per key prefix (longest matching prefix wins):
//
//   lww         Last writer wins by HLC dot (compareDots: timestamp, then node tag; never the raw
//               wall clock). The state is cut to the single newest value on every write and sync.
//               Newest-by-HLC is a join (HLC extends causality), so this converges.
//   json-merge  Concurrent JSON versions are merged when read: objects member by member, message
//               lists (arrays of objects with an `id`) as the union by id, ordered by timestamp.
//               The versions stay stored as siblings until a write made with the read's context
//               supersedes them all, so the merged value is a pure function of the sibling set and
//               every replica computes the same one. Any version that is not JSON (content type or
//               body) makes the key fall back to `siblings`.
//   siblings    Every concurrent version is kept (at most `maxSiblings`; past that, the oldest by
//               HLC are dropped and reported) and the key is in conflict until someone resolves it.
//
// How json-merge decides (the "stamps"): every JSON version carries `JsonStamps`, a tree beside
// the value that says which write last changed each part — the whole value, each object member
// (recursively), each message of a message list. `write` maintains them by comparing the new value
// with the merged value the writer's context covered: unchanged parts keep their stamps, changed
// parts get the new write's dot. A version without stamps (written under another tier, or before
// replication) counts as changed everywhere at its own dot: the whole-value HLC. Merging two
// versions of a part:
//   - the side whose part was more recently replaced as a whole (`s`, by compareDots) decides its
//     kind; if both sides are objects, members merge one by one (a member changed on one side keeps
//     that change; changed on both, the newer stamp wins), and a member the winner deleted stays
//     deleted unless the other side changed it later;
//   - two message lists merge as the union by id (same id on both sides: the newer stamp wins),
//     minus messages a writer removed (a removal is remembered, and stands against copies of the
//     message not changed after it); ordered by `ts`, `timestamp` or `createdAt`, then id, when
//     the union adds anything. Two sidecars appending during a partition keep both;
//   - anything else (scalars, plain arrays, a kind change): the newer stamp wins whole.
// A deletion of the key (tombstone) wins only if it is the newest version; otherwise the live
// versions merge. Known limit: an edit inside a member that another writer concurrently replaced
// or deleted loses when the replacement is newer than the member (delete/replace wins).
//
// Pure: no I/O. The caller persists `Reconciliation.state`, ships it to replicas, and logs
// `conflict` / `dropped`.
import type { Json } from '../api/merge-patch.js';
import type { HybridClock } from '../hlc.js';
import {
  compareDots,
  contextOf,
  dotVersion,
  event,
  sameDot,
  stateTag,
  sync,
  vectorCovers,
  type Dot,
  type Siblings,
  type VersionVector,
  type Versioned,
} from './clock.js';

export type ConflictStrategy = 'lww' | 'json-merge' | 'siblings';
export const CONFLICT_STRATEGIES: readonly ConflictStrategy[] = ['lww', 'json-merge', 'siblings'];

/** Keys starting with `prefix` resolve conflicts with `strategy` ('' matches every key). */
export interface ConflictPolicy {
  prefix: string;
  strategy: ConflictStrategy;
}

export interface MergeConfig {
  policies?: readonly ConflictPolicy[];
  /** For keys no policy matches. Default 'lww' (what a single sidecar does today). */
  defaultStrategy?: ConflictStrategy;
  /**
   * Siblings kept per key under json-merge and siblings; the oldest by HLC go first. Default 8.
   * Below the cap, reconcile is a join (order of merges never matters). Once the cap drops a
   * version, a replica that merged in another order may still hold it; anti-entropy then brings it
   * back wherever it still ranks among the newest `maxSiblings`, so replicas still converge, but
   * a dropped version is not reliably gone: treat `dropped` as "may be lost", and log it.
   */
  maxSiblings?: number;
}

export const DEFAULT_MAX_SIBLINGS = 8;

/** What is stored per version: the body and whatever else the caller keeps (`T extends Payload`). */
export interface Payload {
  value: Buffer;
  contentType: string;
  /** A deletion of the key. */
  tombstone?: boolean;
  /** json-merge bookkeeping, maintained by `write`; store and ship it with the value. */
  stamps?: JsonStamps;
}

/** A dot in JSON-friendly form: [wall, logical, node]. */
export type Stamp = readonly [number, number, string];

/** When each part of a JSON value last changed (see the module comment). */
export interface JsonStamps {
  /**
   * Scalars: the write that last set the value. Objects and message lists: the write that made this
   * part an object/list in place of something else (a value, a deletion); `ZERO_STAMP` when it was
   * created where nothing was, so that two writers creating the same object or list concurrently
   * merge their contents instead of one replacing the other.
   */
  s: Stamp;
  /** Object: member → its stamps, deleted members included (as `{ s, x: 1 }`). */
  f?: Record<string, JsonStamps>;
  /** Message list: message id key (`typeof id` + ':' + id) → last write that added or changed it. */
  m?: Record<string, Stamp>;
  /** Message list: removed message id key → the write that removed it. */
  d?: Record<string, Stamp>;
  /** This member was deleted at `s`. */
  x?: 1;
}

/** One version as a conflict log line or `GET /v1/conflicts` shows it. */
export interface ConflictVersion {
  /** `<wall>.<logical>@<node>`: the version's dot. */
  version: string;
  contentType: string;
  value: Buffer;
  tombstone: boolean;
}

export interface ConflictRecord {
  key: string;
  strategy: ConflictStrategy;
  /** siblings: the key's tier keeps siblings; not-json: json-merge met a version that is not JSON. */
  reason: 'siblings' | 'not-json';
  /** The versions now in conflict, oldest first. */
  siblings: ConflictVersion[];
  /** Versions the sibling cap removed in this step (also in `Reconciliation.dropped`). */
  dropped: ConflictVersion[];
}

export interface Reconciliation<T extends Payload> {
  /** The key's new state: persist and replicate it (whole). */
  state: Siblings<T>;
  /** Whether `state` differs from the local state passed in (false: nothing to persist). */
  changed: boolean;
  /** Versions removed by the sibling cap (not superseded by anything): report them. */
  dropped: Array<Versioned<T>>;
  /** Present when the key is left in conflict (two or more siblings nobody merges). */
  conflict?: ConflictRecord;
}

export interface ReadView<T extends Payload> {
  /**
   * What to serve: the single value, the LWW winner, or the json-merge result (a new payload: the
   * newest version's fields with the merged body and stamps). Undefined when the key has no
   * versions or is in conflict. A `tombstone` payload means the key is deleted.
   */
  value?: T;
  /** Read is in conflict: serve `siblings` on request and say so in a header. */
  conflict: boolean;
  /** How `value` came about. */
  resolvedBy: 'single' | 'lww' | 'json-merge' | 'none';
  /** The ETag body (stateTag): If-Match on it makes a write supersede every sibling. */
  etag?: string;
  /** The context that supersedes every sibling: what a write after this read passes. */
  context: VersionVector;
  siblings: Siblings<T>;
}

export interface WriteOutcome<T extends Payload> extends Reconciliation<T> {
  written: Versioned<T>;
}

/**
 * The conflict tiers for a set of key prefixes. Stateless apart from its config: share one per
 * replicator.
 */
export class ConflictResolver<T extends Payload = Payload> {
  readonly maxSiblings: number;
  private readonly policies: ConflictPolicy[];
  private readonly defaultStrategy: ConflictStrategy;

  constructor(config: MergeConfig = {}) {
    this.maxSiblings = config.maxSiblings ?? DEFAULT_MAX_SIBLINGS;
    if (!Number.isInteger(this.maxSiblings) || this.maxSiblings < 1) throw new RangeError(`maxSiblings must be a positive integer, not ${config.maxSiblings}`);
    this.defaultStrategy = config.defaultStrategy ?? 'lww';
    // Longest prefix first, so the first match is the most specific.
    this.policies = [...(config.policies ?? [])].sort((a, b) => b.prefix.length - a.prefix.length);
  }

  strategyFor(key: string): ConflictStrategy {
    for (const policy of this.policies) if (key.startsWith(policy.prefix)) return policy.strategy;
    return this.defaultStrategy;
  }

  /**
   * A coordinator's write (this node must be a replica of the key, see clock.ts). `local` is the
   * key's state here, `context` what the client read (`ReadView.context`, or `contextOf(local)` for
   * a blind overwrite), `node` this node's tag. Under json-merge, the payload's stamps are computed
   * here (any passed in are replaced).
   */
  write(key: string, local: Siblings<T>, context: VersionVector, payload: T, node: string, hlc: HybridClock): WriteOutcome<T> {
    let stampsFor: ((dot: Dot) => JsonStamps) | undefined;
    if (this.strategyFor(key) === 'json-merge') {
      const next = parseJsonPayload(payload);
      if (next !== NOT_JSON) {
        const seen = local.filter(({ clock }) => vectorCovers(context, clock.dot));
        const base = mergeJsonVersions(seen.filter((v) => !v.value.tombstone));
        stampsFor = (dot) => stampWrite(base, next, toStamp(dot));
      }
    }
    const { state, written } = event(local, context, node, hlc, payload);
    const value: T = { ...payload };
    delete value.stamps;
    if (stampsFor !== undefined) value.stamps = stampsFor(written.clock.dot);
    const stamped: Versioned<T> = { clock: written.clock, value };
    return { ...this.settle(key, local, state.map((v) => (v === written ? stamped : v))), written: stamped };
  }

  /** Replication receive, read repair, anti-entropy: combine a peer's state of the key with ours. */
  reconcile(key: string, local: Siblings<T>, incoming: Siblings<T>): Reconciliation<T> {
    return this.settle(key, local, sync(local, incoming));
  }

  /** What a read of the key serves. */
  view(key: string, state: Siblings<T>): ReadView<T> {
    const base = { context: contextOf(state), siblings: state, etag: stateTag(state) };
    if (state.length === 0) return { ...base, conflict: false, resolvedBy: 'none' };
    if (state.length === 1) return { ...base, value: state[0]!.value, conflict: false, resolvedBy: 'single' };
    const strategy = this.strategyFor(key);
    if (strategy === 'lww') return { ...base, value: newest(state).value, conflict: false, resolvedBy: 'lww' };
    if (strategy === 'json-merge') {
      const merged = mergeJsonSiblings(state);
      if (merged !== undefined) return { ...base, value: merged, conflict: false, resolvedBy: 'json-merge' };
    }
    return { ...base, conflict: true, resolvedBy: 'none' };
  }

  /** Applies the tier's storage rule to a merged state and describes the outcome. */
  private settle(key: string, local: Siblings<T>, merged: Siblings<T>): Reconciliation<T> {
    const strategy = this.strategyFor(key);
    let state = merged;
    let dropped: Array<Versioned<T>> = [];
    if (strategy === 'lww') {
      if (state.length > 1) state = [newest(state)];
    } else if (state.length > this.maxSiblings) {
      // Siblings are sorted oldest first.
      dropped = state.slice(0, state.length - this.maxSiblings);
      state = state.slice(state.length - this.maxSiblings);
    }
    const changed = state.length !== local.length || state.some((v, i) => !sameDot(v.clock.dot, local[i]!.clock.dot));
    const outcome: Reconciliation<T> = { state, changed, dropped };
    if (state.length > 1 && strategy !== 'lww') {
      const reason = strategy === 'siblings' ? 'siblings' : mergeJsonSiblings(state) === undefined ? 'not-json' : undefined;
      if (reason !== undefined) outcome.conflict = { key, strategy, reason, siblings: state.map(conflictVersion), dropped: dropped.map(conflictVersion) };
    }
    return outcome;
  }
}

export function conflictVersion<T extends Payload>({ clock, value }: Versioned<T>): ConflictVersion {
  return { version: dotVersion(clock.dot), contentType: value.contentType, value: value.value, tombstone: value.tombstone === true };
}

function newest<T>(state: Siblings<T>): Versioned<T> {
  let best = state[0]!;
  for (const v of state) if (compareDots(v.clock.dot, best.clock.dot) > 0) best = v;
  return best;
}

// ---------------------------------------------------------------------------------------------
// JSON merge

const NOT_JSON = Symbol('not json');

/** application/json and any `+json` type, parameters ignored. */
export function isJsonContentType(contentType: string): boolean {
  const type = contentType.split(';', 1)[0]!.trim().toLowerCase();
  return type === 'application/json' || /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+\+json$/.test(type);
}

function parseJsonPayload(payload: Payload): Json | typeof NOT_JSON {
  if (!isJsonContentType(payload.contentType)) return NOT_JSON;
  try {
    return JSON.parse(payload.value.toString('utf8')) as Json;
  } catch {
    return NOT_JSON;
  }
}

interface JsonNode {
  /** undefined: deleted member. */
  json: Json | undefined;
  st: JsonStamps;
}

/**
 * The json-merge result of a key's siblings, or undefined when one of the live versions is not
 * JSON (the caller falls back to keeping siblings). The result copies the newest version's payload
 * fields and replaces the body and stamps. Order-independent: the versions are folded oldest first.
 */
export function mergeJsonSiblings<T extends Payload>(state: Siblings<T>): T | undefined {
  const top = newest(state);
  if (top.value.tombstone) return top.value;
  const live = state.filter((v) => !v.value.tombstone);
  const merged = mergeJsonVersions(live);
  if (merged === NOT_JSON) return undefined;
  if (merged === undefined) return top.value;
  const newestLive = newest(live).value;
  return { ...newestLive, value: Buffer.from(JSON.stringify(merged.json)), stamps: merged.st };
}

/** Folds versions (sorted by dot) into one JSON node; undefined for none, NOT_JSON if any is not JSON. */
function mergeJsonVersions<T extends Payload>(versions: Siblings<T>): JsonNode | undefined | typeof NOT_JSON {
  let acc: JsonNode | undefined;
  for (const { clock, value } of [...versions].sort((a, b) => compareDots(a.clock.dot, b.clock.dot))) {
    const json = parseJsonPayload(value);
    if (json === NOT_JSON) return NOT_JSON;
    const node: JsonNode = { json, st: value.stamps ?? freshStamps(json, toStamp(clock.dot), false) };
    acc = acc === undefined ? node : joinNodes(acc, node);
  }
  return acc;
}

/** Before every real write. */
export const ZERO_STAMP: Stamp = [0, 0, ''];

export function toStamp(dot: Dot): Stamp {
  return [dot.ts.wall, dot.ts.logical, dot.node];
}

function compareStamps(a: Stamp, b: Stamp): number {
  return a[0] - b[0] || a[1] - b[1] || (a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0);
}

type Kind = 'deleted' | 'object' | 'messages' | 'value';

function kindOf(json: Json | undefined): Kind {
  if (json === undefined) return 'deleted';
  if (isObject(json)) return 'object';
  if (Array.isArray(json) && messageKeys(json) !== undefined) return 'messages';
  return 'value';
}

function isObject(json: Json | undefined): json is { [member: string]: Json } {
  return typeof json === 'object' && json !== null && !Array.isArray(json);
}

/** The id keys of a message list (every element an object with a unique string/number id), else undefined. */
function messageKeys(list: readonly Json[]): string[] | undefined {
  const keys: string[] = [];
  const seen = new Set<string>();
  for (const item of list) {
    if (!isObject(item) || !Object.hasOwn(item, 'id')) return undefined;
    const id = item['id'];
    if (typeof id !== 'string' && !(typeof id === 'number' && Number.isFinite(id))) return undefined;
    const key = `${typeof id}:${id}`;
    if (seen.has(key)) return undefined;
    seen.add(key);
    keys.push(key);
  }
  return keys;
}

/**
 * Stamps for a value written whole at `stamp`. `replaced`: it took the place of something (a value
 * of another kind, a deletion) rather than being created where nothing was.
 */
function freshStamps(json: Json | undefined, stamp: Stamp, replaced: boolean): JsonStamps {
  if (json === undefined) return { s: stamp, x: 1 };
  if (isObject(json)) {
    const f: Record<string, JsonStamps> = {};
    for (const name of Object.keys(json)) define(f, name, freshStamps(json[name], stamp, false));
    return { s: replaced ? stamp : ZERO_STAMP, f };
  }
  const keys = Array.isArray(json) ? messageKeys(json) : undefined;
  if (keys === undefined) return { s: stamp };
  const m: Record<string, Stamp> = {};
  for (const key of keys) define(m, key, stamp);
  return { s: replaced ? stamp : ZERO_STAMP, m };
}

/**
 * Stamps for `next` written at `stamp` over `base` (the merged value the writer saw): unchanged
 * parts keep their stamps.
 */
function stampWrite(base: JsonNode | undefined | typeof NOT_JSON, next: Json, stamp: Stamp): JsonStamps {
  if (base === undefined || base === NOT_JSON) return freshStamps(next, stamp, false);
  return stampNode(base, next, stamp);
}

function stampNode(base: JsonNode, next: Json | undefined, stamp: Stamp): JsonStamps {
  const kind = kindOf(next);
  if (kind !== kindOf(base.json)) return freshStamps(next, stamp, true);
  if (kind === 'deleted') return base.st;
  if (kind === 'object') {
    const before = base.json as { [member: string]: Json };
    const after = next as { [member: string]: Json };
    const f: Record<string, JsonStamps> = {};
    const old = base.st.f ?? {};
    for (const name of Object.keys(old)) {
      if (!Object.hasOwn(after, name)) define(f, name, Object.hasOwn(before, name) ? { s: stamp, x: 1 } : old[name]!);
    }
    for (const name of Object.keys(after)) {
      const child: JsonNode | undefined = Object.hasOwn(before, name) ? { json: before[name], st: old[name] ?? { s: base.st.s } } : undefined;
      // A member that was deleted (a tombstone in the stamps) is replaced; a new one is created.
      const replaced = Object.hasOwn(old, name);
      define(f, name, child === undefined ? freshStamps(after[name], stamp, replaced) : stampNode(child, after[name], stamp));
    }
    return { s: base.st.s, f };
  }
  if (kind === 'messages') {
    const before = messageMap(base.json as Json[]);
    const after = next as Json[];
    const afterKeys = messageKeys(after)!;
    const m: Record<string, Stamp> = {};
    afterKeys.forEach((key, i) => {
      const old = before.get(key);
      define(m, key, old !== undefined && deepEqual(old, after[i]!) ? (base.st.m?.[key] ?? base.st.s) : stamp);
    });
    const st: JsonStamps = { s: base.st.s, m };
    // Removed messages are remembered, so that copies elsewhere do not bring them back.
    const d: Record<string, Stamp> = {};
    for (const [key, at] of Object.entries(base.st.d ?? {})) if (!Object.hasOwn(m, key)) define(d, key, at);
    for (const key of before.keys()) if (!Object.hasOwn(m, key)) define(d, key, stamp);
    if (Object.keys(d).length > 0) st.d = d;
    return st;
  }
  return deepEqual(base.json!, next!) ? base.st : { s: stamp };
}

/** Merge of two versions of one part. Commutative: ties on `s` are the same write. */
function joinNodes(a: JsonNode, b: JsonNode): JsonNode {
  const order = compareStamps(a.st.s, b.st.s) || compareCanonical(a.json, b.json);
  const [winner, loser] = order >= 0 ? [a, b] : [b, a];
  const kind = kindOf(winner.json);
  if (kind !== kindOf(loser.json)) return winner;
  if (kind === 'object') return joinObjects(winner, loser);
  if (kind === 'messages') return joinMessages(winner, loser);
  return winner;
}

function joinObjects(winner: JsonNode, loser: JsonNode): JsonNode {
  const w = winner.json as { [member: string]: Json };
  const l = loser.json as { [member: string]: Json };
  const wf = winner.st.f ?? {};
  const lf = loser.st.f ?? {};
  const names = new Set([...Object.keys(w), ...Object.keys(wf), ...Object.keys(l), ...Object.keys(lf)]);
  const json: { [member: string]: Json } = {};
  const f: Record<string, JsonStamps> = {};
  for (const name of names) {
    const fromWinner = memberNode(w, wf, name, winner.st.s);
    let fromLoser = memberNode(l, lf, name, loser.st.s);
    // What the loser had before the winner replaced this object whole is gone.
    if (fromLoser !== undefined && compareStamps(maxStamp(fromLoser.st), winner.st.s) <= 0 && compareStamps(loser.st.s, winner.st.s) < 0) fromLoser = undefined;
    const merged = fromWinner && fromLoser ? joinNodes(fromWinner, fromLoser) : (fromWinner ?? fromLoser);
    if (merged === undefined) continue;
    define(f, name, merged.st);
    if (merged.json !== undefined) define(json, name, merged.json);
  }
  return { json, st: { s: winner.st.s, f } };
}

function memberNode(json: { [member: string]: Json }, stamps: Record<string, JsonStamps>, name: string, parent: Stamp): JsonNode | undefined {
  const present = Object.hasOwn(json, name);
  const st = Object.hasOwn(stamps, name) ? stamps[name]! : undefined;
  if (!present && st === undefined) return undefined;
  if (!present) return { json: undefined, st: st!.x ? st! : { s: st!.s, x: 1 } };
  const value = json[name]!;
  return { json: value, st: st && !st.x ? st : freshStamps(value, parent, false) };
}

function joinMessages(winner: JsonNode, loser: JsonNode): JsonNode {
  const w = messageMap(winner.json as Json[]);
  const l = messageMap(loser.json as Json[]);
  const stampOf = (node: JsonNode, key: string): Stamp => node.st.m?.[key] ?? node.st.s;
  const removed = new Map<string, Stamp>();
  for (const side of [winner, loser]) {
    for (const [key, stamp] of Object.entries(side.st.d ?? {})) {
      const other = removed.get(key);
      if (other === undefined || compareStamps(stamp, other) > 0) removed.set(key, stamp);
    }
  }
  const out = new Map<string, { message: Json; stamp: Stamp }>();
  for (const [side, messages] of [[winner, w], [loser, l]] as const) {
    for (const [key, message] of messages) {
      const stamp = stampOf(side, key);
      const mine = out.get(key);
      if (mine === undefined || compareStamps(stamp, mine.stamp) > 0 || (compareStamps(stamp, mine.stamp) === 0 && compareCanonical(message, mine.message) > 0)) {
        out.set(key, { message, stamp });
      }
    }
  }
  // A removal stands against copies of the message that are not newer than it.
  for (const [key, stamp] of removed) {
    const present = out.get(key);
    if (present !== undefined && compareStamps(present.stamp, stamp) > 0) removed.delete(key);
    else out.delete(key);
  }
  let entries = [...out.entries()];
  const sameAsWinner = entries.length === w.size && entries.every(([key, { message }]) => w.get(key) === message);
  if (sameAsWinner) entries = [...w.keys()].map((key) => [key, out.get(key)!]);
  else entries.sort(([ka, a], [kb, b]) => compareMessages(a.message, b.message) || (ka < kb ? -1 : ka > kb ? 1 : 0));
  const m: Record<string, Stamp> = {};
  for (const [key, { stamp }] of entries) define(m, key, stamp);
  const st: JsonStamps = { s: winner.st.s, m };
  if (removed.size > 0) {
    const d: Record<string, Stamp> = {};
    for (const [key, stamp] of [...removed].sort(([x], [y]) => (x < y ? -1 : 1))) define(d, key, stamp);
    st.d = d;
  }
  return { json: entries.map(([, { message }]) => message), st };
}

function messageMap(list: readonly Json[]): Map<string, Json> {
  const keys = messageKeys(list)!;
  return new Map(keys.map((key, i) => [key, list[i]!]));
}

const TIME_FIELDS = ['ts', 'timestamp', 'createdAt'] as const;

/** Messages by their time field (numbers, or date strings parsed; unparseable strings after), else equal. */
function compareMessages(a: Json, b: Json): number {
  const ta = messageTime(a);
  const tb = messageTime(b);
  if (ta === undefined || tb === undefined) return ta === undefined ? (tb === undefined ? 0 : 1) : -1;
  if (typeof ta === 'number' && typeof tb === 'number') return ta - tb;
  if (typeof ta === 'number') return -1;
  if (typeof tb === 'number') return 1;
  return ta < tb ? -1 : ta > tb ? 1 : 0;
}

function messageTime(message: Json): number | string | undefined {
  const obj = message as { [member: string]: Json };
  for (const field of TIME_FIELDS) {
    if (!Object.hasOwn(obj, field)) continue;
    const value = obj[field];
    if (typeof value === 'number' && Number.isFinite(value)) return value;
    if (typeof value === 'string') {
      const parsed = Date.parse(value);
      return Number.isNaN(parsed) ? value : parsed;
    }
  }
  return undefined;
}

function maxStamp(st: JsonStamps): Stamp {
  let max = st.s;
  if (st.f) for (const child of Object.values(st.f)) { const c = maxStamp(child); if (compareStamps(c, max) > 0) max = c; }
  if (st.m) for (const s of Object.values(st.m)) if (compareStamps(s, max) > 0) max = s;
  if (st.d) for (const s of Object.values(st.d)) if (compareStamps(s, max) > 0) max = s;
  return max;
}

function compareCanonical(a: Json | undefined, b: Json | undefined): number {
  const x = canonical(a);
  const y = canonical(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

function canonical(json: Json | undefined): string {
  if (json === undefined) return '';
  if (Array.isArray(json)) return `[${json.map(canonical).join(',')}]`;
  if (isObject(json)) return `{${Object.keys(json).sort().map((k) => `${JSON.stringify(k)}:${canonical(json[k])}`).join(',')}}`;
  return JSON.stringify(json);
}

function deepEqual(a: Json, b: Json): boolean {
  return canonical(a) === canonical(b);
}

/** Sets a member even when it is named `__proto__`. */
function define<V>(target: Record<string, V>, name: string, value: V): void {
  Object.defineProperty(target, name, { value, enumerable: true, writable: true, configurable: true });
}

// ---------------------------------------------------------------------------------------------
// Per-prefix tiers from the config

/** One `context.replication.conflicts` entry. */
export interface ConflictPolicyConfig {
  prefix: string;
  strategy: ConflictStrategy;
  maxSiblings?: number;
}

/**
 * `context.replication.conflicts`: which tier a key is under (longest prefix wins, else lww) and
 * the resolver that applies it, with that entry's sibling cap.
 */
export class ConflictPolicies<T extends Payload = Payload> {
  private readonly entries: Array<{ prefix: string; strategy: ConflictStrategy; resolver: ConflictResolver<T> }>;
  private readonly lww = new ConflictResolver<T>({ defaultStrategy: 'lww' });

  constructor(config: readonly ConflictPolicyConfig[] = []) {
    this.entries = [...config]
      .sort((a, b) => b.prefix.length - a.prefix.length)
      .map((p) => ({ prefix: p.prefix, strategy: p.strategy, resolver: new ConflictResolver<T>({ defaultStrategy: p.strategy, maxSiblings: p.maxSiblings ?? DEFAULT_MAX_SIBLINGS }) }));
  }

  strategyFor(key: string): ConflictStrategy {
    return this.entries.find((e) => key.startsWith(e.prefix))?.strategy ?? 'lww';
  }

  /** Whether the key keeps sibling sets (json-merge, siblings) rather than one LWW record. */
  tiered(key: string): boolean {
    return this.strategyFor(key) !== 'lww';
  }

  resolverFor(key: string): ConflictResolver<T> {
    return this.entries.find((e) => key.startsWith(e.prefix))?.resolver ?? this.lww;
  }
}
