// One stored context, as every tier, the WAL and (later) the replication stream see it, and its
// byte envelope. The envelope puts the version on the first line so that a Redis script can check
// a condition without decoding the rest:
//
//   CTX1 <version>\n<meta JSON>\n<value bytes>
import type { Version } from './version.js';

export type Retention = 'normal' | 'critical';

export interface ContextRecord {
  key: string;
  value: Buffer;
  contentType: string;
  version: Version;
  /** Epoch ms after which the context no longer exists; 0 = never. */
  expiresAt: number;
  /** critical contexts leave L1 only after every normal one has. */
  retention: Retention;
  /** Epoch ms of the write (wall clock, informational). */
  updatedAt: number;
  /** A deletion: kept in the WAL and the write-behind queue so that it replays in order. */
  tombstone?: boolean;
}

/** A record as an object, or in its keyed form (encodeKeyedRecord's bytes) as the embedded L2 keeps it. */
export type RecordOrKeyed = ContextRecord | Buffer;

interface EnvelopeMeta {
  /** content type */
  c: string;
  /** expiresAt */
  x: number;
  /** 1 = critical */
  r?: 1;
  /** updatedAt */
  t: number;
  /** 1 = tombstone */
  d?: 1;
}

const MAGIC = 'CTX1 ';
/** The envelope's first bytes, for writers that lay it out themselves (the snapshot's block encoder). */
export const ENVELOPE_MAGIC_BYTES = Buffer.from(MAGIC, 'latin1');
const NEWLINE = 0x0a;

export function isExpired(record: ContextRecord, now: number): boolean {
  return record.expiresAt !== 0 && record.expiresAt <= now;
}

/** Milliseconds left to live, or undefined for a context without TTL. */
export function remainingTtl(record: ContextRecord, now: number): number | undefined {
  return record.expiresAt === 0 ? undefined : Math.max(0, record.expiresAt - now);
}

/** Bytes the record occupies in memory, roughly: what L1's byte bound counts. */
export function recordSize(record: ContextRecord): number {
  return record.value.length + record.key.length * 2 + record.contentType.length + record.version.length + 96;
}

export function encodeRecord(record: ContextRecord): Buffer {
  const head = envelopeHead(record);
  const headBytes = Buffer.byteLength(head);
  const out = Buffer.allocUnsafe(headBytes + record.value.length);
  out.write(head, 0, 'utf8');
  record.value.copy(out, headBytes);
  return out;
}

/** The envelope up to the value: `CTX1 <version>\n<meta JSON>\n`. */
function envelopeHead(record: ContextRecord): string {
  const meta: EnvelopeMeta = { c: record.contentType, x: record.expiresAt, t: record.updatedAt };
  if (record.retention === 'critical') meta.r = 1;
  if (record.tombstone) meta.d = 1;
  return `${MAGIC}${record.version}\n${JSON.stringify(meta)}\n`;
}

export class EnvelopeError extends Error {
  override name = 'EnvelopeError';
}

/** Decodes an envelope; the value is a view into `bytes`, not a copy. */
export function decodeRecord(key: string, bytes: Buffer): ContextRecord {
  if (bytes.length < MAGIC.length || bytes.toString('latin1', 0, MAGIC.length) !== MAGIC) {
    throw new EnvelopeError(`context ${key}: not a ctxmesh envelope`);
  }
  const versionEnd = bytes.indexOf(NEWLINE, MAGIC.length);
  const metaEnd = versionEnd < 0 ? -1 : bytes.indexOf(NEWLINE, versionEnd + 1);
  if (metaEnd < 0) throw new EnvelopeError(`context ${key}: truncated envelope`);
  let meta: EnvelopeMeta;
  try {
    meta = JSON.parse(bytes.toString('utf8', versionEnd + 1, metaEnd)) as EnvelopeMeta;
  } catch {
    throw new EnvelopeError(`context ${key}: corrupt envelope metadata`);
  }
  const record: ContextRecord = {
    key,
    value: bytes.subarray(metaEnd + 1),
    contentType: meta.c,
    version: bytes.toString('utf8', MAGIC.length, versionEnd),
    expiresAt: meta.x,
    retention: meta.r === 1 ? 'critical' : 'normal',
    updatedAt: meta.t,
  };
  if (meta.d === 1) record.tombstone = true;
  return record;
}

/**
 * A record with its key, for logs and streams where no outer key names it: `u16 keyLength, key,
 * envelope`, after `headroom` bytes left for the caller (the WAL's kind byte). One buffer, one copy
 * of the value: a write's value is copied once on its way to the log, not once per layer (the
 * copies were most of a PUT's garbage, and each one an ArrayBuffer for the GC to track).
 */
export function encodeKeyedRecord(record: ContextRecord, headroom = 0): Buffer {
  const layout = keyedLayout(record);
  const out = Buffer.allocUnsafe(headroom + layout.length);
  writeKeyedRecord(record, layout, out, headroom);
  return out;
}

/** What writing a record's keyed form takes: its envelope head and its length in bytes. */
export interface KeyedLayout {
  head: string;
  keyBytes: number;
  length: number;
}

export function keyedLayout(record: ContextRecord): KeyedLayout {
  const head = envelopeHead(record);
  const keyBytes = Buffer.byteLength(record.key);
  return { head, keyBytes, length: 2 + keyBytes + Buffer.byteLength(head) + record.value.length };
}

/** Writes the keyed form measured by keyedLayout into `out` at `at` (the caller made the room). */
export function writeKeyedRecord(record: ContextRecord, layout: KeyedLayout, out: Buffer, at: number): void {
  out.writeUInt16BE(layout.keyBytes, at);
  const headAt = at + 2 + out.write(record.key, at + 2, 'utf8');
  record.value.copy(out, headAt + out.write(layout.head, headAt, 'utf8'));
}

export function decodeKeyedRecord(bytes: Buffer): ContextRecord {
  return decodeKeyedRecordAt(bytes, 0, bytes.length);
}

/**
 * The keyed record in bytes[start, end); its value a view into `bytes`. `key`, when the caller
 * knows it, saves decoding it again.
 */
export function decodeKeyedRecordAt(bytes: Buffer, start: number, end: number, key?: string, contentTypes?: ContentTypeCache): ContextRecord {
  const fast = decodeExact(bytes, start, end, key, contentTypes);
  if (fast !== undefined) return fast;
  if (end - start < 2) throw new EnvelopeError('truncated keyed record');
  const keyEnd = start + 2 + bytes.readUInt16BE(start);
  if (end < keyEnd) throw new EnvelopeError('truncated keyed record');
  return decodeRecord(key ?? bytes.toString('utf8', start + 2, keyEnd), bytes.subarray(keyEnd, end));
}

/** The version of the keyed record in bytes[start, end), without decoding the rest. */
export function keyedRecordVersion(bytes: Buffer, start: number, end: number): string {
  const magicEnd = start + 2 + ((bytes[start]! << 8) | bytes[start + 1]!) + MAGIC.length;
  const versionEnd = bytes.indexOf(NEWLINE, magicEnd);
  if (versionEnd < 0 || versionEnd >= end) throw new EnvelopeError('truncated keyed record');
  return bytes.toString('utf8', magicEnd, versionEnd);
}

// Decoding a keyed record where it lies, without the envelope's JSON.parse: the store reads and a
// restore run this hundreds of thousands of times (in a restore's profile it came second only to the
// value copies). It accepts only the exact bytes envelopeHead writes — the metadata as
// JSON.stringify lays it out: {"c":…,"x":…,"t":…[,"r":1][,"d":1]}, integer times, no escapes in the
// content type; anything else (including damage) is left to decodeRecord, which decodes it or names
// what is wrong, so the errors stay that function's.
const META_CONTENT_TYPE = Buffer.from('{"c":"', 'latin1');
const [QUOTE, BACKSLASH, COMMA, COLON, BRACE_CLOSE, DIGIT_0, DIGIT_9] = [0x22, 0x5c, 0x2c, 0x3a, 0x7d, 0x30, 0x39];

function decodeExact(bytes: Buffer, start: number, end: number, knownKey: string | undefined, contentTypes: ContentTypeCache | undefined): ContextRecord | undefined {
  if (start + 2 > end) return undefined;
  const keyEnd = start + 2 + ((bytes[start]! << 8) | bytes[start + 1]!);
  const magicEnd = keyEnd + ENVELOPE_MAGIC_BYTES.length;
  if (magicEnd > end || !bytesAt(bytes, keyEnd, ENVELOPE_MAGIC_BYTES)) return undefined;
  let versionEnd = magicEnd;
  while (versionEnd < end && bytes[versionEnd] !== NEWLINE) versionEnd++;
  if (versionEnd >= end) return undefined;
  let at = versionEnd + 1;
  if (at + META_CONTENT_TYPE.length > end || !bytesAt(bytes, at, META_CONTENT_TYPE)) return undefined;
  const typeStart = at + META_CONTENT_TYPE.length;
  let typeEnd = typeStart;
  for (; typeEnd < end && bytes[typeEnd] !== QUOTE; typeEnd++) if (bytes[typeEnd] === BACKSLASH || bytes[typeEnd]! < 0x20) return undefined;
  at = typeEnd + 1;
  const field = (name: number): boolean => {
    // ,"<name>":
    if (at + 5 > end || bytes[at] !== COMMA || bytes[at + 1] !== QUOTE || bytes[at + 2] !== name || bytes[at + 3] !== QUOTE || bytes[at + 4] !== COLON) return false;
    at += 5;
    return true;
  };
  const integer = (): number => {
    const from = at;
    let n = 0;
    for (; at < end && bytes[at]! >= DIGIT_0 && bytes[at]! <= DIGIT_9; at++) n = n * 10 + (bytes[at]! - DIGIT_0);
    // JSON.stringify writes no leading zeros and at most 16 digits for a safe integer; past the
    // safe range this sum may round differently from JSON.parse, which then decides.
    return at === from || at - from > 16 || n > Number.MAX_SAFE_INTEGER || (bytes[from] === DIGIT_0 && at - from > 1) ? -1 : n;
  };
  if (!field(0x78 /* x */)) return undefined;
  const expiresAt = integer();
  if (expiresAt < 0) return undefined;
  if (!field(0x74 /* t */)) return undefined;
  const updatedAt = integer();
  if (updatedAt < 0) return undefined;
  let critical = false;
  if (bytes[at] === COMMA && bytes[at + 2] === 0x72 /* r */) {
    if (!field(0x72) || bytes[at] !== 0x31 /* 1 */) return undefined;
    at++;
    critical = true;
  }
  let tombstone = false;
  if (bytes[at] === COMMA) {
    if (!field(0x64 /* d */) || bytes[at] !== 0x31) return undefined;
    at++;
    tombstone = true;
  }
  if (at + 2 > end || bytes[at] !== BRACE_CLOSE || bytes[at + 1] !== NEWLINE) return undefined;
  const record: ContextRecord = {
    key: knownKey ?? bytes.toString('utf8', start + 2, keyEnd),
    value: bytes.subarray(at + 2, end),
    contentType: contentTypes ? contentTypes.decode(bytes, typeStart, typeEnd) : bytes.toString('utf8', typeStart, typeEnd),
    version: bytes.toString('utf8', magicEnd, versionEnd),
    expiresAt,
    retention: critical ? 'critical' : 'normal',
    updatedAt,
  };
  if (tombstone) record.tombstone = true;
  return record;
}

/**
 * Whether `expected` lies in `source` at `at` (the caller checked the length). A loop: a handful of
 * bytes compare faster in JavaScript than through Buffer#compare's call into C++, per record.
 */
function bytesAt(source: Buffer, at: number, expected: Buffer): boolean {
  for (let i = 0; i < expected.length; i++) if (source[at + i] !== expected[i]) return false;
  return true;
}

/**
 * The content type of consecutive records is nearly always the same: decoded once and shared, not
 * one new string per record (a restore decodes hundreds of thousands).
 */
export class ContentTypeCache {
  private bytes: Buffer = Buffer.alloc(0);
  private text = '';

  decode(source: Buffer, start: number, end: number): string {
    if (end - start !== this.bytes.length || !bytesAt(source, start, this.bytes)) {
      this.bytes = Buffer.from(source.subarray(start, end));
      this.text = source.toString('utf8', start, end);
    }
    return this.text;
  }
}
