// The state agent, assembled: L2 (Redis or memory), recovery (snapshot chain + WAL), the tiered
// store, checkpoints of the embedded L2, L1 warming, the context API on 127.0.0.1, GDPR erase, and
// the tier figures in /metrics.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { Counter, Gauge } from 'prom-client';
import type { SidecarConfig } from '../config/schema.js';
import type { Logger } from '../telemetry/logger.js';
import type { MeshMetrics } from '../telemetry/metrics.js';
import { createContextApiServer } from './api/server.js';
import type { L2Tier } from './cache/l2.js';
import { MemoryL2 } from './cache/memory-l2.js';
import { RedisL2 } from './cache/redis-l2.js';
import { decodeWalEntry, encodeWalEntry, keyCovered } from './checkpoint/entries.js';
import { eraseFromSnapshots, redactKey, scanForKey, writeAudit, type EraseReport, type KeyScan } from './checkpoint/erase.js';
import { FrontierTrackingL2 } from './checkpoint/frontier.js';
import { CheckpointManager, restoreMetrics } from './checkpoint/manager.js';
import { rebuild } from './checkpoint/rebuild.js';
import { RestoreCatchUp, clearRestoreMarker, readRestoreMarker } from './checkpoint/restore-catch-up.js';
import { loadEncryptionKey, verifySnapshot, type SnapshotSummary } from './checkpoint/snapshot-file.js';
import { Wal } from './checkpoint/wal.js';
import { LocalStore } from './local-store.js';
import { recordSize, type ContextRecord } from './record.js';
import type { Consistency, StoreStats } from './store.js';
import { versionNodeTag } from './version.js';
import { HintStore } from './replication/hints.js';
import { ReplicaStore } from './replication/replica-store.js';
import { Replicator, consistencyResolver, type Peering } from './replication/replicator.js';
import { AntiEntropy } from './replication/anti-entropy.js';
import { fencedWrites, type Fencing } from '../peer/fencing.js';

const API_ADDRESS = '127.0.0.1';
/** How often the list of hottest keys is saved for the next start's warming. */
const HOT_KEYS_SAVE_INTERVAL_MS = 60_000;
const WARM_BATCH = 256;
const HOT_KEYS_FILE = 'l1-hot.keys';
const FLUSHED_FILE = 'l2-flushed.lsn';

export interface StateAgentOptions {
  logger: Logger;
  metrics: MeshMetrics;
  /** The peer transport and member set: with context.replication.peers, the context API is replicated over them. */
  peering?: Peering;
  random?: () => number;
  now?: () => number;
  /** Ownership epochs (src/peer/fencing.ts): while fenced, replicated writes are refused with 503 fenced. */
  fencing?: Fencing;
}

/** context.l1.maxBytes when not given, with Redis as L2. */
const DEFAULT_L1_BYTES = 256 * 1024 ** 2;

export class StateAgent {
  port = 0;
  private hotKeysTimer: NodeJS.Timeout | undefined;
  private flushedLsn = 0;
  private markerWrite: Promise<void> = Promise.resolve();
  private closed: Promise<void> | undefined;
  /** Snapshots of the embedded L2; with Redis, Redis's own persistence covers L2. */
  checkpoints: CheckpointManager | undefined;
  private encryptionKey: Buffer | undefined;
  /** The replicated store the context API uses when peers are configured. */
  replicator: Replicator | undefined;
  /** Merkle-tree rounds with replica peers and rebalancing when placement changes (with the replicator). */
  antiEntropy: AntiEntropy | undefined;
  /** After an offline restore, with replication: the anti-entropy rounds bringing back later writes. */
  restoreCatchUp: RestoreCatchUp | undefined;

  private constructor(
    private readonly config: SidecarConfig,
    readonly store: LocalStore,
    private readonly l2: L2Tier,
    private readonly wal: Wal,
    private readonly server: Server,
    readonly dir: string,
    private readonly logger: Logger,
  ) {}

  static async start(config: SidecarConfig, options: StateAgentOptions): Promise<StateAgent> {
    const ctx = config.context;
    const logger = options.logger.child({ component: 'state' });
    const dir = resolve(ctx.checkpoint.dir ?? join('data', config.node.id));
    mkdirSync(dir, { recursive: true });
    const nodeTag = versionNodeTag(config.node.id);
    const l2: L2Tier =
      ctx.l2.backend === 'redis'
        ? new RedisL2({ ...ctx.l2, url: ctx.l2.url!, instanceId: `${nodeTag}-${randomBytes(4).toString('hex')}`, logger, random: options.random })
        : new FrontierTrackingL2(options.now);
    const encryptionKey = ctx.checkpoint.encryptionKeyFile === undefined ? undefined : loadEncryptionKey(ctx.checkpoint.encryptionKeyFile);
    const wal = await Wal.open({ dir: join(dir, 'wal'), ...ctx.wal });
    if (wal.openReport.torn) logger.warn({ torn: wal.openReport.torn }, 'WAL: cut a torn or corrupt tail; recovered up to the last valid record');

    let agent: StateAgent | undefined;
    let checkpoints: CheckpointManager | undefined;
    const writeBehind = ctx.writeMode === 'write-behind';
    const appendWal = (record: ContextRecord): Promise<number> => {
      const payload = encodeWalEntry(record, writeBehind && l2.kind === 'redis');
      checkpoints?.noteWrite(payload.length);
      return wal.append(payload);
    };
    const store = new LocalStore({
      nodeTag,
      l1MaxBytes: ctx.l1.maxBytes ?? (ctx.l2.backend === 'memory' ? 0 : DEFAULT_L1_BYTES),
      maxStaleMs: ctx.l1.maxStale,
      writeMode: ctx.writeMode,
      writeBehind: ctx.writeBehind,
      l2,
      wal: { append: appendWal },
      onFlushed: (lsn) => agent?.recordFlushed(lsn),
      logger,
      now: options.now,
      random: options.random,
    });

    const ready = l2.ready().catch((err: Error) => logger.warn({ err: err.message }, 'L2 not reachable at start; continuing, it will be retried'));
    const restoreStarted = performance.now();
    let flushed = readNumber(join(dir, FLUSHED_FILE));
    if (l2 instanceof FrontierTrackingL2) {
      const report = await rebuild({ dir, encryptionKey, replay: (after, onRecord) => wal.replay(after, onRecord) }, { kind: 'latest' }, {
        reset: () => l2.clear(),
        apply: (record) => {
          store.observe(record.version);
          l2.apply(record);
        },
        // The snapshot chain in bulk (checkpoint/rebuild.ts); the WAL after it goes through apply.
        loadSnapshot: (batch) => {
          for (const record of batch.records) store.observe(record.version);
          l2.loadSnapshot(batch);
        },
      });
      for (const skipped of report.skipped) logger.error(skipped, 'checkpoint chain unreadable; falling back to an older one');
      if (report.torn) logger.warn({ torn: report.torn }, 'WAL replay stopped at a torn or corrupt record');
      logger.info({ chain: report.chain, snapshotRecords: report.snapshotRecords, walRecords: report.walRecords, contexts: l2.size }, 'state recovered');
      // Everything in the WAL is in the embedded L2 now.
      flushed = wal.lastLsn;
      checkpoints = new CheckpointManager({
        dir,
        config: ctx.checkpoint,
        wal,
        l2,
        coveredLsn: () => (writeBehind ? (agent?.flushedLsn ?? flushed) : wal.lastLsn),
        frontier: () => l2.frontier.toRecord(),
        encryptionKey,
        registry: options.metrics.registry,
        logger,
        loaded: report.chain.length ? { tip: report.chain.at(-1)!, incrementals: report.chain.length - 1 } : undefined,
      });
    } else {
      const replay = await requeue(wal, store, flushed);
      logger.info({ ...replay, backend: l2.kind, writeMode: ctx.writeMode }, 'state recovered from the WAL');
    }
    restoreMetrics(options.metrics.registry).set((performance.now() - restoreStarted) / 1000);
    await ready;

    const requests = registerMetrics(options.metrics, store);
    // With peers, the context API goes through the replicator; alone, straight to the local store.
    let replica: ReplicaStore | undefined;
    const replicator =
      options.peering && ctx.replication.peers.length > 0
        ? new Replicator({
            nodeId: config.node.id,
            nodeTag,
            config: ctx.replication,
            store,
            replica: (replica = new ReplicaStore({ store, l2, appendWal, now: options.now })),
            hints: new HintStore({ dir: join(dir, 'hints'), maxBytesPerPeer: ctx.replication.hints.maxBytes, sync: ctx.wal.fsync === 'always', logger, now: options.now }),
            peering: options.peering,
            logger,
            registry: options.metrics.registry,
            now: options.now,
          })
        : undefined;
    const server = createContextApiServer({
      store: replicator ? (options.fencing ? fencedWrites(replicator, options.fencing) : replicator) : store,
      config: ctx,
      limits: config.limits,
      defaultConsistency: ctx.replication.consistency,
      consistencyFor: consistencyResolver(ctx.replication.levels, ctx.replication.consistency),
      onRequest: (op, consistency, status) => requests.labels(op, consistency, String(status)).inc(),
    });
    agent = new StateAgent(config, store, l2, wal, server, dir, logger);
    agent.replicator = replicator;
    agent.antiEntropy =
      replicator && replica && options.peering
        ? await AntiEntropy.start({
            nodeId: config.node.id,
            config: ctx.replication,
            replica,
            ring: replicator.ring,
            peering: options.peering,
            list: (prefix, after, limit) => store.list(prefix, after, limit),
            l1: store.l1,
            warmBudgetBytes: ctx.warm.maxBytes,
            logger,
            registry: options.metrics.registry,
          })
        : undefined;
    agent.flushedLsn = flushed;
    agent.restoreCatchUp = await catchUpAfterRestore(dir, agent.antiEntropy, config, logger);
    agent.checkpoints = checkpoints;
    agent.encryptionKey = encryptionKey;
    store.start();
    checkpoints?.start();
    try {
      const warmed = await agent.warm();
      if (warmed.keys > 0) logger.info(warmed, 'L1 warmed with the previous run’s hottest contexts');
      agent.port = await listen(server, ctx.port);
    } catch (err) {
      await agent.close();
      throw err;
    }
    agent.hotKeysTimer = setInterval(() => void agent.housekeeping(), HOT_KEYS_SAVE_INTERVAL_MS).unref();
    return agent;
  }

  stats(): StoreStats & { dir: string; walLastLsn: number } {
    return { ...this.store.stats(), dir: this.dir, walLastLsn: this.wal.lastLsn };
  }

  /** Loads the contexts that were hottest in L1 last time, bounded in bytes and time. */
  private async warm(): Promise<{ keys: number; bytes: number }> {
    const { maxBytes, timeout } = this.config.context.warm;
    let keys: string[];
    try {
      keys = readFileSync(join(this.dir, HOT_KEYS_FILE), 'utf8').split('\n').filter(Boolean);
    } catch {
      return { keys: 0, bytes: 0 };
    }
    const deadline = performance.now() + timeout;
    let bytes = 0;
    let loaded = 0;
    for (let i = 0; i < keys.length && bytes < maxBytes && performance.now() < deadline; i += WARM_BATCH) {
      let records: Array<ContextRecord | undefined>;
      try {
        records = await this.l2.getMany(keys.slice(i, i + WARM_BATCH));
      } catch {
        break;
      }
      for (const record of records) {
        if (!record || bytes >= maxBytes) continue;
        this.store.l1.set(record);
        bytes += recordSize(record);
        loaded++;
      }
    }
    return { keys: loaded, bytes };
  }

  private async housekeeping(): Promise<void> {
    await this.saveHotKeys();
    // Without checkpoints (Redis keeps L2), the WAL only has to hold what has not reached Redis.
    if (!this.checkpoints) {
      const through = this.config.context.writeMode === 'write-behind' ? this.flushedLsn : this.wal.lastLsn;
      await this.wal.removeSegmentsThrough(through).catch((err: Error) => this.logger.warn({ err: err.message }, 'could not trim the WAL'));
    }
  }

  /** Writes L1's keys, hottest first, up to the warming budget: the next start loads them. */
  private async saveHotKeys(): Promise<void> {
    const budget = this.config.context.warm.maxBytes;
    if (budget === 0) return;
    const keys: string[] = [];
    let bytes = 0;
    for (const key of this.store.l1.hottestKeys()) {
      const record = this.store.l1.peek(key);
      if (!record) continue;
      bytes += recordSize(record);
      if (bytes > budget) break;
      keys.push(key);
    }
    await writeAtomically(join(this.dir, HOT_KEYS_FILE), keys.join('\n')).catch((err: Error) =>
      this.logger.warn({ err: err.message }, 'could not save the L1 hot-key list'),
    );
  }

  private recordFlushed(lsn: number): void {
    if (lsn <= this.flushedLsn) return;
    this.flushedLsn = lsn;
    // Chained so that marker writes never overtake each other.
    this.markerWrite = this.markerWrite.then(() =>
      writeAtomically(join(this.dir, FLUSHED_FILE), String(this.flushedLsn)).catch((err: Error) =>
        this.logger.warn({ err: err.message }, 'could not record the write-behind position'),
      ),
    );
  }

  /** Takes a checkpoint now (`ctxmesh checkpoint create`, or before a deploy). */
  createCheckpoint(reason = 'manual'): Promise<SnapshotSummary> {
    if (!this.checkpoints) return Promise.reject(new Error('checkpoints cover the embedded L2 (context.l2.backend: memory); with Redis, use Redis persistence (AOF/RDB)'));
    return this.checkpoints.create(reason);
  }

  async listCheckpoints(): Promise<object[]> {
    return ((await this.checkpoints?.list()) ?? []).map((e) => e.header);
  }

  /** Reads every snapshot through and checks the WAL: what `ctxmesh checkpoint verify` reports online. */
  verifyCheckpoints(key?: string): Promise<{ ok: boolean; snapshots: object[]; wal: object; key?: KeyScan }> {
    const run = async () => {
      const snapshots: Array<{ id: string; ok: boolean; lsn: number; frontier: Record<string, string>; records?: number; error?: string }> = [];
      for (const entry of (await this.checkpoints?.list()) ?? []) {
        const result = await verifySnapshot(entry.path, { key: this.encryptionKey });
        const { id, lsn, frontier } = entry.header;
        snapshots.push(result.ok ? { id, ok: true, lsn, frontier, records: result.summary.records } : { id, ok: false, lsn, frontier, error: result.error.message });
      }
      // The WAL is read from its oldest retained segment (older ones are trimmed after checkpoints).
      const first = (await this.wal.segments())[0];
      const from = first ? first.firstLsn - 1 : 0;
      const wal = await this.wal.replay(from, () => undefined);
      const scan = key === undefined ? undefined : await scanForKey(this.dir, key, this.encryptionKey, (onRecord) => this.wal.replay(from, onRecord));
      const ok = snapshots.every((s) => s.ok) && !wal.torn && (!scan || scan.snapshotRecords + scan.walRecords === 0);
      return { ok, snapshots, wal, ...(scan ? { key: scan } : {}) };
    };
    return this.checkpoints ? this.checkpoints.exclusive(run) : run();
  }

  /**
   * GDPR erase, online: the key (and everything under `key/`) leaves the live tiers, every snapshot
   * and every WAL segment, and an audit record says so. No snapshot runs meanwhile.
   */
  erase(key: string): Promise<EraseReport> {
    const run = async (): Promise<EraseReport> => {
      const liveRemoved = await this.removeLive(key);
      await this.wal.rollSegment();
      const wal = await this.wal.rewriteSegments(redactKey(key));
      const snapshots = await eraseFromSnapshots(this.dir, key, this.encryptionKey);
      const report: EraseReport = { key, snapshotsRewritten: snapshots.rewritten, snapshotRecordsRemoved: snapshots.removed, walRecordsRedacted: wal.rewritten, liveRemoved };
      await writeAudit(this.dir, report);
      const { key: _key, ...counts } = report;
      this.logger.info(counts, 'erased a key from the live tiers, the snapshots and the WAL');
      return report;
    };
    return this.checkpoints ? this.checkpoints.exclusive(run) : run();
  }

  private async removeLive(target: string): Promise<number> {
    let removed = 0;
    if (this.l2 instanceof MemoryL2) {
      for (const record of [...this.l2.entries()]) {
        if (!keyCovered(record.key, target)) continue;
        this.l2.erase(record.key);
        this.store.l1.delete(record.key);
        removed++;
      }
      return removed;
    }
    const keys = [target];
    for (let after: string | undefined; ; ) {
      const page = await this.l2.list(`${target.replace(/\/$/, '')}/`, after, 1_000);
      keys.push(...page.keys);
      if (!page.next) break;
      after = page.next;
    }
    for (const key of keys) {
      const existed = await this.l2.get(key);
      if (!existed) continue;
      await this.l2.write({ ...existed, value: Buffer.alloc(0), tombstone: true }, { kind: 'any' });
      this.store.l1.delete(key);
      removed++;
    }
    return removed;
  }

  close(flushTimeoutMs = 2_000): Promise<void> {
    this.closed ??= (async () => {
      clearInterval(this.hotKeysTimer);
      this.server.closeAllConnections();
      await new Promise<void>((done) => (this.server.listening ? this.server.close(() => done()) : done()));
      const catchUpStopped = this.restoreCatchUp?.close();
      await this.antiEntropy?.close();
      await catchUpStopped;
      await this.replicator?.close();
      await this.store.close(flushTimeoutMs);
      await this.checkpoints?.close();
      await this.markerWrite;
      await this.saveHotKeys();
      await this.wal.close();
      await this.l2.close();
    })();
    return this.closed;
  }
}

/**
 * A restore (offline) left a marker: with replication, rounds with every peer bring back what was
 * written after the restored point; without it there is nobody to ask, and the marker goes.
 */
async function catchUpAfterRestore(dir: string, antiEntropy: AntiEntropy | undefined, config: SidecarConfig, logger: Logger): Promise<RestoreCatchUp | undefined> {
  const marker = readRestoreMarker(dir);
  if (!marker) return undefined;
  if (!antiEntropy) {
    await clearRestoreMarker(dir);
    logger.info({ checkpoint: marker.checkpoint }, 'restored state loaded; no replication peers to catch up from');
    return undefined;
  }
  const peers = [...new Set([...config.context.replication.peers.map((p) => p.id), ...antiEntropy.index.members])].filter((id) => id !== config.node.id);
  return new RestoreCatchUp({ dir, marker, peers, round: (peer) => antiEntropy.requestRound(peer), logger });
}

/**
 * With Redis, L2 keeps itself; what the WAL holds for it is the write-behind entries that had not
 * reached it (after the flushed position): they go back into the queue, in order.
 */
async function requeue(wal: Wal, store: LocalStore, flushedLsn: number) {
  let queued = 0;
  const report = await wal.replay(flushedLsn, (lsn, payload) => {
    const entry = decodeWalEntry(payload);
    if (entry.redacted || !entry.pendingL2) return;
    store.replayQueued(entry.record, lsn);
    queued++;
  });
  return { replayed: report.records, requeued: queued };
}

function registerMetrics(metrics: MeshMetrics, store: LocalStore) {
  const registers = [metrics.registry];
  const requests = new Counter({
    name: 'ctxmesh_context_requests_total',
    help: 'Context API requests, by operation, requested consistency level and status.',
    labelNames: ['op', 'consistency', 'status'] as const,
    registers,
  });
  const tierCounter = (name: string, help: string, pick: (s: StoreStats) => Record<'l1' | 'l2', number>) =>
    new Counter({
      name,
      help,
      labelNames: ['tier'] as const,
      registers,
      collect() {
        const values = pick(store.stats());
        this.reset();
        this.labels('l1').inc(values.l1);
        this.labels('l2').inc(values.l2);
      },
    });
  tierCounter('ctxmesh_context_cache_hits_total', 'Context lookups answered by the tier.', (s) => ({ l1: s.l1.hits, l2: s.l2.hits }));
  tierCounter('ctxmesh_context_cache_misses_total', 'Context lookups the tier could not answer.', (s) => ({ l1: s.l1.misses, l2: s.l2.misses }));
  new Counter({
    name: 'ctxmesh_context_cache_evictions_total',
    help: 'Contexts evicted from L1 by its byte bound.',
    labelNames: ['tier'] as const,
    registers,
    collect() {
      this.reset();
      this.labels('l1').inc(store.l1.evictions);
    },
  });
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read());
      },
    });
  new Gauge({
    name: 'ctxmesh_context_cache_bytes',
    help: 'Bytes held by the tier (L1: values and keys, as its bound counts them).',
    labelNames: ['tier'] as const,
    registers,
    collect() {
      this.labels('l1').set(store.l1.bytes);
    },
  });
  new Gauge({
    name: 'ctxmesh_context_cache_entries',
    help: 'Contexts held by the tier.',
    labelNames: ['tier'] as const,
    registers,
    collect() {
      this.labels('l1').set(store.l1.size);
    },
  });
  gauge('ctxmesh_context_l2_up', 'Whether L2 answers commands (1) or not (0).', () => (store.stats().l2.available ? 1 : 0));
  gauge('ctxmesh_context_l1_coherent', 'Whether L1 receives L2 invalidations (1) or serves only as a stale fallback (0).', () =>
    store.stats().l2.coherent ? 1 : 0,
  );
  gauge('ctxmesh_context_write_behind_queued', 'Writes acknowledged but not yet in L2.', () => store.queue?.length ?? 0);
  gauge('ctxmesh_context_stale_reads_total', 'Reads served from L1 marked stale while L2 was unreachable.', () => store.stats().staleReads);
  return requests;
}

function listen(server: Server, port: number): Promise<number> {
  return new Promise((resolveListen, reject) => {
    const onError = (err: Error): void => reject(new Error(`cannot listen on ${API_ADDRESS}:${port}: ${err.message}`));
    server.once('error', onError);
    server.listen(port, API_ADDRESS, () => {
      server.off('error', onError);
      resolveListen((server.address() as AddressInfo).port);
    });
  });
}

function readNumber(path: string): number {
  try {
    const value = Number(readFileSync(path, 'utf8').trim());
    return Number.isSafeInteger(value) && value >= 0 ? value : 0;
  } catch {
    return 0;
  }
}

async function writeAtomically(path: string, content: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, content);
  await rename(tmp, path);
}

export type { Consistency };
