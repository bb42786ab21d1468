// One upstream endpoint: its connection pool, its breaker, its outlier state, its load.
import { Pool } from './undici.js';
import type { Connector } from './undici.js';
import type { ClusterConfig, EndpointConfig } from '../../config/schema.js';
import { EndpointBreaker, type BreakerState } from '../../resilience/circuit-breaker.js';
import { OutlierState } from '../../resilience/outlier-detection.js';

export class Endpoint {
  /** Requests in flight to this endpoint. */
  active = 0;
  readonly outlier = new OutlierState();
  readonly pool: Pool;
  readonly breaker: EndpointBreaker;
  readonly address: string;
  readonly priority: number;
  readonly zone: string;
  /** node.id of the sidecar behind it, when known (EDS hostname): its place on the ring_hash ring. */
  readonly hostname: string | undefined;

  constructor(
    config: EndpointConfig,
    cluster: ClusterConfig,
    connector: Connector,
    onBreakerChange: (endpoint: Endpoint, state: BreakerState) => void,
  ) {
    this.address = config.address;
    this.priority = config.priority;
    this.zone = config.zone;
    this.hostname = config.hostname;
    const scheme = cluster.tls === 'mesh' ? 'https' : 'http';
    this.pool = new Pool(`${scheme}://${config.address}`, {
      connections: cluster.circuitBreaker.maxConnections,
      pipelining: 1,
      connect: connector,
      bodyTimeout: cluster.idleTimeout,
      headersTimeout: cluster.timeout,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 600_000,
    });
    this.breaker = new EndpointBreaker(cluster.circuitBreaker, (state) => onBreakerChange(this, state));
  }

  async close(): Promise<void> {
    this.breaker.close();
    await this.pool.close();
  }

  destroy(): Promise<void> {
    this.breaker.close();
    return this.pool.destroy();
  }
}
