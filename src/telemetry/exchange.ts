// Where every finished request is counted and logged, whichever path produced its response.
import type { Direction, MeshMetrics } from './metrics.js';
import type { AccessRecord, Logger } from './logger.js';

export interface Exchange {
  direction: Direction;
  method: string;
  authority: string;
  path: string;
  /** performance.now() when the request head arrived. */
  startedAt: number;
  /** Verified SPIFFE ID of the caller (inbound only). */
  peer?: string | undefined;
}

export class ExchangeRecorder {
  private readonly access: Logger;

  constructor(
    private readonly metrics: MeshMetrics,
    logger: Logger,
    private readonly accessLog: boolean,
  ) {
    this.access = logger.child({ kind: 'access' });
  }

  record(exchange: Exchange, cluster: string, status: number, error: string | undefined, upstream: string | undefined, attempts: number): void {
    const durationMs = performance.now() - exchange.startedAt;
    this.metrics.recordRequest(exchange.direction, cluster, status, error, durationMs / 1000);
    if (!this.accessLog) return;
    const record: AccessRecord = {
      direction: exchange.direction,
      method: exchange.method,
      authority: exchange.authority,
      path: exchange.path,
      status,
      duration_ms: Math.round(durationMs * 1000) / 1000,
      upstream,
      attempts,
      error,
    };
    if (exchange.peer) record.peer = exchange.peer;
    this.access.info(record);
  }
}
