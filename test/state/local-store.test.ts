// The tiered store over the embedded L2. Redis-specific behaviour (shared L2, invalidation, outages
// of a real server) is in agent-redis.test.ts; here the tiers' rules themselves.
import { describe, expect, it } from 'vitest';
import { MeshError } from '../../src/errors/table.js';
import { ANY, type Expectation } from '../../src/state/cache/l2.js';
import { MemoryL2 } from '../../src/state/cache/memory-l2.js';
import { LocalStore, type LocalStoreOptions } from '../../src/state/local-store.js';
import { decodeKeyedRecord, encodeKeyedRecord, type ContextRecord } from '../../src/state/record.js';
import type { Access, Mutation } from '../../src/state/store.js';
import { compareVersions } from '../../src/state/version.js';
import { createLogger } from '../../src/telemetry/logger.js';

const access: Access = { consistency: 'session' };
const logger = createLogger({ level: 'silent' });

function value(text: string, ttlMs?: number): Mutation {
  return { value: Buffer.from(text), contentType: 'text/plain', ttlMs, retention: 'normal' };
}

/** The embedded L2 with a switch: while down, it answers as an unreachable Redis would. */
class SwitchableL2 extends MemoryL2 {
  down = false;
  writes: string[] = [];
  override get(key: string) {
    return this.down ? Promise.reject(new MeshError('l2_unavailable', 'switched off')) : super.get(key);
  }
  override write(record: ContextRecord, expected: Expectation) {
    return this.down ? Promise.reject(new MeshError('l2_unavailable', 'switched off')) : super.write(record, expected);
  }
  override writeBatch(records: readonly ContextRecord[]) {
    if (this.down) return Promise.reject(new MeshError('l2_unavailable', 'switched off'));
    this.writes.push(...records.map((r) => `${r.key}=${r.tombstone ? '∅' : r.value.toString()}`));
    return super.writeBatch(records);
  }
}

function memoryWal() {
  // As the agent logs them, less the kind byte: what a restart would read back.
  const entries: Buffer[] = [];
  return { entries, append: (record: ContextRecord) => Promise.resolve(entries.push(encodeKeyedRecord(record))) };
}

function store(overrides: Partial<LocalStoreOptions> = {}) {
  const l2 = (overrides.l2 as SwitchableL2 | undefined) ?? new SwitchableL2(overrides.now);
  const wal = memoryWal();
  const s = new LocalStore({
    nodeTag: 'n1',
    l1MaxBytes: 1 << 20,
    maxStaleMs: 30_000,
    writeMode: 'write-through',
    writeBehind: { maxQueue: 100, maxQueueBytes: 1 << 20, batchSize: 10 },
    l2,
    wal,
    logger,
    ...overrides,
  });
  s.start();
  return { s, l2, wal };
}

describe('local store', () => {
  it('stamps unique, increasing versions and logs every write', async () => {
    const { s, wal } = store();
    const a = await s.put('t/a', value('1'), ANY, access);
    const b = await s.put('t/a', value('2'), ANY, access);
    expect(a.version).not.toBe(b.version);
    expect(compareVersions(a.version, b.version)).toBeLessThan(0);
    expect(wal.entries.map((e) => decodeKeyedRecord(e).value.toString())).toEqual(['1', '2']);
  });

  it('checks conditions: absent, present, version', async () => {
    const { s } = store();
    const a = await s.put('t/a', value('1'), { kind: 'absent' }, access);
    await expect(s.put('t/a', value('x'), { kind: 'absent' }, access)).rejects.toMatchObject({ code: 'precondition_failed' });
    await expect(s.put('t/a', value('x'), { kind: 'version', versions: ['0.0@n1'] }, access)).rejects.toMatchObject({ code: 'precondition_failed' });
    await s.put('t/a', value('2'), { kind: 'version', versions: [a.version] }, access);
    await expect(s.put('t/b', value('x'), { kind: 'present' }, access)).rejects.toMatchObject({ code: 'precondition_failed' });
    expect((await s.get('t/a', access))?.record.value.toString()).toBe('2');
  });

  it('expires contexts on both tiers', async () => {
    let now = 10_000;
    const { s, l2 } = store({ now: () => now });
    await s.put('t/a', value('1', 1_000), ANY, access);
    expect((await s.get('t/a', access))?.tier).toBe('l1');
    now += 999;
    expect(await s.get('t/a', access)).toBeDefined();
    now += 1;
    expect(await s.get('t/a', access)).toBeUndefined();
    expect(await l2.get('t/a')).toBeUndefined();
    expect(s.stats().l1.entries).toBe(0);
  });

  it('reads from L2 into L1 and counts the tiers', async () => {
    const { s, l2 } = store();
    l2.apply({ key: 't/a', value: Buffer.from('x'), contentType: 'text/plain', version: '5.0@other', expiresAt: 0, retention: 'normal', updatedAt: 5 });
    expect((await s.get('t/a', access))?.tier).toBe('l2');
    expect((await s.get('t/a', access))?.tier).toBe('l1');
    expect(await s.get('t/none', access)).toBeUndefined();
    const stats = s.stats();
    expect(stats.l1).toMatchObject({ hits: 1, misses: 2 });
    expect(stats.l2).toMatchObject({ hits: 1, misses: 1 });
  });

  it('update re-applies its change when another writer got there first, and honours a pinned version', async () => {
    const { s } = store();
    const first = await s.put('t/a', value('0'), ANY, access);
    let calls = 0;
    const updated = await s.update(
      't/a',
      (current) => {
        calls++;
        // The first time, a concurrent writer slips in between this read and the write.
        if (calls === 1) void s.put('t/a', value('10'), ANY, access);
        return value(String(Number(current!.value.toString()) + 1));
      },
      ANY,
      access,
    );
    expect(calls).toBe(2);
    expect(updated.value.toString()).toBe('11');
    await expect(s.update('t/a', () => value('x'), { kind: 'version', versions: [first.version] }, access)).rejects.toMatchObject({
      code: 'precondition_failed',
    });
  });

  it('delete reports whether there was anything and checks its condition', async () => {
    const { s } = store();
    expect(await s.delete('t/a', ANY, access)).toBeUndefined();
    const a = await s.put('t/a', value('1'), ANY, access);
    await expect(s.delete('t/a', { kind: 'version', versions: ['1.1@x'] }, access)).rejects.toMatchObject({ code: 'precondition_failed' });
    expect((await s.delete('t/a', { kind: 'version', versions: [a.version] }, access))?.tombstone).toBe(true);
    expect(await s.get('t/a', access)).toBeUndefined();
  });

  it('write-through fails fast while L2 is down and writes nothing', async () => {
    const { s, l2, wal } = store();
    l2.down = true;
    await expect(s.put('t/a', value('1'), ANY, access)).rejects.toMatchObject({ code: 'l2_unavailable' });
    expect(wal.entries).toHaveLength(0);
    l2.down = false;
    expect(await s.get('t/a', access)).toBeUndefined();
  });

  describe('write-behind', () => {
    it('acknowledges from L1 + WAL, then flushes to L2 in order', async () => {
      const { s, l2, wal } = store({ writeMode: 'write-behind' });
      l2.down = true;
      await s.put('t/a', value('1'), ANY, access);
      await s.put('t/b', value('1'), ANY, access);
      await s.put('t/a', value('2'), ANY, access);
      await s.delete('t/b', ANY, access);
      expect(wal.entries).toHaveLength(4);
      expect((await s.get('t/a', access))?.record.value.toString()).toBe('2');
      expect((await s.get('t/a', access))?.tier).toBe('queue');
      expect(await s.get('t/b', access)).toBeUndefined();
      expect(s.stats().writeBehind.queued).toBe(4);
      l2.down = false;
      await until(() => s.stats().writeBehind.queued === 0);
      expect(l2.writes).toEqual(['t/a=1', 't/b=1', 't/a=2', 't/b=∅']);
      expect((await l2.get('t/a'))?.value.toString()).toBe('2');
    });

    it('refuses writes with write_queue_full and Retry-After once the queue is at its bound', async () => {
      const { s, l2 } = store({ writeMode: 'write-behind', writeBehind: { maxQueue: 3, maxQueueBytes: 1 << 20, batchSize: 10 } });
      l2.down = true;
      for (const k of ['t/a', 't/b', 't/c']) await s.put(k, value('1'), ANY, access);
      const refused = await s.put('t/d', value('1'), ANY, access).catch((e: MeshError) => e);
      expect(refused).toMatchObject({ code: 'write_queue_full', status: 503 });
      expect((refused as MeshError).retryAfter).toBeGreaterThan(0);
      l2.down = false;
      await until(() => s.stats().writeBehind.queued === 0);
      await s.put('t/d', value('1'), ANY, access);
    });

    it('serialises conditional writers on one key: exactly one wins', async () => {
      const { s } = store({ writeMode: 'write-behind' });
      const base = await s.put('t/a', value('0'), ANY, access);
      const results = await Promise.allSettled(
        Array.from({ length: 10 }, (_, i) => s.put('t/a', value(String(i)), { kind: 'version', versions: [base.version] }, access)),
      );
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    });
  });
});

async function until(predicate: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}
