// The seam between the context API and whatever keeps the data. The API speaks only to a
// ContextStore; today that is the tiered local store (L1, L2, WAL), and replication will be a
// ContextStore that wraps it, coordinating peers before and after the local tiers.
import type { HlcTimestamp } from './hlc.js';
import type { ContextRecord, Retention } from './record.js';
import type { Expectation, ListPage } from './cache/l2.js';

export type Consistency = 'strong' | 'session' | 'eventual';
export const CONSISTENCY_LEVELS: readonly Consistency[] = ['strong', 'session', 'eventual'];

/** What a request asks of the store beyond the operation itself. */
export interface Access {
  consistency: Consistency;
  /** The latest version timestamp the caller's session has seen (ctxmesh-session). */
  session?: HlcTimestamp;
}

/** The new state of a context, before the store stamps its version. */
export interface Mutation {
  value: Buffer;
  contentType: string;
  /** Time to live from now, ms; undefined = no expiry. */
  ttlMs?: number;
  retention: Retention;
}

export interface ReadResult {
  record: ContextRecord;
  /** Served from L1 while L2 could not confirm it: it may be out of date (ctxmesh-stale). */
  stale: boolean;
  /** Where it came from: l1, l2, or the write-behind queue. */
  tier: 'l1' | 'l2' | 'queue';
}

export interface TierStats {
  entries: number;
  bytes: number;
  hits: number;
  misses: number;
  evictions: number;
  hitRatio: number;
}

export interface StoreStats {
  l1: TierStats & { maxBytes: number; criticalEntries: number };
  l2: Omit<TierStats, 'entries' | 'bytes' | 'evictions'> & { backend: 'memory' | 'redis'; available: boolean; coherent: boolean };
  writeMode: 'write-through' | 'write-behind';
  writeBehind: { queued: number; queuedBytes: number; flushed: number };
  staleReads: number;
}

export interface ContextStore {
  /** The live context, or undefined (missing or expired). */
  get(key: string, access: Access): Promise<ReadResult | undefined>;
  getMany(keys: readonly string[], access: Access): Promise<Array<ReadResult | undefined>>;
  /** Stamps a version and stores the context if `expected` holds; else MeshError precondition_failed. */
  put(key: string, mutation: Mutation, expected: Expectation, access: Access): Promise<ContextRecord>;
  /**
   * Read-modify-write (PATCH): `change` maps the current record (undefined when there is none) to
   * the new state. Without a pinned version in `expected`, a concurrent write makes the store
   * re-read and re-apply; with one, it is a precondition failure.
   */
  update(key: string, change: (current: ContextRecord | undefined) => Mutation, expected: Expectation, access: Access): Promise<ContextRecord>;
  /** Deletes if `expected` holds; the tombstone, or undefined when there was nothing to delete. */
  delete(key: string, expected: Expectation, access: Access): Promise<ContextRecord | undefined>;
  list(prefix: string, after: string | undefined, limit: number, access: Access): Promise<ListPage>;
  stats(): StoreStats;
}
