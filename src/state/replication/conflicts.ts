// The keys this sidecar holds in conflict (two or more siblings that no tier merged), for
// `GET /v1/conflicts` and `POST /v1/conflicts/{key}/resolve`. In memory only: the siblings
// themselves are the stored state; this is an index over it, rebuilt by tracking every state
// change (and, after a restart, by whatever re-reads keys: reads, anti-entropy).
//
// Wiring (replicator / API):
//   - After every write or reconcile of a key: `registry.track(key, outcome.state, outcome.conflict)`
//     with the ConflictResolver's outcome. It returns what changed; log `new` conflicts (the
//     record has both versions and bodies) and any `dropped` versions.
//   - GET /v1/conflicts?prefix=&after=&limit= → `registry.list({ prefix, after, limit })`.
//   - GET /v1/contexts/{key} on a key in conflict: `registry.get(key)` (or the resolver's view)
//     for the conflict header and, on request, the siblings.
//   - POST /v1/conflicts/{key}/resolve with the winning body and what the client saw (`seen`: the
//     ETag it got with the siblings, or an encoded context): `checkResolution(storedState, seen)`
//     against the key's stored state (or `registry.resolve(key, seen)` against the index) gives the
//     context to write with: `resolver.write(key, stored, context, payload, node, hlc)`. A context
//     that does not cover every current sibling is stale: 412, and nothing is written.
// Pure: no I/O; the clock is injected.
import { MeshError } from '../../errors/table.js';
import { ClockError, contextCoversAll, contextOf, decodeContext, encodeContext, stateTag, stateVersion, type Siblings, type VersionVector } from './clock.js';
import type { ContextRecord } from '../record.js';
import type { Access, Mutation, ReadResult } from '../store.js';
import type { ConflictRecord, ConflictStrategy, ConflictVersion, Payload } from './merge.js';
import { conflictVersion } from './merge.js';

export interface ConflictEntry {
  key: string;
  strategy: ConflictStrategy;
  reason: ConflictRecord['reason'];
  /** The siblings, oldest first, with their versions and bodies. */
  siblings: ConflictVersion[];
  /** The ETag (without quotes) a client resolves with. */
  etag: string;
  /** The stored state's version (clock.ts stateVersion): the ETag reads of the key carry; resolving with it works too. */
  version: string;
  /** The context that covers every sibling, encoded (clock.ts encodeContext). */
  context: string;
  /** Epoch ms when this sidecar first saw the key in conflict (since the last resolution). */
  since: number;
  /** Versions the sibling cap dropped while the key was in conflict. */
  dropped: number;
}

/** A line of `GET /v1/conflicts`: no bodies. */
export interface ConflictSummary {
  key: string;
  strategy: ConflictStrategy;
  reason: ConflictRecord['reason'];
  versions: string[];
  etag: string;
  version: string;
  since: number;
  dropped: number;
}

export type ConflictChange = 'new' | 'updated' | 'cleared' | 'unchanged';

export interface ConflictRegistryOptions {
  /** Keys tracked at most; past it the longest-standing conflict is forgotten (still stored). Default 10,000. */
  maxEntries?: number;
  now?: () => number;
}

export const DEFAULT_CONFLICT_LIST_LIMIT = 100;
export const MAX_CONFLICT_LIST_LIMIT = 1_000;

export class ConflictRegistry<T extends Payload = Payload> {
  private readonly entries = new Map<string, { entry: ConflictEntry; state: Siblings<T> }>();
  private readonly maxEntries: number;
  private readonly now: () => number;
  /** Conflicts forgotten because the registry was full. */
  forgotten = 0;

  constructor(options: ConflictRegistryOptions = {}) {
    this.maxEntries = options.maxEntries ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * Records the key's new state. `conflict` is the resolver's record (undefined = not in conflict):
   * the key is tracked while it is set, and forgotten when a state without one arrives.
   */
  track(key: string, state: Siblings<T>, conflict: ConflictRecord | undefined): ConflictChange {
    const held = this.entries.get(key);
    if (conflict === undefined || state.length < 2) {
      if (held === undefined) return 'unchanged';
      this.entries.delete(key);
      return 'cleared';
    }
    const etag = stateTag(state)!;
    if (held !== undefined && held.entry.etag === etag) return 'unchanged';
    const entry: ConflictEntry = {
      key,
      strategy: conflict.strategy,
      reason: conflict.reason,
      siblings: state.map(conflictVersion),
      etag,
      version: stateVersion(state)!,
      context: encodeContext(contextOf(state)),
      since: held?.entry.since ?? this.now(),
      dropped: (held?.entry.dropped ?? 0) + conflict.dropped.length,
    };
    if (held === undefined && this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
      this.forgotten++;
    }
    this.entries.set(key, { entry, state });
    return held === undefined ? 'new' : 'updated';
  }

  /** One page of the keys in conflict, by key. `after` is the last key of the previous page. */
  list(options: { prefix?: string; after?: string; limit?: number } = {}): { conflicts: ConflictSummary[]; next?: string } {
    const prefix = options.prefix ?? '';
    const limit = options.limit ?? DEFAULT_CONFLICT_LIST_LIMIT;
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_CONFLICT_LIST_LIMIT) {
      throw new MeshError('bad_request', `limit must be an integer from 1 to ${MAX_CONFLICT_LIST_LIMIT}`);
    }
    const keys = [...this.entries.keys()].filter((key) => key.startsWith(prefix) && (options.after === undefined || key > options.after)).sort();
    const page = keys.slice(0, limit);
    const conflicts = page.map((key) => summarise(this.entries.get(key)!.entry));
    return keys.length > limit ? { conflicts, next: page[page.length - 1]! } : { conflicts };
  }

  /** The key's siblings with bodies, or undefined when it is not (known to be) in conflict. */
  get(key: string): ConflictEntry | undefined {
    return this.entries.get(key)?.entry;
  }

  /**
   * The context to write the resolution with, checked against the registry's copy of the key's
   * state. Throws MeshError not_found (key not in conflict), bad_request (`seen` unreadable) or
   * precondition_failed (stale: it does not cover every current sibling).
   */
  resolve(key: string, seen: string): VersionVector {
    const held = this.entries.get(key);
    if (held === undefined) throw new MeshError('not_found', `${key} is not in conflict`);
    return checkResolution(held.state, seen);
  }
}

/**
 * What a resolution of `state` (the key's stored siblings) writes with, given what the client saw:
 * its ETag for the siblings (quotes optional) — which must still name the current state — or an
 * encoded context (clock.ts encodeContext), which must cover every current sibling. Throws
 * MeshError bad_request / precondition_failed.
 */
export function checkResolution<T>(state: Siblings<T>, seen: string): VersionVector {
  const tag = seen.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  if (tag === '') throw new MeshError('bad_request', 'a resolution names the version it saw (ETag or context)');
  if (/^\d+~/.test(tag) || tag.includes('@')) {
    if (tag !== stateTag(state) && tag !== stateVersion(state)) throw new MeshError('precondition_failed', 'the key changed since these siblings were read; read them again');
    return contextOf(state);
  }
  let context: VersionVector;
  try {
    context = decodeContext(tag);
  } catch (error) {
    if (error instanceof ClockError) throw new MeshError('bad_request', `unreadable context: ${error.message}`);
    throw error;
  }
  if (!contextCoversAll(context, state)) throw new MeshError('precondition_failed', 'the context does not cover every current sibling; read them again');
  return context;
}

function summarise(entry: ConflictEntry): ConflictSummary {
  return {
    key: entry.key,
    strategy: entry.strategy,
    reason: entry.reason,
    versions: entry.siblings.map((s) => s.version),
    etag: entry.etag,
    version: entry.version,
    since: entry.since,
    dropped: entry.dropped,
  };
}

// ── what the context API sees ───────────────────────────────────────────────────────────────

/** A read of a key that keeps sibling sets (json-merge, siblings): its versions beside the value served. */
export interface SiblingReadResult extends ReadResult {
  /** Every stored version, oldest first (one when there is no conflict). */
  siblings?: ConflictVersion[];
  /** The key is in conflict: `siblings` holds two or more versions that no tier merged. */
  conflict?: boolean;
}

/** One page of `GET /v1/conflicts`. */
export interface ConflictPage {
  conflicts: ConflictSummary[];
  next?: string;
}

/** A ContextStore that keeps conflicts (the replicator): the context API's /v1/conflicts routes. */
export interface ConflictStore {
  listConflicts(prefix: string, after: string | undefined, limit: number): Promise<ConflictPage>;
  /**
   * Writes `mutation` as the key's one version, superseding the siblings `seen` (an ETag of the
   * key's state, or an encoded context) covers. MeshError precondition_failed when `seen` is stale
   * (nothing is written), not_found when the key does not exist.
   */
  resolveConflict(key: string, mutation: Mutation, seen: string, access: Access): Promise<ContextRecord>;
}

export function isConflictStore(store: object): store is ConflictStore {
  return typeof (store as Partial<ConflictStore>).listConflicts === 'function' && typeof (store as Partial<ConflictStore>).resolveConflict === 'function';
}
