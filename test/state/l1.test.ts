import { describe, expect, it } from 'vitest';
import { L1Cache } from '../../src/state/cache/l1.js';
import { recordSize, type ContextRecord, type Retention } from '../../src/state/record.js';

function record(key: string, bytes: number, retention: Retention = 'normal', expiresAt = 0): ContextRecord {
  return { key, value: Buffer.alloc(bytes, 1), contentType: 'application/octet-stream', version: `1.0@n`, expiresAt, retention, updatedAt: 1 };
}

describe('L1 cache', () => {
  it('stays within its byte bound, evicting the least recently used first', () => {
    const one = recordSize(record('t/a', 1000));
    const l1 = new L1Cache(one * 3);
    for (const k of ['t/a', 't/b', 't/c']) l1.set(record(k, 1000));
    expect(l1.get('t/a')).toBeDefined(); // a is now the most recent
    l1.set(record('t/d', 1000));
    expect(l1.bytes).toBeLessThanOrEqual(one * 3);
    expect(l1.peek('t/b')).toBeUndefined();
    expect([l1.peek('t/a'), l1.peek('t/c'), l1.peek('t/d')].every(Boolean)).toBe(true);
    expect(l1.evictions).toBe(1);
  });

  it('evicts critical contexts only after every normal one is gone', () => {
    const one = recordSize(record('t/n1', 1000));
    const l1 = new L1Cache(one * 4);
    l1.set(record('t/c1', 1000, 'critical'));
    l1.set(record('t/c2', 1000, 'critical'));
    l1.set(record('t/n1', 1000));
    l1.set(record('t/n2', 1000));
    // Two more normal contexts: both older normal ones go, the older critical ones stay.
    l1.set(record('t/n3', 1000));
    l1.set(record('t/n4', 1000));
    expect(l1.peek('t/c1')).toBeDefined();
    expect(l1.peek('t/c2')).toBeDefined();
    expect(l1.peek('t/n1')).toBeUndefined();
    expect(l1.peek('t/n2')).toBeUndefined();
    // Two critical ones: the normal ones leave first, and only then the oldest critical one.
    l1.set(record('t/c3', 1000, 'critical'));
    l1.set(record('t/c4', 1000, 'critical'));
    expect(l1.peek('t/n3')).toBeUndefined();
    expect(l1.peek('t/n4')).toBeUndefined();
    expect([l1.peek('t/c1'), l1.peek('t/c2'), l1.peek('t/c3'), l1.peek('t/c4')].every(Boolean)).toBe(true);
    l1.set(record('t/c5', 1000, 'critical'));
    expect(l1.peek('t/c1')).toBeUndefined();
    expect(l1.criticalSize).toBe(4);
    expect(l1.evictions).toBe(5);
  });

  it('moves a context between classes when its retention changes', () => {
    const l1 = new L1Cache(1 << 20);
    l1.set(record('t/a', 10));
    l1.set(record('t/a', 10, 'critical'));
    expect(l1.size).toBe(1);
    expect(l1.criticalSize).toBe(1);
  });

  it('honours expiry on read and counts hits and misses', () => {
    let now = 1_000;
    const l1 = new L1Cache(1 << 20, () => now);
    l1.set(record('t/a', 10, 'normal', 1_500));
    expect(l1.get('t/a')).toBeDefined();
    now = 1_500;
    expect(l1.get('t/a')).toBeUndefined();
    expect(l1.size).toBe(0);
    expect([l1.hits, l1.misses]).toEqual([1, 1]);
  });

  it('refuses a context larger than the whole bound and drops tombstones', () => {
    const l1 = new L1Cache(500);
    l1.set(record('t/big', 10_000));
    expect(l1.size).toBe(0);
    l1.set(record('t/a', 10));
    l1.set({ ...record('t/a', 0), tombstone: true });
    expect(l1.peek('t/a')).toBeUndefined();
  });

  it('lists its hottest keys: critical first, then by recency', () => {
    const l1 = new L1Cache(1 << 20);
    l1.set(record('t/a', 1));
    l1.set(record('t/b', 1));
    l1.set(record('t/c', 1, 'critical'));
    l1.get('t/a');
    expect([...l1.hottestKeys()]).toEqual(['t/c', 't/a', 't/b']);
  });
});
