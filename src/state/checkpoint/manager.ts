// Checkpoints of a running sidecar's embedded L2: full and incremental snapshots taken from a
// copy-on-write view (the pause is opening the view: O(1)), on an interval, after a number of
// writes or bytes, or when asked; retention that never breaks a kept chain; and the WAL trimmed to
// what the oldest kept snapshot still needs.
import { mkdirSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { ContextConfig } from '../../config/schema.js';
import type { Logger } from '../../telemetry/logger.js';
import type { MemoryL2 } from '../cache/memory-l2.js';
import { SNAPSHOT_DIR, chainOf, expiredSnapshots, readCatalog, snapshotId, snapshotPath, type CatalogEntry } from './catalog.js';
import { writeSnapshot, type SnapshotSummary } from './snapshot-file.js';
import type { Wal } from './wal.js';

export interface CheckpointManagerOptions {
  dir: string;
  config: ContextConfig['checkpoint'];
  wal: Wal;
  l2: MemoryL2;
  /** The WAL position every write at or below which is already in `l2`. */
  coveredLsn(): number;
  /**
   * Per origin node, the newest HLC timestamp of a write `l2` reflects (frontier.ts), read when the
   * view opens: the snapshot's frontier.
   */
  frontier(): Record<string, string>;
  encryptionKey?: Buffer;
  registry: Registry;
  logger: Logger;
  /** The chain recovery loaded, so incrementals continue it. */
  loaded?: { tip: string; incrementals: number };
}

export class CheckpointManager {
  private timer: NodeJS.Timeout | undefined;
  /** Every snapshot runs after the previous one: one view, one writer at a time. */
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;
  private writesSince = 0;
  private bytesSince = 0;
  private tip: string | undefined;
  private incrementals: number;
  private closed = false;
  private readonly metrics: ReturnType<typeof checkpointMetrics>;

  constructor(private readonly options: CheckpointManagerOptions) {
    mkdirSync(join(options.dir, SNAPSHOT_DIR), { recursive: true });
    this.tip = options.loaded?.tip;
    this.incrementals = options.loaded?.incrementals ?? 0;
    this.metrics = checkpointMetrics(options.registry);
  }

  start(): void {
    this.timer = setInterval(() => void this.create('interval').catch(() => undefined), this.options.config.interval).unref();
  }

  /** Counts a write toward the change thresholds; crossing one starts a snapshot in the background. */
  noteWrite(bytes: number): void {
    this.writesSince++;
    this.bytesSince += bytes;
    const { changedWrites, changedBytes } = this.options.config;
    const over = (changedWrites > 0 && this.writesSince >= changedWrites) || (changedBytes > 0 && this.bytesSince >= changedBytes);
    if (over && this.pending === 0 && !this.closed) void this.create('threshold').catch(() => undefined);
  }

  /** Takes a snapshot (after any already running) and applies retention. */
  create(reason: string): Promise<SnapshotSummary> {
    if (this.closed) return Promise.reject(new Error('checkpoints are closed'));
    this.pending++;
    const run = this.tail.then(() => this.take(reason)).finally(() => this.pending--);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Runs `work` with no snapshot in progress (erase must not race a writer of the files it rewrites). */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.tail.then(work);
    this.tail = run.catch(() => undefined);
    return run;
  }

  async list(): Promise<CatalogEntry[]> {
    return (await readCatalog(this.options.dir)).entries;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.tail;
  }

  private async take(reason: string): Promise<SnapshotSummary> {
    const { l2, config, logger } = this.options;
    const kind = this.tip === undefined || this.incrementals + 1 >= config.fullEvery ? 'full' : 'incremental';
    const started = performance.now();
    const view = l2.openView();
    const lsn = this.options.coveredLsn();
    // Read with the view opened, before any write can land: exactly what the view reflects.
    const frontier = this.options.frontier();
    const pause = performance.now() - started;
    const createdAt = Date.now();
    const id = snapshotId(createdAt, lsn, kind);
    const header = {
      id,
      kind,
      ...(kind === 'incremental' ? { parent: this.tip } : {}),
      createdAt,
      lsn,
      frontier,
      reason,
    } as const;
    this.writesSince = 0;
    this.bytesSince = 0;
    let summary: SnapshotSummary;
    try {
      summary = await writeSnapshot(snapshotPath(this.options.dir, id), header, kind === 'full' ? l2.viewRecords(view) : l2.viewChanges(view, createdAt), {
        compression: config.compress ? 'deflate' : 'none',
        key: this.options.encryptionKey,
        sync: true,
      });
    } catch (err) {
      l2.closeView(view, false);
      this.metrics.results.labels('failure').inc();
      logger.error({ err: (err as Error).message, id, kind }, 'checkpoint failed; the previous one stays the newest');
      throw err;
    }
    l2.closeView(view, true);
    this.tip = id;
    this.incrementals = kind === 'full' ? 0 : this.incrementals + 1;
    const seconds = (performance.now() - started) / 1000;
    this.metrics.results.labels('success').inc();
    this.metrics.duration.labels(kind).observe(seconds);
    this.metrics.pause.observe(pause / 1000);
    this.metrics.size.labels(kind).set(summary.bytes);
    logger.info({ id, kind, reason, records: summary.records, bytes: summary.bytes, ms: Math.round(seconds * 1000), pauseMs: Number(pause.toFixed(3)) }, 'checkpoint taken');
    await this.applyRetention().catch((err: Error) => logger.warn({ err: err.message }, 'checkpoint retention failed; will retry after the next one'));
    return summary;
  }

  private async applyRetention(): Promise<void> {
    const { dir, config, wal } = this.options;
    const { entries } = await readCatalog(dir);
    const expired = expiredSnapshots(entries, config.retention.count, config.retention.maxAge, Date.now());
    for (const entry of expired) await unlink(entry.path);
    const kept = entries.filter((e) => !expired.includes(e));
    // The WAL must reach back to the oldest kept snapshot: point-in-time restore replays from it.
    const oldest = kept.find((e) => chainOf(kept, e) !== undefined);
    if (oldest) await wal.removeSegmentsThrough(oldest.header.lsn);
  }
}

function checkpointMetrics(registry: Registry) {
  const registers = [registry];
  return {
    results: new Counter({ name: 'ctxmesh_checkpoints_total', help: 'Checkpoints attempted, by result.', labelNames: ['result'] as const, registers }),
    duration: new Histogram({
      name: 'ctxmesh_checkpoint_duration_seconds',
      help: 'Time to write a checkpoint, by kind.',
      labelNames: ['kind'] as const,
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120],
      registers,
    }),
    pause: new Histogram({
      name: 'ctxmesh_checkpoint_pause_seconds',
      help: 'Time writes were held while a checkpoint opened its view.',
      buckets: [0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05],
      registers,
    }),
    size: new Gauge({ name: 'ctxmesh_checkpoint_bytes', help: 'Size of the latest checkpoint file, by kind.', labelNames: ['kind'] as const, registers }),
  };
}

export function restoreMetrics(registry: Registry) {
  return new Gauge({ name: 'ctxmesh_restore_seconds', help: 'Time the last start-up spent rebuilding state from checkpoints and the WAL.', registers: [registry] });
}
