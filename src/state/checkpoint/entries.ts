// What the state agent puts in a WAL record's payload: one kind byte, then the keyed record.
// The kind says whether the write was already in L2 when it was logged (write-through) or still
// on its way (write-behind) — only the latter is replayed into Redis after a crash, so a restart
// never pushes back a value another sidecar has since replaced — or whether a GDPR erase has
// blanked the record (it keeps its LSN so the log stays dense, and carries nothing, not even the key).
import { decodeKeyedRecord, encodeKeyedRecord, type ContextRecord } from '../record.js';

export const ENTRY_IN_L2 = 1;
export const ENTRY_PENDING_L2 = 2;
export const ENTRY_REDACTED = 3;

export type WalEntry = { redacted: true } | { redacted: false; record: ContextRecord; pendingL2: boolean };

export function encodeWalEntry(record: ContextRecord, pendingL2: boolean): Buffer {
  const out = encodeKeyedRecord(record, 1);
  out[0] = pendingL2 ? ENTRY_PENDING_L2 : ENTRY_IN_L2;
  return out;
}

export function decodeWalEntry(payload: Buffer): WalEntry {
  if (payload[0] === ENTRY_REDACTED) return { redacted: true };
  return { redacted: false, record: decodeKeyedRecord(payload.subarray(1)), pendingL2: payload[0] === ENTRY_PENDING_L2 };
}

export const REDACTED_ENTRY = Buffer.from([ENTRY_REDACTED]);

/** The key of a WAL payload without decoding the value (for erase and verify scans). */
export function walEntryKey(payload: Buffer): string | undefined {
  if (payload[0] === ENTRY_REDACTED || payload.length < 3) return undefined;
  return payload.toString('utf8', 3, 3 + payload.readUInt16BE(1));
}

/** Whether `key` is `target` or lies under it (`target/…`): what erase removes. */
export function keyCovered(key: string, target: string): boolean {
  return key === target || key.startsWith(target.endsWith('/') ? target : `${target}/`);
}
