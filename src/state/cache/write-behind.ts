// Write-behind: writes are acknowledged once they are in L1 and the WAL; this queue carries them to
// L2 in the order they were acknowledged, in pipelined batches. It is bounded in entries and bytes
// and refuses new writes when full (503 write_queue_full with Retry-After) instead of growing
// without limit. While L2 is away the queue waits with jittered exponential back-off and resumes
// in order; nothing leaves the queue before L2 has confirmed it.
import type { Logger } from '../../telemetry/logger.js';
import { MeshError } from '../../errors/table.js';
import { recordSize, type ContextRecord } from '../record.js';
import type { L2Tier } from './l2.js';

const RETRY_BASE_MS = 50;
const RETRY_MAX_MS = 2_000;

export interface WriteBehindOptions {
  maxQueue: number;
  maxQueueBytes: number;
  batchSize: number;
}

interface QueuedWrite {
  record: ContextRecord;
  /** WAL position of the write; 0 when there is no WAL. */
  lsn: number;
  bytes: number;
}

export class WriteBehindQueue {
  flushed = 0;
  private entries: QueuedWrite[] = [];
  private head = 0;
  private reservedBytes = 0;
  private reservedCount = 0;
  /** The newest queued write per key: reads see it before L1 and L2. */
  private readonly latest = new Map<string, ContextRecord>();
  /** Set while the flusher idles on an empty queue. */
  private wake: (() => void) | undefined;
  /** Set while the flusher backs off after a failure; only stop() cuts that short. */
  private interrupt: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private failures = 0;

  constructor(
    private readonly l2: L2Tier,
    private readonly options: WriteBehindOptions,
    private readonly onFlushed: (lsn: number) => void,
    private readonly logger: Logger,
    private readonly random: () => number = Math.random,
  ) {}

  get length(): number {
    return this.entries.length - this.head;
  }

  get bytes(): number {
    return this.reservedBytes;
  }

  /** Claims room for a write before it is logged; throws write_queue_full when there is none. */
  reserve(bytes: number): void {
    if (this.length + this.reservedCount >= this.options.maxQueue || this.reservedBytes + bytes > this.options.maxQueueBytes) {
      throw new MeshError('write_queue_full', `write-behind queue is full (${this.length} writes, ${this.reservedBytes} bytes waiting for L2)`, {
        retryAfter: 1,
      });
    }
    this.reservedBytes += bytes;
    this.reservedCount++;
  }

  /** Gives back a reservation whose write did not happen. */
  release(bytes: number): void {
    this.reservedBytes -= bytes;
    this.reservedCount--;
  }

  /** Queues a reserved, logged write (`reserved: false` for WAL replay at start, which bypasses the bound). */
  push(record: ContextRecord, lsn: number, reserved = true): void {
    const bytes = recordSize(record);
    if (reserved) this.reservedCount--;
    else this.reservedBytes += bytes;
    this.entries.push({ record, lsn, bytes });
    this.latest.set(record.key, record);
    this.wake?.();
  }

  pending(key: string): ContextRecord | undefined {
    return this.latest.get(key);
  }

  *pendingKeys(prefix: string): IterableIterator<ContextRecord> {
    for (const [key, record] of this.latest) if (key.startsWith(prefix)) yield record;
  }

  start(): void {
    this.running ??= this.run();
  }

  /** Stops after trying to flush what is queued for up to `timeoutMs`; the rest stays in the WAL. */
  async stop(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.length > 0 && this.l2.available && performance.now() < deadline) await delay(10);
    this.stopped = true;
    this.wake?.();
    this.interrupt?.();
    await this.running;
    if (this.length > 0) this.logger.warn({ queued: this.length }, 'write-behind: stopping with writes not yet in L2; they are in the WAL and flush at next start');
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (this.length === 0) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      const batch = this.entries.slice(this.head, this.head + this.options.batchSize);
      try {
        await this.l2.writeBatch(batch.map((e) => e.record));
      } catch (err) {
        this.failures++;
        const backoff = this.random() * Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(this.failures, 16));
        if (this.failures === 1) this.logger.warn({ err: (err as Error).message, queued: this.length }, 'write-behind: L2 write failed; retrying in order');
        await this.sleep(backoff);
        continue;
      }
      if (this.failures > 0) this.logger.info({ queued: this.length }, 'write-behind: L2 is back; draining');
      this.failures = 0;
      this.head += batch.length;
      for (const entry of batch) {
        this.reservedBytes -= entry.bytes;
        if (this.latest.get(entry.record.key) === entry.record) this.latest.delete(entry.record.key);
      }
      this.flushed += batch.length;
      // Compact once the consumed prefix dominates, so the array does not grow forever.
      if (this.head > 1024 && this.head * 2 > this.entries.length) {
        this.entries = this.entries.slice(this.head);
        this.head = 0;
      }
      this.onFlushed(batch.at(-1)!.lsn);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.interrupt = undefined;
        resolve();
      }, ms);
      this.interrupt = () => {
        clearTimeout(timer);
        this.interrupt = undefined;
        resolve();
      };
    });
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
