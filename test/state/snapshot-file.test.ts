import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { crc32 } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeKeyedRecord, type ContextRecord } from '../../src/state/record.js';
import {
  FRAME_HEAD_BYTES,
  PRELUDE_BYTES,
  SnapshotError,
  TRAILER_BYTES,
  loadEncryptionKey,
  readSnapshot,
  readSnapshotHeader,
  verifySnapshot,
  writeSnapshot,
  type SnapshotHeader,
  type WriteSnapshotOptions,
} from '../../src/state/checkpoint/snapshot-file.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-snap-'));
  dirs.push(dir);
  return dir;
}

const KEY = Buffer.alloc(32, 7);
const OTHER_KEY = Buffer.alloc(32, 8);
type WriteHeader = Omit<SnapshotHeader, 'formatVersion' | 'compression' | 'encrypted'>;
const FULL: WriteHeader = { id: 'snap-1', kind: 'full', createdAt: 1_700_000_000_000, lsn: 42, frontier: { 'node-a': '1700000000000.3' }, reason: 'manual' };

/** Records of every shape: unicode keys, critical retention, TTLs, empty and larger values. */
function makeRecords(count: number, seed = 0): ContextRecord[] {
  return Array.from({ length: count }, (_, i) => {
    const n = i + seed;
    const record: ContextRecord = {
      key: `tenant-${n % 7}/sess-${n}${n % 11 === 0 ? '/ü-😀' : ''}`,
      value: n % 13 === 0 ? Buffer.alloc(0) : Buffer.from(JSON.stringify({ turn: n, text: 'w'.repeat(n % 300) })),
      contentType: n % 5 === 0 ? 'text/plain' : 'application/json',
      version: `1700000000${String(n).padStart(3, '0')}.${n % 4}-node-a`,
      expiresAt: n % 3 === 0 ? 0 : 1_800_000_000_000 + n,
      retention: n % 4 === 0 ? 'critical' : 'normal',
      updatedAt: 1_700_000_000_000 + n,
    };
    return record;
  });
}

function tombstone(key: string): ContextRecord {
  return { key, value: Buffer.alloc(0), contentType: '', version: '', expiresAt: 0, retention: 'normal', updatedAt: 1_700_000_000_999, tombstone: true };
}

function* inBatches(records: ContextRecord[], size = 100): Generator<ContextRecord[]> {
  for (let i = 0; i < records.length; i += size) yield records.slice(i, i + size);
}

async function readAll(path: string, key?: Buffer): Promise<ContextRecord[]> {
  const out: ContextRecord[] = [];
  for await (const batch of readSnapshot(path, { key })) out.push(...batch);
  return out;
}

/** What a reader delivers before it fails, and how it fails. */
async function readUntilError(path: string, key?: Buffer, readBytes?: number): Promise<{ records: ContextRecord[]; error?: unknown }> {
  const records: ContextRecord[] = [];
  try {
    for await (const batch of readSnapshot(path, { key, readBytes })) records.push(...batch);
    return { records };
  } catch (error) {
    return { records, error };
  }
}

async function write(path: string, records: ContextRecord[], options: Partial<WriteSnapshotOptions> = {}, header: WriteHeader = FULL) {
  return writeSnapshot(path, header, inBatches(records), { compression: 'none', sync: false, ...options });
}

const MODES: Array<{ name: string; options: Partial<WriteSnapshotOptions> }> = [
  { name: 'plain', options: {} },
  { name: 'deflate', options: { compression: 'deflate' } },
  { name: 'encrypted', options: { key: KEY } },
  { name: 'deflate + encrypted', options: { compression: 'deflate', key: KEY } },
];

describe('round trip', () => {
  for (const { name, options } of MODES) {
    it(`full and incremental, ${name}`, async () => {
      const dir = tempDir();
      const records = makeRecords(3_000);
      const fullPath = join(dir, 'full.snap');
      // Small blocks: many of them, and records cut at every kind of boundary.
      const summary = await write(fullPath, records, { ...options, blockBytes: 4096 });
      expect(summary).toMatchObject({ records: 3_000, path: fullPath });
      expect(summary.header).toEqual({ formatVersion: 1, ...FULL, compression: options.compression ?? 'none', encrypted: options.key !== undefined });
      expect(await readAll(fullPath, options.key)).toEqual(records);
      expect(await readSnapshotHeader(fullPath)).toEqual(summary.header);
      const verified = await verifySnapshot(fullPath, { key: options.key });
      expect(verified).toEqual({ ok: true, summary: { ...summary, bytes: readFileSync(fullPath).length } });
      expect(summary.bytes).toBe(readFileSync(fullPath).length);

      const changes = [...makeRecords(50, 10_000), tombstone('tenant-1/sess-1'), tombstone('tenant-2/sess-9/ü')];
      const incrPath = join(dir, 'incr.snap');
      const incrHeader: WriteHeader = { ...FULL, id: 'snap-2', kind: 'incremental', parent: 'snap-1', lsn: 99, reason: 'interval', redacted: true };
      await write(incrPath, changes, options, incrHeader);
      const read = await readAll(incrPath, options.key);
      expect(read).toEqual(changes);
      expect(read.filter((r) => r.tombstone).map((r) => r.key)).toEqual(['tenant-1/sess-1', 'tenant-2/sess-9/ü']);
      expect(await readSnapshotHeader(incrPath)).toMatchObject({ kind: 'incremental', parent: 'snap-1', redacted: true, lsn: 99 });
    });
  }

  it('an empty snapshot and a record bigger than a block', async () => {
    const dir = tempDir();
    await write(join(dir, 'empty.snap'), [], { key: KEY });
    expect(await readAll(join(dir, 'empty.snap'), KEY)).toEqual([]);
    const records = [...makeRecords(3), { ...makeRecords(1)[0]!, key: 'big', value: randomBytes(100_000) }, ...makeRecords(3, 50)];
    await write(join(dir, 'big.snap'), records, { blockBytes: 1024, compression: 'deflate' });
    expect(await readAll(join(dir, 'big.snap'))).toEqual(records);
  });

  it('lays records out as `u32 length | encodeKeyedRecord(record)`', async () => {
    const dir = tempDir();
    const records = makeRecords(40);
    await write(join(dir, 's.snap'), records);
    const file = readFileSync(join(dir, 's.snap'));
    const blockAt = PRELUDE_BYTES + file.readUInt32LE(12) + 4;
    const expected = Buffer.concat(records.flatMap((r) => {
      const keyed = encodeKeyedRecord(r);
      const length = Buffer.alloc(4);
      length.writeUInt32LE(keyed.length);
      return [length, keyed];
    }));
    expect(file.readUInt32LE(blockAt + 4)).toBe(40);
    expect(file.subarray(blockAt + FRAME_HEAD_BYTES, blockAt + FRAME_HEAD_BYTES + expected.length).equals(expected)).toBe(true);
  });

  it('encodes every metadata shape exactly as encodeKeyedRecord does (escaped and non-ASCII content types, odd numbers)', async () => {
    const dir = tempDir();
    const base = makeRecords(1)[0]!;
    const records: ContextRecord[] = [
      { ...base, key: 'a', contentType: 'text/plain; charset="utf-8"' },
      { ...base, key: 'b', contentType: 'x/back\\slash\u0001\n', retention: 'critical' },
      { ...base, key: 'c', contentType: 'application/ü-😀', version: '1700000000000.0@nöde', expiresAt: 0, updatedAt: 0 },
      { ...base, key: 'd', contentType: '', tombstone: true, value: Buffer.alloc(0), version: '', expiresAt: 9_007_199_254_740_991 },
      { ...base, key: 'e', expiresAt: 1.5, updatedAt: -3 },
      ...Array.from({ length: 300 }, (_, i) => ({ ...base, key: `many/${i}`, contentType: `type/${i}` })),
    ];
    await write(join(dir, 's.snap'), records);
    const file = readFileSync(join(dir, 's.snap'));
    const blockAt = PRELUDE_BYTES + file.readUInt32LE(12) + 4;
    const expected = Buffer.concat(records.flatMap((r) => {
      const keyed = encodeKeyedRecord(r);
      const length = Buffer.alloc(4);
      length.writeUInt32LE(keyed.length);
      return [length, keyed];
    }));
    expect(file.subarray(blockAt + FRAME_HEAD_BYTES, blockAt + FRAME_HEAD_BYTES + expected.length).equals(expected)).toBe(true);
    expect(await readAll(join(dir, 's.snap'))).toEqual(records);
  });

  it('writes records given in their keyed form as the same records given as objects, big ones included', async () => {
    const dir = tempDir();
    const records = [...makeRecords(300), { ...makeRecords(1)[0]!, key: 'big', value: randomBytes(5_000) }, ...makeRecords(20, 500)];
    const mixed = records.map((r, i) => (i % 2 === 0 ? encodeKeyedRecord(r) : r));
    const recordBytes = (path: string) => {
      const file = readFileSync(path);
      const blockAt = PRELUDE_BYTES + file.readUInt32LE(12) + 4;
      return file.subarray(blockAt + FRAME_HEAD_BYTES, file.length - TRAILER_BYTES);
    };
    // One block: the record bytes are the same (the frames' running CRCs differ with the salt).
    await writeSnapshot(join(dir, 'objects.snap'), FULL, [records], { compression: 'none', sync: false });
    await writeSnapshot(join(dir, 'mixed.snap'), FULL, [mixed.slice(0, 150), mixed.slice(150)], { compression: 'none', sync: false });
    expect(recordBytes(join(dir, 'mixed.snap')).equals(recordBytes(join(dir, 'objects.snap')))).toBe(true);
    // Small blocks, compressed and encrypted: a keyed record bigger than a block gets one of its own.
    await writeSnapshot(join(dir, 'small.snap'), FULL, [mixed], { blockBytes: 1024, compression: 'deflate', key: KEY, sync: false });
    expect(await readAll(join(dir, 'small.snap'), KEY)).toEqual(records);
  });

  it('with sync, flushes the file every syncEveryBytes while writing, not only at the end', async () => {
    const dir = tempDir();
    const counted = (syncs: { count: number }): Partial<WriteSnapshotOptions> => ({
      blockBytes: 16 * 1024,
      openFile: async (p) => {
        const file = await open(p, 'w');
        return { write: (buf: Buffer) => file.write(buf), sync: () => (syncs.count++, file.sync()), close: () => file.close() };
      },
    });
    const records = makeRecords(4_000);
    const every = { count: 0 };
    const summary = await write(join(dir, 'a.snap'), records, { ...counted(every), sync: true, syncEveryBytes: 64 * 1024 });
    // One per 64 KiB written (whole blocks, so a little more apart), plus the final one.
    expect(every.count).toBeGreaterThanOrEqual(Math.floor(summary.bytes / (64 * 1024 + 16 * 1024)));
    expect(every.count).toBeLessThanOrEqual(Math.ceil(summary.bytes / (64 * 1024)) + 1);
    const endOnly = { count: 0 };
    await write(join(dir, 'b.snap'), records, { ...counted(endOnly), sync: true, syncEveryBytes: 0 });
    expect(endOnly.count).toBe(1);
    const none = { count: 0 };
    await write(join(dir, 'c.snap'), records, { ...counted(none), sync: false, syncEveryBytes: 64 * 1024 });
    expect(none.count).toBe(0);
    expect(await readAll(join(dir, 'a.snap'))).toEqual(records);
  });

  it('writes a canonical header from a spread one and rejects an inconsistent one', async () => {
    const dir = tempDir();
    const read = { ...(await write(join(dir, 'a.snap'), [], { key: KEY })).header, stray: 1 };
    const { formatVersion: _v, compression: _c, encrypted: _e, ...spread } = read;
    const summary = await write(join(dir, 'b.snap'), [], {}, { ...spread, redacted: true });
    expect(await readSnapshotHeader(join(dir, 'b.snap'))).toEqual(summary.header);
    expect(summary.header).not.toHaveProperty('stray');
    await expect(write(join(dir, 'c.snap'), [], {}, { ...FULL, kind: 'incremental' })).rejects.toThrow(/parent/);
    await expect(write(join(dir, 'c.snap'), [], {}, { ...FULL, frontier: { a: 'yesterday' } })).rejects.toThrow(/wall/);
    await expect(write(join(dir, 'c.snap'), [], { key: Buffer.alloc(16) })).rejects.toThrow(/32 bytes/);
    expect(readdirSync(dir).sort()).toEqual(['a.snap', 'b.snap']);
  });
});

describe('keys', () => {
  it('the header reads without the key; records need the right one', async () => {
    const dir = tempDir();
    const path = join(dir, 's.snap');
    await write(path, makeRecords(100), { key: KEY, compression: 'deflate' });
    expect(await readSnapshotHeader(path)).toMatchObject({ id: 'snap-1', encrypted: true, compression: 'deflate' });
    const missing = await readUntilError(path);
    expect(missing.records).toEqual([]);
    expect(missing.error).toMatchObject({ code: 'SNAPSHOT_KEY_REQUIRED', path });
    const wrong = await readUntilError(path, OTHER_KEY);
    expect(wrong.records).toEqual([]);
    expect(wrong.error).toMatchObject({ code: 'SNAPSHOT_KEY_WRONG', path });
    expect(await verifySnapshot(path, { key: OTHER_KEY })).toMatchObject({ ok: false, error: { code: 'SNAPSHOT_KEY_WRONG' } });
    expect(await verifySnapshot(path, {})).toMatchObject({ ok: false, error: { code: 'SNAPSHOT_KEY_REQUIRED' } });
    expect((wrong.error as Error).message).not.toContain(KEY.toString('hex'));
  });

  it('reads in slabs of any size: blocks across slab ends, a block bigger than a slab, values as views', async () => {
    const dir = tempDir();
    const path = join(dir, 's.snap');
    const records = [...makeRecords(400), { ...makeRecords(1, 400)[0]!, key: 'big', value: randomBytes(20_000) }, ...makeRecords(100, 401)];
    await write(path, records, { blockBytes: 1024 });
    const file = readFileSync(path);
    for (const readBytes of [FRAME_HEAD_BYTES, 700, 1_500, 4_096, 9_999, file.length, 8 * 1024 * 1024]) {
      const read: ContextRecord[] = [];
      for await (const batch of readSnapshot(path, { readBytes })) read.push(...batch);
      expect(read, `readBytes ${readBytes}`).toEqual(records);
      // Not a buffer per value: values share the slab they were read into.
      const nonEmpty = read.filter((r) => r.value.length > 0);
      expect(new Set(nonEmpty.map((r) => r.value.buffer)).size, `readBytes ${readBytes}`).toBeLessThan(nonEmpty.length);
      expect(read.find((r) => r.key === 'big')!.value.buffer.byteLength).toBeGreaterThanOrEqual(Math.max(readBytes, 20_000));
    }
    await expect(readAll(path, undefined)).resolves.toHaveLength(records.length);
    await expect(async () => {
      for await (const _ of readSnapshot(path, { readBytes: 19 }));
    }).rejects.toThrow(RangeError);
  });

  it('a key given for an unencrypted snapshot is not needed', async () => {
    const dir = tempDir();
    const records = makeRecords(10);
    await write(join(dir, 's.snap'), records);
    expect(await readAll(join(dir, 's.snap'), KEY)).toEqual(records);
  });
});

describe('damage', () => {
  /** Offsets worth breaking: all of the header and trailer, the edges of every block, a sample between. */
  function sampleOffsets(file: Buffer, step: number): number[] {
    const offsets = new Set<number>();
    const headerEnd = PRELUDE_BYTES + file.readUInt32LE(12) + 4;
    for (let i = 0; i < headerEnd; i++) offsets.add(i);
    for (let at = headerEnd; at < file.length - TRAILER_BYTES; at += FRAME_HEAD_BYTES + file.readUInt32LE(at)) {
      for (let i = 0; i < FRAME_HEAD_BYTES + 2; i++) offsets.add(at + i);
    }
    for (let i = headerEnd; i < file.length; i += step) offsets.add(i);
    for (let i = file.length - TRAILER_BYTES - 2; i < file.length; i++) offsets.add(i);
    return [...offsets].sort((a, b) => a - b);
  }

  // The third: a restore's reader with slabs far smaller than the file, so that every damage lands
  // near a slab's end somewhere (the default, 8 MiB, reads these files in one).
  for (const { name, options, readBytes } of [MODES[0]!, MODES[3]!, { ...MODES[0]!, name: 'plain, 1,500-byte slabs', readBytes: 1_500 }]) {
    it(`truncation anywhere is SNAPSHOT_TRUNCATED, ${name}`, async () => {
      const dir = tempDir();
      const records = makeRecords(60);
      const good = join(dir, 'good.snap');
      await write(good, records, { ...options, blockBytes: 1024 });
      const file = readFileSync(good);
      const path = join(dir, 'cut.snap');
      const offsets = sampleOffsets(file, 19);
      expect(offsets.length).toBeGreaterThan(300);
      for (const [i, length] of offsets.entries()) {
        writeFileSync(path, file.subarray(0, length));
        const { records: delivered, error } = await readUntilError(path, options.key, readBytes);
        expect(error, `cut at ${length}`).toBeInstanceOf(SnapshotError);
        expect((error as SnapshotError).code, `cut at ${length}: ${(error as Error).message}`).toBe('SNAPSHOT_TRUNCATED');
        expect((error as SnapshotError).path).toBe(path);
        expect(delivered).toEqual(records.slice(0, delivered.length));
        if (i % 10 === 0) expect(await verifySnapshot(path, { key: options.key })).toMatchObject({ ok: false, error: { code: 'SNAPSHOT_TRUNCATED' } });
      }
    }, 60_000);

    it(`a flipped bit anywhere is SNAPSHOT_CORRUPT and no wrong record comes out, ${name}`, async () => {
      const dir = tempDir();
      const records = makeRecords(60);
      const good = join(dir, 'good.snap');
      await write(good, records, { ...options, blockBytes: 1024 });
      const file = readFileSync(good);
      const path = join(dir, 'flip.snap');
      const offsets = sampleOffsets(file, 11);
      expect(offsets.length).toBeGreaterThan(500);
      for (const [i, offset] of offsets.entries()) {
        const damaged = Buffer.from(file);
        damaged[offset]! ^= 1 << (i % 8);
        writeFileSync(path, damaged);
        const { records: delivered, error } = await readUntilError(path, options.key, readBytes);
        expect(error, `bit ${i % 8} at ${offset}`).toBeInstanceOf(SnapshotError);
        expect((error as SnapshotError).code, `bit ${i % 8} at ${offset}: ${(error as Error).message}`).toBe('SNAPSHOT_CORRUPT');
        expect(typeof (error as SnapshotError).offset).toBe('number');
        expect(delivered).toEqual(records.slice(0, delivered.length));
      }
    }, 60_000);
  }

  it('bytes after the trailer are corruption', async () => {
    const dir = tempDir();
    const path = join(dir, 's.snap');
    await write(path, makeRecords(5));
    writeFileSync(path, Buffer.concat([readFileSync(path), Buffer.from([0])]));
    expect(await verifySnapshot(path, {})).toMatchObject({ ok: false, error: { code: 'SNAPSHOT_CORRUPT' } });
  });

  it('a newer format version is SNAPSHOT_VERSION, not corruption', async () => {
    const dir = tempDir();
    const path = join(dir, 's.snap');
    await write(path, makeRecords(5));
    const file = readFileSync(path);
    file.writeUInt32LE(2, 8);
    file.writeUInt32LE(crc32(file.subarray(0, 16)), 16);
    writeFileSync(path, file);
    await expect(readSnapshotHeader(path)).rejects.toMatchObject({ code: 'SNAPSHOT_VERSION', path });
  });

  it('not a snapshot at all', async () => {
    const dir = tempDir();
    const path = join(dir, 's.snap');
    writeFileSync(path, 'hello, this is not a snapshot file');
    await expect(readSnapshotHeader(path)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', offset: 0 });
  });
});

describe('blocks cannot move', () => {
  /** Block [start, end) offsets of a snapshot file. */
  function blocks(file: Buffer): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let at = PRELUDE_BYTES + file.readUInt32LE(12) + 4; at < file.length - TRAILER_BYTES; at += FRAME_HEAD_BYTES + file.readUInt32LE(at)) {
      out.push([at, at + FRAME_HEAD_BYTES + file.readUInt32LE(at)]);
    }
    return out;
  }

  /** Recomputes every CRC, as someone splicing files on purpose would: only authentication is left. */
  function reseal(file: Buffer): Buffer {
    const bodyEnd = PRELUDE_BYTES + file.readUInt32LE(12);
    let running = file.readUInt32LE(bodyEnd);
    for (const [start, end] of blocks(file)) {
      running = crc32(file.subarray(start + FRAME_HEAD_BYTES, end), crc32(file.subarray(start, start + 12), running));
      file.writeUInt32LE(running, start + 12);
      file.writeUInt32LE(crc32(file.subarray(start, start + 16)), start + 16);
    }
    const trailer = file.length - TRAILER_BYTES;
    file.writeUInt32LE(crc32(file.subarray(trailer, trailer + 44), running), trailer + 44);
    return file;
  }

  it('a block from another encrypted file with the same id is rejected, CRCs fixed or not', async () => {
    const dir = tempDir();
    const records = makeRecords(200);
    // Same id, header and records: what an erase's rewrite of a snapshot looks like beside the original.
    await write(join(dir, 'a.snap'), records, { key: KEY, blockBytes: 2048 });
    await write(join(dir, 'b.snap'), records, { key: KEY, blockBytes: 2048 });
    const a = readFileSync(join(dir, 'a.snap'));
    const b = readFileSync(join(dir, 'b.snap'));
    const [start, end] = blocks(a)[2]!;
    expect(blocks(b)[2]).toEqual([start, end]);
    const spliced = Buffer.concat([a.subarray(0, start), b.subarray(start, end), a.subarray(end)]);
    const path = join(dir, 'spliced.snap');
    for (const file of [spliced, reseal(Buffer.from(spliced))]) {
      writeFileSync(path, file);
      const { records: delivered, error } = await readUntilError(path, KEY);
      expect(error).toMatchObject({ code: 'SNAPSHOT_CORRUPT', offset: start });
      expect(delivered).toEqual(records.slice(0, delivered.length));
    }
    // The resealed splice passed every CRC: authentication is what caught it.
    writeFileSync(path, reseal(Buffer.from(spliced)));
    expect((await verifySnapshot(path, { key: KEY })) as { error: Error }).toMatchObject({ error: { message: expect.stringMatching(/authentication/) } });
  });

  it('blocks swapped within an encrypted file, or the last one cut off, are rejected', async () => {
    const dir = tempDir();
    const records = Array.from({ length: 60 }, (_, i) => ({ ...makeRecords(1)[0]!, key: `k${String(i).padStart(3, '0')}`, value: Buffer.alloc(100, i) }));
    await write(join(dir, 'a.snap'), records, { key: KEY, blockBytes: 1024 });
    const a = readFileSync(join(dir, 'a.snap'));
    const list = blocks(a);
    const [[s1, e1], [s2, e2]] = [list[1]!, list[2]!];
    expect(e1 - s1).toBe(e2 - s2);
    const swapped = reseal(Buffer.concat([a.subarray(0, s1), a.subarray(s2, e2), a.subarray(s1, e1), a.subarray(e2)]));
    writeFileSync(join(dir, 'swapped.snap'), swapped);
    expect(await verifySnapshot(join(dir, 'swapped.snap'), { key: KEY })).toMatchObject({ ok: false, error: { code: 'SNAPSHOT_CORRUPT', offset: s1 } });

    // Dropping the last block and fixing the counts and CRCs still fails: the trailer is authenticated.
    const [ls, le] = list.at(-1)!;
    const cut = Buffer.concat([a.subarray(0, ls), a.subarray(le)]);
    const trailer = cut.length - TRAILER_BYTES;
    cut.writeUInt32LE(list.length - 1, trailer + 8);
    cut.writeUInt32LE(cut.readUInt32LE(trailer + 12) - a.readUInt32LE(ls + 4), trailer + 12);
    cut.writeUInt32LE(cut.readUInt32LE(trailer + 20) - a.readUInt32LE(ls + 8), trailer + 20);
    writeFileSync(join(dir, 'cut.snap'), reseal(cut));
    expect(await verifySnapshot(join(dir, 'cut.snap'), { key: KEY })).toMatchObject({ ok: false, error: { code: 'SNAPSHOT_CORRUPT', message: expect.stringMatching(/trailer authentication/) } });
  });
});

describe('atomic replacement', () => {
  it('ENOSPC mid-write rejects, leaves no tmp file and the previous snapshot intact', async () => {
    const dir = tempDir();
    const path = join(dir, 's.snap');
    const previous = makeRecords(500);
    await write(path, previous, { key: KEY, sync: true });
    const before = readFileSync(path);

    let written = 0;
    const failAfter = 20_000;
    const options: Partial<WriteSnapshotOptions> = {
      key: KEY,
      sync: true,
      blockBytes: 4096,
      openFile: async (p) => {
        const file = await open(p, 'w');
        return {
          async write(buf: Buffer) {
            if (written + buf.length > failAfter) {
              // Half of it lands, as when a disk fills mid-write.
              await file.write(buf.subarray(0, buf.length >> 1));
              throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
            }
            written += buf.length;
            return file.write(buf);
          },
          sync: () => file.sync(),
          close: () => file.close(),
        };
      },
    };
    await expect(write(path, makeRecords(3_000, 1), options)).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(written).toBeGreaterThan(0);
    expect(readdirSync(dir)).toEqual(['s.snap']);
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(await verifySnapshot(path, { key: KEY })).toMatchObject({ ok: true, summary: { records: 500 } });
    expect(await readAll(path, KEY)).toEqual(previous);
  });

  it('a failing record source rejects the same way', async () => {
    const dir = tempDir();
    const path = join(dir, 's.snap');
    await write(path, makeRecords(10));
    const failing = async function* () {
      yield makeRecords(2_000);
      throw new Error('view closed');
    };
    await expect(writeSnapshot(path, FULL, failing(), { compression: 'deflate', sync: true, blockBytes: 1024 })).rejects.toThrow('view closed');
    expect(readdirSync(dir)).toEqual(['s.snap']);
    expect(await verifySnapshot(path, {})).toMatchObject({ ok: true, summary: { records: 10 } });
  });
});

describe('streaming', () => {
  it('writes and reads 50k records (~200 MB) with bounded memory', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const retained = () => {
      gc();
      const { heapUsed, arrayBuffers } = process.memoryUsage();
      return heapUsed + arrayBuffers;
    };
    const dir = tempDir();
    const path = join(dir, 'big.snap');
    const count = 50_000;
    const valueBytes = 4096;
    // Fresh records per batch, dropped once handed over: anything the writer kept would show.
    const source = function* () {
      for (let i = 0; i < count; i += 500) {
        yield Array.from({ length: 500 }, (_, j) => ({ ...makeRecords(1, i + j)[0]!, value: Buffer.alloc(valueBytes, (i + j) & 0xff) }));
      }
    };
    const baseline = retained();
    let peak = 0;
    let progressCalls = 0;
    const summary = await writeSnapshot(path, FULL, source(), {
      compression: 'none',
      key: KEY,
      sync: false,
      onProgress: (records, bytes) => {
        expect(bytes).toBeGreaterThan(records * valueBytes * 0.9);
        if (++progressCalls % 20 === 0) peak = Math.max(peak, retained() - baseline);
      },
    });
    expect(summary.records).toBe(count);
    expect(summary.bytes).toBeGreaterThan(count * valueBytes);
    expect(progressCalls).toBeGreaterThan(150);
    const limit = 48 * 1024 ** 2; // a quarter of the data: a few blocks and a batch in flight, never the whole
    expect(peak).toBeLessThan(limit);

    peak = 0;
    let read = 0;
    let batches = 0;
    for await (const batch of readSnapshot(path, { key: KEY })) {
      for (const record of batch) {
        expect(record.value.length).toBe(valueBytes);
        expect(record.value[0]).toBe(read++ & 0xff);
      }
      if (++batches % 50 === 0) peak = Math.max(peak, retained() - baseline);
    }
    expect(read).toBe(count);
    expect(peak).toBeLessThan(limit);
  }, 60_000);
});

describe('loadEncryptionKey', () => {
  const key = randomBytes(32);
  const cases: Array<[string, Buffer | string]> = [
    ['32 raw bytes', key],
    ['hex', key.toString('hex')],
    ['HEX with a newline', `${key.toString('hex').toUpperCase()}\n`],
    ['base64 with a newline', `${key.toString('base64')}\n`],
    ['base64url without padding', key.toString('base64url')],
    ['base64 with CRLF', `${key.toString('base64')}\r\n`],
  ];
  for (const [name, content] of cases) {
    it(`reads ${name}`, () => {
      const file = join(tempDir(), 'key');
      writeFileSync(file, content);
      expect(loadEncryptionKey(file).equals(key)).toBe(true);
    });
  }

  const bad: Array<[string, Buffer | string]> = [
    ['31 raw bytes', key.subarray(0, 31)],
    ['33 raw bytes', Buffer.concat([key, Buffer.from([1])])],
    ['62 hex characters', key.toString('hex').slice(0, 62)],
    ['base64 of 31 bytes', key.subarray(0, 31).toString('base64')],
    ['base64 with junk', `${key.toString('base64').slice(0, 40)}!!!=`],
    ['an empty file', ''],
  ];
  for (const [name, content] of bad) {
    it(`rejects ${name} without echoing it`, () => {
      const file = join(tempDir(), 'key');
      writeFileSync(file, content);
      let error: unknown;
      try {
        loadEncryptionKey(file);
      } catch (e) {
        error = e;
      }
      expect(error).toMatchObject({ code: 'ENCRYPTION_KEY_INVALID', message: expect.stringContaining('expected 32 raw bytes, 64 hex characters or base64 of 32 bytes') });
      expect((error as Error).message).not.toContain(key.toString('hex').slice(0, 16));
      expect((error as Error).message).not.toContain(key.toString('base64').slice(0, 16));
    });
  }

  it('names a missing file', () => {
    expect(() => loadEncryptionKey('/nonexistent/ctxmesh.key')).toThrow(/encryption key file \/nonexistent\/ctxmesh.key: ENOENT/);
  });
});
