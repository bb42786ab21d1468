// Keys moving away when placement changes. A key held here that the ring no longer places here (a
// "stray": this sidecar left the key's replica set, or a write reached it from a coordinator that
// had not seen the change yet) is pushed to every member of its replica set; once each of them has
// confirmed it holds that version or a newer one, it is dropped here — only if it is still the same
// version, so a write that landed meanwhile stays (and is handed off in the next pass). Nothing is
// dropped without those confirmations, so a member that cannot be reached only delays the drop.
//
// Keys arriving at their new replicas need no work here: anti-entropy rounds run with every peer
// whose shared key set changed (see anti-entropy.ts), and those stream what a new replica lacks.
//
// Reads and writes go on meanwhile. Writes follow the new ring at once. Reads rely on the
// replicator's paths: a strong read gathers a quorum, a session read whose first answer is older
// than the session's mark gathers every replica and repairs; an eventual read may miss a key on a
// new replica until the rounds have streamed it (seconds), which eventual consistency allows.
import type { Registry } from 'prom-client';
import { Counter, Gauge } from 'prom-client';
import type { MembersAdmin } from '../../admin/server.js';
import { MeshError } from '../../errors/table.js';
import type { MutableMembership } from '../../membership/membership.js';
import type { Logger } from '../../telemetry/logger.js';
import type { ContextRecord } from '../record.js';
import { encodedSize } from './codec.js';
import type { KeyIndex } from './key-index.js';
import type { ReplicaStore } from './replica-store.js';
import type { PlacementRing } from './ring.js';

/** Longest pause between handoff attempts while some keys could not be handed off. */
const MAX_RETRY_MS = 5_000;
const FIRST_RETRY_MS = 200;

/** One push of records to a peer: its answer per record, in order. */
export type PushRecords = (
  peerId: string,
  records: readonly ContextRecord[],
) => Promise<{ confirmed: boolean[] } | { mismatch: true }>;

export interface RebalancerOptions {
  nodeId: string;
  index: KeyIndex;
  replica: ReplicaStore;
  ring: PlacementRing;
  push: PushRecords;
  /** Peer calls in flight at once. */
  concurrency: number;
  batchKeys: number;
  maxBatchBytes: number;
  logger: Logger;
  registry: Registry;
}

export interface HandoffStats {
  /** Stray keys considered. */
  considered: number;
  /** Records pushed (one per key and target). */
  pushed: number;
  dropped: number;
  /** Keys kept for a later pass (a target did not confirm, or placement changed). */
  kept: number;
}

export class Rebalancer {
  private timer: NodeJS.Timeout | undefined;
  /** performance.now() at which the pending timer fires: a sooner request replaces it. */
  private timerDue = 0;
  private running: Promise<void> | undefined;
  private again = false;
  private failures = 0;
  private closed = false;
  private readonly handedOff: Counter;
  private readonly dropped: Counter;
  totals: HandoffStats = { considered: 0, pushed: 0, dropped: 0, kept: 0 };
  /** Passes finished since start, and the figures of the last one: what a drain measures progress by. */
  passes = 0;
  lastPass: HandoffStats = { considered: 0, pushed: 0, dropped: 0, kept: 0 };

  constructor(private readonly options: RebalancerOptions) {
    const registers = [options.registry];
    this.handedOff = new Counter({ name: 'ctxmesh_rebalance_records_pushed_total', help: 'Records of keys no longer placed here pushed to their replicas (one per key and replica).', registers });
    this.dropped = new Counter({ name: 'ctxmesh_rebalance_keys_dropped_total', help: 'Keys dropped here after their replicas confirmed holding them.', registers });
    const index = options.index;
    new Gauge({
      name: 'ctxmesh_rebalance_stray_keys',
      help: 'Keys held here that the ring places elsewhere, waiting to be handed off.',
      registers,
      collect: function (this: Gauge) {
        this.set(index.strayCount);
      },
    });
  }

  /** Whether a pass is running or due. */
  get busy(): boolean {
    return this.running !== undefined || this.timer !== undefined;
  }

  /** Runs a pass soon (coalesced with one already due or running). */
  schedule(delayMs = 0): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    const due = performance.now() + delayMs;
    if (this.timer) {
      // A pass already due at least as soon covers this request; a sooner one replaces a retry's
      // backoff (a write that just made a new stray should not wait out a failed push's 5 s).
      if (this.timerDue <= due) return;
      clearTimeout(this.timer);
    }
    this.timerDue = due;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, delayMs);
    this.timer.unref();
  }

  /** Runs a pass now (waits for one in progress first); resolves with its figures. */
  async handoff(): Promise<HandoffStats> {
    while (this.running) await this.running;
    let stats: HandoffStats = { considered: 0, pushed: 0, dropped: 0, kept: 0 };
    this.running = (async () => {
      stats = await this.pass();
    })();
    try {
      await this.running;
    } finally {
      this.running = undefined;
    }
    this.afterPass(stats);
    return stats;
  }

  private async run(): Promise<void> {
    if (this.closed || this.running) return;
    try {
      await this.handoff();
    } catch (err) {
      this.options.logger.warn({ err: (err as Error).message }, 'handing off keys failed; will retry');
      this.failures++;
      this.schedule(this.retryDelay());
    }
  }

  private afterPass(stats: HandoffStats): void {
    this.passes++;
    this.lastPass = stats;
    if (stats.kept > 0) {
      this.failures++;
      this.schedule(this.retryDelay());
    } else {
      this.failures = 0;
      if (this.again || this.options.index.strayCount > 0) this.schedule();
    }
    this.again = false;
    if (stats.dropped > 0 || stats.kept > 0) {
      this.options.logger.info({ ...stats, strays: this.options.index.strayCount }, 'handed off keys no longer placed here');
    }
  }

  private retryDelay(): number {
    // Out of the ring altogether (draining): every key held here is to go, and soon — no backoff
    // beyond the first step, whatever failed before.
    if (!this.options.ring.liveIds().includes(this.options.nodeId)) return FIRST_RETRY_MS;
    return Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** Math.min(this.failures, 10));
  }

  private async pass(): Promise<HandoffStats> {
    const { index, replica, ring, nodeId } = this.options;
    const stats: HandoffStats = { considered: 0, pushed: 0, dropped: 0, kept: 0 };
    const strays = index.strayKeys();
    const slice = this.options.batchKeys * this.options.concurrency;
    for (let from = 0; from < strays.length && !this.closed; from += slice) {
      const fingerprint = index.fingerprint;
      const keys = strays.slice(from, from + slice);
      const records = await replica.readMany(keys);
      const held: Array<{ record: ContextRecord; targets: string[]; confirmations: number }> = [];
      const perTarget = new Map<string, Array<(typeof held)[number]>>();
      keys.forEach((key, i) => {
        const record = records[i];
        if (!record) {
          index.update(key, undefined);
          return;
        }
        if (!index.isStray(key)) return;
        stats.considered++;
        const targets = ring.replicas(key).map((m) => m.id).filter((id) => id !== nodeId);
        if (targets.length === 0) {
          stats.kept++;
          return;
        }
        const entry = { record, targets, confirmations: 0 };
        held.push(entry);
        for (const target of targets) {
          let list = perTarget.get(target);
          if (!list) perTarget.set(target, (list = []));
          list.push(entry);
        }
      });
      const tasks: Array<() => Promise<void>> = [];
      for (const [target, entries] of perTarget) {
        for (const chunk of chunks(entries, this.options.batchKeys, this.options.maxBatchBytes)) {
          tasks.push(async () => {
            try {
              const answer = await this.options.push(target, chunk.map((e) => e.record));
              if ('mismatch' in answer) return;
              stats.pushed += chunk.length;
              this.handedOff.inc(chunk.length);
              answer.confirmed.forEach((ok, i) => {
                if (ok) chunk[i]!.confirmations++;
              });
            } catch (err) {
              this.options.logger.debug({ peer: target, err: (err as Error).message }, 'handoff push failed');
            }
          });
        }
      }
      await pool(tasks, this.options.concurrency);
      for (const entry of held) {
        // Confirmed by the replicas of the placement the push was planned for, and still that one.
        if (entry.confirmations < entry.targets.length || index.fingerprint !== fingerprint || !index.isStray(entry.record.key)) {
          stats.kept++;
          continue;
        }
        if (await replica.drop(entry.record.key, entry.record.version)) {
          stats.dropped++;
          this.dropped.inc();
        } else if (index.isStray(entry.record.key)) {
          stats.kept++;
        }
      }
    }
    this.totals = {
      considered: this.totals.considered + stats.considered,
      pushed: this.totals.pushed + stats.pushed,
      dropped: this.totals.dropped + stats.dropped,
      kept: this.totals.kept + stats.kept,
    };
    return stats;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running?.catch(() => undefined);
  }
}

/** Splits entries into messages of at most `maxKeys` records and `maxBytes` (at least one each). */
function chunks<T extends { record: ContextRecord }>(entries: readonly T[], maxKeys: number, maxBytes: number): T[][] {
  const out: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const entry of entries) {
    const size = encodedSize(entry.record);
    if (current.length > 0 && (current.length >= maxKeys || bytes + size > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(entry);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

/** Runs the tasks with at most `limit` in flight. */
export async function pool(tasks: ReadonlyArray<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

/** The member set as the admin API changes it by hand (static peers; xDS does the same through EDS). */
export function membershipAdmin(membership: MutableMembership, holder: { held(prefix: string, after: string | undefined, limit: number): Promise<object> }): MembersAdmin {
  return {
    list: () => ({ self: membership.self.id, members: membership.members() }),
    add(id, address) {
      const current = membership.get(id);
      // Coming back from dead or draining is a new ownership term.
      const epoch = current ? current.epoch + (current.state === 'alive' || current.state === 'suspect' ? 0 : 1) : 0;
      membership.upsert({ ...(current?.zone === undefined ? {} : { zone: current.zone }), id, address, state: 'alive', epoch });
      return membership.get(id)!;
    },
    remove(id) {
      const self = membership.self;
      if (id === self.id) {
        // Leaving: the ring drops this sidecar, so every key it holds is handed off, then dropped.
        membership.upsert({ ...self, state: 'draining', epoch: self.epoch + 1 });
      } else {
        if (!membership.get(id)) throw new MeshError('not_found', `no member ${id}`);
        membership.update(membership.members().filter((m) => m.id !== id && m.id !== self.id));
      }
      return { self: self.id, members: membership.members() };
    },
    held: (prefix, after, limit) => holder.held(prefix, after, limit),
  };
}
