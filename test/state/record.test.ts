import { describe, expect, it } from 'vitest';
import { ENTRY_IN_L2, ENTRY_PENDING_L2, decodeWalEntry, encodeWalEntry, walEntryKey } from '../../src/state/checkpoint/entries.js';
import { decodeKeyedRecord, decodeRecord, encodeKeyedRecord, encodeRecord, type ContextRecord } from '../../src/state/record.js';

const records: ContextRecord[] = [
  { key: 'chat/s-1', value: Buffer.from('{"turns":[1,2]}'), contentType: 'application/json', version: '1.5.n1', expiresAt: 0, retention: 'normal', updatedAt: 1_765_000_000_000 },
  { key: 'tenant/é-ü/ключ', value: Buffer.alloc(5_000, 7), contentType: 'text/plain; charset="x"', version: '9.0.n2', expiresAt: 1_765_000_060_000, retention: 'critical', updatedAt: 1_765_000_000_001 },
  { key: 'gone', value: Buffer.alloc(0), contentType: '', version: '3.1.n1', expiresAt: 0, retention: 'normal', updatedAt: 5, tombstone: true },
];

describe('record encodings', () => {
  it('a keyed record is u16 key length, the key, then the envelope, whatever the headroom before it', () => {
    for (const record of records) {
      const key = Buffer.from(record.key, 'utf8');
      const layout = Buffer.concat([Buffer.from([key.length >> 8, key.length & 0xff]), key, encodeRecord(record)]);
      expect(encodeKeyedRecord(record)).toEqual(layout);
      const withRoom = encodeKeyedRecord(record, 3);
      expect(withRoom.length).toBe(layout.length + 3);
      expect(withRoom.subarray(3)).toEqual(layout);
      expect(decodeKeyedRecord(withRoom.subarray(3))).toEqual(record);
      expect(decodeRecord(record.key, encodeRecord(record))).toEqual(record);
    }
  });

  it('a WAL entry is its kind byte and the keyed record, and reads back as both', () => {
    for (const record of records) {
      for (const pendingL2 of [false, true]) {
        const entry = encodeWalEntry(record, pendingL2);
        expect(entry[0]).toBe(pendingL2 ? ENTRY_PENDING_L2 : ENTRY_IN_L2);
        expect(entry.subarray(1)).toEqual(encodeKeyedRecord(record));
        expect(decodeWalEntry(entry)).toEqual({ redacted: false, record, pendingL2 });
        expect(walEntryKey(entry)).toBe(record.key);
      }
    }
  });
});
