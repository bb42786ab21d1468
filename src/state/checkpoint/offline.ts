// Checkpoint operations on a data directory while its sidecar is stopped: what `ctxmesh checkpoint
// list|verify|restore|erase|create --dir` runs. A restore writes its result as a new full snapshot
// that covers the whole WAL, so the next start loads exactly the restored state; the history
// before it stays, so a restore can itself be undone by restoring to a point before it. It also
// leaves a marker: a replicated sidecar's next start runs anti-entropy with every peer, which
// brings back the writes after the restored point (restore-catch-up.ts).
import { join } from 'node:path';
import type { ContextRecord } from '../record.js';
import { isExpired } from '../record.js';
import { chainOf, readCatalog, snapshotId, snapshotPath } from './catalog.js';
import { keyCovered } from './entries.js';
import { frontierOf } from './frontier.js';
import { writeRestoreMarker } from './restore-catch-up.js';
import { eraseFromSnapshots, redactKey, scanForKey, writeAudit, type EraseReport, type KeyScan } from './erase.js';
import { rebuild, RebuildError, type RebuildPoint, type RebuildReport, type RebuildSource } from './rebuild.js';
import { verifySnapshot, writeSnapshot, type SnapshotHeader, type SnapshotSummary } from './snapshot-file.js';
import { Wal, type WalReplayReport } from './wal.js';

export type Progress = (phase: string, done: number, total?: number) => void;

export interface OfflineOptions {
  dir: string;
  encryptionKey?: Buffer;
  onProgress?: Progress;
}

function source(options: OfflineOptions): RebuildSource {
  const walDir = join(options.dir, 'wal');
  return { dir: options.dir, encryptionKey: options.encryptionKey, replay: (after, onRecord) => Wal.replayDirectory(walDir, after, onRecord) };
}

/** The state at a point, as a map. */
async function stateAt(options: OfflineOptions, point: RebuildPoint): Promise<{ state: Map<string, ContextRecord>; report: RebuildReport }> {
  const state = new Map<string, ContextRecord>();
  const now = Date.now();
  const report = await rebuild(
    source(options),
    point,
    {
      reset: () => state.clear(),
      apply: (record) => {
        if (record.tombstone || isExpired(record, now)) state.delete(record.key);
        else state.set(record.key, record);
      },
    },
    (phase, records) => options.onProgress?.(phase, records),
  );
  return { state, report };
}

export async function listOffline(dir: string): Promise<{ checkpoints: SnapshotHeader[]; unreadable: Array<{ path: string; error: string }> }> {
  const { entries, unreadable } = await readCatalog(dir);
  return { checkpoints: entries.map((e) => e.header), unreadable };
}

export interface VerifyReport {
  ok: boolean;
  /** lsn and frontier from the header: what each snapshot covers (WAL position; newest write per origin node). */
  snapshots: Array<{ id: string; kind: string; ok: boolean; lsn: number; frontier: Record<string, string>; records?: number; error?: string; chainComplete: boolean }>;
  unreadable: Array<{ path: string; error: string }>;
  wal: WalReplayReport | { error: string };
  key?: KeyScan;
}

export async function verifyOffline(options: OfflineOptions & { key?: string }): Promise<VerifyReport> {
  const { entries, unreadable } = await readCatalog(options.dir);
  const snapshots: VerifyReport['snapshots'] = [];
  for (const [i, entry] of entries.entries()) {
    const result = await verifySnapshot(entry.path, { key: options.encryptionKey });
    const chainComplete = chainOf(entries, entry) !== undefined;
    const { id, kind, lsn, frontier } = entry.header;
    snapshots.push(
      result.ok
        ? { id, kind, ok: true, lsn, frontier, records: result.summary.records, chainComplete }
        : { id, kind, ok: false, lsn, frontier, error: result.error.message, chainComplete },
    );
    options.onProgress?.('verify', i + 1, entries.length);
  }
  // The WAL is checked from its oldest retained segment (older ones are trimmed after checkpoints).
  const walDir = join(options.dir, 'wal');
  const first = (await Wal.segmentsInDirectory(walDir).catch(() => []))[0];
  const from = first ? first.firstLsn - 1 : 0;
  const wal = await Wal.replayDirectory(walDir, from, () => undefined).catch((err: Error) => ({ error: err.message }));
  const scan = options.key === undefined ? undefined : await scanForKey(options.dir, options.key, options.encryptionKey, (onRecord) => Wal.replayDirectory(walDir, from, onRecord));
  const ok =
    unreadable.length === 0 &&
    snapshots.every((s) => s.ok && s.chainComplete) &&
    !('error' in wal) &&
    !wal.torn &&
    (!scan || scan.snapshotRecords + scan.walRecords === 0);
  return { ok, snapshots, unreadable, wal, ...(scan ? { key: scan } : {}) };
}

export interface RestoreRequest extends OfflineOptions {
  /** A checkpoint id, or a time: ISO 8601 or epoch milliseconds. */
  to: string;
  /** Restore only this tenant or session (`acme/`, `acme/s1`); everything else keeps its latest state. */
  keyPrefix?: string;
  /** With a checkpoint id: also replay WAL records stamped up to this time. */
  rollForwardUntil?: number;
}

export interface RestoreReport {
  id: string;
  point: RebuildPoint;
  records: number;
  /** Contexts under the prefix replaced (partial restore), or every context (full). */
  restored: number;
  chain: string[];
  walRecords: number;
}

export async function restoreOffline(request: RestoreRequest): Promise<RestoreReport> {
  const point = await resolvePoint(request);
  const { state: past, report } = await stateAt(request, point);
  let result = past;
  let restored = past.size;
  if (request.keyPrefix !== undefined) {
    const prefix = request.keyPrefix;
    const { state: latest } = await stateAt(request, { kind: 'latest' });
    result = new Map([...latest].filter(([key]) => !keyCovered(key, prefix)));
    restored = 0;
    for (const [key, record] of past) {
      if (keyCovered(key, prefix)) {
        result.set(key, record);
        restored++;
      }
    }
  }
  const summary = await writeFull(request, result, `restore:${request.to}${request.keyPrefix === undefined ? '' : `:${request.keyPrefix}`}`);
  // With replication, the next start catches up from the peers what happened after this point.
  await writeRestoreMarker(request.dir, { checkpoint: summary.header.id, frontier: summary.header.frontier, lsn: summary.header.lsn, restoredAt: Date.now() });
  return { id: summary.header.id, point, records: summary.records, restored, chain: report.chain, walRecords: report.walRecords };
}

/** Takes a full checkpoint of the directory's latest state. */
export async function createOffline(options: OfflineOptions): Promise<SnapshotSummary> {
  const { state } = await stateAt(options, { kind: 'latest' });
  return writeFull(options, state, 'manual');
}

export async function eraseOffline(options: OfflineOptions & { key: string }): Promise<EraseReport> {
  const walDir = join(options.dir, 'wal');
  // Opening the log cuts a torn tail left by a crash (as a start would), so every segment can be rewritten.
  await (await Wal.open({ dir: walDir, fsync: 'always', batchInterval: 10, segmentBytes: 64 * 1024 ** 2 })).close();
  const wal = await Wal.rewriteDirectory(walDir, redactKey(options.key), {
    onProgress: (done, total) => options.onProgress?.('wal', done, total),
  });
  const snapshots = await eraseFromSnapshots(options.dir, options.key, options.encryptionKey, (done, total) => options.onProgress?.('snapshots', done, total));
  const report: EraseReport = {
    key: options.key,
    snapshotsRewritten: snapshots.rewritten,
    snapshotRecordsRemoved: snapshots.removed,
    walRecordsRedacted: wal.rewritten,
    liveRemoved: 0,
  };
  await writeAudit(options.dir, report);
  return report;
}

/** Writes `state` as a full snapshot covering the whole WAL: the next start loads it and replays nothing older. */
async function writeFull(options: OfflineOptions, state: Map<string, ContextRecord>, reason: string): Promise<SnapshotSummary> {
  const { entries } = await readCatalog(options.dir);
  const newest = entries.at(-1)?.header.lsn ?? 0;
  const tail = await Wal.replayDirectory(join(options.dir, 'wal'), newest, () => undefined).catch(() => undefined);
  const lsn = Math.max(newest, tail?.lastLsn ?? 0);
  const createdAt = Math.max(Date.now(), (entries.at(-1)?.header.createdAt ?? 0) + 1);
  const id = snapshotId(createdAt, lsn, 'full');
  let written = 0;
  const batches = function* (): Generator<ContextRecord[]> {
    let batch: ContextRecord[] = [];
    for (const record of state.values()) {
      batch.push(record);
      if (batch.length >= 512) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length) yield batch;
  };
  return writeSnapshot(
    snapshotPath(options.dir, id),
    { id, kind: 'full', createdAt, lsn, frontier: frontierOf(state.values()), reason },
    batches(),
    {
      compression: entries.at(-1)?.header.compression ?? 'none',
      key: options.encryptionKey,
      sync: true,
      onProgress: (records) => {
        written = records;
        options.onProgress?.('write', written, state.size);
      },
    },
  );
}

async function resolvePoint(request: RestoreRequest): Promise<RebuildPoint> {
  const { entries } = await readCatalog(request.dir);
  if (entries.some((e) => e.header.id === request.to)) return { kind: 'checkpoint', id: request.to, rollForwardUntil: request.rollForwardUntil };
  const at = /^\d+$/.test(request.to) ? Number(request.to) : Date.parse(request.to);
  if (Number.isNaN(at)) throw new RebuildError(`--to ${request.to}: neither a checkpoint id (see \`ctxmesh checkpoint list\`) nor a time (ISO 8601 or epoch ms)`);
  return { kind: 'time', at };
}
