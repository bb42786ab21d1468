// The embedded L2: an in-process map, for the demo and a single developer. Nothing is shared, so
// there is nothing to invalidate; durability comes from the WAL, which is replayed into it at start.
import { EventEmitter } from 'node:events';
import { isExpired, type ContextRecord } from '../record.js';
import { satisfies, type Expectation, type L2Tier, type ListPage, type WriteOutcome } from './l2.js';

export class MemoryL2 extends EventEmitter implements L2Tier {
  readonly kind = 'memory';
  readonly available = true;
  readonly coherent = true;
  private readonly records = new Map<string, ContextRecord>();

  constructor(private readonly now: () => number = Date.now) {
    super();
  }

  ready(): Promise<void> {
    return Promise.resolve();
  }

  get size(): number {
    return this.records.size;
  }

  get(key: string): Promise<ContextRecord | undefined> {
    return Promise.resolve(this.read(key));
  }

  getMany(keys: readonly string[]): Promise<Array<ContextRecord | undefined>> {
    return Promise.resolve(keys.map((k) => this.read(k)));
  }

  write(record: ContextRecord, expected: Expectation): Promise<WriteOutcome> {
    const current = this.read(record.key)?.version;
    if (!satisfies(expected, current)) return Promise.resolve({ ok: false, current });
    this.apply(record);
    return Promise.resolve({ ok: true });
  }

  writeBatch(records: readonly ContextRecord[]): Promise<void> {
    for (const record of records) this.apply(record);
    return Promise.resolve();
  }

  /** Applies a record without a condition, synchronously: WAL replay at start uses it. */
  apply(record: ContextRecord): void {
    if (record.tombstone || isExpired(record, this.now())) this.records.delete(record.key);
    else this.records.set(record.key, record);
  }

  list(prefix: string, after: string | undefined, limit: number): Promise<ListPage> {
    const now = this.now();
    const keys: string[] = [];
    for (const [key, record] of this.records) {
      if (key.startsWith(prefix) && (after === undefined || key > after) && !isExpired(record, now)) keys.push(key);
    }
    keys.sort();
    const page = keys.slice(0, limit);
    return Promise.resolve(keys.length > limit ? { keys: page, next: page.at(-1)! } : { keys: page });
  }

  /** Every live record: what a snapshot of the embedded tier serialises. */
  *entries(): IterableIterator<ContextRecord> {
    const now = this.now();
    for (const record of this.records.values()) if (!isExpired(record, now)) yield record;
  }

  close(): Promise<void> {
    this.records.clear();
    return Promise.resolve();
  }

  private read(key: string): ContextRecord | undefined {
    const record = this.records.get(key);
    if (record && isExpired(record, this.now())) {
      this.records.delete(key);
      return undefined;
    }
    return record;
  }
}
