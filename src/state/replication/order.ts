// The one place replication decides which of two records of a key supersedes the other, where a
// single answer is needed (newest of several reads, the hint kept per key, read repair, handoff
// confirmation). Plain records: last-writer-wins on the HLC version (`<wall>.<logical>@<node>`).
// Sibling sets (keys under json-merge / siblings, codec.ts) are merged by the replica store, not
// picked; here one supersedes another only when it includes it causally (its context covers
// every version of the other), and otherwise they fall back to version order.
import type { ContextRecord } from '../record.js';
import { compareVersions } from '../version.js';
import { contextOf, vectorCovers } from './clock.js';
import { isSiblingRecord, stateOf } from './codec.js';

/** > 0 when `a` supersedes `b`, < 0 when `b` supersedes `a`, 0 when they are the same version. */
export function compareRecords(a: ContextRecord, b: ContextRecord): number {
  if (a.version !== b.version && isSiblingRecord(a) && isSiblingRecord(b)) {
    const sa = stateOf(a);
    const sb = stateOf(b);
    const ca = contextOf(sa);
    const cb = contextOf(sb);
    const aHasB = sb.every(({ clock }) => vectorCovers(ca, clock.dot));
    const bHasA = sa.every(({ clock }) => vectorCovers(cb, clock.dot));
    if (aHasB !== bHasA) return aHasB ? 1 : -1;
  }
  return compareVersions(a.version, b.version);
}

/** The winner of a set of replicas' answers (undefined entries are replicas without the key). */
export function newestOf(records: ReadonlyArray<ContextRecord | undefined>): ContextRecord | undefined {
  let newest: ContextRecord | undefined;
  for (const record of records) if (record && (!newest || compareRecords(record, newest) > 0)) newest = record;
  return newest;
}
