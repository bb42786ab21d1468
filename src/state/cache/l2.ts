// The second tier: where a context lives once it leaves the process. Redis in production, a map in
// the embedded default. A write carries its condition down to the tier so that the check and the
// write are one atomic step where the data is shared (a Redis script), and every write tells the
// other sidecars sharing the tier to drop their L1 copy.
import type { EventEmitter } from 'node:events';
import type { ContextRecord } from '../record.js';
import type { Version } from '../version.js';

/** What a conditional write expects to find. */
export type Expectation =
  | { kind: 'any' }
  /** If-None-Match: * */
  | { kind: 'absent' }
  /** If-Match: * */
  | { kind: 'present' }
  /** If-Match: "v1", "v2" */
  | { kind: 'version'; versions: readonly Version[] };

export const ANY: Expectation = { kind: 'any' };

export type WriteOutcome = { ok: true } | { ok: false; current: Version | undefined };

export interface ListPage {
  keys: string[];
  /** Pass as `after` for the next page; absent on the last page. */
  next?: string;
}

/**
 * Events: `invalidate(key)` when another writer changed a key; `link(up)` when the tier's
 * coherence link (Redis pub/sub) goes down or comes back — while it is down, L1 may miss
 * invalidations.
 */
export interface L2Tier extends EventEmitter {
  readonly kind: 'memory' | 'redis';
  /** Commands can be served now. */
  readonly available: boolean;
  /** Other writers' invalidations are being received (always true for memory). */
  readonly coherent: boolean;
  /** Resolves once connected (or rejects after the connect timeout); memory resolves at once. */
  ready(): Promise<void>;
  /** Throws MeshError l2_unavailable when the tier cannot answer. */
  get(key: string): Promise<ContextRecord | undefined>;
  getMany(keys: readonly string[]): Promise<Array<ContextRecord | undefined>>;
  /** Writes the record — deletes the key for a tombstone — if `expected` holds, atomically. */
  write(record: ContextRecord, expected: Expectation): Promise<WriteOutcome>;
  /** Unconditional writes applied in order as one batch: the write-behind flush. */
  writeBatch(records: readonly ContextRecord[]): Promise<void>;
  /** Keys starting with `prefix`, in byte order, after `after` (exclusive), at most `limit`. */
  list(prefix: string, after: string | undefined, limit: number): Promise<ListPage>;
  close(): Promise<void>;
}

export function satisfies(expected: Expectation, current: Version | undefined): boolean {
  switch (expected.kind) {
    case 'any':
      return true;
    case 'absent':
      return current === undefined;
    case 'present':
      return current !== undefined;
    case 'version':
      return current !== undefined && expected.versions.includes(current);
  }
}
