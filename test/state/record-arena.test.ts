// The arena the embedded L2 keeps its records in: every slot reads back what was put in it through
// any sequence of adds, frees and the compactions they trigger; a record decoded before a
// compaction is unchanged after it; the slabs never hold much more than twice the live bytes.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RecordArena, SLAB_BYTES } from '../../src/state/cache/record-arena.js';
import { decodeKeyedRecordAt, encodeKeyedRecord, type ContextRecord } from '../../src/state/record.js';

function record(key: string, size: number, fill: number): ContextRecord {
  return { key, value: Buffer.alloc(size, fill), contentType: 'application/octet-stream', version: `1.${fill}@n`, expiresAt: fill, retention: 'normal', updatedAt: 1 };
}

function readBack(arena: RecordArena, slot: number): ContextRecord {
  return decodeKeyedRecordAt(arena.bytes(slot), arena.start(slot), arena.end(slot));
}

describe('RecordArena', () => {
  it('reads back every live record through adds, frees and compactions, and stays within twice the live bytes', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 199 }), fc.integer({ min: 0, max: 12_000 })), { minLength: 1, maxLength: 3_000 }), (ops) => {
        const arena = new RecordArena();
        const model = new Map<string, { slot: number; record: ContextRecord }>();
        ops.forEach(([k, size], n) => {
          const key = `k${k}`;
          const previous = model.get(key);
          if (size % 7 === 0) model.delete(key); // a delete
          else {
            const next = record(key, size, n % 251);
            model.set(key, { slot: arena.add(next), record: next });
          }
          if (previous) arena.free(previous.slot);
        });
        let live = 0;
        for (const { slot, record: expected } of model.values()) {
          expect(readBack(arena, slot)).toEqual(expected);
          expect(arena.expiresAt(slot)).toBe(expected.expiresAt);
          live += encodeKeyedRecord(expected).length;
        }
        expect(arena.liveBytes).toBe(live);
        // Sealed slabs are at least half live; the one being filled and records with slabs of their own aside.
        expect(arena.heldBytes).toBeLessThanOrEqual(2 * live + SLAB_BYTES);
      }),
      { numRuns: 40 },
    );
  });

  it('leaves a record decoded before a compaction as it was, and lets an adopted block go once it is mostly dead', () => {
    const arena = new RecordArena();
    const records = Array.from({ length: 8 }, (_, i) => record(`r${i}`, 1_000, i + 1));
    const encoded = records.map((r) => encodeKeyedRecord(r));
    const block = Buffer.concat(encoded);
    const slab = arena.adopt(block);
    let at = 0;
    const slots = encoded.map((e) => arena.place(slab, at, (at += e.length), 0));
    arena.settle(slab);
    expect(arena.bytes(slots[7]!)).toBe(block);
    const decoded = readBack(arena, slots[7]!);
    for (const slot of slots.slice(0, 5)) arena.free(slot); // 3 of 8 live: compacted
    expect(arena.bytes(slots[7]!)).not.toBe(block);
    expect(readBack(arena, slots[7]!)).toEqual(records[7]);
    expect(decoded).toEqual(records[7]);
    expect(arena.liveBytes).toBe(encoded.slice(5).reduce((n, e) => n + e.length, 0));
  });

  it('gives a record over a quarter of a slab a slab of its own, let go when it is freed', () => {
    const arena = new RecordArena();
    const big = record('big', SLAB_BYTES, 9);
    const slot = arena.add(big);
    expect(arena.heldBytes).toBe(encodeKeyedRecord(big).length);
    expect(readBack(arena, slot).value.equals(big.value)).toBe(true); // equals: toEqual walks 1 MiB slowly
    arena.free(slot);
    expect(arena.heldBytes).toBe(0);
  });

  it('lets go of an adopted block none of whose records was placed', () => {
    const arena = new RecordArena();
    arena.settle(arena.adopt(Buffer.alloc(4096)));
    expect(arena.heldBytes).toBe(0);
  });
});
