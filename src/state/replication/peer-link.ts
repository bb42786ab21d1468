// Writes on their way to one peer. Everything sent to the same peer within one tick of the event
// loop (and everything that queues while its batches are in flight) goes in one `replicate` call,
// up to the message bound; a few batches may be in flight at once, over the PeerClient's pooled
// connections. A peer that just failed is not called again for every write: until `retryAfterMs`
// has passed, writes for it fail at once (and become hints); then one call probes it.
import { MeshError } from '../../errors/table.js';
import type { Membership } from '../../membership/membership.js';
import { PeerClient } from '../../peer/client.js';
import type { ContextRecord } from '../record.js';
import { encodeRecordList, encodedSize } from './codec.js';
import type { ApplyOutcome } from './replica-store.js';

export const REPLICATE = 'replicate';
const MAX_BATCHES_IN_FLIGHT = 4;

interface Pending {
  record: ContextRecord;
  bytes: number;
  since: number;
  resolve: (outcome: ApplyOutcome) => void;
  reject: (err: MeshError) => void;
}

export interface PeerLinkOptions {
  client: PeerClient;
  membership: Membership;
  timeoutMs: number;
  maxBatchBytes: number;
  /** How long after a failure writes skip the peer before one call probes it again. */
  retryAfterMs: number;
  now: () => number;
}

export class PeerLink {
  private queue: Pending[] = [];
  private queuedBytes = 0;
  private readonly inFlight = new Set<Pending[]>();
  private inFlightBytes = 0;
  private scheduled = false;
  /** Epoch ms of the last failure while the peer is considered down; undefined while it is up. */
  private downSince: number | undefined;
  private lastAttempt = 0;
  batches = 0;

  constructor(
    readonly peerId: string,
    private readonly options: PeerLinkOptions,
  ) {}

  get down(): boolean {
    return this.downSince !== undefined;
  }

  /** Resolves once the peer has the record durably (or something newer); rejects with a MeshError. */
  send(record: ContextRecord): Promise<ApplyOutcome> {
    const now = this.options.now();
    if (this.downSince !== undefined && now - this.lastAttempt < this.options.retryAfterMs) {
      return Promise.reject(new MeshError('connect_failure', `peer ${this.peerId} is down (failing since ${new Date(this.downSince).toISOString()})`));
    }
    return new Promise((resolve, reject) => {
      const bytes = encodedSize(record);
      this.queue.push({ record, bytes, since: now, resolve, reject });
      this.queuedBytes += bytes;
      this.schedule();
    });
  }

  /** Marks the peer reachable again (a hint delivery got through). */
  markUp(): void {
    this.downSince = undefined;
  }

  /** Bytes and age (from epoch ms `since`) of what is queued or in flight. */
  backlog(): { bytes: number; oldest: number | undefined } {
    let oldest: number | undefined;
    for (const p of this.queue) if (oldest === undefined || p.since < oldest) oldest = p.since;
    for (const batch of this.inFlight) for (const p of batch) if (oldest === undefined || p.since < oldest) oldest = p.since;
    return { bytes: this.queuedBytes + this.inFlightBytes, oldest };
  }

  /** Resolves when nothing is queued or in flight, or after `timeoutMs`. */
  async idle(timeoutMs: number): Promise<void> {
    const deadline = this.options.now() + timeoutMs;
    while ((this.queue.length > 0 || this.inFlight.size > 0) && this.options.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0 || this.inFlight.size >= MAX_BATCHES_IN_FLIGHT) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    while (this.queue.length > 0 && this.inFlight.size < MAX_BATCHES_IN_FLIGHT) {
      let bytes = 0;
      let count = 0;
      while (count < this.queue.length && (count === 0 || bytes + this.queue[count]!.bytes <= this.options.maxBatchBytes)) bytes += this.queue[count++]!.bytes;
      const batch = this.queue.splice(0, count);
      this.queuedBytes -= bytes;
      this.inFlightBytes += bytes;
      this.inFlight.add(batch);
      void this.deliver(batch).finally(() => {
        this.inFlight.delete(batch);
        this.inFlightBytes -= bytes;
        this.schedule();
      });
    }
  }

  private async deliver(batch: Pending[]): Promise<void> {
    const member = this.options.membership.get(this.peerId);
    this.lastAttempt = this.options.now();
    this.batches++;
    try {
      if (!member) throw new MeshError('connect_failure', `peer ${this.peerId} is no longer a member`);
      const body = encodeRecordList(batch.map((p) => p.record));
      const response = PeerClient.ok(await this.options.client.call(member.address, REPLICATE, body, { timeoutMs: this.options.timeoutMs }), member.address, REPLICATE);
      const { outcomes } = response.json<{ outcomes: ApplyOutcome[] }>();
      if (!Array.isArray(outcomes) || outcomes.length !== batch.length) throw new MeshError('upstream_reset', `peer ${this.peerId} answered ${REPLICATE} with a malformed reply`);
      this.downSince = undefined;
      batch.forEach((p, i) => p.resolve(outcomes[i]!));
    } catch (err) {
      const failure = err instanceof MeshError ? err : new MeshError('internal', (err as Error).message, { cause: err });
      if (failure.code === 'connect_failure' || failure.code === 'upstream_timeout') this.downSince ??= this.options.now();
      for (const p of batch) p.reject(failure);
    }
  }

  /** Fails everything still queued (the replicator is closing). */
  abandon(): void {
    const queued = this.queue.splice(0);
    this.queuedBytes = 0;
    for (const p of queued) p.reject(new MeshError('draining', 'replication is shutting down'));
  }
}
