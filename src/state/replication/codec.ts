// Peer messages that carry records: a count, then per record a length and the keyed envelope of
// record.ts (length 0xFFFFFFFF: no record at that position, for read answers). Binary, so values
// travel as they are stored, without base64 or JSON escaping.
import { MeshError } from '../../errors/table.js';
import { decodeKeyedRecord, encodeKeyedRecord, type ContextRecord } from '../record.js';

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

/** Bytes a record adds to a record list: what batches and lag are measured in. */
export function encodedSize(record: ContextRecord): number {
  return 4 + 2 + Buffer.byteLength(record.key) + 64 + record.version.length + record.contentType.length + record.value.length;
}
