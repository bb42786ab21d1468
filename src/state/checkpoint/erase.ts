// GDPR erase: one key (or everything under `key/`) removed from every snapshot and every WAL
// segment, with an audit record; and the scan that proves it is gone. Snapshots are rewritten
// whole (atomically, marked `redacted`); WAL records keep their LSN and lose their content, so the
// log stays dense and its checksums valid. The audit log names the key by its SHA-256, so the
// record of the erasure does not itself keep the identifier.
import { createHash } from 'node:crypto';
import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContextRecord } from '../record.js';
import { readCatalog } from './catalog.js';
import { REDACTED_ENTRY, decodeWalEntry, keyCovered, walEntryKey } from './entries.js';
import { readSnapshot, writeSnapshot } from './snapshot-file.js';

export const AUDIT_FILE = 'audit.log';

export interface EraseReport {
  key: string;
  snapshotsRewritten: number;
  snapshotRecordsRemoved: number;
  walRecordsRedacted: number;
  liveRemoved: number;
}

export interface KeyScan {
  key: string;
  /** Records still holding the key's data, per place; all zero proves the erase. */
  snapshotRecords: number;
  walRecords: number;
  snapshots: string[];
}

type Progress = (done: number, total: number) => void;

/** WAL transform for `Wal.rewriteSegments` / `Wal.rewriteDirectory`. */
export function redactKey(target: string): (lsn: number, payload: Buffer) => Buffer | undefined {
  return (_lsn, payload) => {
    const key = walEntryKey(payload);
    return key !== undefined && keyCovered(key, target) ? REDACTED_ENTRY : undefined;
  };
}

export async function eraseFromSnapshots(dir: string, target: string, encryptionKey: Buffer | undefined, onProgress?: Progress): Promise<{ rewritten: number; removed: number }> {
  const { entries } = await readCatalog(dir);
  let rewritten = 0;
  let removed = 0;
  for (const [i, entry] of entries.entries()) {
    let hits = 0;
    for await (const batch of readSnapshot(entry.path, { key: encryptionKey })) for (const r of batch) if (keyCovered(r.key, target)) hits++;
    if (hits > 0) {
      const kept = async function* (): AsyncGenerator<ContextRecord[]> {
        for await (const batch of readSnapshot(entry.path, { key: encryptionKey })) yield batch.filter((r) => !keyCovered(r.key, target));
      };
      const { formatVersion: _v, compression, encrypted: _e, ...header } = entry.header;
      await writeSnapshot(entry.path, { ...header, redacted: true }, kept(), { compression, key: encryptionKey, sync: true });
      rewritten++;
      removed += hits;
    }
    onProgress?.(i + 1, entries.length);
  }
  return { rewritten, removed };
}

export async function writeAudit(dir: string, report: EraseReport): Promise<void> {
  const { key, ...counts } = report;
  const line = JSON.stringify({ at: new Date().toISOString(), action: 'erase', keySha256: sha256(key), ...counts });
  await appendFile(join(dir, AUDIT_FILE), `${line}\n`, { flush: true });
}

/** Counts what is left of `target` in snapshots and in the WAL (tombstones hold no data and do not count). */
export async function scanForKey(
  dir: string,
  target: string,
  encryptionKey: Buffer | undefined,
  /** Delivers every retained WAL record. */
  replayWal: (onRecord: (lsn: number, payload: Buffer) => void) => Promise<unknown>,
): Promise<KeyScan> {
  const scan: KeyScan = { key: target, snapshotRecords: 0, walRecords: 0, snapshots: [] };
  for (const entry of (await readCatalog(dir)).entries) {
    let hits = 0;
    for await (const batch of readSnapshot(entry.path, { key: encryptionKey })) for (const r of batch) if (!r.tombstone && keyCovered(r.key, target)) hits++;
    if (hits > 0) scan.snapshots.push(entry.header.id);
    scan.snapshotRecords += hits;
  }
  await replayWal((_lsn, payload) => {
    const key = walEntryKey(payload);
    if (key === undefined || !keyCovered(key, target)) return;
    const entry = decodeWalEntry(payload);
    if (!entry.redacted && !entry.record.tombstone) scan.walRecords++;
  });
  return scan;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
