// Writes on their way to one peer. Everything sent to the same peer within one tick of the event
// loop (and everything that queues while its batches are in flight) goes in one `replicate` call,
// up to the message bound; a few batches may be in flight at once, over the PeerClient's pooled
// connections. A peer that just failed is not called again for every write: until `retryAfterMs`
// has passed, writes for it fail at once (and become hints); then one call probes it.
import { ERRORS, MeshError, type ErrorCode } from '../../errors/table.js';
import type { Membership } from '../../membership/membership.js';
import { PeerClient } from '../../peer/client.js';
import type { ContextRecord } from '../record.js';
import { decodeFramed, encodeFramed, encodeRecordList, encodedSize } from './codec.js';
import type { ApplyOutcome } from './replica-store.js';

export const REPLICATE = 'replicate';
const MAX_BATCHES_IN_FLIGHT = 4;
/** Items of one strong-round batch: bounds the work one peer request holds up. */
const MAX_ROUND_ITEMS = 512;
/** JSON bytes counted per round item's head (key, ballots) when sizing a batch. */
const ROUND_ITEM_HEAD_BYTES = 160;

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

/** One item of a batched strong-round call: its head (key, ballots) and record, if it carries one. */
export interface RoundItem {
  head: Record<string, unknown>;
  record?: ContextRecord;
}

/** A replica's answer to one item: its head and record (an `error` head is a refusal of that item alone). */
export interface RoundAnswer {
  head: Record<string, unknown>;
  record: ContextRecord | undefined;
}

interface PendingItem {
  item: RoundItem;
  bytes: number;
  resolve: (answer: RoundAnswer) => void;
  reject: (err: MeshError) => void;
}

export type RoundLinkOptions = Pick<PeerLinkOptions, 'client' | 'membership' | 'timeoutMs' | 'maxBatchBytes'>;

/**
 * Strong-round calls (prepare, accept, peek) of many keys to one peer, batched as PeerLink batches
 * writes: what is called within one tick (and what queues while batches are in flight) goes in
 * one request, `{"items": [head...]}` beside the items' records, answered item by item in order.
 * A round's per-request cost (TLS record, HTTP parse, handler dispatch) is then shared by every
 * strong operation in flight, instead of four requests per write. No probing of a down peer here:
 * a strong round must hear every replica it can, and a failed batch fails each of its items.
 */
export class RoundLink {
  private queue: PendingItem[] = [];
  private inFlight = 0;
  private scheduled = false;
  batches = 0;
  /** Whether the last batch failed as a whole (no answer, or refused): until one gets through. */
  failing = false;

  constructor(
    readonly peerId: string,
    readonly name: string,
    private readonly options: RoundLinkOptions,
  ) {}

  call(item: RoundItem): Promise<RoundAnswer> {
    return new Promise((resolve, reject) => {
      const bytes = ROUND_ITEM_HEAD_BYTES + (item.record ? encodedSize(item.record) : 0);
      this.queue.push({ item, bytes, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0 || this.inFlight >= MAX_BATCHES_IN_FLIGHT) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    while (this.queue.length > 0 && this.inFlight < MAX_BATCHES_IN_FLIGHT) {
      let bytes = 0;
      let count = 0;
      while (count < this.queue.length && count < MAX_ROUND_ITEMS && (count === 0 || bytes + this.queue[count]!.bytes <= this.options.maxBatchBytes)) bytes += this.queue[count++]!.bytes;
      const batch = this.queue.splice(0, count);
      this.inFlight++;
      void this.deliver(batch).finally(() => {
        this.inFlight--;
        this.schedule();
      });
    }
  }

  private async deliver(batch: PendingItem[]): Promise<void> {
    const member = this.options.membership.get(this.peerId);
    this.batches++;
    try {
      if (!member) throw new MeshError('connect_failure', `peer ${this.peerId} is no longer a member`);
      const body = encodeFramed({ items: batch.map((p) => p.item.head) }, batch.map((p) => p.item.record));
      const response = PeerClient.ok(await this.options.client.call(member.address, this.name, body, { timeoutMs: this.options.timeoutMs }), member.address, this.name);
      const { head, records } = decodeFramed<{ answers?: unknown }>(response.body, this.name);
      const answers = head.answers;
      if (!Array.isArray(answers) || answers.length !== batch.length || records.length !== batch.length) {
        throw new MeshError('upstream_reset', `peer ${this.peerId} answered ${this.name} with a malformed reply`);
      }
      this.failing = false;
      batch.forEach((p, i) => {
        const answer = answers[i] as Record<string, unknown> | null;
        if (!answer || typeof answer !== 'object') return p.reject(new MeshError('upstream_reset', `peer ${this.peerId} answered ${this.name} item ${i} with a malformed reply`));
        if (typeof answer.error === 'string') {
          const code = answer.error in ERRORS ? (answer.error as ErrorCode) : 'upstream_reset';
          return p.reject(new MeshError(code, `peer ${member.address} refused ${this.name} of ${String(p.item.head.key)}: ${String(answer.message ?? answer.error)}`));
        }
        p.resolve({ head: answer, record: records[i] });
      });
    } catch (err) {
      const failure = err instanceof MeshError ? err : new MeshError('internal', (err as Error).message, { cause: err });
      this.failing = true;
      for (const p of batch) p.reject(failure);
    }
  }

  /** Fails everything still queued (the replicator is closing). */
  abandon(): void {
    for (const p of this.queue.splice(0)) p.reject(new MeshError('draining', 'replication is shutting down'));
  }
}
