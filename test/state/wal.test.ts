import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterEach, describe, expect, it } from 'vitest';
import { until } from '../helpers/mesh.js';
import {
  openSegmentFile,
  segmentName,
  Wal,
  WAL_RECORD_HEADER_BYTES,
  type FsyncPolicy,
  type WalFile,
  type WalOptions,
} from '../../src/state/checkpoint/wal.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');

const dirs: string[] = [];
const open: Wal[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((wal) => wal.close()));
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-wal-'));
  dirs.push(dir);
  return dir;
}

async function openWal(options: Partial<WalOptions> & { dir: string }): Promise<Wal> {
  const wal = await Wal.open({ fsync: 'always', batchInterval: 5, segmentBytes: 1 << 20, ...options });
  open.push(wal);
  return wal;
}

async function readAll(wal: Wal, afterLsn = 0) {
  const records: Array<[number, string]> = [];
  const report = await wal.replay(afterLsn, (lsn, payload) => records.push([lsn, payload.toString()]));
  return { records, report };
}

const payload = (n: number) => `payload-${n}-${'p'.repeat(n % 29)}`;

// 40-byte payloads make 56-byte records; with 200-byte segments that is 4 records each:
// wal-1 (1-4), wal-5 (5-8), wal-9 (9-12)…
const RECORD_BYTES = WAL_RECORD_HEADER_BYTES + 40;
const body = (n: number) => `record ${String(n).padStart(2, '0')} `.padEnd(40, '.');

function flipByte(file: string, offset: number, mask = 0x01): void {
  const data = readFileSync(file);
  data[offset]! ^= mask;
  writeFileSync(file, data);
}

/** This source compiled on the spot into `dir`, for child processes: they never run a stale build. */
function compiledWal(dir: string): string {
  const source = readFileSync(join(ROOT, 'src/state/checkpoint/wal.ts'), 'utf8');
  const compiled = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } });
  writeFileSync(join(dir, 'wal.mjs'), compiled.outputText);
  return join(dir, 'wal.mjs');
}

/** What the WAL did to its files, in order, with the acknowledgements the test adds. */
interface Trace {
  events: string[];
  writes: number;
  syncs: number;
  /** Set to hold the next writev/datasync until the test releases it. */
  holdWrite?: Promise<void>;
  holdSync?: Promise<void>;
  /** Set to make the next writev write half its bytes, then fail like a full disk. */
  failWrite?: boolean;
  onSync?: () => void;
}

/** Real segment files with their writes and fsyncs observed (and, on request, held or failed). */
function tracedFiles(trace: Trace): (path: string) => Promise<WalFile> {
  return async (path) => {
    const file = await openSegmentFile(path);
    return {
      async writev(buffers, position) {
        const hold = trace.holdWrite;
        trace.holdWrite = undefined;
        await hold;
        trace.writes++;
        if (trace.failWrite) {
          trace.failWrite = false;
          const bytes = Buffer.concat(buffers);
          await file.writev([bytes.subarray(0, bytes.length >> 1)], position);
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        }
        const result = await file.writev(buffers, position);
        trace.events.push('write');
        return result;
      },
      async datasync() {
        const hold = trace.holdSync;
        trace.holdSync = undefined;
        await hold;
        await file.datasync();
        trace.syncs++;
        trace.events.push('sync');
        trace.onSync?.();
      },
      truncate: (length) => file.truncate(length),
      close: () => file.close(),
    };
  };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('Wal', () => {
  it('round-trips records across segment rolls and a reopen, LSNs continuing', async () => {
    const dir = tempDir();
    const wal = await openWal({ dir, segmentBytes: 256 });
    expect(wal.openReport).toEqual({ records: 0, firstLsn: 0, lastLsn: 0 });
    for (let n = 1; n <= 30; n++) expect(await wal.append(Buffer.from(payload(n)))).toBe(n);
    // A concurrent burst is split at segment boundaries, never written across one.
    const burst = await Promise.all([31, 32, 33, 34, 35, 36, 37, 38].map((n) => wal.append(Buffer.from(payload(n)))));
    expect(burst).toEqual([31, 32, 33, 34, 35, 36, 37, 38]);
    expect(await wal.append(Buffer.alloc(0))).toBe(39);

    const segments = await wal.segments();
    expect(segments.length).toBeGreaterThanOrEqual(5);
    expect(segments[0]).toMatchObject({ name: segmentName(1), firstLsn: 1 });
    for (const s of segments) expect(s.name).toBe(segmentName(s.firstLsn));
    for (const s of segments.slice(0, -1)) expect(s.bytes).toBeLessThan(256 + 64);
    await wal.close();

    const reopened = await openWal({ dir, segmentBytes: 256 });
    expect(reopened.openReport).toEqual({ records: 39, firstLsn: 1, lastLsn: 39 });
    expect(reopened.lastLsn).toBe(39);
    expect(await reopened.append(Buffer.from(payload(40)))).toBe(40);

    const expected = Array.from({ length: 40 }, (_, i) => [i + 1, i + 1 === 39 ? '' : payload(i + 1)]);
    expect(await readAll(reopened)).toEqual({ records: expected, report: { records: 40, firstLsn: 1, lastLsn: 40 } });
    expect((await readAll(reopened, 33)).records).toEqual(expected.slice(33));
    expect((await readAll(reopened, 40)).report).toEqual({ records: 0, firstLsn: 0, lastLsn: 0 });
  });

  it('removes only whole segments a snapshot covers, never the one being written', async () => {
    const dir = tempDir();
    const wal = await openWal({ dir, segmentBytes: 100 });
    for (let n = 1; n <= 12; n++) await wal.append(Buffer.alloc(40, n)); // 56-byte records, 2 per segment
    expect((await wal.segments()).map((s) => s.firstLsn)).toEqual([1, 3, 5, 7, 9, 11]);

    expect(await wal.removeSegmentsThrough(5)).toBe(2); // 1-2 and 3-4; 5-6 still holds 6
    expect((await wal.segments()).map((s) => s.firstLsn)).toEqual([5, 7, 9, 11]);
    expect((await readAll(wal, 4)).report).toEqual({ records: 8, firstLsn: 5, lastLsn: 12 });
    await expect(wal.replay(2, () => {})).rejects.toMatchObject({ code: 'WAL_RECORDS_REMOVED' });

    expect(await wal.removeSegmentsThrough(100)).toBe(3);
    expect((await wal.segments()).map((s) => s.firstLsn)).toEqual([11]);
    expect(await wal.append(Buffer.from('after'))).toBe(13);
  });

  describe('acknowledges only after the data is written', () => {
    async function appendTraced(policy: FsyncPolicy, batchInterval: number) {
      const dir = tempDir();
      const trace: Trace = { events: [], writes: 0, syncs: 0 };
      const wal = await openWal({ dir, fsync: policy, batchInterval, openFile: tracedFiles(trace) });
      const lsn = await wal.append(Buffer.from('durable?'));
      trace.events.push('ack');
      // Another reader sees the record the moment it is acknowledged.
      expect(readFileSync(join(dir, segmentName(1))).subarray(WAL_RECORD_HEADER_BYTES).toString()).toBe('durable?');
      return { wal, lsn, trace };
    }

    it('always: after the write and its fsync', async () => {
      const { lsn, trace } = await appendTraced('always', 0);
      expect(lsn).toBe(1);
      expect(trace.events).toEqual(['write', 'sync', 'ack']);
    });

    it('batch: after the write, with the fsync following within batchInterval', async () => {
      const { wal, trace } = await appendTraced('batch', 60_000);
      expect(trace.events).toEqual(['write', 'ack']);
      await wal.close(); // the interval has not passed: close fsyncs what is pending
      expect(trace.events).toEqual(['write', 'ack', 'sync']);

      const synced = deferred();
      const { trace: second } = await appendTraced('batch', 1);
      second.onSync = synced.resolve;
      expect(second.events).toEqual(['write', 'ack']);
      await synced.promise; // the timer's fsync, with no close to force it
      expect(second.events).toEqual(['write', 'ack', 'sync']);
    });

    it('batch: a slow fsync does not hold the appends behind it; they are fsynced after it', async () => {
      const dir = tempDir();
      const trace: Trace = { events: [], writes: 0, syncs: 0 };
      const wal = await openWal({ dir, fsync: 'batch', batchInterval: 1, openFile: tracedFiles(trace) });
      const device = deferred();
      trace.holdSync = device.promise; // the device is busy (a snapshot's writeback)
      await wal.append(Buffer.from('one'));
      // Wait until the timer's fsync is in flight and held.
      await until(() => trace.holdSync === undefined);
      // Appends keep being written and acknowledged while that fsync waits for the device.
      expect(await wal.append(Buffer.from('two'))).toBe(2);
      expect(await wal.append(Buffer.from('three'))).toBe(3);
      expect(trace.events).toEqual(['write', 'write', 'write']);
      const synced = deferred();
      trace.onSync = () => {
        if (trace.syncs === 2) synced.resolve();
      };
      device.resolve();
      await synced.promise; // the held fsync, then one more for what was written meanwhile
      expect(trace.events).toEqual(['write', 'write', 'write', 'sync', 'sync']);
      await wal.close();
      const reopened = await openWal({ dir });
      expect((await readAll(reopened)).records).toEqual([[1, 'one'], [2, 'two'], [3, 'three']]);
    });

    it('none: after the write, fsyncing only at close', async () => {
      const { wal, trace } = await appendTraced('none', 0);
      await wal.append(Buffer.from('more'));
      expect(trace.events).toEqual(['write', 'ack', 'write']);
      await wal.close();
      expect(trace.syncs).toBe(1);
    });
  });

  it('group-commits appends that arrive while a write is in flight', async () => {
    const trace: Trace = { events: [], writes: 0, syncs: 0 };
    const wal = await openWal({ dir: tempDir(), fsync: 'always', openFile: tracedFiles(trace) });
    const held = deferred();
    trace.holdSync = held.promise;
    const first = wal.append(Buffer.from(payload(0)));
    await new Promise((resolve) => setImmediate(resolve)); // the first write is under way

    const acks: number[] = [];
    const burst = Array.from({ length: 200 }, (_, n) => wal.append(Buffer.from(payload(n + 1))).then((lsn) => (acks.push(lsn), lsn)));
    held.resolve();
    expect(await first).toBe(1);
    expect(await Promise.all(burst)).toEqual(Array.from({ length: 200 }, (_, n) => n + 2));

    // One write and one fsync for the first append, one of each for all 200 behind it.
    expect([trace.writes, trace.syncs]).toEqual([2, 2]);
    expect(acks).toEqual(Array.from({ length: 200 }, (_, n) => n + 2));
    const { records } = await readAll(wal);
    expect(records.map(([lsn, text]) => [lsn, text])).toEqual(Array.from({ length: 201 }, (_, n) => [n + 1, payload(n)]));
  });

  describe('a torn or corrupt log', () => {
    async function writeLog(): Promise<string> {
      const dir = tempDir();
      const wal = await Wal.open({ dir, fsync: 'none', batchInterval: 0, segmentBytes: 200 });
      for (let n = 1; n <= 12; n++) await wal.append(Buffer.from(body(n)));
      await wal.close();
      expect(readdirSync(dir).sort()).toEqual([segmentName(1), segmentName(5), segmentName(9)]);
      return dir;
    }

    /** Open cuts the bad tail at `offset` in the last segment, keeping `kept` records, and the
     * log then takes appends that replay after those records. */
    async function expectCutAt(dir: string, offset: number, kept: number, reason: RegExp): Promise<void> {
      const wal = await openWal({ dir, segmentBytes: 200 });
      expect(wal.openReport).toMatchObject({ records: kept, firstLsn: 1, lastLsn: kept, torn: { segment: segmentName(9), offset } });
      expect(wal.openReport.torn!.reason).toMatch(reason);
      expect(statSync(join(dir, segmentName(9))).size).toBe(offset);
      const before = await readAll(wal);
      expect(before.report.torn).toBeUndefined();
      expect(before.records).toEqual(Array.from({ length: kept }, (_, i) => [i + 1, body(i + 1)]));

      expect(await wal.append(Buffer.from('written after the cut'))).toBe(kept + 1);
      await wal.close();
      const reopened = await openWal({ dir, segmentBytes: 200 });
      expect(reopened.openReport).toEqual({ records: kept + 1, firstLsn: 1, lastLsn: kept + 1 });
      expect((await readAll(reopened)).records.at(-1)).toEqual([kept + 1, 'written after the cut']);
    }

    const lastRecord = 3 * RECORD_BYTES;
    it.each([1, WAL_RECORD_HEADER_BYTES - 1, WAL_RECORD_HEADER_BYTES, WAL_RECORD_HEADER_BYTES + 20, RECORD_BYTES - 1])(
      'cut %i bytes into the last record: reports it torn and keeps the 11 before',
      async (cut) => {
        const dir = await writeLog();
        truncateSync(join(dir, segmentName(9)), lastRecord + cut);
        await expectCutAt(dir, lastRecord, 11, /^torn (header|payload)$/);
      },
    );

    it('a log cut exactly between records is not torn', async () => {
      const dir = await writeLog();
      truncateSync(join(dir, segmentName(9)), lastRecord);
      const wal = await openWal({ dir, segmentBytes: 200 });
      expect(wal.openReport).toEqual({ records: 11, firstLsn: 1, lastLsn: 11 });
    });

    // Record 10 sits at offset 56 of wal-9; 11 and 12 after it are cut too, since nothing
    // past a bad record in the last segment can be trusted.
    it.each([
      ['payload', RECORD_BYTES + WAL_RECORD_HEADER_BYTES + 7, 0x01, /crc mismatch/],
      ['CRC', RECORD_BYTES + 4, 0x80, /crc mismatch/],
      ['LSN', RECORD_BYTES + 8, 0x02, /crc mismatch/],
      ['length (past the end)', RECORD_BYTES + 1, 0x01, /torn payload/],
      ['length (past the cap)', RECORD_BYTES + 3, 0xff, /exceeds the record cap/],
    ])('a flipped bit in the %s of a record in the last segment is cut there', async (_, offset, mask, reason) => {
      const dir = await writeLog();
      flipByte(join(dir, segmentName(9)), offset, mask);
      await expectCutAt(dir, RECORD_BYTES, 9, reason);
    });

    it('a corrupt record in a middle segment stops replay there, without touching the files', async () => {
      const dir = await writeLog();
      flipByte(join(dir, segmentName(5)), 2 * RECORD_BYTES + WAL_RECORD_HEADER_BYTES); // record 7
      const wal = await openWal({ dir, segmentBytes: 200 });
      expect(wal.openReport).toEqual({ records: 12, firstLsn: 1, lastLsn: 12 });

      const { records, report } = await readAll(wal);
      expect(records.map(([lsn]) => lsn)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(report).toEqual({ records: 6, firstLsn: 1, lastLsn: 6, torn: { segment: segmentName(5), offset: 2 * RECORD_BYTES, reason: 'crc mismatch' } });
      expect(statSync(join(dir, segmentName(5))).size).toBe(4 * RECORD_BYTES);
    });

    it('a missing middle segment stops replay at the gap', async () => {
      const dir = await writeLog();
      unlinkSync(join(dir, segmentName(5)));
      const wal = await openWal({ dir, segmentBytes: 200 });
      const { records, report } = await readAll(wal);
      expect(records.map(([lsn]) => lsn)).toEqual([1, 2, 3, 4]);
      expect(report.torn).toEqual({ segment: segmentName(1), offset: 4 * RECORD_BYTES, reason: `segment ${segmentName(9)} starts at lsn 9, expected 5` });
    });
  });

  it('keeps every acknowledged record when the writer is SIGKILLed', async () => {
    const dir = tempDir();
    const walDir = join(dir, 'wal');
    const child = spawn(process.execPath, [join(HERE, 'fixtures', 'wal-writer.mjs'), compiledWal(dir), walDir], { stdio: ['ignore', 'pipe', 'pipe'] });
    const acked = new Map<number, string>();
    let stderr = '';
    let partial = '';
    const ENOUGH_ACKS = 400;
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    await new Promise<void>((resolve, reject) => {
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.stdout.on('data', (chunk: Buffer) => {
        const lines = (partial + chunk.toString()).split('\n');
        partial = lines.pop()!;
        for (const line of lines) acked.set(Number(line.slice(0, line.indexOf(' '))), line.slice(line.indexOf(' ') + 1));
        if (acked.size >= ENOUGH_ACKS) resolve();
      });
      child.once('exit', (code) => reject(new Error(`the writer exited with ${code} after ${acked.size} acks: ${stderr}`)));
    });
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');

    const wal = await openWal({ dir: walDir, segmentBytes: 4096 });
    const replayed = new Map<number, string>();
    const report = await wal.replay(0, (lsn, bytes) => replayed.set(lsn, bytes.toString()));
    expect(report.torn).toBeUndefined();
    expect(report.lastLsn).toBeGreaterThanOrEqual(Math.max(...acked.keys()));
    expect([...replayed.keys()]).toEqual(Array.from({ length: report.records }, (_, i) => i + 1));
    for (const [lsn, text] of acked) expect(replayed.get(lsn)).toBe(text);
    expect((await wal.segments()).length).toBeGreaterThan(1);
  });

  it('rejects exactly the batch whose write fails, leaves nothing partial and keeps going', async () => {
    const dir = tempDir();
    const trace: Trace = { events: [], writes: 0, syncs: 0 };
    const wal = await openWal({ dir, openFile: tracedFiles(trace) });
    expect(await wal.append(Buffer.from('one'))).toBe(1);
    expect(await wal.append(Buffer.from('two'))).toBe(2);
    const goodBytes = statSync(join(dir, segmentName(1))).size;

    const held = deferred();
    trace.holdWrite = held.promise;
    trace.failWrite = true;
    // Longer than all that follows, so a partial record left behind would still be on disk.
    const failing = [wal.append(Buffer.alloc(300, 'a')), wal.append(Buffer.alloc(300, 'b'))];
    await new Promise((resolve) => setImmediate(resolve)); // that batch is in its write
    const behind = [wal.append(Buffer.from('three')), wal.append(Buffer.from('four'))];
    expect(wal.lastLsn).toBe(6);
    held.resolve();

    for (const p of failing) await expect(p).rejects.toMatchObject({ code: 'ENOSPC' });
    // The appends queued behind take over the failed LSNs: the log has no gap.
    expect(await Promise.all(behind)).toEqual([3, 4]);
    expect(wal.lastLsn).toBe(4);
    expect(await wal.append(Buffer.from('five'))).toBe(5);
    expect(statSync(join(dir, segmentName(1))).size).toBe(goodBytes + 3 * WAL_RECORD_HEADER_BYTES + 'threefourfive'.length);
    await wal.close();

    const reopened = await openWal({ dir });
    expect(reopened.openReport.torn).toBeUndefined();
    expect((await readAll(reopened)).records).toEqual([[1, 'one'], [2, 'two'], [3, 'three'], [4, 'four'], [5, 'five']]);
  });

  it('under batch and none writes on the loop thread where the file can; a failed write there rejects its batch alone', async () => {
    const dir = tempDir();
    const calls = { sync: 0, async: 0, failNext: false };
    const openFile = async (path: string): Promise<WalFile> => {
      const file = await openSegmentFile(path);
      return {
        writev: (buffers, position) => (calls.async++, file.writev(buffers, position)),
        writevSync(buffers, position) {
          calls.sync++;
          if (calls.failNext) {
            calls.failNext = false;
            const bytes = Buffer.concat(buffers);
            file.writevSync!([bytes.subarray(0, bytes.length >> 1)], position);
            throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
          }
          return file.writevSync!(buffers, position);
        },
        datasync: () => file.datasync(),
        truncate: (length) => file.truncate(length),
        close: () => file.close(),
      };
    };
    const wal = await openWal({ dir, fsync: 'batch', batchInterval: 5, openFile });
    expect(await wal.append(Buffer.from('one'))).toBe(1);
    calls.failNext = true;
    const failing = [wal.append(Buffer.alloc(300, 'a')), wal.append(Buffer.alloc(300, 'b'))];
    for (const p of failing) await expect(p).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await wal.append(Buffer.from('two'))).toBe(2);
    expect([calls.sync, calls.async]).toEqual([3, 0]);
    await wal.close();
    const reopened = await openWal({ dir, fsync: 'always', openFile });
    expect(reopened.openReport.torn).toBeUndefined();
    expect((await readAll(reopened)).records).toEqual([[1, 'one'], [2, 'two']]);
    // `always` waits for the device: its writes stay off the loop thread.
    expect(await reopened.append(Buffer.from('three'))).toBe(3);
    expect([calls.sync, calls.async]).toEqual([3, 1]);
    await reopened.close();
  });

  it('close writes what is pending; appends after it reject', async () => {
    const dir = tempDir();
    const wal = await openWal({ dir, fsync: 'batch', batchInterval: 60_000 });
    const pending = wal.append(Buffer.from('last words'));
    await wal.close();
    expect(await pending).toBe(1);
    await expect(wal.append(Buffer.from('too late'))).rejects.toMatchObject({
      code: 'WAL_CLOSED',
      message: 'append after close: the write-ahead log is closed',
    });
    await wal.close(); // a second close is harmless

    const reopened = await openWal({ dir });
    expect((await readAll(reopened)).records).toEqual([[1, 'last words']]);
  });

  describe('closed segments: roll, rewrite (erasure), offline access', () => {
    const ERASED = Buffer.from('erased');
    const eraseLsns = (lsns: number[]) => (lsn: number) => (lsns.includes(lsn) ? ERASED : undefined);
    const expectedRecords = (count: number, erased: number[]) =>
      Array.from({ length: count }, (_, i) => [i + 1, erased.includes(i + 1) ? 'erased' : body(i + 1)]);
    const file = (dir: string, firstLsn: number) => join(dir, segmentName(firstLsn));

    async function appendRecords(wal: Wal, from: number, to: number): Promise<void> {
      for (let n = from; n <= to; n++) expect(await wal.append(Buffer.from(body(n)))).toBe(n);
    }

    /** 12 records in wal-1, wal-5, wal-9, written by a Wal that is then closed. */
    async function closedLog(): Promise<string> {
      const dir = tempDir();
      const wal = await Wal.open({ dir, fsync: 'none', batchInterval: 0, segmentBytes: 200 });
      await appendRecords(wal, 1, 12);
      await wal.close();
      return dir;
    }

    it('rollSegment writes and fsyncs what is queued, then appends go to a new segment and the old one never changes', async () => {
      const dir = tempDir();
      const trace: Trace = { events: [], writes: 0, syncs: 0 };
      const wal = await openWal({ dir, fsync: 'none', openFile: tracedFiles(trace) });
      const before = [1, 2, 3].map((n) => wal.append(Buffer.from(body(n))));
      const rolled = wal.rollSegment();
      const after = wal.append(Buffer.from(body(4))); // queued behind the roll: the new segment
      await rolled;
      expect(await Promise.all(before)).toEqual([1, 2, 3]);
      expect(await after).toBe(4);
      expect(trace.events).toEqual(['write', 'sync', 'write']); // fsynced at the roll, even under `none`
      expect((await wal.segments()).map((s) => [s.firstLsn, s.bytes])).toEqual([[1, 3 * RECORD_BYTES], [4, RECORD_BYTES]]);

      const closed = readFileSync(file(dir, 1));
      await appendRecords(wal, 5, 9);
      await wal.rollSegment();
      await wal.rollSegment(); // nothing written since: no empty segment
      await appendRecords(wal, 10, 10);
      expect((await wal.segments()).map((s) => s.firstLsn)).toEqual([1, 4, 10]);
      expect(readFileSync(file(dir, 1))).toEqual(closed);
      await wal.close();
      await expect(wal.rollSegment()).rejects.toMatchObject({ code: 'WAL_CLOSED' });

      const reopened = await openWal({ dir });
      expect(reopened.openReport).toEqual({ records: 10, firstLsn: 1, lastLsn: 10 });
      expect((await readAll(reopened)).records).toEqual(expectedRecords(10, []));
    });

    it('rewriteSegments replaces chosen payloads in closed segments at the same LSNs, never the active one', async () => {
      const dir = tempDir();
      const wal = await openWal({ dir, segmentBytes: 200 });
      await appendRecords(wal, 1, 14); // wal-1, wal-5, wal-9 closed; wal-13 active
      const stats = new Map([1, 5, 9, 13].map((lsn) => [lsn, statSync(file(dir, lsn))]));
      const active = readFileSync(file(dir, 13));

      const seen: number[] = [];
      const progress: Array<[number, number]> = [];
      const result = await wal.rewriteSegments(
        (lsn, payload) => {
          seen.push(lsn);
          expect(payload.toString()).toBe(body(lsn));
          return [2, 3, 10, 14].includes(lsn) ? ERASED : lsn === 6 ? Buffer.from(body(6)) : undefined; // same bytes: no change
        },
        { onProgress: (done, total) => progress.push([done, total]) },
      );
      expect(result).toEqual({ segments: 2, rewritten: 3 });
      expect(seen).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
      expect(progress).toEqual([[1, 3], [2, 3], [3, 3]]);
      // Rewritten segments are new files (renamed over the old); the others were not touched.
      expect(statSync(file(dir, 1)).ino).not.toBe(stats.get(1)!.ino);
      expect(statSync(file(dir, 9)).ino).not.toBe(stats.get(9)!.ino);
      for (const lsn of [5, 13]) {
        expect(statSync(file(dir, lsn))).toMatchObject({ ino: stats.get(lsn)!.ino, mtimeMs: stats.get(lsn)!.mtimeMs });
      }
      expect(readFileSync(file(dir, 13))).toEqual(active);
      expect(readdirSync(dir).filter((name) => name.endsWith('.tmp'))).toEqual([]);

      expect(await readAll(wal)).toEqual({ records: expectedRecords(14, [2, 3, 10]), report: { records: 14, firstLsn: 1, lastLsn: 14 } });
      expect(await wal.append(Buffer.from(body(15)))).toBe(15);

      // Rolling first brings the active segment's records in.
      await wal.rollSegment();
      expect(await wal.rewriteSegments(eraseLsns([14]))).toEqual({ segments: 1, rewritten: 1 });
      await appendRecords(wal, 16, 16);
      await wal.close();

      const reopened = await openWal({ dir, segmentBytes: 200 });
      expect(reopened.openReport).toEqual({ records: 16, firstLsn: 1, lastLsn: 16 }); // CRCs check out: no torn tail
      expect(await readAll(reopened)).toEqual({ records: expectedRecords(16, [2, 3, 10, 14]), report: { records: 16, firstLsn: 1, lastLsn: 16 } });
    });

    it('a corrupt record in a closed segment rejects the rewrite and leaves that segment as it is', async () => {
      const dir = await closedLog();
      flipByte(file(dir, 5), 2 * RECORD_BYTES + WAL_RECORD_HEADER_BYTES); // record 7
      const wal = await openWal({ dir, segmentBytes: 200 });
      await wal.rollSegment();
      const damaged = statSync(file(dir, 5));
      const bytes = readFileSync(file(dir, 5));

      await expect(wal.rewriteSegments(eraseLsns([2, 6, 10]))).rejects.toMatchObject({
        code: 'WAL_CORRUPT',
        message: `segment ${segmentName(5)}: crc mismatch at offset ${2 * RECORD_BYTES}; left as it is; 1 earlier segment(s) were rewritten`,
      });
      expect(readFileSync(file(dir, 5))).toEqual(bytes);
      expect(statSync(file(dir, 5)).ino).toBe(damaged.ino);
      expect(readdirSync(dir).filter((name) => name.endsWith('.tmp'))).toEqual([]);
      const { records } = await readAll(wal);
      expect(records).toEqual(expectedRecords(6, [2])); // wal-1 done, wal-9 never reached
    });

    it('a failed write of the new segment leaves the old one and no .tmp behind', async () => {
      const dir = await closedLog();
      const original = readFileSync(file(dir, 1));
      const failingFiles = async (path: string): Promise<WalFile> => {
        const real = await openSegmentFile(path);
        return {
          writev: async () => { throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }); },
          datasync: () => real.datasync(),
          truncate: (length) => real.truncate(length),
          close: () => real.close(),
        };
      };
      await expect(Wal.rewriteDirectory(dir, eraseLsns([2]), { openFile: failingFiles })).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(readFileSync(file(dir, 1))).toEqual(original);
      expect(readdirSync(dir).sort()).toEqual([segmentName(1), segmentName(5), segmentName(9)]);
    });

    it('a rewrite SIGKILLed between writing the .tmp and the rename leaves the old segment, and open removes the .tmp', async () => {
      const dir = await closedLog();
      const original = readFileSync(file(dir, 1));
      const script = join(dir, 'rewriter.mjs');
      writeFileSync(script, `
        import { pathToFileURL } from 'node:url';
        const [modulePath, dir] = process.argv.slice(2);
        const { Wal, openSegmentFile } = await import(pathToFileURL(modulePath).href);
        setTimeout(() => process.exit(1), 30_000); // never outlive a test that forgot to kill us
        await Wal.rewriteDirectory(dir, (lsn) => (lsn === 2 ? Buffer.from('erased') : undefined), {
          openFile: async (path) => {
            const file = await openSegmentFile(path);
            return {
              writev: (buffers, position) => file.writev(buffers, position),
              truncate: (length) => file.truncate(length),
              close: () => file.close(),
              async datasync() {
                await file.datasync();
                process.stdout.write('tmp written\\n');
                await new Promise(() => {}); // wait here for the kill, before the rename
              },
            };
          },
        });`);
      const moduleDir = tempDir();
      const child = spawn(process.execPath, [script, compiledWal(moduleDir), dir], { stdio: ['ignore', 'pipe', 'pipe'] });
      const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('tmp written') && resolve());
        child.once('exit', (code) => reject(new Error(`the rewriter exited with ${code}: ${stderr}`)));
      });
      child.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');

      const temp = `${file(dir, 1)}.tmp`;
      expect(readFileSync(temp).includes('erased')).toBe(true);
      expect(readFileSync(file(dir, 1))).toEqual(original);
      const offline: Array<[number, string]> = [];
      expect(await Wal.replayDirectory(dir, 0, (lsn, bytes) => offline.push([lsn, bytes.toString()]))).toEqual({ records: 12, firstLsn: 1, lastLsn: 12 });
      expect(offline).toEqual(expectedRecords(12, []));
      expect(existsSync(temp)).toBe(true); // replayDirectory only reads

      const wal = await openWal({ dir, segmentBytes: 200 });
      expect(existsSync(temp)).toBe(false);
      expect(wal.openReport).toEqual({ records: 12, firstLsn: 1, lastLsn: 12 });
      expect((await readAll(wal)).records).toEqual(expectedRecords(12, []));
    });

    it('offline: rewriteDirectory treats the last segment as closed; replayDirectory reads without opening for append', async () => {
      const dir = await closedLog();
      expect(await Wal.rewriteDirectory(dir, eraseLsns([3, 12]))).toEqual({ segments: 2, rewritten: 2 });
      const offline: Array<[number, string]> = [];
      expect(await Wal.replayDirectory(dir, 4, (lsn, bytes) => offline.push([lsn, bytes.toString()]))).toEqual({ records: 8, firstLsn: 5, lastLsn: 12 });
      expect(offline).toEqual(expectedRecords(12, [3, 12]).slice(4));
      expect((await Wal.segmentsInDirectory(dir)).map((s) => s.firstLsn)).toEqual([1, 5, 9]);

      const wal = await openWal({ dir, segmentBytes: 200 });
      expect(wal.openReport).toEqual({ records: 12, firstLsn: 1, lastLsn: 12 });
      expect((await readAll(wal)).records).toEqual(expectedRecords(12, [3, 12]));
    });

    it('offline: replayDirectory reports a torn tail without cutting it; rewriteDirectory rejects it untouched', async () => {
      const dir = await closedLog();
      const torn = 3 * RECORD_BYTES + 20;
      truncateSync(file(dir, 9), torn);
      const bytes = readFileSync(file(dir, 9));

      const offline: number[] = [];
      expect(await Wal.replayDirectory(dir, 0, (lsn) => offline.push(lsn))).toEqual({
        records: 11, firstLsn: 1, lastLsn: 11, torn: { segment: segmentName(9), offset: 3 * RECORD_BYTES, reason: 'torn payload' },
      });
      expect(offline).toEqual(Array.from({ length: 11 }, (_, i) => i + 1));
      expect(statSync(file(dir, 9)).size).toBe(torn);

      await expect(Wal.rewriteDirectory(dir, eraseLsns([10]))).rejects.toMatchObject({
        code: 'WAL_CORRUPT',
        message: `segment ${segmentName(9)}: torn payload at offset ${3 * RECORD_BYTES}; left as it is`,
      });
      expect(readFileSync(file(dir, 9))).toEqual(bytes);
      await expect(Wal.replayDirectory(dir, 0, () => {})).resolves.toMatchObject({ records: 11 });
    });
  });
});
