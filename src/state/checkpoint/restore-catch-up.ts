// After a restore, a replicated sidecar holds the state as of the restored point, while its peers
// hold what was written since. The restore leaves a marker (RESTORE_MARKER_FILE) beside the
// checkpoints; the next start sees it and runs an anti-entropy round with every peer at once —
// rather than waiting for the periodic rounds, which only the lower id of a pair starts — so the
// writes after the snapshot's frontier come back. Which version wins is decided where records are
// applied (ReplicaStore, last-writer-wins by HLC version), on both sides: the restored, older
// records never replace newer ones on a peer. The marker goes once every peer has had a round
// (peers down are retried with backoff), so a crash in between repeats the catch-up, which is
// harmless: a round between replicas already in sync exchanges nothing.
import { readFileSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../telemetry/logger.js';

export const RESTORE_MARKER_FILE = 'restore.pending';
/** First wait before a failed round with a peer is retried; doubled each time up to the max. */
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 15_000;
/** Round results after which a peer has nothing more to give here. */
const SETTLED = new Set(['in_sync', 'repaired', 'skipped']);

export interface RestoreMarker {
  /** The checkpoint the restore wrote (the state the next start loads). */
  checkpoint: string;
  /** Its frontier: per origin node, the newest write it reflects. Later ones are on the replicas. */
  frontier: Record<string, string>;
  lsn: number;
  restoredAt: number;
}

export async function writeRestoreMarker(dir: string, marker: RestoreMarker): Promise<void> {
  const path = join(dir, RESTORE_MARKER_FILE);
  await writeFile(`${path}.tmp`, `${JSON.stringify(marker)}\n`, { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}

/** The marker, if a restore is waiting for its catch-up; an unreadable one still counts (its content is informational). */
export function readRestoreMarker(dir: string): RestoreMarker | undefined {
  let text: string;
  try {
    text = readFileSync(join(dir, RESTORE_MARKER_FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    return JSON.parse(text) as RestoreMarker;
  } catch {
    return { checkpoint: 'unknown', frontier: {}, lsn: 0, restoredAt: 0 };
  }
}

export function clearRestoreMarker(dir: string): Promise<void> {
  return rm(join(dir, RESTORE_MARKER_FILE), { force: true });
}

export interface CatchUpRound {
  peer: string;
  result: string;
  repairedHere: number;
  repairedThere: number;
  attempts: number;
  error?: string;
}

export interface CatchUpReport {
  marker: RestoreMarker;
  /** The last round with each peer. */
  rounds: CatchUpRound[];
  /** True when every peer settled (the marker is removed); false when the sidecar closed first. */
  complete: boolean;
}

export interface CatchUpOptions {
  dir: string;
  marker: RestoreMarker;
  peers: readonly string[];
  /** One anti-entropy round with a peer (AntiEntropy.requestRound). */
  round(peer: string): Promise<{ result: string; repairedHere: number; repairedThere: number; error?: string }>;
  logger: Logger;
}

/** Rounds with every peer until each has settled, then removes the marker. Never rejects. */
export class RestoreCatchUp {
  readonly done: Promise<CatchUpReport>;
  private closed = false;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly wakers = new Set<() => void>();

  constructor(private readonly options: CatchUpOptions) {
    this.done = this.run();
  }

  private async run(): Promise<CatchUpReport> {
    const { marker, logger } = this.options;
    logger.info({ checkpoint: marker.checkpoint, frontier: marker.frontier, peers: this.options.peers }, 'restored state: anti-entropy with every peer brings back later writes');
    const rounds = await Promise.all(this.options.peers.map((peer) => this.withPeer(peer)));
    const complete = !this.closed && rounds.every((r) => SETTLED.has(r.result));
    if (complete) {
      await clearRestoreMarker(this.options.dir).catch((err: Error) => logger.warn({ err: err.message }, 'could not remove the restore marker; the catch-up runs again at the next start'));
      const repaired = rounds.reduce((sum, r) => sum + r.repairedHere, 0);
      logger.info({ checkpoint: marker.checkpoint, repairedHere: repaired, rounds }, 'restore catch-up complete');
    }
    return { marker, rounds, complete };
  }

  private async withPeer(peer: string): Promise<CatchUpRound> {
    let last: CatchUpRound = { peer, result: 'skipped', repairedHere: 0, repairedThere: 0, attempts: 0 };
    let repairedHere = 0;
    let repairedThere = 0;
    for (let attempt = 1, wait = RETRY_FIRST_MS; !this.closed; attempt++, wait = Math.min(wait * 2, RETRY_MAX_MS)) {
      const stats = await this.options.round(peer);
      repairedHere += stats.repairedHere;
      repairedThere += stats.repairedThere;
      last = { peer, result: stats.result, repairedHere, repairedThere, attempts: attempt, ...(stats.error ? { error: stats.error } : {}) };
      if (SETTLED.has(stats.result) || this.closed) break;
      this.options.logger.warn({ peer, result: stats.result, err: stats.error, retryMs: wait }, 'restore catch-up: round failed; retrying');
      await this.sleep(wait);
    }
    return last;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.timers.delete(timer);
        this.wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      timer.unref();
      this.timers.add(timer);
      this.wakers.add(wake);
    });
  }

  /** Stops retrying (the marker stays: the next start catches up again) and waits for the rounds under way. */
  async close(): Promise<void> {
    this.closed = true;
    for (const wake of [...this.wakers]) wake();
    await this.done;
  }
}
