// The first tier: contexts in the process's own memory, bounded in bytes. Two LRU lists share
// one budget — normal and critical — and the budget is enforced across both, always taking from
// the normal list first: a critical context leaves only once no normal one is left to evict.
import { LRUCache } from 'lru-cache';
import { isExpired, recordSize, type ContextRecord } from '../record.js';

export class L1Cache {
  hits = 0;
  misses = 0;
  evictions = 0;
  private readonly normal: LRUCache<string, ContextRecord>;
  private readonly critical: LRUCache<string, ContextRecord>;

  constructor(
    readonly maxBytes: number,
    private readonly now: () => number = Date.now,
  ) {
    const options: LRUCache.Options<string, ContextRecord, unknown> = {
      // Each list may hold the whole budget; the shared bound is enforced in `set`.
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: recordSize,
      dispose: (_record, _key, reason) => {
        if (reason === 'evict') this.evictions++;
      },
    };
    this.normal = new LRUCache(options);
    this.critical = new LRUCache(options);
  }

  /** The live record, counted as a hit or a miss; an expired one is dropped. */
  get(key: string): ContextRecord | undefined {
    const record = this.normal.get(key) ?? this.critical.get(key);
    if (record === undefined) {
      this.misses++;
      return undefined;
    }
    if (isExpired(record, this.now())) {
      this.delete(key);
      this.misses++;
      return undefined;
    }
    this.hits++;
    return record;
  }

  /** The record without touching recency or counters (for checks, not for serving). */
  peek(key: string): ContextRecord | undefined {
    const record = this.normal.peek(key) ?? this.critical.peek(key);
    return record && !isExpired(record, this.now()) ? record : undefined;
  }

  set(record: ContextRecord): void {
    if (this.maxBytes === 0) return; // no L1
    if (record.tombstone || isExpired(record, this.now())) {
      this.delete(record.key);
      return;
    }
    const [target, other] = record.retention === 'critical' ? [this.critical, this.normal] : [this.normal, this.critical];
    other.delete(record.key);
    target.set(record.key, record);
    while (this.bytes > this.maxBytes) {
      if (this.normal.size > 0) this.normal.pop();
      else if (this.critical.size > 0) this.critical.pop();
      else break;
    }
  }

  delete(key: string): void {
    this.normal.delete(key);
    this.critical.delete(key);
  }

  clear(): void {
    this.normal.clear();
    this.critical.clear();
  }

  get bytes(): number {
    return this.normal.calculatedSize + this.critical.calculatedSize;
  }

  get size(): number {
    return this.normal.size + this.critical.size;
  }

  get criticalSize(): number {
    return this.critical.size;
  }

  /** Keys, most valuable first (critical, then by recency): what warming the next start loads. */
  *hottestKeys(): IterableIterator<string> {
    yield* this.critical.keys();
    yield* this.normal.keys();
  }
}
