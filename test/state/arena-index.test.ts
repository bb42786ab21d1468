// The embedded L2's index over key bytes in the arena: through any sequence of puts and removes
// (growth, deleted entries, non-ASCII keys) it answers as a Map<string, slot> would.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ArenaIndex } from '../../src/state/cache/arena-index.js';
import { RecordArena } from '../../src/state/cache/record-arena.js';
import type { ContextRecord } from '../../src/state/record.js';

function record(key: string): ContextRecord {
  return { key, value: Buffer.from('v'), contentType: 'text/plain', version: '1.0@n', expiresAt: 0, retention: 'normal', updatedAt: 1 };
}

describe('ArenaIndex', () => {
  it('answers as a Map of the same keys through puts, removes and growth', () => {
    const keyArb = fc.oneof(fc.integer({ min: 0, max: 3_000 }).map((n) => `tenant/s-${n}`), fc.string({ minLength: 0, maxLength: 12, unit: 'grapheme' }));
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), keyArb), { minLength: 1, maxLength: 5_000 }), (ops) => {
        const arena = new RecordArena();
        const index = new ArenaIndex(arena);
        const model = new Map<string, number>();
        for (const [remove, key] of ops) {
          if (remove) {
            const removed = index.remove(key);
            expect(removed).toBe(model.get(key));
            if (removed !== undefined) arena.free(removed);
            model.delete(key);
          } else {
            const slot = arena.add(record(key));
            const previous = index.put(slot);
            expect(previous).toBe(model.get(key));
            if (previous !== undefined) arena.free(previous);
            model.set(key, slot);
          }
        }
        expect(index.size).toBe(model.size);
        for (const [key, slot] of model) {
          expect(index.get(key)).toBe(slot);
          expect(arena.key(slot)).toBe(key);
        }
        expect(index.get('never put')).toBeUndefined();
      }),
      { numRuns: 30 },
    );
  });

  it('grows past its first table and drops deleted entries as it does', () => {
    const arena = new RecordArena();
    const index = new ArenaIndex(arena);
    const slots = new Map<string, number>();
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 20_000; i++) {
        const key = `k/${i}`;
        if (round === 1 && i % 2 === 0) {
          arena.free(index.remove(key)!);
          slots.delete(key);
          continue;
        }
        const slot = arena.add(record(key));
        const previous = index.put(slot);
        expect(previous).toBe(slots.get(key));
        if (previous !== undefined) arena.free(previous);
        slots.set(key, slot);
      }
    }
    expect(index.size).toBe(20_000);
    for (const [key, slot] of slots) if (index.get(key) !== slot) throw new Error(`${key}: ${index.get(key)} != ${slot}`);
  });

  it('finds a key whose UTF-8 form is longer than its lookup buffer', () => {
    const arena = new RecordArena();
    const index = new ArenaIndex(arena);
    const key = 'ключ/'.repeat(200);
    const slot = arena.add(record(key));
    expect(index.put(slot)).toBeUndefined();
    expect(index.get(key)).toBe(slot);
    expect(index.remove(key)).toBe(slot);
    expect(index.get(key)).toBeUndefined();
  });
});
