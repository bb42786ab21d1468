// The control plane: registry → resource builders → snapshot cache → ADS streams, plus the admin
// API. It keeps no state of its own on disk: after a restart it rebuilds from its config file and
// from sidecars re-registering as their ADS streams reconnect (their registrations carry a TTL,
// so a brief gap does not empty EDS), while the sidecars keep serving their last good config.
// With `store.backend: redis` the registry state (registrations, health, epochs, reports, history)
// is shared by every replica through Redis instead (xds/store/redis.ts), and epochs survive restarts.
import { once } from 'node:events';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { type ControlPlaneConfig, IpPortSchema } from '../src/config/schema.js';
import { formatHostPort } from '../src/config/host-port.js';
import { createLogger, type Logger } from '../src/telemetry/logger.js';
import { ControlPlaneMetrics } from '../src/telemetry/metrics.js';
import { createControlPlaneAdmin } from './admin.js';
import { type AdsNode, AdsServer } from './ads-server.js';
import { FailureDeclarer } from './health/failure-declarer.js';
import { TYPE_URL } from './protos.js';
import { ServiceRegistry } from './registry.js';
import { buildServiceResources } from './resources.js';
import { SnapshotCache } from './snapshot-cache.js';
import { MemoryRegistryStore } from './store/memory.js';
import { RedisRegistryStore } from './store/redis.js';
import type { RegistryStore } from './store/store.js';

/** Node metadata keys a sidecar sets on its ADS node to register itself. */
export const NODE_METADATA = {
  address: 'ctxmesh.address',
  role: 'ctxmesh.role',
  incarnation: 'ctxmesh.incarnation',
  priority: 'ctxmesh.priority',
} as const;

/** Time `close()` lets streams end on their own before cutting them. */
const SHUTDOWN_GRACE_MS = 2_000;

export interface ControlPlaneOptions {
  logger?: Logger;
  now?: () => number;
}

export class ControlPlane {
  readonly registry: ServiceRegistry;
  readonly cache = new SnapshotCache();
  readonly metrics = new ControlPlaneMetrics();
  readonly ads: AdsServer;
  readonly logger: Logger;
  readonly declarer: FailureDeclarer;
  /** Where registrations, health, epochs and history live: this process, or Redis shared by replicas. */
  readonly store: RegistryStore;
  private readonly grpcServer = new grpc.Server();
  private admin: http.Server | undefined;
  private ready = false;
  xdsPort = 0;
  adminPort = 0;

  private constructor(
    readonly config: ControlPlaneConfig,
    options: ControlPlaneOptions,
  ) {
    this.logger = options.logger ?? createLogger({ level: config.log.level, name: 'control-plane' });
    const shared = config.store.backend === 'redis';
    this.registry = new ServiceRegistry(config.services, {
      ttlMs: config.registration.ttl,
      historyLimit: config.store.historyLimit,
      // With a shared store, expiry is decided once in the store for every replica.
      expireLocally: !shared,
      ...(options.now ? { now: options.now } : {}),
    });
    this.store = shared
      ? new RedisRegistryStore(this.registry, {
          url: config.store.url!,
          keyPrefix: config.store.keyPrefix,
          commandTimeout: config.store.commandTimeout,
          connectTimeout: config.store.connectTimeout,
          resyncInterval: config.store.resyncInterval,
          historyLimit: config.store.historyLimit,
          ttlMs: config.registration.ttl,
          logger: this.logger,
          ...(options.now ? { now: options.now } : {}),
        })
      : new MemoryRegistryStore(this.registry);
    this.declarer = new FailureDeclarer(this.registry, this.store, { windowMs: config.health.suspicionWindow, ...(options.now ? { now: options.now } : {}) });
    this.ads = new AdsServer({ cache: this.cache, logger: this.logger, metrics: this.metrics, onNode: (node) => this.registerNode(node) });
    this.registry.on('change', (services) => this.rebuild(services));
    this.registry.on('failover', (record) => {
      this.metrics.failovers.inc({ kind: record.kind });
      const level = record.kind === 'declared' || record.kind === 'expired' ? 'warn' : 'info';
      this.logger[level]({ ...record }, `endpoint ${record.kind}`);
    });
    this.metrics.onCollect(() => {
      this.metrics.endpoints.reset();
      for (const service of this.registry.services()) {
        for (const endpoint of service.endpoints) this.metrics.endpoints.inc({ service: service.name, health: endpoint.health });
      }
    });
  }

  static async start(config: ControlPlaneConfig, options: ControlPlaneOptions = {}): Promise<ControlPlane> {
    const plane = new ControlPlane(config, options);
    try {
      await plane.listen();
    } catch (err) {
      await plane.close();
      throw err;
    }
    return plane;
  }

  private async listen(): Promise<void> {
    this.rebuild(this.registry.serviceNames());
    await this.store.start();
    this.ads.addTo(this.grpcServer);
    this.xdsPort = await new Promise<number>((resolve, reject) =>
      this.grpcServer.bindAsync(formatHostPort(this.config.address, this.config.port), grpc.ServerCredentials.createInsecure(), (err, port) =>
        err ? reject(err) : resolve(port),
      ),
    );
    const declarer = this.declarer;
    const plane = this;
    this.admin = createControlPlaneAdmin({
      get ready() {
        return plane.ready;
      },
      registrationTtlMs: this.config.registration.ttl,
      metrics: () => this.metrics.render(),
      services: () => this.registry.services(),
      clients: () => this.ads.clients(),
      failovers: () => this.registry.history(),
      store: () => this.store.status(),
      drain: (service, address, reason) => this.store.drain(service, address, reason),
      reportHealth: (batch) => declarer.submit(batch),
      register: (registration) => this.store.heartbeat(registration),
    });
    this.admin.listen(this.config.admin.port, this.config.admin.address);
    await once(this.admin, 'listening');
    this.adminPort = (this.admin.address() as AddressInfo).port;
    this.ready = true;
    this.logger.info({ xdsPort: this.xdsPort, adminPort: this.adminPort, services: this.registry.serviceNames() }, 'control plane listening');
  }

  /** Rebuilds the resources of the named services; the cache pushes only what changed. */
  private rebuild(names: readonly string[]): void {
    type Upserts = Array<{ name: string; message: object }>;
    const upserts: Record<'cluster' | 'clusterLoadAssignment' | 'listener' | 'routeConfiguration', Upserts> = {
      cluster: [],
      clusterLoadAssignment: [],
      listener: [],
      routeConfiguration: [],
    };
    const removals: string[] = [];
    for (const name of names) {
      const service = this.registry.service(name);
      if (!service) {
        removals.push(name);
        continue;
      }
      const resources = buildServiceResources(service);
      for (const kind of ['cluster', 'clusterLoadAssignment', 'listener', 'routeConfiguration'] as const) upserts[kind].push({ name, message: resources[kind] });
    }
    // Clusters before their endpoints and before the routes that name them (make before break).
    this.cache.update(TYPE_URL.cluster, upserts.cluster);
    this.cache.update(TYPE_URL.clusterLoadAssignment, upserts.clusterLoadAssignment);
    this.cache.update(TYPE_URL.listener, upserts.listener, removals);
    this.cache.update(TYPE_URL.routeConfiguration, upserts.routeConfiguration, removals);
    if (removals.length > 0) {
      this.cache.update(TYPE_URL.cluster, [], removals);
      this.cache.update(TYPE_URL.clusterLoadAssignment, [], removals);
    }
  }

  /** A stream's node registers its sidecar when it carries `ctxmesh.address`. */
  private registerNode(node: AdsNode): (() => void) | undefined {
    const address = node.metadata[NODE_METADATA.address];
    if (address === undefined) return undefined;
    // Canonical text, so that `[FD00:0::7]:15006` and `[fd00::7]:15006` register one endpoint.
    const parsed = IpPortSchema.safeParse(address);
    if (!parsed.success) {
      throw new Error(`node.metadata["${NODE_METADATA.address}"] must be ip:port, got ${JSON.stringify(address)}`);
    }
    if (!node.id) throw new Error('node.id is required to register');
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(node.cluster)) {
      throw new Error(`node.cluster must name the service the sidecar fronts, got ${JSON.stringify(node.cluster)}`);
    }
    const incarnation = Number(node.metadata[NODE_METADATA.incarnation] ?? 0);
    const priority = Number(node.metadata[NODE_METADATA.priority] ?? 0);
    return this.store.attachStream({
      nodeId: node.id,
      service: node.cluster,
      address: parsed.data,
      zone: node.zone,
      incarnation: Number.isFinite(incarnation) ? incarnation : 0,
      priority: Number.isInteger(priority) && priority >= 0 && priority <= 7 ? priority : 0,
    });
  }

  /** Ends every ADS stream (clients keep their last good config and reconnect) and stops listening. */
  async close(): Promise<void> {
    this.ready = false;
    this.ads.closeStreams();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.grpcServer.forceShutdown();
        resolve();
      }, SHUTDOWN_GRACE_MS);
      timer.unref();
      this.grpcServer.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (this.admin?.listening) {
      this.admin.closeAllConnections();
      await new Promise<void>((resolve) => this.admin!.close(() => resolve()));
    }
    await this.store.close();
    this.registry.close();
  }
}
