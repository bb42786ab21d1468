// The snapshots in a directory, read from their own headers (there is no separate catalog file to
// lose or contradict them), and the rules over them: which chain to load, which snapshots a
// retention policy may delete without breaking a chain that is kept.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { readSnapshotHeader, type SnapshotHeader } from './snapshot-file.js';

export const SNAPSHOT_DIR = 'snapshots';
const SNAPSHOT_FILE = /^(.+)\.snap$/;

export interface CatalogEntry {
  header: SnapshotHeader;
  path: string;
}

export function snapshotPath(dir: string, id: string): string {
  return join(dir, SNAPSHOT_DIR, `${id}.snap`);
}

/** A sortable id: creation time (UTC, ms) and the WAL position it covers. */
export function snapshotId(createdAt: number, lsn: number, kind: 'full' | 'incremental'): string {
  const time = new Date(createdAt).toISOString().replace(/[-:]/g, '').replace('.', '');
  return `${time}-${String(lsn).padStart(12, '0')}-${kind === 'full' ? 'full' : 'incr'}`;
}

/** Every snapshot whose header reads, oldest first; unreadable ones are returned apart. */
export async function readCatalog(dir: string): Promise<{ entries: CatalogEntry[]; unreadable: Array<{ path: string; error: string }> }> {
  let names: string[];
  try {
    names = await readdir(join(dir, SNAPSHOT_DIR));
  } catch {
    return { entries: [], unreadable: [] };
  }
  const entries: CatalogEntry[] = [];
  const unreadable: Array<{ path: string; error: string }> = [];
  for (const name of names.filter((n) => SNAPSHOT_FILE.test(n))) {
    const path = join(dir, SNAPSHOT_DIR, name);
    try {
      entries.push({ header: await readSnapshotHeader(path), path });
    } catch (err) {
      unreadable.push({ path, error: (err as Error).message });
    }
  }
  entries.sort((a, b) => a.header.lsn - b.header.lsn || a.header.createdAt - b.header.createdAt);
  return { entries, unreadable };
}

/** The chain that rebuilds `tip`: its full ancestor first, then each incremental; undefined if broken. */
export function chainOf(entries: readonly CatalogEntry[], tip: CatalogEntry): CatalogEntry[] | undefined {
  const byId = new Map(entries.map((e) => [e.header.id, e]));
  const chain: CatalogEntry[] = [];
  let current: CatalogEntry | undefined = tip;
  while (current) {
    chain.unshift(current);
    if (current.header.kind === 'full') return chain;
    current = current.header.parent === undefined ? undefined : byId.get(current.header.parent);
  }
  return undefined;
}

/**
 * What retention removes: snapshots beyond the newest `count`, or older than `maxAgeMs`, except any
 * snapshot that a kept one builds on.
 */
export function expiredSnapshots(entries: readonly CatalogEntry[], count: number, maxAgeMs: number | undefined, now: number): CatalogEntry[] {
  const newestFirst = [...entries].reverse();
  const kept = new Set<string>();
  for (const [i, entry] of newestFirst.entries()) {
    const young = maxAgeMs === undefined || now - entry.header.createdAt <= maxAgeMs;
    // The newest snapshot is always kept, however old: it is what a restart loads.
    if (i === 0 || (i < count && young)) {
      for (const link of chainOf(entries, entry) ?? [entry]) kept.add(link.header.id);
    }
  }
  return entries.filter((e) => !kept.has(e.header.id));
}
