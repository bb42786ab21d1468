// Peer messages that carry records: a count, then per record a length and the keyed envelope of
// record.ts (length 0xFFFFFFFF: no record at that position, for read answers). Binary, so values
// travel as they are stored, without base64 or JSON escaping.
import { MeshError } from '../../errors/table.js';
import { decodeKeyedRecord, encodeKeyedRecord, type ContextRecord, type Retention } from '../record.js';
import { versionTimestamp } from '../version.js';
import { decodeSiblings, encodeSiblings, parseDotVersion, stateVersion, type Siblings } from './clock.js';
import type { JsonStamps, Payload } from './merge.js';

const ABSENT = 0xffff_ffff;

export function encodeRecordList(records: ReadonlyArray<ContextRecord | undefined>): Buffer {
  const parts: Buffer[] = [];
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(records.length, 0);
  parts.push(count);
  for (const record of records) {
    const length = Buffer.allocUnsafe(4);
    if (!record) {
      length.writeUInt32BE(ABSENT, 0);
      parts.push(length);
      continue;
    }
    const bytes = encodeKeyedRecord(record);
    length.writeUInt32BE(bytes.length, 0);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

/** Throws MeshError bad_request on a truncated or corrupt message. */
export function decodeRecordList(bytes: Buffer): Array<ContextRecord | undefined> {
  if (bytes.length < 4) throw new MeshError('bad_request', 'record list: truncated (no count)');
  const count = bytes.readUInt32BE(0);
  const out: Array<ContextRecord | undefined> = [];
  let offset = 4;
  for (let i = 0; i < count; i++) {
    if (offset + 4 > bytes.length) throw new MeshError('bad_request', `record list: truncated at record ${i} of ${count}`);
    const length = bytes.readUInt32BE(offset);
    offset += 4;
    if (length === ABSENT) {
      out.push(undefined);
      continue;
    }
    if (offset + length > bytes.length) throw new MeshError('bad_request', `record list: record ${i} of ${count} is truncated`);
    try {
      out.push(decodeKeyedRecord(bytes.subarray(offset, offset + length)));
    } catch (err) {
      throw new MeshError('bad_request', `record list: record ${i}: ${(err as Error).message}`);
    }
    offset += length;
  }
  if (offset !== bytes.length) throw new MeshError('bad_request', 'record list: trailing bytes');
  return out;
}

/**
 * A message of a JSON head and a record list: `u32 length, JSON head, record list`. Strong
 * operations travel so (one item, or a batch whose head lists the items beside their records).
 */
export function encodeFramed(head: object, records: ReadonlyArray<ContextRecord | undefined>): Buffer {
  const json = Buffer.from(JSON.stringify(head));
  const length = Buffer.allocUnsafe(4);
  length.writeUInt32BE(json.length, 0);
  return Buffer.concat([length, json, encodeRecordList(records)]);
}

/** Throws MeshError bad_request on a truncated message or a head that is not JSON. */
export function decodeFramed<T>(body: Buffer, what: string): { head: T; records: Array<ContextRecord | undefined> } {
  if (body.length < 4 || body.readUInt32BE(0) > body.length - 4) throw new MeshError('bad_request', `${what}: truncated message`);
  const end = 4 + body.readUInt32BE(0);
  let head: T;
  try {
    head = JSON.parse(body.subarray(4, end).toString('utf8')) as T;
  } catch {
    throw new MeshError('bad_request', `${what}: the message head is not JSON`);
  }
  return { head, records: decodeRecordList(body.subarray(end)) };
}

/** Bytes a record adds to a record list: what batches and lag are measured in. */
export function encodedSize(record: ContextRecord): number {
  return 4 + 2 + Buffer.byteLength(record.key) + 64 + record.version.length + record.contentType.length + record.value.length;
}

// ── sibling sets as records ──────────────────────────────────────────────────────────────────
// A key under the json-merge or siblings tier (merge.ts) holds a set of concurrent versions, each
// with its clock (clock.ts). It is stored, logged, checkpointed and shipped as one ordinary record
// whose content type is SIBLINGS_CONTENT_TYPE and whose value is `encodeSiblings` of the set, each
// version's payload being `u32 headLength, head JSON, body`. Its version is `stateVersion`: the
// newest dot, plus a tag of the set when there are several, so tiers, the WAL, snapshots and
// anti-entropy digests (which see only versions and bytes) need no change, and lww keys never
// meet this form.

export const SIBLINGS_CONTENT_TYPE = 'application/vnd.ctxmesh.siblings';

/** One stored version of a tiered key: the body and what its record would carry. */
export interface StoredPayload extends Payload {
  /** Epoch ms after which this version no longer exists; 0 = never. */
  expiresAt: number;
  retention: Retention;
  updatedAt: number;
}

interface PayloadHead {
  c: string;
  x: number;
  t: number;
  r?: 1;
  d?: 1;
  s?: JsonStamps;
}

export function isSiblingRecord(record: ContextRecord | undefined): boolean {
  return record !== undefined && record.contentType === SIBLINGS_CONTENT_TYPE && !record.tombstone;
}

function encodePayload(payload: StoredPayload): Buffer {
  const head: PayloadHead = { c: payload.contentType, x: payload.expiresAt, t: payload.updatedAt };
  if (payload.retention === 'critical') head.r = 1;
  if (payload.tombstone) head.d = 1;
  if (payload.stamps) head.s = payload.stamps;
  const json = Buffer.from(JSON.stringify(head));
  const length = Buffer.allocUnsafe(4);
  length.writeUInt32BE(json.length, 0);
  return Buffer.concat([length, json, payload.value]);
}

function decodePayload(bytes: Buffer): StoredPayload {
  if (bytes.length < 4 || bytes.readUInt32BE(0) > bytes.length - 4) throw new MeshError('bad_request', 'sibling set: truncated version');
  const end = 4 + bytes.readUInt32BE(0);
  let head: PayloadHead;
  try {
    head = JSON.parse(bytes.toString('utf8', 4, end)) as PayloadHead;
  } catch {
    throw new MeshError('bad_request', 'sibling set: corrupt version metadata');
  }
  const payload: StoredPayload = { value: bytes.subarray(end), contentType: head.c, expiresAt: head.x, updatedAt: head.t, retention: head.r === 1 ? 'critical' : 'normal' };
  if (head.d === 1) payload.tombstone = true;
  if (head.s) payload.stamps = head.s;
  return payload;
}

/**
 * The sibling set a record stands for: decoded when it is one; a plain record (written under lww,
 * before the key's tier was configured, or a tombstone) becomes one version whose dot is its
 * version and whose past is empty, so it stays unless a later write's context covers it.
 * `record` must have tombstones flagged (replica-store fromStored).
 */
export function stateOf(record: ContextRecord | undefined): Siblings<StoredPayload> {
  if (record === undefined) return [];
  if (isSiblingRecord(record)) {
    try {
      return decodeSiblings(record.value, decodePayload);
    } catch (err) {
      throw new MeshError('internal', `context ${record.key}: unreadable sibling set: ${(err as Error).message}`, { cause: err });
    }
  }
  const dot = parseDotVersion(record.version) ?? { node: '_', ts: versionTimestamp(record.version) ?? { wall: 0, logical: 0 } };
  const payload: StoredPayload = {
    value: record.value,
    contentType: record.contentType,
    expiresAt: record.expiresAt,
    retention: record.retention,
    updatedAt: record.updatedAt,
  };
  if (record.tombstone) payload.tombstone = true;
  return [{ clock: { dot, past: new Map() }, value: payload }];
}

/**
 * The record that stores a (non-empty) sibling set. It expires when its last live version does;
 * a set of deletions only lives `tombstoneGraceMs` past the newest, like a plain tombstone.
 */
export function recordOfState(key: string, state: Siblings<StoredPayload>, tombstoneGraceMs: number): ContextRecord {
  const version = stateVersion(state);
  if (version === undefined) throw new MeshError('internal', `context ${key}: an empty sibling set has no record`);
  const live = state.filter((v) => !v.value.tombstone).map((v) => v.value);
  const updatedAt = Math.max(...state.map((v) => v.value.updatedAt));
  let expiresAt: number;
  if (live.length === 0) expiresAt = updatedAt + tombstoneGraceMs;
  else expiresAt = live.some((p) => p.expiresAt === 0) ? 0 : Math.max(...live.map((p) => p.expiresAt));
  return {
    key,
    value: encodeSiblings(state, encodePayload),
    contentType: SIBLINGS_CONTENT_TYPE,
    version,
    expiresAt,
    retention: live.some((p) => p.retention === 'critical') ? 'critical' : 'normal',
    updatedAt,
  };
}
