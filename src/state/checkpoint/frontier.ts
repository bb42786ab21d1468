// The version-clock frontier a snapshot records: per origin node (the `@node` of a version), the
// newest HLC timestamp of a write the snapshot reflects. After a restore it says what the restored
// state has seen from each node; anything a replica holds past it happened later and comes back
// through anti-entropy (the restored sidecar starts a round with every peer).
//
// It is kept as writes reach the embedded L2 — one choke point, MemoryL2.apply, which local writes,
// replica applies, write-behind flushes and recovery all go through — so a snapshot reads it in
// O(nodes) when it opens its view, instead of scanning the records (which would hold writes).
import { MemoryL2, type LoadBatch } from '../cache/memory-l2.js';
import { formatTimestamp, type HlcTimestamp } from '../hlc.js';
import type { ContextRecord } from '../record.js';

/** The newest timestamp per origin node of the versions noted. */
export class WriteFrontier {
  private readonly newest = new Map<string, HlcTimestamp>();

  /** Folds in a version `<wall>.<logical>@<node>`; anything else (a synthesised tombstone's '') is ignored. */
  note(version: string): void {
    const at = version.lastIndexOf('@');
    const dot = version.indexOf('.');
    if (at < 0 || dot < 0 || dot > at) return;
    const wall = Number(version.slice(0, dot));
    const logical = Number(version.slice(dot + 1, at));
    if (!Number.isSafeInteger(wall) || !Number.isSafeInteger(logical) || wall < 0 || logical < 0) return;
    const node = version.slice(at + 1);
    const held = this.newest.get(node);
    if (held === undefined || wall > held.wall || (wall === held.wall && logical > held.logical)) this.newest.set(node, { wall, logical });
  }

  /** The header form: node → `<wall>.<logical>`, nodes in order. */
  toRecord(): Record<string, string> {
    return frontierRecord(this.newest);
  }

  clear(): void {
    this.newest.clear();
  }
}

export function frontierRecord(newest: ReadonlyMap<string, HlcTimestamp>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const node of [...newest.keys()].sort()) out[node] = formatTimestamp(newest.get(node)!);
  return out;
}

/** The frontier of a set of records (what an offline restore writes): exact, from their versions. */
export function frontierOf(records: Iterable<ContextRecord>): Record<string, string> {
  const frontier = new WriteFrontier();
  for (const record of records) frontier.note(record.version);
  return frontier.toRecord();
}

/** The embedded L2 with its frontier kept up to date: every record applied is noted, a restore's clear resets it. */
export class FrontierTrackingL2 extends MemoryL2 {
  readonly frontier = new WriteFrontier();

  override apply(record: ContextRecord): void {
    super.apply(record);
    this.frontier.note(record.version);
  }

  override loadSnapshot(batch: LoadBatch): void {
    super.loadSnapshot(batch);
    for (const record of batch.records) this.frontier.note(record.version);
  }

  override clear(): void {
    super.clear();
    this.frontier.clear();
  }
}
