// The snapshot (checkpoint) file: every live context (full), or what changed since the parent
// snapshot with tombstones for deleted keys (incremental), written in one sequential pass and read
// back in one. It knows nothing about when to snapshot or what goes in: the manager decides.
//
// Layout (integers little-endian, as in the WAL):
//
//   header   "CTXSNAP\n" | u32 format version | u32 body length | u32 CRC32 of those 16 bytes
//            | body: salt (16) | key check (16) | header JSON | u32 running CRC
//   block…   u32 stored length | u32 records | u32 plain length | u32 running CRC
//            | u32 CRC32 of those 16 bytes | stored bytes
//   trailer  "CTXSEND\n" | u32 blocks | u64 records | u64 plain bytes | MAC (16) | u32 running CRC
//
// A running CRC is the CRC32 of every byte of the file before it, CRC fields left out.
//
// Why the format is what it is:
// - The first 20 bytes carry their own CRC and keep this layout in every format version, so a
//   reader can tell a newer file (SNAPSHOT_VERSION) from a damaged one (SNAPSHOT_CORRUPT), and a
//   flipped bit in a length is reported as corruption, not as truncation or a huge allocation.
//   Frame heads carry their own CRC for the same reason; lengths are capped besides.
// - The header is JSON (it is small and read by operators' tools) and never encrypted — listing and
//   chaining snapshots (catalog.ts) must work without the key — but it is checksummed, and with
//   encryption every block authenticates a hash of it.
// - A block is ~1 MiB of records, each `u32 length | encodeKeyedRecord bytes`, then deflateRaw
//   (optional: snapshots are disk-bound), then AES-256-GCM (optional): a fresh random 12-byte IV
//   per block, stored as IV | ciphertext | tag. 1 MiB is large enough for sequential I/O and small
//   enough that sealing or opening one keeps the event loop free within a millisecond or two.
// - The block CRC is a running CRC over the file from its first byte (CRC fields excepted), so a
//   block that is reordered, dropped or copied in from another file fails its check even when its
//   own bytes are intact; it covers the stored bytes, so damage is found without the key.
// - Encryption: the block key is derived per file (HKDF over the caller's key and the file's random
//   salt), so IVs never repeat under one key however many snapshots are written, and a block copied
//   from another file (an older one with the same id, say from before a GDPR erase) cannot decrypt.
//   The additional data is the block index and the SHA-256 of the header body (snapshot id, salt
//   and all), so blocks cannot move within a file or between files either. The key check in the
//   header (also HKDF-derived) tells a wrong key apart from a damaged file. The trailer's MAC keeps
//   whole blocks from being cut off the end, which the per-block tags alone would not notice.
// - The trailer is what makes a file complete: without it the file is SNAPSHOT_TRUNCATED, and its
//   counts must match what was read; nothing may follow it.
// - Files are written to `<path>.tmp`, fsynced, renamed and the directory fsynced: a reader and a
//   crash see the previous file or the new one, whole.
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { promisify } from 'node:util';
import { crc32, deflateRaw, inflateRaw } from 'node:zlib';
import { z } from 'zod';
import { parseTimestamp } from '../hlc.js';
import { ContentTypeCache, ENVELOPE_MAGIC_BYTES, decodeKeyedRecordAt, keyedLayout, type ContextRecord, type RecordOrKeyed } from '../record.js';

export interface SnapshotHeader {
  formatVersion: 1;
  /** Chosen by the caller. */
  id: string;
  kind: 'full' | 'incremental';
  /** Id of the snapshot an incremental builds on. */
  parent?: string;
  /** Epoch ms. */
  createdAt: number;
  /** WAL LSN the snapshot covers through. */
  lsn: number;
  /** Version-clock frontier: node tag -> newest HLC timestamp "<wall>.<logical>" seen from it. */
  frontier: Record<string, string>;
  /** interval | threshold | manual | restore | … */
  reason: string;
  compression: 'none' | 'deflate';
  encrypted: boolean;
  /** Set when records were removed after the fact (GDPR erase); the file was rewritten. */
  redacted?: boolean;
}

/** bytes: size of the file. */
export interface SnapshotSummary { header: SnapshotHeader; records: number; bytes: number; path: string }

/** What writeSnapshot needs of a file; node's FileHandle is one. Tests wrap it. */
export interface SnapshotFile {
  write(buf: Buffer): Promise<unknown>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface WriteSnapshotOptions {
  compression: 'none' | 'deflate';
  /** 32 bytes: blocks are encrypted at rest with AES-256-GCM. */
  key?: Buffer;
  /** fsync the file and its directory before resolving (true in production). */
  sync: boolean;
  /** Target size of a block's records before compression. Default 1 MiB. */
  blockBytes?: number;
  /**
   * With `sync`, flush the file to the disk every this many bytes while writing (0: only at the
   * end). Default DEFAULT_SYNC_EVERY_BYTES. Without it, a snapshot's whole size sits dirty in the
   * page cache until its final fsync, and everything else that syncs on that filesystem meanwhile
   * — the WAL's fsync — waits behind that writeback (ext4 commits its journal in order). As Redis's
   * rdb-save-incremental-fsync.
   */
  syncEveryBytes?: number;
  /** Called after each block is written, with totals so far. */
  onProgress?: (recordsWritten: number, bytesWritten: number) => void;
  /** Opens the `.tmp` file for writing (created or truncated). Default: node's fs. Test hook. */
  openFile?: (path: string) => Promise<FileHandle | SnapshotFile>;
}

export type SnapshotErrorCode = 'SNAPSHOT_CORRUPT' | 'SNAPSHOT_TRUNCATED' | 'SNAPSHOT_KEY_REQUIRED' | 'SNAPSHOT_KEY_WRONG' | 'SNAPSHOT_VERSION';
export class SnapshotError extends Error {
  override name = 'SnapshotError';
  constructor(
    readonly code: SnapshotErrorCode,
    readonly path: string,
    detail: string,
    /** File offset of the structure found bad (a frame, the trailer, the end of the data). */
    readonly offset?: number,
    options?: { cause: unknown },
  ) {
    super(`snapshot ${path}: ${detail}${offset === undefined ? '' : ` (offset ${offset})`}`, options);
  }
}

export class EncryptionKeyError extends Error {
  override name = 'EncryptionKeyError';
  readonly code = 'ENCRYPTION_KEY_INVALID';
}

export const SNAPSHOT_FORMAT_VERSION = 1;
export const DEFAULT_BLOCK_BYTES = 1024 * 1024;
export const DEFAULT_SYNC_EVERY_BYTES = 8 * 1024 * 1024;
/** Largest block (plain or stored) a reader accepts; a writer puts a bigger record in a block of its own up to this. */
export const MAX_BLOCK_BYTES = 256 * 1024 * 1024;
export const PRELUDE_BYTES = 20;
export const FRAME_HEAD_BYTES = 20;
export const TRAILER_BYTES = 48;
const MAGIC = Buffer.from('CTXSNAP\n', 'latin1');
const TRAILER_MAGIC = Buffer.from('CTXSEND\n', 'latin1');
const MAX_HEADER_BODY_BYTES = 1024 * 1024;
const SALT_BYTES = 16;
const KEY_CHECK_BYTES = 16;
const MAC_BYTES = 16;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const GCM_OVERHEAD_BYTES = IV_BYTES + TAG_BYTES;
const KEY_BYTES = 32;
/** deflate level 1: most of the size win at a fraction of the CPU of the default 6. */
const DEFLATE_LEVEL = 1;
/** Longest the writer or the reader runs on the event loop before letting it turn. */
const SLICE_MS = 1;
/** How many records are encoded or decoded between looks at the clock. */
const SLICE_CHECK_RECORDS = 32;
/** AES-GCM runs on the event loop (~1.5 ms per MiB here): a block is en/decrypted in slices this big. */
const CRYPTO_SLICE_BYTES = 256 * 1024;

const deflateRawAsync = promisify(deflateRaw);
const inflateRawAsync = promisify(inflateRaw);

type HeaderFields = Omit<SnapshotHeader, 'formatVersion'>;

const HeaderSchema = z
  .object({
    id: z.string().min(1),
    kind: z.enum(['full', 'incremental']),
    parent: z.string().min(1).optional(),
    createdAt: z.number().int().nonnegative(),
    lsn: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    frontier: z.record(z.string(), z.string().refine((t) => parseTimestamp(t) !== undefined, 'expected "<wall>.<logical>"')),
    reason: z.string(),
    compression: z.enum(['none', 'deflate']),
    encrypted: z.boolean(),
    redacted: z.boolean().optional(),
  })
  .refine((h) => (h.kind === 'incremental') === (h.parent !== undefined), { message: 'an incremental snapshot names its parent, a full one none', path: ['parent'] });

/** Keys derived for one file from the caller's key and the file's salt. */
interface FileKeys { block: Buffer; mac: Buffer; check: Buffer }

function deriveKeys(key: Buffer, salt: Buffer): FileKeys {
  const derive = (info: string, length: number) => Buffer.from(hkdfSync('sha256', key, salt, info, length));
  return {
    block: derive('ctxmesh snapshot v1 block key', KEY_BYTES),
    mac: derive('ctxmesh snapshot v1 trailer mac', KEY_BYTES),
    check: derive('ctxmesh snapshot v1 key check', KEY_CHECK_BYTES),
  };
}

/** Additional data of block `index`: it and the header it belongs to. */
function blockAad(index: number, headerHash: Buffer): Buffer {
  const aad = Buffer.allocUnsafe(4 + headerHash.length);
  aad.writeUInt32LE(index, 0);
  headerHash.copy(aad, 4);
  return aad;
}

function trailerMac(keys: FileKeys | undefined, headerHash: Buffer, fields: Buffer): Buffer {
  if (!keys) return Buffer.alloc(MAC_BYTES);
  return createHmac('sha256', keys.mac).update(headerHash).update(fields).digest().subarray(0, MAC_BYTES);
}

/** Gives the event loop a turn once SLICE_MS of work has gone by since the last one. */
class EventLoopSlicer {
  private since = performance.now();
  private count = 0;

  /** Cheap enough to call per record: it reads the clock every SLICE_CHECK_RECORDS calls. */
  due(): boolean {
    return ++this.count % SLICE_CHECK_RECORDS === 0 && this.overdue();
  }

  overdue(): boolean {
    return performance.now() - this.since >= SLICE_MS;
  }

  async yield(): Promise<void> {
    await nextTurn();
    this.since = performance.now();
  }
}


// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Writes `path` atomically: to `path + '.tmp'`, fsync, rename, fsync the directory. On any error
 * before the rename the tmp file is removed and an existing file at `path` is untouched. Records
 * — objects, or already in their keyed form as the embedded L2 keeps them — are copied into a
 * block as their batch arrives and never held after it is written, so the source may change once
 * a batch has been taken.
 */
export async function writeSnapshot(
  path: string,
  header: Omit<SnapshotHeader, 'formatVersion' | 'compression' | 'encrypted'>,
  records: AsyncIterable<readonly RecordOrKeyed[]> | Iterable<readonly RecordOrKeyed[]>,
  options: WriteSnapshotOptions,
): Promise<SnapshotSummary> {
  if (options.key !== undefined && options.key.length !== KEY_BYTES) throw new RangeError(`snapshot encryption key must be ${KEY_BYTES} bytes, got ${options.key.length}`);
  const blockBytes = options.blockBytes ?? DEFAULT_BLOCK_BYTES;
  if (!(blockBytes >= 64 && blockBytes <= MAX_BLOCK_BYTES)) throw new RangeError(`blockBytes must be between 64 and ${MAX_BLOCK_BYTES}`);
  // Only the known fields, in a fixed order: a caller spreading a header it read gets a canonical one.
  const parsed = HeaderSchema.safeParse({
    id: header.id,
    kind: header.kind,
    parent: header.parent,
    createdAt: header.createdAt,
    lsn: header.lsn,
    frontier: header.frontier,
    reason: header.reason,
    compression: options.compression,
    encrypted: options.key !== undefined,
    redacted: header.redacted || undefined,
  });
  if (!parsed.success) throw new TypeError(`invalid snapshot header: ${z.prettifyError(parsed.error)}`);
  const full = withoutUndefined({ formatVersion: SNAPSHOT_FORMAT_VERSION, ...parsed.data }) as SnapshotHeader;

  const salt = randomBytes(SALT_BYTES);
  const keys = options.key ? deriveKeys(options.key, salt) : undefined;
  const head = encodeHeader(full, salt, keys);
  const temp = `${path}.tmp`;
  const file = await (options.openFile ?? openForWrite)(temp);
  const syncEvery = options.sync ? (options.syncEveryBytes ?? DEFAULT_SYNC_EVERY_BYTES) : 0;
  const writer = new BlockWriter(file, full.compression, keys, head.hash, head.running, blockBytes, options.onProgress, syncEvery);
  let closed = false;
  try {
    await writer.write(head.bytes);
    for await (const batch of records) await writer.add(batch);
    await writer.finish();
    if (options.sync) await file.sync();
    closed = true;
    await file.close();
    await rename(temp, path);
    if (options.sync) await syncDirectory(dirname(path));
    return { header: full, records: writer.records, bytes: writer.bytes, path };
  } catch (error) {
    await writer.settle();
    if (!closed) await file.close().catch(() => {});
    await unlink(temp).catch(() => {});
    throw error;
  }
}

function openForWrite(path: string): Promise<FileHandle> {
  // Snapshots hold context data: readable by the sidecar's user only.
  return open(path, 'w', 0o600);
}

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

/** The header frame; `running` is the CRC the first block continues from, `hash` what blocks authenticate. */
function encodeHeader(header: SnapshotHeader, salt: Buffer, keys: FileKeys | undefined): { bytes: Buffer; hash: Buffer; running: number } {
  const { formatVersion: _version, ...fields } = header;
  const json = JSON.stringify(fields satisfies HeaderFields);
  const bodyLength = SALT_BYTES + KEY_CHECK_BYTES + Buffer.byteLength(json);
  if (bodyLength > MAX_HEADER_BODY_BYTES) throw new RangeError(`snapshot header of ${bodyLength} bytes exceeds ${MAX_HEADER_BODY_BYTES}`);
  const bytes = Buffer.alloc(PRELUDE_BYTES + bodyLength + 4);
  MAGIC.copy(bytes, 0);
  bytes.writeUInt32LE(SNAPSHOT_FORMAT_VERSION, 8);
  bytes.writeUInt32LE(bodyLength, 12);
  const preludeCrc = crc32(bytes.subarray(0, 16));
  bytes.writeUInt32LE(preludeCrc, 16);
  const body = bytes.subarray(PRELUDE_BYTES, PRELUDE_BYTES + bodyLength);
  salt.copy(body, 0);
  keys?.check.copy(body, SALT_BYTES); // zeros when not encrypted
  body.write(json, SALT_BYTES + KEY_CHECK_BYTES, 'utf8');
  const running = crc32(body, preludeCrc);
  bytes.writeUInt32LE(running, PRELUDE_BYTES + bodyLength);
  return { bytes, hash: createHash('sha256').update(body).digest(), running };
}

/** Room for a record that needs a block of its own: its exact size when the bound is over the limit. */
function oversizedLength(record: ContextRecord, bound: number): number {
  if (bound <= MAX_BLOCK_BYTES) return bound;
  const exact = 4 + keyedLayout(record).length;
  if (exact > MAX_BLOCK_BYTES) throw new RangeError(`context ${record.key} of ${exact} bytes exceeds the snapshot block limit of ${MAX_BLOCK_BYTES}`);
  return exact;
}

const [BRACE_CLOSE, DIGIT_0, NEWLINE] = [0x7d, 0x30, 0x0a];
/** The metadata pieces encode() writes around the content type and the numbers. */
const FIELD_CRITICAL = Buffer.from(',"r":1', 'latin1');
const FIELD_UPDATED_AT = Buffer.from(',"t":', 'latin1');
const FIELD_TOMBSTONE = Buffer.from(',"d":1', 'latin1');
/** Envelope bytes besides key, version, content type field and value: magic, newlines, the other fields, two numbers. */
const ENVELOPE_FIXED_BYTES = ENVELOPE_MAGIC_BYTES.length + 1 + FIELD_CRITICAL.length + FIELD_UPDATED_AT.length + FIELD_TOMBSTONE.length + 2 + 2 * 24;
/** Distinct content types whose encoded field is kept; past it the cache starts over. */
const MAX_CACHED_CONTENT_TYPES = 256;

/** Writes `n` as JSON.stringify would; digit by digit for the usual safe integers (times in ms). */
function writeJsonNumber(buffer: Buffer, at: number, n: number): number {
  if (!Number.isSafeInteger(n) || n < 0) return at + buffer.write(JSON.stringify(n), at, 'latin1');
  if (n === 0) {
    buffer[at] = DIGIT_0;
    return at + 1;
  }
  let digits = 0;
  for (let rest = n; rest > 0; rest = Math.floor(rest / 10)) digits++;
  for (let i = at + digits - 1, rest = n; i >= at; i--, rest = Math.floor(rest / 10)) buffer[i] = DIGIT_0 + (rest % 10);
  return at + digits;
}

/**
 * Encodes records straight into a block buffer, seals each full block and writes it. Two buffers
 * take turns: one is filled while the other is on its way to disk, so encoding and I/O overlap.
 */
class BlockWriter {
  records = 0;
  /** File bytes written so far. */
  bytes = 0;
  private plainBytes = 0;
  private blocks = 0;
  private readonly regular: Buffer[];
  private turn = 0;
  private buffer: Buffer;
  /** Where the next record goes in `buffer`; the first FRAME_HEAD_BYTES are the frame head's. */
  private offset = FRAME_HEAD_BYTES;
  private count = 0;
  private running: number;
  /** The previous block's write; it has a no-op catch attached, the rejection is seen when awaited. */
  private inFlight: Promise<void> | undefined;
  private readonly slicer = new EventLoopSlicer();
  private readonly typeFields = new Map<string, Buffer>();
  /** File bytes when the last periodic sync started, and that sync (its rejection is seen when awaited). */
  private syncStartedAt = 0;
  private syncing: Promise<void> | undefined;

  constructor(
    private readonly file: FileHandle | SnapshotFile,
    private readonly compression: 'none' | 'deflate',
    private readonly keys: FileKeys | undefined,
    private readonly headerHash: Buffer,
    running: number,
    private readonly blockBytes: number,
    private readonly onProgress: WriteSnapshotOptions['onProgress'],
    /** 0: no syncs while writing. */
    private readonly syncEveryBytes: number,
  ) {
    this.running = running;
    this.regular = [Buffer.allocUnsafe(FRAME_HEAD_BYTES + blockBytes), Buffer.allocUnsafe(FRAME_HEAD_BYTES + blockBytes)];
    this.buffer = this.regular[0]!;
  }

  async write(bytes: Buffer): Promise<void> {
    await writeFully(this.file, bytes);
    this.bytes += bytes.length;
  }

  async add(batch: readonly RecordOrKeyed[]): Promise<void> {
    for (const record of batch) {
      if (Buffer.isBuffer(record)) {
        await this.copy(record);
        continue;
      }
      const typeField = this.contentTypeField(record.contentType);
      // An upper bound (3 UTF-8 bytes per UTF-16 unit), so Buffer.write never cuts a string short.
      const bound = 4 + 2 + record.key.length * 3 + ENVELOPE_FIXED_BYTES + record.version.length * 3 + typeField.length + record.value.length;
      if (this.offset + bound > this.buffer.length) {
        if (this.count > 0) await this.flush();
        // A record bigger than a block gets a block of its own.
        if (this.offset + bound > this.buffer.length) this.buffer = Buffer.allocUnsafe(FRAME_HEAD_BYTES + oversizedLength(record, bound));
      }
      this.encode(record, typeField);
      if (this.slicer.due()) await this.slicer.yield();
    }
  }

  /** Appends `u32 length | keyed record` from a record already in its keyed form: one copy. */
  private async copy(keyed: Buffer): Promise<void> {
    const length = 4 + keyed.length;
    if (this.offset + length > this.buffer.length) {
      if (this.count > 0) await this.flush();
      if (keyed.length > MAX_BLOCK_BYTES - 4) throw new RangeError(`a context of ${keyed.length} bytes exceeds the snapshot block limit of ${MAX_BLOCK_BYTES}`);
      if (this.offset + length > this.buffer.length) this.buffer = Buffer.allocUnsafe(FRAME_HEAD_BYTES + length);
    }
    this.buffer.writeUInt32LE(keyed.length, this.offset);
    keyed.copy(this.buffer, this.offset + 4);
    this.offset += length;
    this.count++;
    if (this.slicer.due()) await this.slicer.yield();
  }

  async finish(): Promise<void> {
    if (this.count > 0) await this.flush();
    await this.inFlight;
    const trailer = Buffer.alloc(TRAILER_BYTES);
    TRAILER_MAGIC.copy(trailer, 0);
    trailer.writeUInt32LE(this.blocks, 8);
    writeU64(trailer, this.records, 12);
    writeU64(trailer, this.plainBytes, 20);
    trailerMac(this.keys, this.headerHash, trailer.subarray(0, 28)).copy(trailer, 28);
    trailer.writeUInt32LE(crc32(trailer.subarray(0, 44), this.running), 44);
    await this.write(trailer);
    await this.syncing; // a failed periodic sync fails the snapshot
  }

  /**
   * `{"c":<content type as JSON>,"x":` as bytes, per content type: a service writes a handful of
   * them, so the JSON escaping and the string building run once per type, not per record.
   */
  private contentTypeField(contentType: string): Buffer {
    let field = this.typeFields.get(contentType);
    if (field === undefined) {
      field = Buffer.from(`{"c":${JSON.stringify(contentType)},"x":`, 'utf8');
      if (this.typeFields.size >= MAX_CACHED_CONTENT_TYPES) this.typeFields.clear();
      this.typeFields.set(contentType, field);
    }
    return field;
  }

  /**
   * Appends `u32 length | encodeKeyedRecord(record)` straight into the block, without building the
   * keyed record, the envelope head string or the metadata JSON per record (each was young-gen
   * garbage for every record of a snapshot). The bytes are exactly record.ts's (a test holds them
   * equal to encodeKeyedRecord's: record.ts stays the definition): the metadata as JSON.stringify
   * lays out record.ts's object, {"c":…,"x":…,"t":…[,"r":1][,"d":1]}.
   */
  private encode(record: ContextRecord, typeField: Buffer): void {
    const buffer = this.buffer;
    const start = this.offset;
    const keyBytes = buffer.write(record.key, start + 6, 'utf8');
    if (keyBytes > 0xffff) throw new RangeError(`context key of ${keyBytes} bytes exceeds 65535`);
    buffer.writeUInt16BE(keyBytes, start + 4);
    let end = start + 6 + keyBytes;
    end += ENVELOPE_MAGIC_BYTES.copy(buffer, end);
    end += buffer.write(record.version, end, 'utf8');
    buffer[end++] = NEWLINE;
    end += typeField.copy(buffer, end);
    end = writeJsonNumber(buffer, end, record.expiresAt);
    end += FIELD_UPDATED_AT.copy(buffer, end);
    end = writeJsonNumber(buffer, end, record.updatedAt);
    if (record.retention === 'critical') end += FIELD_CRITICAL.copy(buffer, end);
    if (record.tombstone) end += FIELD_TOMBSTONE.copy(buffer, end);
    buffer[end++] = BRACE_CLOSE;
    buffer[end++] = NEWLINE;
    end += record.value.copy(buffer, end);
    buffer.writeUInt32LE(end - start - 4, start);
    this.offset = end;
    this.count++;
  }

  /** Seals the current block (compress, encrypt, frame) and starts its write once the previous one is done. */
  private async flush(): Promise<void> {
    const buffer = this.buffer;
    const plain = buffer.subarray(FRAME_HEAD_BYTES, this.offset);
    const [records, index] = [this.count, this.blocks];
    // deflate runs on the thread pool, off the event loop; one chunk for the whole block, or zlib
    // would go back and forth with the loop every 16 KiB.
    const compressed = this.compression === 'deflate' ? await deflateRawAsync(plain, { level: DEFLATE_LEVEL, chunkSize: Math.max(plain.length, 64) }) : plain;
    let frame: Buffer;
    if (this.keys) {
      frame = Buffer.allocUnsafe(FRAME_HEAD_BYTES + GCM_OVERHEAD_BYTES + compressed.length);
      const iv = randomBytes(IV_BYTES);
      iv.copy(frame, FRAME_HEAD_BYTES);
      const cipher = createCipheriv('aes-256-gcm', this.keys.block, iv, { authTagLength: TAG_BYTES });
      cipher.setAAD(blockAad(index, this.headerHash));
      let at = FRAME_HEAD_BYTES + IV_BYTES;
      for (let from = 0; from < compressed.length; from += CRYPTO_SLICE_BYTES) {
        at += cipher.update(compressed.subarray(from, from + CRYPTO_SLICE_BYTES)).copy(frame, at);
        if (this.slicer.overdue()) await this.slicer.yield();
      }
      at += cipher.final().copy(frame, at);
      cipher.getAuthTag().copy(frame, at);
    } else if (compressed !== plain) {
      frame = Buffer.allocUnsafe(FRAME_HEAD_BYTES + compressed.length);
      compressed.copy(frame, FRAME_HEAD_BYTES);
    } else {
      frame = buffer.subarray(0, this.offset); // the records are already in place behind the head
    }
    const stored = frame.subarray(FRAME_HEAD_BYTES);
    frame.writeUInt32LE(stored.length, 0);
    frame.writeUInt32LE(records, 4);
    frame.writeUInt32LE(plain.length, 8);
    this.running = crc32(stored, crc32(frame.subarray(0, 12), this.running));
    frame.writeUInt32LE(this.running, 12);
    frame.writeUInt32LE(crc32(frame.subarray(0, 16)), 16);

    // The previous block's buffer is free once its write is done; then this block goes out
    // while the next one is encoded into that buffer.
    await this.inFlight;
    const [recordsAfter, plainAfter] = [this.records + records, this.plainBytes + plain.length];
    this.inFlight = this.write(frame).then(async () => {
      // The periodic sync bounds the dirty data (what the WAL's fsyncs would wait behind), not the
      // snapshot's durability (the final sync is that), so it runs beside the next writes instead
      // of holding them: awaiting each one left the disk idle for its flush every 8 MiB (a third of
      // a 1 GiB snapshot's time). At most one runs; a write waits only for a sync a whole interval old.
      if (this.syncEveryBytes > 0 && this.bytes - this.syncStartedAt >= this.syncEveryBytes) {
        await this.syncing;
        this.syncStartedAt = this.bytes;
        this.syncing = this.file.sync();
        this.syncing.catch(() => {});
      }
      this.onProgress?.(recordsAfter, this.bytes);
    });
    this.inFlight.catch(() => {});
    this.records = recordsAfter;
    this.plainBytes = plainAfter;
    this.blocks++;
    // The regular buffers take turns; the other one's write was awaited above. A one-off buffer
    // (an oversized record) leaves the turn where it was: that buffer was never used.
    if (buffer === this.regular[this.turn]) this.turn ^= 1;
    this.buffer = this.regular[this.turn]!;
    this.offset = FRAME_HEAD_BYTES;
    this.count = 0;
    await this.slicer.yield();
  }

  /** Waits for the last block's write; in the error path too, before the file is closed. */
  settle(): Promise<void> {
    return Promise.all([this.inFlight?.catch(() => {}), this.syncing?.catch(() => {})]).then(() => {});
  }
}

function writeU64(buffer: Buffer, value: number, offset: number): void {
  buffer.writeUInt32LE(value % 2 ** 32, offset);
  buffer.writeUInt32LE(Math.floor(value / 2 ** 32), offset + 4);
}

function readU64(buffer: Buffer, offset: number): number {
  return buffer.readUInt32LE(offset) + buffer.readUInt32LE(offset + 4) * 2 ** 32;
}

/** write() until every byte is down: a write may be short, e.g. when the disk fills mid-way. */
async function writeFully(file: FileHandle | SnapshotFile, buffer: Buffer): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    const result = (await file.write(done === 0 ? buffer : buffer.subarray(done))) as { bytesWritten?: unknown } | undefined;
    // A wrapper that reports nothing has written it all.
    if (typeof result?.bytesWritten !== 'number') return;
    if (result.bytesWritten <= 0) throw new Error('snapshot write made no progress');
    done += result.bytesWritten;
  }
}

/** A renamed file is only durable once its directory entry is. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

interface OpenedHeader {
  header: SnapshotHeader;
  salt: Buffer;
  keyCheck: Buffer;
  /** SHA-256 of the header body: what every block's additional data names. */
  hash: Buffer;
  /** The running CRC after the header, which the first block continues. */
  running: number;
  /** Offset of the first block. */
  end: number;
  size: number;
}

/** Reads and checks the header; never needs the key. */
export async function readSnapshotHeader(path: string): Promise<SnapshotHeader> {
  const file = await open(path, 'r');
  try {
    return (await readHeader(file, path)).header;
  } finally {
    await file.close();
  }
}

/**
 * Yields the records block by block, each block only once all of it has been checked (running
 * CRC, authentication tag, lengths, record count): a record yielded is a record written. Damage
 * further on is found when the reading gets there, so a caller that must not apply half a file
 * (a restore) resets on the error. Throws SnapshotError with code, path and offset; I/O errors
 * (ENOENT, EIO) pass through as they are. Values are views into buffers never reused (see
 * FreshSlabs): a kept value keeps the buffer it was read into alive — a slab of `readBytes`
 * (default RESTORE_SLAB_BYTES), or a decrypted or inflated block.
 */
export async function* readSnapshot(path: string, options: { key?: Buffer; readBytes?: number }): AsyncGenerator<ContextRecord[]> {
  for await (const batch of readSnapshotBatches(path, options)) yield batch.records;
}

/**
 * Records of one block, in order, with where each lies in it: the keyed bytes of records[i] are
 * block[spans[2i], spans[2i + 1]). A restore into the embedded L2 keeps them there (the block is
 * never reused) instead of copying each record out.
 */
export interface SnapshotBatch {
  records: ContextRecord[];
  block: Buffer;
  spans: number[];
}

/** readSnapshot's records with the block they lie in (SnapshotBatch). */
export async function* readSnapshotBatches(path: string, options: { key?: Buffer; readBytes?: number }): AsyncGenerator<SnapshotBatch> {
  const readBytes = options.readBytes ?? RESTORE_SLAB_BYTES;
  if (!(Number.isSafeInteger(readBytes) && readBytes >= FRAME_HEAD_BYTES)) throw new RangeError(`readBytes must be an integer of at least ${FRAME_HEAD_BYTES}, got ${readBytes}`);
  const file = await open(path, 'r');
  try {
    const opened = await readHeader(file, path);
    yield* readBlocks(file, path, opened, keysForReading(opened, options.key, path), { keep: true, readBytes });
  } finally {
    await file.close();
  }
}

/** Reads the whole file as a restore would. I/O errors (ENOENT, EIO) reject rather than return. */
export async function verifySnapshot(path: string, options: { key?: Buffer }): Promise<{ ok: true; summary: SnapshotSummary } | { ok: false; error: SnapshotError }> {
  const file = await open(path, 'r');
  try {
    const opened = await readHeader(file, path);
    let records = 0;
    for await (const batch of readBlocks(file, path, opened, keysForReading(opened, options.key, path), { keep: false })) records += batch.records.length;
    return { ok: true, summary: { header: opened.header, records, bytes: opened.size, path } };
  } catch (error) {
    if (error instanceof SnapshotError) return { ok: false, error };
    throw error;
  } finally {
    await file.close();
  }
}

async function readHeader(file: FileHandle, path: string): Promise<OpenedHeader> {
  const size = (await file.stat()).size;
  const prelude = await readAt(file, 0, PRELUDE_BYTES);
  const seen = prelude.subarray(0, MAGIC.length);
  if (!seen.equals(MAGIC.subarray(0, seen.length))) throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'not a ctxmesh snapshot (bad magic)', 0);
  if (prelude.length < PRELUDE_BYTES) throw new SnapshotError('SNAPSHOT_TRUNCATED', path, 'the file ends inside the header', prelude.length);
  const preludeCrc = crc32(prelude.subarray(0, 16));
  if (preludeCrc !== prelude.readUInt32LE(16)) throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'header checksum mismatch', 0);
  // Checked after the CRC: a flipped bit is corruption, a valid prelude with another number is a newer writer.
  const version = prelude.readUInt32LE(8);
  if (version !== SNAPSHOT_FORMAT_VERSION) {
    throw new SnapshotError('SNAPSHOT_VERSION', path, `format version ${version}; this build reads version ${SNAPSHOT_FORMAT_VERSION}`, 8);
  }
  const bodyLength = prelude.readUInt32LE(12);
  if (bodyLength < SALT_BYTES + KEY_CHECK_BYTES + 2 || bodyLength > MAX_HEADER_BODY_BYTES) throw new SnapshotError('SNAPSHOT_CORRUPT', path, `header length ${bodyLength} out of range`, 12);
  const rest = await readAt(file, PRELUDE_BYTES, bodyLength + 4);
  if (rest.length < bodyLength + 4) throw new SnapshotError('SNAPSHOT_TRUNCATED', path, 'the file ends inside the header', PRELUDE_BYTES + rest.length);
  const body = rest.subarray(0, bodyLength);
  const running = crc32(body, preludeCrc);
  if (running !== rest.readUInt32LE(bodyLength)) throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'header checksum mismatch', PRELUDE_BYTES);
  let fields: unknown;
  try {
    fields = JSON.parse(body.toString('utf8', SALT_BYTES + KEY_CHECK_BYTES));
  } catch (error) {
    throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'header is not JSON', PRELUDE_BYTES, { cause: error });
  }
  const parsed = HeaderSchema.safeParse(fields);
  if (!parsed.success) throw new SnapshotError('SNAPSHOT_CORRUPT', path, `invalid header: ${z.prettifyError(parsed.error)}`, PRELUDE_BYTES);
  return {
    header: withoutUndefined({ formatVersion: SNAPSHOT_FORMAT_VERSION, ...parsed.data }) as SnapshotHeader,
    salt: body.subarray(0, SALT_BYTES),
    keyCheck: body.subarray(SALT_BYTES, SALT_BYTES + KEY_CHECK_BYTES),
    hash: createHash('sha256').update(body).digest(),
    running,
    end: PRELUDE_BYTES + bodyLength + 4,
    size,
  };
}

/** A key given for an unencrypted file is not needed and not an error (encryption turned on later). */
function keysForReading(opened: OpenedHeader, key: Buffer | undefined, path: string): FileKeys | undefined {
  if (!opened.header.encrypted) return undefined;
  if (key === undefined) throw new SnapshotError('SNAPSHOT_KEY_REQUIRED', path, 'the snapshot is encrypted and no key was given');
  if (key.length !== KEY_BYTES) throw new SnapshotError('SNAPSHOT_KEY_WRONG', path, `the key is ${key.length} bytes, expected ${KEY_BYTES}`);
  const keys = deriveKeys(key, opened.salt);
  if (!timingSafeEqual(keys.check, opened.keyCheck)) {
    throw new SnapshotError('SNAPSHOT_KEY_WRONG', path, 'the key is not the one the snapshot was written with', PRELUDE_BYTES + SALT_BYTES);
  }
  return keys;
}

interface FrameHead { stored: number; records: number; plain: number; crc: number }

/** Parses a block frame head at `offset`; undefined when `head` is the start of the trailer. */
function parseFrameHead(head: Buffer, offset: number, path: string, encrypted: boolean, compression: SnapshotHeader['compression']): FrameHead | undefined {
  const seen = head.subarray(0, TRAILER_MAGIC.length);
  if (seen.length === TRAILER_MAGIC.length ? seen.equals(TRAILER_MAGIC) : seen.equals(TRAILER_MAGIC.subarray(0, seen.length))) {
    if (head.length < TRAILER_MAGIC.length) throw new SnapshotError('SNAPSHOT_TRUNCATED', path, 'the file ends before the trailer', offset + head.length);
    return undefined;
  }
  if (head.length < FRAME_HEAD_BYTES) throw new SnapshotError('SNAPSHOT_TRUNCATED', path, 'the file ends inside a block', offset + head.length);
  if (crc32(head.subarray(0, 16)) !== head.readUInt32LE(16)) throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'block head checksum mismatch', offset);
  const frame = { stored: head.readUInt32LE(0), records: head.readUInt32LE(4), plain: head.readUInt32LE(8), crc: head.readUInt32LE(12) };
  const overhead = encrypted ? GCM_OVERHEAD_BYTES : 0;
  const storedFits = compression === 'none' ? frame.stored === frame.plain + overhead : frame.stored >= overhead && frame.stored <= MAX_BLOCK_BYTES + overhead;
  // Each record takes at least its length, key length and envelope magic.
  if (!storedFits || frame.plain > MAX_BLOCK_BYTES || frame.records === 0 || frame.records * 11 > frame.plain) {
    throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block head out of range (${frame.stored} stored, ${frame.plain} plain, ${frame.records} records)`, offset);
  }
  return frame;
}

/**
 * Where readBlocks gets the bytes of each block (its stored bytes and the next block's head).
 * `take` resolves to the file's bytes [position, position + length), fewer only at its end.
 */
interface BlockSource {
  take(position: number, length: number): Promise<Buffer>;
  /** Read-ahead in flight is settled (the file may be closed after). */
  settle(): Promise<void>;
}

/**
 * Two buffers taking turns, reused: block k is read into one while block k - 1, in the other, is
 * decoded. No fresh pages per block, but a block's bytes are overwritten two blocks later, so what
 * is decoded from it must not be kept (verifySnapshot), or must come from a buffer of its own (a
 * decrypted or inflated block).
 */
class ReusedBuffers implements BlockSource {
  private readonly buffers: Buffer[] = [Buffer.alloc(0), Buffer.alloc(0)];
  private turn = 0;
  private ahead: { position: number; length: number; read: Promise<Buffer> } | undefined;

  constructor(private readonly file: FileHandle) {}

  take(position: number, length: number): Promise<Buffer> {
    const ahead = this.ahead;
    this.ahead = undefined;
    if (ahead && ahead.position === position && ahead.length === length) return ahead.read;
    return this.read(position, length);
  }

  /** Starts reading what the next take will ask for. */
  readAhead(position: number, length: number): void {
    const read = this.read(position, length);
    read.catch(() => {});
    this.ahead = { position, length, read };
  }

  private read(position: number, length: number): Promise<Buffer> {
    const i = this.turn++ % 2;
    if (this.buffers[i]!.length < length) this.buffers[i] = Buffer.allocUnsafe(length);
    return readAt(this.file, position, length, this.buffers[i]);
  }

  async settle(): Promise<void> {
    await this.ahead?.read.catch(() => {});
  }
}

/** Size of the reads (and so of the slabs) a restore of an unencrypted, uncompressed snapshot makes. */
export const RESTORE_SLAB_BYTES = 8 * 1024 * 1024;

/**
 * The restore's reader of an unencrypted, uncompressed file: large sequential reads into fresh
 * slabs, never reused, so the records decoded from a block keep their values as views into the
 * slab instead of a buffer each. A buffer per value (allocated, first-touched, one ArrayBuffer for
 * V8 to track each) was 42 % of a restore's CPU profile (512 MiB of 4 KiB values), more than
 * reading, checking and decoding the file together; one 8 MiB slab per ~2,000 such values is not
 * measurable.
 *
 * Each slab is read ahead while the previous one is decoded: once a slab is in, the frame heads
 * in it are walked to find the first block it does not hold whole; that block's bytes so far are
 * copied to the start of the next slab and the rest read after them, so every block lies whole in
 * one slab. The copied tail stays in the old slab unused: on average half a block per slab (~6 %
 * with 1 MiB blocks), which, with the records' keys and metadata, is what this costs in memory over
 * one buffer per value.
 *
 * The trade-off: a value pins its whole slab as long as anything holds it. A restore makes every
 * value live at once, so right after it the slabs hold about the file's size, as copies would;
 * later, as keys are rewritten, a slab stays allocated while any of its values is held. The
 * embedded L2 adopts the blocks as they are (record-arena.ts) and copies the survivors of a mostly
 * replaced block out, so what it holds pins at most about as many dead bytes as live ones; it hands
 * out copies, not views, to callers that keep records (L1). All slabs together never exceed the
 * restored file's size.
 */
class FreshSlabs implements BlockSource {
  private slab: Buffer = Buffer.alloc(0);
  /** File offset of slab[0]. */
  private slabStart = 0;
  private ahead: Promise<{ slab: Buffer; start: number }> | undefined;
  /** The current slab's heads were walked (once per slab, whatever the walk found). */
  private planned = false;

  constructor(
    private readonly file: FileHandle,
    private readonly slabBytes = RESTORE_SLAB_BYTES,
  ) {}

  async take(position: number, length: number): Promise<Buffer> {
    if (!this.holds(position, length) && this.ahead) {
      const next = await this.ahead;
      this.ahead = undefined;
      [this.slab, this.slabStart, this.planned] = [next.slab, next.start, false];
    }
    if (!this.holds(position, length)) {
      // Not planned for (the first block, or after a head the plan could not read): read from here.
      const slab = await readAt(this.file, position, Math.max(this.slabBytes, length), Buffer.allocUnsafeSlow(Math.max(this.slabBytes, length)));
      [this.slab, this.slabStart, this.planned] = [slab, position, false];
      if (slab.length < length) return slab; // the file ends here
    }
    this.planNext(position, length);
    return this.slab.subarray(position - this.slabStart, position - this.slabStart + length);
  }

  private holds(position: number, length: number): boolean {
    return position >= this.slabStart && position + length <= this.slabStart + this.slab.length;
  }

  /**
   * Once per slab, after its first take: walks the frame heads from there to the first block the
   * slab does not hold whole and starts reading the next slab, which begins with that block. A
   * head that does not parse ends the walk without reading ahead; readBlocks reports it when it
   * gets there.
   */
  private planNext(position: number, length: number): void {
    if (this.planned) return;
    this.planned = true;
    const slabEnd = this.slabStart + this.slab.length;
    let [data, take] = [position, length];
    for (;;) {
      if (data + take > slabEnd) break;
      const at = data + take - FRAME_HEAD_BYTES - this.slabStart;
      const head = this.slab.subarray(at, at + FRAME_HEAD_BYTES);
      if (head.subarray(0, TRAILER_MAGIC.length).equals(TRAILER_MAGIC) || crc32(head.subarray(0, 16)) !== head.readUInt32LE(16)) return;
      const stored = head.readUInt32LE(0);
      if (stored > MAX_BLOCK_BYTES) return;
      [data, take] = [data + take, stored + FRAME_HEAD_BYTES];
    }
    const carried = slabEnd - data;
    const size = Math.max(this.slabBytes, take);
    const slab = Buffer.allocUnsafeSlow(size);
    this.slab.copy(slab, 0, data - this.slabStart);
    this.ahead = readAt(this.file, slabEnd, size - carried, slab.subarray(carried)).then((read) => ({ slab: slab.subarray(0, carried + read.length), start: data }));
    this.ahead.catch(() => {});
  }

  async settle(): Promise<void> {
    await this.ahead?.catch(() => {});
  }
}

/**
 * The records of every block after the header. `keep`: the caller keeps records (a restore), so
 * their values are views into buffers never reused (fresh slabs, or a decrypted or inflated block
 * of its own); otherwise (verify) the stored bytes are read into two reused buffers.
 */
async function* readBlocks(file: FileHandle, path: string, opened: OpenedHeader, keys: FileKeys | undefined, options: { keep: boolean; readBytes?: number }): AsyncGenerator<SnapshotBatch> {
  const { header } = opened;
  const slicer = new EventLoopSlicer();
  let offset = opened.end;
  let running = opened.running;
  let [blocks, records, plainBytes] = [0, 0, 0];
  let head = await readAt(file, offset, FRAME_HEAD_BYTES);
  // A decrypted or inflated block is a buffer of its own whichever source its stored bytes came from.
  const plainIsStored = !header.encrypted && header.compression === 'none';
  const reused = options.keep && plainIsStored ? undefined : new ReusedBuffers(file);
  const source: BlockSource = reused ?? new FreshSlabs(file, options.readBytes);
  const contentTypes = new ContentTypeCache();
  try {
    for (;;) {
      const frame = parseFrameHead(head, offset, path, header.encrypted, header.compression);
      if (frame === undefined) break;
      const dataOffset = offset + FRAME_HEAD_BYTES;
      const chunk = await source.take(dataOffset, frame.stored + FRAME_HEAD_BYTES);
      if (chunk.length < frame.stored) throw new SnapshotError('SNAPSHOT_TRUNCATED', path, 'the file ends inside a block', dataOffset + chunk.length);
      const stored = chunk.subarray(0, frame.stored);
      running = crc32(stored, crc32(head.subarray(0, 12), running));
      if (running !== frame.crc) throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${blocks} checksum mismatch`, offset);
      const nextOffset = dataOffset + frame.stored;
      const nextHead = Buffer.from(chunk.subarray(frame.stored)); // 20 bytes; the chunk's buffer may be reused
      if (reused) {
        const next = tryParse(() => parseFrameHead(nextHead, nextOffset, path, header.encrypted, header.compression));
        if (next) reused.readAhead(nextOffset + FRAME_HEAD_BYTES, next.stored + FRAME_HEAD_BYTES);
      }

      const plain = await openBlock(stored, frame, blocks, keys, opened, path, offset, slicer);
      let batch: SnapshotBatch = { records: [], block: plain, spans: [] };
      let at = 0;
      for (let i = 0; i < frame.records; i++) {
        if (at + 4 > plain.length) throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${blocks} holds fewer records than its head says`, offset);
        const end = at + 4 + plain.readUInt32LE(at);
        if (end > plain.length) throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${blocks}: a record runs past the block`, offset);
        let record: ContextRecord;
        try {
          record = decodeKeyedRecordAt(plain, at + 4, end, undefined, contentTypes);
        } catch (error) {
          throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${blocks}: ${(error as Error).message}`, offset, { cause: error });
        }
        batch.records.push(record);
        batch.spans.push(at + 4, end);
        at = end;
        if (slicer.due()) {
          yield batch;
          batch = { records: [], block: plain, spans: [] };
          await slicer.yield();
        }
      }
      if (at !== plain.length) throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${blocks} has bytes after its last record`, offset);
      blocks++;
      records += frame.records;
      plainBytes += plain.length;
      if (batch.records.length > 0) yield batch;
      await slicer.yield();
      offset = nextOffset;
      head = nextHead;
    }

    const trailer = await readAt(file, offset, TRAILER_BYTES + 1);
    if (trailer.length < TRAILER_BYTES) throw new SnapshotError('SNAPSHOT_TRUNCATED', path, 'the file ends inside the trailer', offset + trailer.length);
    if (crc32(trailer.subarray(0, 44), running) !== trailer.readUInt32LE(44)) throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'trailer checksum mismatch', offset);
    if (trailer.length > TRAILER_BYTES) throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'bytes after the trailer', offset + TRAILER_BYTES);
    const counted = { blocks: trailer.readUInt32LE(8), records: readU64(trailer, 12), plainBytes: readU64(trailer, 20) };
    if (counted.blocks !== blocks || counted.records !== records || counted.plainBytes !== plainBytes) {
      throw new SnapshotError('SNAPSHOT_CORRUPT', path, `trailer counts ${counted.blocks} blocks / ${counted.records} records, read ${blocks} / ${records}`, offset);
    }
    if (keys && !timingSafeEqual(trailerMac(keys, opened.hash, trailer.subarray(0, 28)), trailer.subarray(28, 28 + MAC_BYTES))) {
      throw new SnapshotError('SNAPSHOT_CORRUPT', path, 'trailer authentication failed', offset);
    }
  } finally {
    await source.settle();
  }
}

function tryParse<T>(parse: () => T): T | undefined {
  try {
    return parse();
  } catch {
    return undefined; // reported when the reading gets there, after this block's records
  }
}

/** Decrypts and inflates a block whose CRC matched; the key was checked, so a bad tag is damage. */
async function openBlock(stored: Buffer, frame: FrameHead, index: number, keys: FileKeys | undefined, opened: OpenedHeader, path: string, offset: number, slicer: EventLoopSlicer): Promise<Buffer> {
  let data = stored;
  if (keys) {
    const decipher = createDecipheriv('aes-256-gcm', keys.block, stored.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES });
    decipher.setAAD(blockAad(index, opened.hash));
    decipher.setAuthTag(stored.subarray(stored.length - TAG_BYTES));
    const sealed = stored.subarray(IV_BYTES, stored.length - TAG_BYTES);
    data = Buffer.allocUnsafe(sealed.length);
    try {
      let at = 0;
      for (let from = 0; from < sealed.length; from += CRYPTO_SLICE_BYTES) {
        at += decipher.update(sealed.subarray(from, from + CRYPTO_SLICE_BYTES)).copy(data, at);
        if (slicer.overdue()) await slicer.yield();
      }
      decipher.final(); // GCM yields nothing more here; it checks the tag
    } catch (error) {
      throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${index} failed authentication (altered, or moved from elsewhere)`, offset, { cause: error });
    }
  }
  if (opened.header.compression === 'deflate') {
    try {
      data = await inflateRawAsync(data, { maxOutputLength: Math.max(1, frame.plain), chunkSize: Math.max(64, frame.plain) });
    } catch (error) {
      throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${index} does not inflate`, offset, { cause: error });
    }
  }
  if (data.length !== frame.plain) throw new SnapshotError('SNAPSHOT_CORRUPT', path, `block ${index} is ${data.length} bytes, its head says ${frame.plain}`, offset);
  return data;
}

/** Up to `length` bytes at `position`; fewer only at the end of the file. */
async function readAt(file: FileHandle, position: number, length: number, into?: Buffer): Promise<Buffer> {
  const buffer = into ?? Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await file.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buffer.subarray(0, done);
}

// ---------------------------------------------------------------------------------------------
// Keys

/**
 * The snapshot encryption key from `file`: exactly 32 raw bytes, or 64 hex characters, or the
 * base64 (standard or URL-safe, padded or not) of 32 bytes; a trailing newline is fine. The
 * error never repeats the file's content.
 */
export function loadEncryptionKey(file: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (error) {
    throw new EncryptionKeyError(`encryption key file ${file}: ${(error as Error).message}`, { cause: error });
  }
  if (bytes.length === KEY_BYTES) return bytes;
  const text = bytes.toString('latin1').replace(/\r?\n$/, '');
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(text)) {
    const key = Buffer.from(text, 'base64');
    // Buffer's decoder ignores what it cannot use; only a canonical encoding of 32 bytes counts.
    if (key.length === KEY_BYTES && key.toString('base64url') === text.replace(/=$/, '').replace(/\+/g, '-').replace(/\//g, '_')) return key;
  }
  throw new EncryptionKeyError(
    `encryption key file ${file}: expected 32 raw bytes, 64 hex characters or base64 of 32 bytes (a trailing newline is fine); found ${bytes.length} bytes that are none of these`,
  );
}
