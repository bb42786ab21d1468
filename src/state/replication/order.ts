// The one place replication decides which of two versions of a context wins. Today it is
// last-writer-wins on the HLC version (`<wall>.<logical>@<node>`); dotted version vectors and
// semantic merges (clock.ts, merge.ts) replace this function's body, not its callers.
import type { ContextRecord } from '../record.js';
import { compareVersions } from '../version.js';

/** > 0 when `a` supersedes `b`, < 0 when `b` supersedes `a`, 0 when they are the same version. */
export function compareRecords(a: ContextRecord, b: ContextRecord): number {
  return compareVersions(a.version, b.version);
}

/** The winner of a set of replicas' answers (undefined entries are replicas without the key). */
export function newestOf(records: ReadonlyArray<ContextRecord | undefined>): ContextRecord | undefined {
  let newest: ContextRecord | undefined;
  for (const record of records) if (record && (!newest || compareRecords(record, newest) > 0)) newest = record;
  return newest;
}
