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
  const head = envelopeHead(record);
  const keyBytes = Buffer.byteLength(record.key);
  const keyAt = headroom + 2;
  const headAt = keyAt + keyBytes;
  const valueAt = headAt + Buffer.byteLength(head);
  const out = Buffer.allocUnsafe(valueAt + record.value.length);
  out.writeUInt16BE(keyBytes, headroom);
  out.write(record.key, keyAt, 'utf8');
  out.write(head, headAt, 'utf8');
  record.value.copy(out, valueAt);
  return out;
}

export function decodeKeyedRecord(bytes: Buffer): ContextRecord {
  if (bytes.length < 2) throw new EnvelopeError('truncated keyed record');
  const keyEnd = 2 + bytes.readUInt16BE(0);
  if (bytes.length < keyEnd) throw new EnvelopeError('truncated keyed record');
  return decodeRecord(bytes.toString('utf8', 2, keyEnd), bytes.subarray(keyEnd));
}
