// Rebuilding context state from disk: a snapshot chain (full, then its incrementals in order), then
// the WAL records after it. Start-up uses it for the newest point; `checkpoint restore` for a point
// in time, or a checkpoint id, and for one tenant or session. A chain that fails to read is
// abandoned for the next older one, and a torn WAL tail ends the replay where it is: recovery
// stops at the last valid point, it never fails the start and never invents data.
import type { ContextRecord } from '../record.js';
import { chainOf, readCatalog, type CatalogEntry } from './catalog.js';
import { decodeWalEntry } from './entries.js';
import { readSnapshotBatches, type SnapshotBatch } from './snapshot-file.js';
import type { WalReplayReport } from './wal.js';

/** Which snapshot to start from. */
export type RebuildPoint =
  /** The newest loadable chain, then every WAL record after it. */
  | { kind: 'latest' }
  /** The state as of a time: the newest chain created at or before it, then WAL records stamped at or before it. */
  | { kind: 'time'; at: number }
  /** Exactly a checkpoint; with `rollForwardUntil`, WAL records after it stamped at or before that time too. */
  | { kind: 'checkpoint'; id: string; rollForwardUntil?: number };

export interface RebuildSource {
  dir: string;
  encryptionKey?: Buffer;
  /** Delivers WAL payloads after `afterLsn`, in order (an open Wal, or the offline directory reader). */
  replay(afterLsn: number, onRecord: (lsn: number, payload: Buffer) => void): Promise<WalReplayReport>;
}

export interface RebuildReport {
  /** Snapshot ids loaded, oldest first; empty when none was usable. */
  chain: string[];
  /** The LSN the chain covers through (0 without a chain). */
  chainLsn: number;
  snapshotRecords: number;
  walRecords: number;
  /** The last LSN read from the WAL. */
  walLastLsn: number;
  torn?: WalReplayReport['torn'];
  /** Chains that could not be read, and why. */
  skipped: Array<{ id: string; error: string }>;
}

export class RebuildError extends Error {
  override name = 'RebuildError';
}

/**
 * Applies the state at `point` through `apply` (called in order; a tombstone deletes). `reset` is
 * called before each chain attempt so a half-read chain leaves nothing behind.
 */
export async function rebuild(
  source: RebuildSource,
  point: RebuildPoint,
  target: {
    reset(): void;
    apply(record: ContextRecord): void;
    /** The snapshot chain's records, a batch at a time, with where they lie (MemoryL2.loadSnapshot); without it, apply each. */
    loadSnapshot?(batch: SnapshotBatch): void;
  },
  onProgress?: (phase: 'snapshot' | 'wal', records: number) => void,
): Promise<RebuildReport> {
  const { entries, unreadable } = await readCatalog(source.dir);
  const report: RebuildReport = { chain: [], chainLsn: 0, snapshotRecords: 0, walRecords: 0, walLastLsn: 0, skipped: [] };
  for (const bad of unreadable) report.skipped.push({ id: bad.path, error: `header unreadable: ${bad.error}` });
  for (const tip of candidates(entries, point)) {
    const chain = chainOf(entries, tip);
    if (!chain) {
      report.skipped.push({ id: tip.header.id, error: 'its chain is incomplete (a snapshot it builds on is missing)' });
      continue;
    }
    target.reset();
    report.snapshotRecords = 0;
    try {
      for (const link of chain) {
        for await (const batch of readSnapshotBatches(link.path, { key: source.encryptionKey })) {
          if (target.loadSnapshot) target.loadSnapshot(batch);
          else for (const record of batch.records) target.apply(record);
          report.snapshotRecords += batch.records.length;
          onProgress?.('snapshot', report.snapshotRecords);
        }
      }
    } catch (err) {
      report.skipped.push({ id: tip.header.id, error: (err as Error).message });
      continue;
    }
    report.chain = chain.map((c) => c.header.id);
    report.chainLsn = tip.header.lsn;
    break;
  }
  if (report.chain.length === 0) {
    if (point.kind === 'checkpoint') throw new RebuildError(`checkpoint ${point.id} cannot be loaded: ${report.skipped.map((s) => s.error).join('; ') || 'no such checkpoint'}`);
    target.reset();
    report.snapshotRecords = 0;
  }

  const until = point.kind === 'latest' ? Infinity : point.kind === 'time' ? point.at : (point.rollForwardUntil ?? -Infinity);
  if (until === -Infinity) return report;
  let replayed: WalReplayReport;
  try {
    replayed = await source.replay(report.chainLsn, (lsn, payload) => {
      report.walLastLsn = lsn;
      const entry = decodeWalEntry(payload);
      if (entry.redacted || entry.record.updatedAt > until) return;
      target.apply(entry.record);
      report.walRecords++;
      if (report.walRecords % 10_000 === 0) onProgress?.('wal', report.walRecords);
    });
  } catch (err) {
    if ((err as { code?: string }).code !== 'WAL_RECORDS_REMOVED') throw err;
    throw new RebuildError(
      `the WAL no longer reaches back to LSN ${report.chainLsn + 1}${report.chain.length ? ` (after checkpoint ${report.chain.at(-1)})` : ' and no checkpoint covers the point asked for'}: ${(err as Error).message}`,
    );
  }
  if (replayed.torn) report.torn = replayed.torn;
  return report;
}

/** Snapshots to try, best first. */
function candidates(entries: readonly CatalogEntry[], point: RebuildPoint): CatalogEntry[] {
  const newestFirst = [...entries].reverse();
  switch (point.kind) {
    case 'latest':
      return newestFirst;
    case 'time':
      return newestFirst.filter((e) => e.header.createdAt <= point.at);
    case 'checkpoint':
      return entries.filter((e) => e.header.id === point.id);
  }
}
