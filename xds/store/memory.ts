// The default store: the registry itself, in this process. Today's single-replica behaviour.
import { HealthReportBook, type HealthReport } from '../health/quorum.js';
import type { NodeRegistration, RegistryEndpoint, ServiceRegistry } from '../registry.js';
import type { RegistryStore, StoreStatus } from './store.js';

export class MemoryRegistryStore implements RegistryStore {
  readonly backend = 'memory' as const;
  private readonly book = new HealthReportBook();

  constructor(private readonly registry: ServiceRegistry) {
    registry.on('expired', (nodeId) => this.book.forget(nodeId));
  }

  async start(): Promise<void> {}

  attachStream(node: NodeRegistration): () => void {
    return this.registry.attachStream(node);
  }

  async heartbeat(node: NodeRegistration): Promise<void> {
    this.registry.heartbeat(node);
  }

  async drain(service: string, address: string, reason?: string): Promise<RegistryEndpoint> {
    return this.registry.drain(service, address, reason);
  }

  async declareFailed(nodeId: string, reason: string): Promise<boolean> {
    return this.registry.declareFailed(nodeId, reason);
  }

  async declareRecovered(nodeId: string, reason: string): Promise<boolean> {
    return this.registry.declareRecovered(nodeId, reason);
  }

  async recordReport(report: HealthReport, windowMs: number): Promise<HealthReport[]> {
    this.book.prune(report.receivedAt, windowMs);
    this.book.record(report);
    return this.book.about(report.subject);
  }

  status(): StoreStatus {
    return { backend: 'memory', connected: true, degraded: false, lastSyncAt: null, pendingWrites: 0 };
  }

  async close(): Promise<void> {}
}
