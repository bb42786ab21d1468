// A restore's bulk path into the embedded L2: rebuild() hands the snapshot chain to
// MemoryL2.loadSnapshot (no changed-key marks, values left in the read slabs, survivors of a
// mostly replaced slab copied out) and the WAL after it to apply, as the sidecar's start-up does.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryL2 } from '../../src/state/cache/memory-l2.js';
import { SNAPSHOT_DIR, snapshotId, snapshotPath } from '../../src/state/checkpoint/catalog.js';
import { encodeWalEntry } from '../../src/state/checkpoint/entries.js';
import { FrontierTrackingL2 } from '../../src/state/checkpoint/frontier.js';
import { rebuild, type RebuildSource } from '../../src/state/checkpoint/rebuild.js';
import { writeSnapshot } from '../../src/state/checkpoint/snapshot-file.js';
import type { ContextRecord } from '../../src/state/record.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const T0 = 1_700_000_000_000;
function record(i: number, text = `value-${i}`, node = 'node-a'): ContextRecord {
  return { key: `tenant/s-${i}`, value: Buffer.from(text), contentType: 'text/plain', version: `${T0 + i}.0@${node}`, expiresAt: 0, retention: 'normal', updatedAt: T0 + i };
}

function changedKeys(l2: MemoryL2): string[] {
  const view = l2.openView();
  const keys = [...l2.viewChanges(view, T0)].flat().map((r) => r.key);
  l2.closeView(view, true);
  return keys.sort();
}

/** One full snapshot of `records` in a checkpoint dir, and `wal` as what the WAL holds after it. */
async function checkpointDir(records: ContextRecord[], wal: ContextRecord[]): Promise<RebuildSource> {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-restore-load-'));
  dirs.push(dir);
  mkdirSync(join(dir, SNAPSHOT_DIR));
  const id = snapshotId(T0, 10, 'full');
  await writeSnapshot(snapshotPath(dir, id), { id, kind: 'full', createdAt: T0, lsn: 10, frontier: {}, reason: 'test' }, [records], { compression: 'none', sync: false });
  return {
    dir,
    replay: async (after, onRecord) => {
      wal.forEach((r, i) => onRecord(after + 1 + i, encodeWalEntry(r, false)));
      return { records: wal.length, firstLsn: after + 1, lastLsn: after + wal.length };
    },
  };
}

describe('restore into the embedded L2 through loadSnapshot', () => {
  it('loads the chain as unchanged state and the WAL after it as changes, frontier from both', async () => {
    const snapshot = Array.from({ length: 2_000 }, (_, i) => record(i, `v${i}-`.repeat(200)));
    const wal = [record(5, 'rewritten'), { ...record(6), tombstone: true, value: Buffer.alloc(0) }, record(9_000, 'new', 'node-b')];
    const source = await checkpointDir(snapshot, wal);
    const l2 = new FrontierTrackingL2();
    const calls = { apply: 0, load: 0 };
    const report = await rebuild(source, { kind: 'latest' }, {
      reset: () => l2.clear(),
      apply: (r) => {
        calls.apply++;
        l2.apply(r);
      },
      loadSnapshot: (batch) => {
        calls.load += batch.length;
        l2.loadSnapshot(batch);
      },
    });
    expect(report).toMatchObject({ snapshotRecords: 2_000, walRecords: 3 });
    expect(calls).toEqual({ apply: 3, load: 2_000 });
    expect(l2.size).toBe(2_000); // 2,000 - tenant/s-6 + tenant/s-9000
    expect((await l2.get('tenant/s-1999'))!.value.toString()).toBe('v1999-'.repeat(200));
    expect((await l2.get('tenant/s-5'))!.value.toString()).toBe('rewritten');
    expect(await l2.get('tenant/s-6')).toBeUndefined();
    // The next incremental builds on the loaded snapshot: only the WAL's writes are changes.
    expect(changedKeys(l2)).toEqual(['tenant/s-5', 'tenant/s-6', 'tenant/s-9000']);
    expect(l2.frontier.toRecord()).toEqual({ 'node-a': `${T0 + 1_999}.0`, 'node-b': `${T0 + 9_000}.0` });
  });

  it('drops tombstones and expired records, and with a view open marks keys changed as apply does', () => {
    const l2 = new MemoryL2(() => T0);
    l2.loadSnapshot([record(1), record(2), { ...record(3), expiresAt: T0 - 1 }]);
    l2.loadSnapshot([{ ...record(2), tombstone: true, value: Buffer.alloc(0) }]);
    expect(l2.size).toBe(1);
    expect(changedKeys(l2)).toEqual([]);

    const view = l2.openView();
    l2.loadSnapshot([record(1, 'during the view'), record(4)]);
    // The view still reads the map as it was when it opened; the keys are changes for the next one.
    expect([...l2.viewRecords(view)].flat().map((r) => [r.key, r.value.toString()])).toEqual([['tenant/s-1', 'value-1']]);
    l2.closeView(view, true);
    expect(changedKeys(l2)).toEqual(['tenant/s-1', 'tenant/s-4']);
  });

  it('copies the last current values of a mostly replaced shared buffer into buffers of their own', async () => {
    const slab = Buffer.alloc(16 * 8192);
    const loaded = Array.from({ length: 16 }, (_, i) => ({ ...record(i), value: slab.subarray(i * 8192, (i + 1) * 8192).fill(i + 1) }));
    const l2 = new MemoryL2();
    l2.loadSnapshot(loaded);
    const bufferOf = async (i: number) => (await l2.get(`tenant/s-${i}`))!.value.buffer;
    // Half replaced (by a write or a delete): the rest still share the slab.
    for (let i = 0; i < 7; i++) l2.apply(record(i, 'new'));
    l2.erase('tenant/s-7');
    expect(await bufferOf(8)).toBe(slab.buffer);
    // One more: fewer than half are current, the other 7 move out, unchanged, and are not changes.
    const changedBefore = changedKeys(l2);
    l2.apply({ ...record(8), tombstone: true, value: Buffer.alloc(0) });
    for (let i = 9; i < 16; i++) {
      const value = (await l2.get(`tenant/s-${i}`))!.value;
      expect(value.buffer).not.toBe(slab.buffer);
      expect(value.equals(Buffer.alloc(8192, i + 1))).toBe(true);
    }
    expect(changedKeys(l2)).toEqual(['tenant/s-8']);
    expect(changedBefore).toEqual(['tenant/s-0', 'tenant/s-1', 'tenant/s-2', 'tenant/s-3', 'tenant/s-4', 'tenant/s-5', 'tenant/s-6']);
    // Small values (Buffer's pool) are not tracked: nothing to copy, nothing breaks.
    l2.loadSnapshot([record(100, 'small')]);
    l2.apply(record(100, 'replaced'));
    expect((await l2.get('tenant/s-100'))!.value.toString()).toBe('replaced');
  });
});
