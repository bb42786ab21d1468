// A restore's bulk path into the embedded L2: rebuild() hands the snapshot chain to
// MemoryL2.loadSnapshot (no changed-key marks, records left in the blocks they were read into,
// survivors of a mostly replaced block copied out) and the WAL after it to apply, as the sidecar's
// start-up does.
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
import { decodeKeyedRecord, type ContextRecord, type RecordOrKeyed } from '../../src/state/record.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const T0 = 1_700_000_000_000;
function record(i: number, text = `value-${i}`, node = 'node-a'): ContextRecord {
  return { key: `tenant/s-${i}`, value: Buffer.from(text), contentType: 'text/plain', version: `${T0 + i}.0@${node}`, expiresAt: 0, retention: 'normal', updatedAt: T0 + i };
}

/** A view's item as a record: the L2 hands out unchanged records in their keyed form. */
function asRecord(item: RecordOrKeyed): ContextRecord {
  return Buffer.isBuffer(item) ? decodeKeyedRecord(item) : item;
}

function changedKeys(l2: MemoryL2): string[] {
  const view = l2.openView();
  const keys = [...l2.viewChanges(view, T0)].flat().map((r) => asRecord(r).key);
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
        calls.load += batch.records.length;
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
    l2.loadSnapshot({ records: [record(1), record(2), { ...record(3), expiresAt: T0 - 1 }] });
    l2.loadSnapshot({ records: [{ ...record(2), tombstone: true, value: Buffer.alloc(0) }] });
    expect(l2.size).toBe(1);
    expect(changedKeys(l2)).toEqual([]);

    const view = l2.openView();
    l2.loadSnapshot({ records: [record(1, 'during the view'), record(4)] });
    // The view still reads the map as it was when it opened; the keys are changes for the next one.
    expect([...l2.viewRecords(view)].flat().map(asRecord).map((r) => [r.key, r.value.toString()])).toEqual([['tenant/s-1', 'value-1']]);
    l2.closeView(view, true);
    expect(changedKeys(l2)).toEqual(['tenant/s-1', 'tenant/s-4']);
  });

  it('keeps a block where it was read, and copies its last live records out once most are replaced', async () => {
    const records = Array.from({ length: 16 }, (_, i) => record(i, String.fromCharCode(97 + i).repeat(8192)));
    const source = await checkpointDir(records, []);
    const l2 = new MemoryL2();
    const blocks: Buffer[] = [];
    await rebuild(source, { kind: 'latest' }, {
      reset: () => l2.clear(),
      apply: (r) => l2.apply(r),
      loadSnapshot: (batch) => {
        blocks.push(batch.block);
        l2.loadSnapshot(batch);
      },
    });
    // Not copied: what the L2 holds is the block itself.
    expect(new Set(blocks).size).toBe(1);
    const live = l2.memory.liveBytes;
    expect(live).toBeGreaterThan(16 * 8192);
    expect(l2.memory.heldBytes).toBe(blocks[0]!.length);
    // Half replaced (by writes and a delete): the rest still live in the block.
    for (let i = 0; i < 7; i++) l2.apply(record(i, 'new'));
    l2.erase('tenant/s-7');
    const heldBefore = l2.memory.heldBytes; // the block and the slab the writes went to
    expect(heldBefore).toBeGreaterThan(blocks[0]!.length);
    // One more: fewer than half are live, the other 7 are copied out, unchanged, and are not changes.
    const changedBefore = changedKeys(l2);
    l2.apply({ ...record(8), tombstone: true, value: Buffer.alloc(0) });
    expect(l2.memory.heldBytes).toBe(heldBefore - blocks[0]!.length);
    for (let i = 9; i < 16; i++) expect((await l2.get(`tenant/s-${i}`))!.value.toString()).toBe(String.fromCharCode(97 + i).repeat(8192));
    expect((await l2.get('tenant/s-3'))!.value.toString()).toBe('new');
    expect(changedKeys(l2)).toEqual(['tenant/s-8']);
    expect(changedBefore).toEqual(['tenant/s-0', 'tenant/s-1', 'tenant/s-2', 'tenant/s-3', 'tenant/s-4', 'tenant/s-5', 'tenant/s-6']);
  });

  it('hands out values of their own, which later writes and compactions leave as they were', async () => {
    const l2 = new MemoryL2();
    l2.loadSnapshot({ records: [record(1, 'first')] });
    const held = (await l2.get('tenant/s-1'))!;
    for (let i = 0; i < 2_000; i++) l2.apply(record(1, `rewrite-${i}-`.repeat(50)));
    expect(held.value.toString()).toBe('first');
    expect(held.value.buffer.byteLength).toBeLessThan(64 * 1024); // not a view of an arena slab
  });
});
