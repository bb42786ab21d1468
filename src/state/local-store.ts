// The single-node context store: L1 in process, L2 (Redis or memory) behind it, every write in
// the WAL. Replication will wrap this store; what it needs from here is `get`/`put`/… for local
// requests and the same operations for records that arrive already stamped.
//
// Reads:  write-behind queue → L1 (only while L1 is coherent with L2) → L2 → L1.
// Writes: write-through: L2 (condition checked atomically there) → WAL → L1 → ack.
//         write-behind:  per-key lock → condition checked on the local view → WAL → queue + L1 → ack;
//                        the queue carries it to L2 in order.
import type { Logger } from '../telemetry/logger.js';
import { MeshError } from '../errors/table.js';
import { ANY, satisfies, type Expectation, type L2Tier, type ListPage } from './cache/l2.js';
import { L1Cache } from './cache/l1.js';
import { WriteBehindQueue, type WriteBehindOptions } from './cache/write-behind.js';
import { HybridClock } from './hlc.js';
import { KeyedLock } from './keyed-lock.js';
import { recordSize, type ContextRecord } from './record.js';
import type { Access, ContextStore, Mutation, ReadResult, StoreStats } from './store.js';
import { compareVersions, makeVersion, versionTimestamp, type Version } from './version.js';

/** Times a read-modify-write re-reads after losing a race before giving up with 412. */
const UPDATE_ATTEMPTS = 8;

/** What the store needs of the write-ahead log. */
export interface WriteAheadLog {
  /** Logs the record; resolves with its LSN once it is durable per the fsync policy. */
  append(record: ContextRecord): Promise<number>;
}

export interface LocalStoreOptions {
  nodeTag: string;
  l1MaxBytes: number;
  /** How long L1 may serve (marked stale) after L2 became unreachable. */
  maxStaleMs: number;
  writeMode: 'write-through' | 'write-behind';
  writeBehind: WriteBehindOptions;
  l2: L2Tier;
  wal?: WriteAheadLog;
  /** Called with the LSN up to which write-behind has put everything in L2. */
  onFlushed?: (lsn: number) => void;
  logger: Logger;
  now?: () => number;
  random?: () => number;
}

export class LocalStore implements ContextStore {
  readonly l1: L1Cache;
  readonly clock: HybridClock;
  readonly queue: WriteBehindQueue | undefined;
  private readonly l2: L2Tier;
  private readonly now: () => number;
  private readonly locks = new KeyedLock();
  private l2Hits = 0;
  private l2Misses = 0;
  private staleReads = 0;
  /** Bumped by every invalidation: a read or write that raced one does not cache its result. */
  private invalidations = 0;
  /** When the coherence link or L2 last went away; undefined while both are fine. */
  private incoherentSince: number | undefined;
  private linkDropped = false;

  constructor(private readonly options: LocalStoreOptions) {
    this.now = options.now ?? Date.now;
    this.clock = new HybridClock(this.now);
    this.l1 = new L1Cache(options.l1MaxBytes, this.now);
    this.l2 = options.l2;
    if (options.writeMode === 'write-behind') {
      if (!options.wal) throw new Error('write-behind needs the WAL: it is where acknowledged writes wait for L2');
      this.queue = new WriteBehindQueue(options.l2, options.writeBehind, (lsn) => options.onFlushed?.(lsn), options.logger, options.random);
    }
    this.l2.on('invalidate', (key: string) => {
      this.invalidations++;
      this.l1.delete(key);
    });
    this.l2.on('link', (up: boolean) => this.onLink(up));
    if (!this.l2.coherent) this.incoherentSince = this.now();
  }

  start(): void {
    this.queue?.start();
  }

  async close(flushTimeoutMs: number): Promise<void> {
    await this.queue?.stop(flushTimeoutMs);
  }

  // ── reads ────────────────────────────────────────────────────────────────────────────────

  async get(key: string, _access?: Access): Promise<ReadResult | undefined> {
    const queued = this.queue?.pending(key);
    if (queued) return queued.tombstone ? undefined : { record: queued, stale: false, tier: 'queue' };
    if (this.incoherentSince === undefined) {
      const cached = this.l1.get(key);
      if (cached) return { record: cached, stale: false, tier: 'l1' };
      return this.readThrough(key);
    }
    // L1 may have missed invalidations: ask L2, and fall back to L1 (marked) only if L2 is away.
    try {
      return await this.readThrough(key);
    } catch (err) {
      const cached = this.l1.peek(key);
      if (!cached || !(err instanceof MeshError) || err.code !== 'l2_unavailable') throw err;
      if (this.now() - this.incoherentSince > this.options.maxStaleMs) {
        throw new MeshError('l2_unavailable', `L2 has been unreachable for longer than l1.maxStale (${this.options.maxStaleMs} ms)`, { cause: err });
      }
      this.staleReads++;
      return { record: cached, stale: true, tier: 'l1' };
    }
  }

  getMany(keys: readonly string[], access?: Access): Promise<Array<ReadResult | undefined>> {
    return Promise.all(keys.map((key) => this.get(key, access)));
  }

  private async readThrough(key: string): Promise<ReadResult | undefined> {
    const seen = this.invalidations;
    const record = await this.l2.get(key);
    if (!record) {
      this.l2Misses++;
      return undefined;
    }
    this.l2Hits++;
    this.observe(record.version);
    if (seen === this.invalidations && this.incoherentSince === undefined) this.l1.set(record);
    return { record, stale: false, tier: 'l2' };
  }

  list(prefix: string, after: string | undefined, limit: number): Promise<ListPage> {
    return this.queue ? this.listWithQueue(prefix, after, limit) : this.l2.list(prefix, after, limit);
  }

  /** L2's page merged with queued writes that L2 does not have yet (creates shown, deletes hidden). */
  private async listWithQueue(prefix: string, after: string | undefined, limit: number): Promise<ListPage> {
    const page = await this.l2.list(prefix, after, limit);
    const keys = new Set(page.keys);
    for (const record of this.queue!.pendingKeys(prefix)) {
      if (after !== undefined && record.key <= after) continue;
      // Past the end of L2's page, a queued key would jump over L2 keys not yet listed.
      if (page.next !== undefined && record.key > page.next) continue;
      if (record.tombstone) keys.delete(record.key);
      else keys.add(record.key);
    }
    const merged = [...keys].sort();
    const out = merged.slice(0, limit);
    return merged.length > limit || page.next !== undefined ? { keys: out, next: out.at(-1) ?? page.next } : { keys: out };
  }

  // ── writes ───────────────────────────────────────────────────────────────────────────────

  put(key: string, mutation: Mutation, expected: Expectation, _access?: Access): Promise<ContextRecord> {
    // Stamped under the lock in write-behind, so that queue order and version order agree.
    if (this.queue) return this.locks.run(key, () => this.writeBehind(this.stamp(key, mutation), expected));
    return this.writeThrough(this.stamp(key, mutation), expected);
  }

  async update(key: string, change: (current: ContextRecord | undefined) => Mutation, expected: Expectation, _access?: Access): Promise<ContextRecord> {
    if (this.queue) {
      return this.locks.run(key, async () => {
        const current = await this.localView(key);
        check(expected, current?.version, key);
        return this.writeBehind(this.stamp(key, change(current)), ANY);
      });
    }
    for (let attempt = 0; ; attempt++) {
      const current = await this.authoritative(key);
      check(expected, current?.version, key);
      const record = this.stamp(key, change(current));
      const pinned: Expectation = current ? { kind: 'version', versions: [current.version] } : { kind: 'absent' };
      try {
        return await this.writeThrough(record, pinned);
      } catch (err) {
        // Lost a race with another writer: re-read and re-apply, unless the caller pinned a version.
        const raced = err instanceof MeshError && err.code === 'precondition_failed';
        if (!raced || expected.kind === 'version' || attempt + 1 >= UPDATE_ATTEMPTS) throw err;
      }
    }
  }

  async delete(key: string, expected: Expectation, _access?: Access): Promise<ContextRecord | undefined> {
    if (this.queue) {
      return this.locks.run(key, async () => {
        const current = await this.localView(key);
        if (!current) return undefined;
        check(expected, current.version, key);
        return this.writeBehind(this.tombstone(key), ANY);
      });
    }
    // Deleting nothing is a 404, so "any" becomes "present"; the outcome tells which it was.
    const condition: Expectation = expected.kind === 'any' ? { kind: 'present' } : expected;
    const tombstone = this.tombstone(key);
    const outcome = await this.l2.write(tombstone, condition);
    if (!outcome.ok) {
      if (outcome.current === undefined) return undefined;
      throw preconditionFailed(key, outcome.current);
    }
    this.l1.delete(key);
    await this.log(tombstone);
    return tombstone;
  }

  private tombstone(key: string): ContextRecord {
    const record = this.stamp(key, { value: Buffer.alloc(0), contentType: '', retention: 'normal' });
    record.tombstone = true;
    return record;
  }

  private async writeThrough(record: ContextRecord, expected: Expectation): Promise<ContextRecord> {
    const seen = this.invalidations;
    const outcome = await this.l2.write(record, expected);
    if (!outcome.ok) throw preconditionFailed(record.key, outcome.current);
    await this.log(record);
    // Another sidecar's write of the same key may have landed between ours and now.
    if (seen === this.invalidations && this.incoherentSince === undefined) this.cacheIfNewer(record);
    else this.l1.delete(record.key);
    return record;
  }

  /** Called under the key's lock. The WAL append is the durability point; L2 follows from the queue. */
  private async writeBehind(record: ContextRecord, expected: Expectation): Promise<ContextRecord> {
    if (expected.kind !== 'any') check(expected, (await this.localView(record.key))?.version, record.key);
    const queue = this.queue!;
    const bytes = recordSize(record);
    queue.reserve(bytes);
    let lsn: number;
    try {
      lsn = await this.options.wal!.append(record);
    } catch (err) {
      queue.release(bytes);
      throw new MeshError('internal', `WAL append failed: ${(err as Error).message}`, { cause: err });
    }
    queue.push(record, lsn);
    this.l1.set(record);
    return record;
  }

  private async log(record: ContextRecord): Promise<void> {
    if (!this.options.wal) return;
    try {
      await this.options.wal.append(record);
    } catch (err) {
      // L2 has the write; it is not acknowledged, as with any write whose reply was lost.
      throw new MeshError('internal', `WAL append failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The current record as this sidecar knows it: queued write, coherent L1, then L2. */
  private async localView(key: string): Promise<ContextRecord | undefined> {
    const queued = this.queue?.pending(key);
    if (queued) return queued.tombstone ? undefined : queued;
    if (this.incoherentSince === undefined) {
      const cached = this.l1.peek(key);
      if (cached) return cached;
    }
    return this.authoritative(key);
  }

  /** L2's copy, bypassing L1: what a read-modify-write must start from. */
  private authoritative(key: string): Promise<ContextRecord | undefined> {
    return this.l2.get(key);
  }

  /** Applies a record stamped elsewhere (WAL replay into the queue, later: replication). */
  replayQueued(record: ContextRecord, lsn: number): void {
    this.observe(record.version);
    this.queue?.push(record, lsn, false);
    this.l1.set(record);
  }

  observe(version: Version): void {
    const t = versionTimestamp(version);
    if (t) this.clock.observe(t);
  }

  private stamp(key: string, mutation: Mutation): ContextRecord {
    const t = this.clock.tick();
    return {
      key,
      value: mutation.value,
      contentType: mutation.contentType,
      version: makeVersion(t, this.options.nodeTag),
      expiresAt: mutation.ttlMs === undefined ? 0 : this.now() + mutation.ttlMs,
      retention: mutation.retention,
      updatedAt: t.wall,
    };
  }

  private cacheIfNewer(record: ContextRecord): void {
    const cached = this.l1.peek(record.key);
    if (!cached || compareVersions(record.version, cached.version) >= 0) this.l1.set(record);
  }

  // ── coherence ────────────────────────────────────────────────────────────────────────────

  // Coherence is the invalidation link's state, not the command connection's: while the link is
  // up, invalidations arrive and L1 is exact even if a command fails; while it is down, L1 can
  // only be a fallback.
  private onLink(up: boolean): void {
    if (!up) {
      if (!this.linkDropped) {
        this.linkDropped = true;
        this.incoherentSince ??= this.now();
        this.options.logger.warn('L2 invalidation link down: L1 now answers only as stale, when L2 cannot');
      }
      return;
    }
    if (this.incoherentSince === undefined) return;
    // Whatever L1 holds from before may have missed invalidations: drop it. Queued writes stay
    // readable from the queue, which is why they live there and not only in L1.
    const flushed = this.l1.size;
    this.l1.clear();
    this.incoherentSince = undefined;
    if (this.linkDropped) this.options.logger.info({ flushed }, 'L2 invalidation link back: flushed L1');
    this.linkDropped = false;
  }

  stats(): StoreStats {
    const l1 = this.l1;
    const l1Lookups = l1.hits + l1.misses;
    const l2Lookups = this.l2Hits + this.l2Misses;
    return {
      l1: {
        entries: l1.size,
        bytes: l1.bytes,
        maxBytes: l1.maxBytes,
        criticalEntries: l1.criticalSize,
        hits: l1.hits,
        misses: l1.misses,
        evictions: l1.evictions,
        hitRatio: l1Lookups === 0 ? 0 : l1.hits / l1Lookups,
      },
      l2: {
        backend: this.l2.kind,
        available: this.l2.available,
        coherent: this.l2.coherent,
        hits: this.l2Hits,
        misses: this.l2Misses,
        hitRatio: l2Lookups === 0 ? 0 : this.l2Hits / l2Lookups,
      },
      writeMode: this.options.writeMode,
      writeBehind: { queued: this.queue?.length ?? 0, queuedBytes: this.queue?.bytes ?? 0, flushed: this.queue?.flushed ?? 0 },
      staleReads: this.staleReads,
    };
  }
}

function check(expected: Expectation, current: Version | undefined, key: string): void {
  if (!satisfies(expected, current)) throw preconditionFailed(key, current);
}

function preconditionFailed(key: string, current: Version | undefined): MeshError {
  return new MeshError('precondition_failed', current === undefined ? `context ${key} does not exist` : `context ${key} is at version "${current}"`);
}
