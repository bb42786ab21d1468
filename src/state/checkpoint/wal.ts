// The write-ahead log: every context write lands here before it is acknowledged, and start-up
// replays it. It stores opaque payloads and knows nothing about contexts.
//
// Why the format is what it is:
// - Segments `wal-<first LSN, 16 hex digits>.log`: names sort in LSN order, so finding where
//   an LSN lives, and deleting what a snapshot covers, needs only a directory listing.
// - A record is a 16-byte header — payload length u32 LE, CRC32 u32 LE, LSN u64 LE — then the
//   payload. The length comes first so a reader knows how far to read; the CRC covers the LSN
//   and the payload, so a torn write or a flipped bit fails the check. LSNs are dense (1, 2,
//   3…) and each record must carry the next one, so a stale, missing or reordered record or
//   segment is noticed too, not silently stepped over.
// - A crashed process can only leave a torn end on the last segment (we append nowhere else), so
//   open() cuts a bad tail there; anywhere else a bad record is damage: replay stops and reports.
// - A length above MAX_RECORD_PAYLOAD_BYTES is treated as corruption, so a flipped bit in a
//   length never makes us allocate gigabytes.
// - Erasure (GDPR) rewrites closed segments only, and keeps every LSN: an erased record is
//   replaced by the caller's redacted payload, never dropped, so the log stays dense. A segment
//   is replaced whole — `<name>.tmp`, fsync, rename, fsync the directory — so a crash leaves the
//   old segment or the new one; a stray `.tmp` is what a crash mid-rewrite leaves, and open()
//   deletes it.
import { constants, writevSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

export type FsyncPolicy = 'always' | 'batch' | 'none';

/** The calls the WAL makes on a segment file; node's FileHandle is one. Tests wrap it. */
export interface WalFile {
  writev(buffers: Buffer[], position: number): Promise<{ bytesWritten: number }>;
  /**
   * The same write made on the event loop's thread (SegmentFile has it). Under `batch` and `none`
   * the WAL writes through it: a write() into the page cache takes a few microseconds, less than
   * handing it to the thread pool and being woken when it is done (two thread switches and a
   * loop wake-up per batch, on every write path of a replicated store). `always` waits for the
   * device, and keeps to the thread pool.
   */
  writevSync?(buffers: Buffer[], position: number): number;
  datasync(): Promise<void>;
  truncate(length: number): Promise<void>;
  close(): Promise<void>;
}

export interface WalOptions {
  /** Directory of the segments; created (recursively) if missing. */
  dir: string;
  /** always: append resolves after fsync. batch: after write(), fsync at most batchInterval ms
   * later. none: after write(), fsync only at close. */
  fsync: FsyncPolicy;
  /** ms between a write and its fsync under `batch`. */
  batchInterval: number;
  /** Roll to a new segment once the current one reaches this many bytes. */
  segmentBytes: number;
  /** Opens a segment for writing (read-write, created if missing). Default: node's fs. */
  openFile?: (path: string) => Promise<WalFile>;
}

/** Where a torn or corrupt record was found (and, at open, cut). */
export interface WalTail { segment: string; offset: number; reason: string }
/** records / firstLsn / lastLsn: what is in the log (open) or what was delivered (replay); 0s when none. */
export interface WalReplayReport { records: number; firstLsn: number; lastLsn: number; torn?: WalTail }

/** Replaces a record's payload: a new payload keeps the record's LSN; undefined (or the same
 * bytes) keeps the record as it is. The payload passed in is the caller's to keep. */
export type WalRecordTransform = (lsn: number, payload: Buffer) => Buffer | undefined;
export interface WalRewriteOptions {
  /** Called after each segment is done with, whether or not it had to be rewritten. */
  onProgress?(segmentsDone: number, segmentsTotal: number): void;
}
export interface WalOfflineRewriteOptions extends WalRewriteOptions {
  /** Opens the `.tmp` file a segment is rewritten into. Default: node's fs. */
  openFile?: (path: string) => Promise<WalFile>;
}
/** segments: segment files replaced; rewritten: records given a new payload. */
export interface WalRewriteReport { segments: number; rewritten: number }

export type WalErrorCode = 'WAL_CLOSED' | 'WAL_CORRUPT' | 'WAL_FAILED' | 'WAL_RECORD_TOO_LARGE' | 'WAL_RECORDS_REMOVED';
export class WalError extends Error {
  constructor(readonly code: WalErrorCode, message: string, options?: { cause: unknown }) {
    super(message, options);
    this.name = 'WalError';
  }
}

export const WAL_RECORD_HEADER_BYTES = 16;
export const MAX_RECORD_PAYLOAD_BYTES = 64 * 1024 * 1024;
const SEGMENT_NAME = /^wal-([0-9a-f]{16})\.log$/;
const REWRITE_TEMP_NAME = /^wal-[0-9a-f]{16}\.log\.tmp$/;

export function segmentName(firstLsn: number): string {
  return `wal-${firstLsn.toString(16).padStart(16, '0')}.log`;
}

export async function openSegmentFile(path: string): Promise<WalFile> {
  return new SegmentFile(await open(path, constants.O_RDWR | constants.O_CREAT, 0o644));
}

/** A segment on disk: node's FileHandle, plus writes on the loop's thread. */
class SegmentFile implements WalFile {
  constructor(private readonly handle: FileHandle) {}

  writev(buffers: Buffer[], position: number): Promise<{ bytesWritten: number }> {
    return this.handle.writev(buffers, position);
  }

  writevSync(buffers: Buffer[], position: number): number {
    return writevSync(this.handle.fd, buffers, position);
  }

  datasync(): Promise<void> {
    return this.handle.datasync();
  }

  truncate(length: number): Promise<void> {
    return this.handle.truncate(length);
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

interface Pending { lsn: number; payload: Buffer; resolve: (lsn: number) => void; reject: (error: unknown) => void }
interface Segment { name: string; firstLsn: number }
interface RollRequest { resolve: () => void; reject: (error: unknown) => void }

export class Wal {
  private readonly queue: Pending[] = [];
  private pumping: Promise<void> | undefined;
  /** Written but not yet fsynced (batch and none). */
  private dirty = false;
  private syncDue = false;
  /** The batch policy's fsync in flight. It runs beside later writes: an append must not wait
   * for the device to flush what came before it (behind a snapshot's writeback that can take
   * 100+ ms), and batch acknowledges after write(), not after fsync, anyway. */
  private syncing: Promise<void> | undefined;
  /** Records were written while `syncing` was in flight: sync again once it is done. */
  private syncAgain = false;
  private syncTimer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  /** Set when acknowledged data may not be durable any more (a background fsync failed): the
   * log refuses further appends rather than acknowledge on top of a hole. */
  private fatal: WalError | undefined;
  /** rollSegment() callers; the roll waits for the first `appendsBeforeRoll` queued appends. */
  private readonly rollRequests: RollRequest[] = [];
  private appendsBeforeRoll = 0;
  /** Rewrites and removals take turns: a rewrite's rename must not bring back a segment that
   * a removal deleted while the rewrite was reading it. */
  private maintenance: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly options: WalOptions & { openFile: (path: string) => Promise<WalFile> },
    private current: Segment,
    private file: WalFile,
    /** Bytes of whole, written records in the current segment: where the next write goes. */
    private size: number,
    /** The last LSN handed to append() (in flight included), and the last written in full. */
    private assignedLsn: number,
    private writtenLsn: number,
    readonly openReport: WalReplayReport,
  ) {}

  /** Scans the last segment and cuts a torn or corrupt tail from it. Earlier segments are
   * checked by replay(), which start-up runs anyway; open stays O(one segment). */
  static async open(options: WalOptions): Promise<Wal> {
    if (!(options.segmentBytes > 0)) throw new RangeError('segmentBytes must be positive');
    if (options.fsync === 'batch' && !(options.batchInterval >= 0)) throw new RangeError('batchInterval must be >= 0 ms');
    const resolved = { ...options, openFile: options.openFile ?? openSegmentFile };
    await mkdir(options.dir, { recursive: true });
    await removeStrayRewrites(options.dir);
    const segments = await listSegments(options.dir);
    const last = segments.at(-1) ?? { name: segmentName(1), firstLsn: 1 };
    const path = join(options.dir, last.name);
    const data = segments.length > 0 ? await readFile(path) : Buffer.alloc(0);
    const scan = scanRecords(data, last.firstLsn, Number.MAX_SAFE_INTEGER, () => {});
    const file = await resolved.openFile(path);
    if (segments.length === 0) await syncDirectory(options.dir, options.fsync);
    let torn: WalTail | undefined;
    if (scan.bad !== undefined) {
      torn = { segment: last.name, offset: scan.end, reason: scan.bad };
      await file.truncate(scan.end);
      await file.datasync();
    }
    const lastLsn = last.firstLsn + scan.records - 1;
    const firstLsn = segments[0]?.firstLsn ?? 1;
    const records = Math.max(0, lastLsn - firstLsn + 1);
    const report: WalReplayReport = { records, firstLsn: records ? firstLsn : 0, lastLsn: records ? lastLsn : 0, ...(torn && { torn }) };
    return new Wal(resolved, last, file, scan.end, lastLsn, lastLsn, report);
  }

  /** LSN of the last record appended (0 when empty). Appends still in flight count; if their
   * batch fails, their numbers go to the appends queued behind them, so the log has no gaps. */
  get lastLsn(): number {
    return this.assignedLsn;
  }

  /** Resolves with the record's LSN once durable per the fsync policy. The payload must not be
   * modified until then: it is written from the caller's buffer, not a copy. */
  append(payload: Buffer): Promise<number> {
    if (this.closing) return Promise.reject(new WalError('WAL_CLOSED', 'append after close: the write-ahead log is closed'));
    if (this.fatal) return Promise.reject(this.fatal);
    if (payload.length > MAX_RECORD_PAYLOAD_BYTES) {
      return Promise.reject(new WalError('WAL_RECORD_TOO_LARGE', `payload of ${payload.length} bytes exceeds ${MAX_RECORD_PAYLOAD_BYTES}`));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ lsn: ++this.assignedLsn, payload, resolve, reject });
      this.kick();
    });
  }

  /** Delivers every record with lsn > afterLsn, in order. Stops at the first bad record or
   * missing range and reports it as `torn`; never repairs (only open() does, at the tail). */
  replay(afterLsn: number, onRecord: (lsn: number, payload: Buffer) => void): Promise<WalReplayReport> {
    // Records appended after this point may be half-written while we read; leave them out.
    return replaySegments(this.options.dir, afterLsn, this.writtenLsn, onRecord);
  }

  /** replay() for a directory no Wal has open (offline tools, with the sidecar stopped): reads
   * every segment, the last one included, and reports a torn or corrupt tail as `torn` without
   * cutting it. Stray `.tmp` files of an interrupted rewrite are ignored. */
  static async replayDirectory(dir: string, afterLsn: number, onRecord: (lsn: number, payload: Buffer) => void): Promise<WalReplayReport> {
    return replaySegments(dir, afterLsn, Number.MAX_SAFE_INTEGER, onRecord);
  }

  /** Writes and fsyncs the appends queued so far, then starts a new segment at the next LSN: from
   * then on every earlier segment is closed and never written again. A no-op when the current
   * segment holds no records (it already starts at the next LSN). */
  rollSegment(): Promise<void> {
    if (this.closing) return Promise.reject(new WalError('WAL_CLOSED', 'roll after close: the write-ahead log is closed'));
    if (this.fatal) return Promise.reject(this.fatal);
    return new Promise((resolve, reject) => {
      this.rollRequests.push({ resolve, reject });
      // Requests coalesce: one roll after everything queued by the latest of them serves all.
      this.appendsBeforeRoll = this.queue.length;
      this.kick();
    });
  }

  /** Rewrites the closed segments (never the one being appended to: rollSegment() first to
   * include it) whose records `transform` changes; see WalRecordTransform. Each segment is
   * replaced atomically; one with a corrupt record rejects with WAL_CORRUPT and stays as it is,
   * as do the segments after it (those before it are already rewritten). */
  rewriteSegments(transform: WalRecordTransform, options: WalRewriteOptions = {}): Promise<WalRewriteReport> {
    return this.exclusive(async () => {
      // Segments from the current one on may still be written (a roll may be opening the next).
      const closed = (await listSegments(this.options.dir)).filter((s) => s.firstLsn < this.current.firstLsn);
      return rewriteSegmentFiles(this.options.dir, closed, transform, { ...options, openFile: this.options.openFile });
    });
  }

  /** rewriteSegments() for a directory no Wal has open (offline tools, with the sidecar
   * stopped): every segment counts as closed, the last one included, so a torn tail there (a
   * crash) rejects with WAL_CORRUPT too; opening the log once cuts it. */
  static async rewriteDirectory(dir: string, transform: WalRecordTransform, options: WalOfflineRewriteOptions = {}): Promise<WalRewriteReport> {
    await removeStrayRewrites(dir);
    return rewriteSegmentFiles(dir, await listSegments(dir), transform, { ...options, openFile: options.openFile ?? openSegmentFile });
  }

  /** Deletes whole segments whose records all have lsn <= the given one, never the segment
   * being written. Returns how many. */
  removeSegmentsThrough(lsn: number): Promise<number> {
    return this.exclusive(async () => {
      const segments = await listSegments(this.options.dir);
      let removed = 0;
      for (let i = 0; i + 1 < segments.length; i++) {
        const { name } = segments[i]!;
        if (segments[i + 1]!.firstLsn - 1 > lsn || name === this.current.name) break;
        await unlink(join(this.options.dir, name));
        removed++;
      }
      return removed;
    });
  }

  segments(): Promise<Array<{ name: string; firstLsn: number; bytes: number }>> {
    return Wal.segmentsInDirectory(this.options.dir);
  }

  /** segments() for a directory no Wal has open: where an offline replay can start (a log
   * trimmed behind a snapshot holds no records before its first segment). */
  static async segmentsInDirectory(dir: string): Promise<Array<{ name: string; firstLsn: number; bytes: number }>> {
    const segments = await listSegments(dir);
    return Promise.all(segments.map(async (s) => ({ ...s, bytes: (await stat(join(dir, s.name))).size })));
  }

  /** Writes and fsyncs what is pending, then closes the file. Appends after this reject. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.pumping) await this.pumping;
      clearTimeout(this.syncTimer);
      try {
        if (!this.fatal) await this.sync();
      } finally {
        await this.file.close();
      }
      if (this.fatal) throw this.fatal;
    })();
    return this.closing;
  }

  /** One writer at a time: appends that arrive while a write or fsync is in flight wait in the
   * queue and go out together in the next write — group commit without any timer. */
  private kick(): void {
    if (this.pumping) return;
    this.pumping = (async () => {
      // Yield once so appends made in the same tick as this one join its batch.
      await null;
      try {
        // A due fsync starts first, so a steady stream of appends cannot put it off forever; a
        // requested roll goes as soon as the appends queued before it are written.
        while (this.syncDue || this.queue.length > 0 || this.rollRequests.length > 0) {
          if (this.syncDue) this.syncInBackground();
          else if (this.rollRequests.length > 0 && this.appendsBeforeRoll === 0) await this.rollRequested();
          else await this.writeBatch();
        }
      } finally {
        // Cleared with no await after the loop's check, so no append can slip in unseen.
        this.pumping = undefined;
      }
    })();
  }

  private async writeBatch(): Promise<void> {
    const roll = this.size >= this.options.segmentBytes;
    // A batch fills at most what is left of the segment (at least one record), so a burst
    // cannot grow a segment far past segmentBytes.
    let room = this.options.segmentBytes - (roll ? 0 : this.size);
    let count = 0;
    const buffers: Buffer[] = [];
    const max = this.rollRequests.length > 0 ? this.appendsBeforeRoll : this.queue.length;
    for (const entry of this.queue) {
      if (count === max) break;
      const bytes = WAL_RECORD_HEADER_BYTES + entry.payload.length;
      if (count > 0 && bytes > room) break;
      buffers.push(encodeHeader(entry.lsn, entry.payload), entry.payload);
      room -= bytes;
      count++;
    }
    const batch = this.queue.splice(0, count);
    this.appendsBeforeRoll = Math.max(0, this.appendsBeforeRoll - count);
    try {
      if (roll) await this.roll(batch[0]!.lsn);
      const written = this.options.fsync !== 'always' && this.file.writevSync ? writeAllSync(this.file, buffers, this.size) : await writeAll(this.file, buffers, this.size);
      if (this.options.fsync === 'always') await this.file.datasync();
      this.size += written;
      this.writtenLsn = batch[count - 1]!.lsn;
    } catch (error) {
      await this.discardBatch(batch, error);
      return;
    }
    if (this.options.fsync !== 'always') {
      this.dirty = true;
      if (this.options.fsync === 'batch') {
        this.syncTimer ??= setTimeout(() => {
          [this.syncTimer, this.syncDue] = [undefined, true];
          this.kick();
        }, this.options.batchInterval).unref();
      }
    }
    for (const entry of batch) entry.resolve(entry.lsn);
  }

  /** A failed write or fsync: no partial record may stay, and the queued appends take over the
   * failed batch's LSNs so the log stays dense. */
  private async discardBatch(batch: Pending[], error: unknown): Promise<void> {
    try {
      await this.file.truncate(this.size);
    } catch (truncateError) {
      this.fail(new WalError('WAL_FAILED', 'could not cut a failed write from the log', { cause: truncateError }));
    }
    let next = batch[0]!.lsn;
    for (const entry of this.queue) entry.lsn = next++;
    this.assignedLsn = next - 1;
    for (const entry of batch) entry.reject(error);
  }

  private syncInBackground(): void {
    this.syncDue = false;
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    if (!this.dirty) return;
    this.dirty = false;
    this.syncing = this.file.datasync().then(
      () => {},
      (error: unknown) => this.fail(new WalError('WAL_FAILED', 'fsync failed: acknowledged records may be lost', { cause: error })),
    );
    void this.syncing.finally(() => {
      this.syncing = undefined;
      // close() runs its own last fsync.
      if (this.syncAgain && !this.closing) {
        this.syncAgain = false;
        this.syncDue = true;
        this.kick();
      }
    });
  }

  /** An fsync whose completion the caller needs (close, roll): after any background one. */
  private async sync(): Promise<void> {
    this.syncDue = false;
    while (this.syncing) await this.syncing;
    if (!this.dirty) return;
    this.dirty = false;
    try {
      await this.file.datasync();
    } catch (error) {
      // Linux marks the failed pages clean, so a retry would "succeed" over lost data.
      this.fail(new WalError('WAL_FAILED', 'fsync failed: acknowledged records may be lost', { cause: error }));
    }
  }

  private fail(error: WalError): void {
    this.fatal ??= error;
    for (const entry of this.queue.splice(0)) entry.reject(this.fatal);
    this.appendsBeforeRoll = 0;
  }

  private async rollRequested(): Promise<void> {
    const requests = this.rollRequests.splice(0);
    try {
      if (this.fatal) throw this.fatal;
      // A failed batch gives its LSNs to the appends behind it, so the next LSN is always the
      // one after the last written.
      if (this.size > 0) await this.roll(this.writtenLsn + 1, { syncPrevious: true });
    } catch (error) {
      for (const request of requests) request.reject(error);
      return;
    }
    for (const request of requests) request.resolve();
  }

  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.maintenance.then(task);
    this.maintenance = run.catch(() => {});
    return run;
  }

  /** Opens the next segment before letting go of the current one, so a failure leaves the log
   * writing where it was. syncPrevious: fsync the current segment whatever the policy, since a
   * caller of rollSegment() is about to treat it as closed and settled. */
  private async roll(firstLsn: number, { syncPrevious = false } = {}): Promise<void> {
    if (this.options.fsync === 'batch' || syncPrevious) await this.sync();
    if (this.fatal) throw this.fatal;
    const next = { name: segmentName(firstLsn), firstLsn };
    const file = await this.options.openFile(join(this.options.dir, next.name));
    try {
      await file.truncate(0); // a leftover from a failed earlier roll holds nothing acknowledged
      await syncDirectory(this.options.dir, this.options.fsync);
    } catch (error) {
      await file.close().catch(() => {});
      throw error;
    }
    clearTimeout(this.syncTimer);
    this.syncTimer = undefined;
    const previous = this.file;
    [this.current, this.file, this.size, this.dirty] = [next, file, 0, false];
    await previous.close();
  }
}

function encodeHeader(lsn: number, payload: Buffer): Buffer {
  const header = Buffer.allocUnsafe(WAL_RECORD_HEADER_BYTES);
  header.writeUInt32LE(payload.length, 0);
  // The u64 LSN as two u32 halves: no BigInt on the append path.
  header.writeUInt32LE(lsn % 2 ** 32, 8);
  header.writeUInt32LE(Math.floor(lsn / 2 ** 32), 12);
  header.writeUInt32LE(crc32(payload, crc32(header.subarray(8, 16))), 4);
  return header;
}

/** Walks records from offset 0, each of which must carry the next LSN, up to `limit`. `end` is
 * the offset after the last good record; `bad` says why the walk stopped early, if it did. */
function scanRecords(data: Buffer, firstLsn: number, limit: number, onRecord: (lsn: number, payload: Buffer, offset: number) => void) {
  let end = 0;
  let expected = firstLsn;
  let bad: string | undefined;
  while (end < data.length && expected <= limit) {
    if (data.length - end < WAL_RECORD_HEADER_BYTES) { bad = 'torn header'; break; }
    const length = data.readUInt32LE(end);
    const lsn = data.readUInt32LE(end + 8) + data.readUInt32LE(end + 12) * 2 ** 32;
    if (length > MAX_RECORD_PAYLOAD_BYTES) { bad = `length ${length} exceeds the record cap`; break; }
    const payloadStart = end + WAL_RECORD_HEADER_BYTES;
    if (payloadStart + length > data.length) { bad = 'torn payload'; break; }
    const payload = data.subarray(payloadStart, payloadStart + length);
    if (crc32(payload, crc32(data.subarray(end + 8, end + 16))) !== data.readUInt32LE(end + 4)) { bad = 'crc mismatch'; break; }
    if (lsn !== expected) { bad = `lsn ${lsn}, expected ${expected}`; break; }
    onRecord(expected, payload, end);
    end = payloadStart + length;
    expected++;
  }
  return { records: expected - firstLsn, end, bad };
}

/** pwritev until every byte is down: a write may be short, e.g. when the disk fills mid-way. */
async function writeAll(file: WalFile, buffers: Buffer[], position: number): Promise<number> {
  let total = 0;
  const rest = buffers.slice();
  while (rest.length > 0) total += advance(rest, (await file.writev(rest, position + total)).bytesWritten);
  return total;
}

/** writeAll on the loop's thread. */
function writeAllSync(file: WalFile, buffers: Buffer[], position: number): number {
  let total = 0;
  const rest = buffers.slice();
  while (rest.length > 0) total += advance(rest, file.writevSync!(rest, position + total));
  return total;
}

/** Drops the `written` bytes from the front of `rest`; returns them. */
function advance(rest: Buffer[], written: number): number {
  if (written === 0) throw new Error('write made no progress');
  let skip = written;
  while (rest.length > 0 && skip >= rest[0]!.length) skip -= rest.shift()!.length;
  if (skip > 0) rest[0] = rest[0]!.subarray(skip);
  return written;
}

async function replaySegments(dir: string, afterLsn: number, limit: number, onRecord: (lsn: number, payload: Buffer) => void): Promise<WalReplayReport> {
  const report: WalReplayReport = { records: 0, firstLsn: 0, lastLsn: 0 };
  const segments = await listSegments(dir);
  let start = segments.length - 1;
  while (start >= 0 && segments[start]!.firstLsn > afterLsn + 1) start--;
  if (start < 0) {
    if (segments[0] && afterLsn < limit) {
      throw new WalError('WAL_RECORDS_REMOVED', `records ${afterLsn + 1}..${segments[0].firstLsn - 1} were removed from the log`);
    }
    start = 0;
  }
  let expected = segments[start]?.firstLsn ?? 1;
  for (const segment of segments.slice(start)) {
    if (segment.firstLsn !== expected) {
      const previous = segments[segments.indexOf(segment) - 1]!;
      const reason = `segment ${segment.name} starts at lsn ${segment.firstLsn}, expected ${expected}`;
      report.torn = { segment: previous.name, offset: (await stat(join(dir, previous.name))).size, reason };
      return report;
    }
    const data = await readFile(join(dir, segment.name));
    const scan = scanRecords(data, expected, limit, (lsn, payload) => {
      if (lsn <= afterLsn) return;
      // A copy, so a kept payload does not pin the whole segment's buffer.
      onRecord(lsn, Buffer.from(payload));
      report.records++;
      report.firstLsn ||= lsn;
      report.lastLsn = lsn;
    });
    if (scan.bad !== undefined) {
      report.torn = { segment: segment.name, offset: scan.end, reason: scan.bad };
      return report;
    }
    expected += scan.records;
    if (expected > limit) break;
  }
  return report;
}

/** Rewrites, one at a time, those of `segments` in which `transform` changes a record. Every
 * segment is read and checked in full before anything of it is written. */
async function rewriteSegmentFiles(
  dir: string,
  segments: Segment[],
  transform: WalRecordTransform,
  options: WalRewriteOptions & { openFile: (path: string) => Promise<WalFile> },
): Promise<WalRewriteReport> {
  const report: WalRewriteReport = { segments: 0, rewritten: 0 };
  for (const [index, segment] of segments.entries()) {
    const data = await readFile(join(dir, segment.name));
    // The new segment as runs of the old one's bytes with re-encoded records between them.
    const parts: Buffer[] = [];
    let copiedTo = 0;
    let changed = 0;
    const scan = scanRecords(data, segment.firstLsn, Number.MAX_SAFE_INTEGER, (lsn, payload, offset) => {
      const next = transform(lsn, Buffer.from(payload));
      if (next === undefined || next.equals(payload)) return;
      if (next.length > MAX_RECORD_PAYLOAD_BYTES) {
        throw new WalError('WAL_RECORD_TOO_LARGE', `new payload for lsn ${lsn} of ${next.length} bytes exceeds ${MAX_RECORD_PAYLOAD_BYTES}`);
      }
      parts.push(data.subarray(copiedTo, offset), encodeHeader(lsn, next), next);
      copiedTo = offset + WAL_RECORD_HEADER_BYTES + payload.length;
      changed++;
    });
    if (scan.bad !== undefined) {
      const done = report.segments > 0 ? `; ${report.segments} earlier segment(s) were rewritten` : '';
      throw new WalError('WAL_CORRUPT', `segment ${segment.name}: ${scan.bad} at offset ${scan.end}; left as it is${done}`);
    }
    if (changed > 0) {
      parts.push(data.subarray(copiedTo));
      await replaceFile(dir, segment.name, parts.filter((part) => part.length > 0), options.openFile);
      report.segments++;
      report.rewritten += changed;
    }
    options.onProgress?.(index + 1, segments.length);
  }
  return report;
}

/** Writes `<name>.tmp`, fsyncs it and renames it over `name`: readers and a crash see the old
 * file or the new one, whole. */
async function replaceFile(dir: string, name: string, buffers: Buffer[], openFile: (path: string) => Promise<WalFile>): Promise<void> {
  const temp = join(dir, `${name}.tmp`);
  const file = await openFile(temp);
  try {
    try {
      await file.truncate(0); // a leftover of an interrupted rewrite may be longer
      await writeAll(file, buffers, 0);
      await file.datasync();
    } finally {
      await file.close();
    }
  } catch (error) {
    await unlink(temp).catch(() => {});
    throw error;
  }
  await rename(temp, join(dir, name));
  // An erasure is only done once the rename is durable, whatever the log's fsync policy.
  await syncDirectory(dir, 'always');
}

/** A `.tmp` is a rewrite that never reached its rename; the segment it was for is intact. */
async function removeStrayRewrites(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    if (REWRITE_TEMP_NAME.test(name)) await unlink(join(dir, name));
  }
}

async function listSegments(dir: string): Promise<Segment[]> {
  const segments: Segment[] = [];
  for (const name of await readdir(dir)) {
    const match = SEGMENT_NAME.exec(name);
    if (match) segments.push({ name, firstLsn: Number.parseInt(match[1]!, 16) });
  }
  return segments.sort((a, b) => a.firstLsn - b.firstLsn);
}

/** A new segment is only durable once its directory entry is. */
async function syncDirectory(dir: string, policy: FsyncPolicy): Promise<void> {
  if (policy === 'none') return;
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
