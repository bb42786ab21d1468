// The seam between the control plane and where its registry state lives. The in-memory store is
// one process's registry (epochs restart at 0 with it); the Redis store shares registrations,
// endpoint health, epochs, health reports and the failover history between replicas, so that two
// control planes serve the same resources and a restart does not lower an epoch.
import type { HealthReport } from '../health/quorum.js';
import type { NodeRegistration, RegistryEndpoint } from '../registry.js';

export type StoreBackend = 'memory' | 'redis';

export interface StoreStatus {
  backend: StoreBackend;
  /** The store answers now (always true in memory). */
  connected: boolean;
  /**
   * Serving the last known state because the store is unreachable: pushes go on from it, but
   * drains and declarations are refused and registrations wait to be written back.
   */
  degraded: boolean;
  /** Why it is degraded (the last connection error), when it is. */
  reason?: string | undefined;
  /** When this replica last loaded the whole shared state (null in memory). */
  lastSyncAt: string | null;
  /** Registrations taken while degraded, waiting to be written to the store. */
  pendingWrites: number;
}

export interface RegistryStore {
  readonly backend: StoreBackend;
  /** Loads the shared state into the registry (a store that cannot be reached starts degraded). */
  start(): Promise<void>;
  /** A sidecar's ADS stream opened on this replica; the release is called when it closes. */
  attachStream(node: NodeRegistration): () => void;
  /** `POST /v1/register`: registers or renews a lease of one TTL. */
  heartbeat(node: NodeRegistration): Promise<void>;
  /** Planned failover → DRAINING. Throws not_found for an unknown endpoint, store_unavailable when degraded. */
  drain(service: string, address: string, reason?: string): Promise<RegistryEndpoint>;
  /** UNHEALTHY with a new epoch, once: false when it already was (whichever replica declared it). */
  declareFailed(nodeId: string, reason: string): Promise<boolean>;
  /** HEALTHY again with a new epoch: false when it was not unhealthy. */
  declareRecovered(nodeId: string, reason: string): Promise<boolean>;
  /**
   * Keeps a report (unless the stored one from the same observer carries a higher incarnation)
   * and returns every report about its subject received within the window, from any replica.
   */
  recordReport(report: HealthReport, windowMs: number): Promise<HealthReport[]>;
  status(): StoreStatus;
  close(): Promise<void>;
}
