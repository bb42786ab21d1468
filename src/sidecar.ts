// The sidecar process, assembled: identity, clusters, the two proxy listeners and the admin API.
// It is ready only once its config, its certificates and every listener are up.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdminServer, type AdminTarget } from './admin/server.js';
import { ClusterSchema, type SidecarConfig } from './config/schema.js';
import { createInboundServer } from './proxy/inbound/listener.js';
import { createOutboundServer } from './proxy/outbound/listener.js';
import { StateAgent } from './state/agent.js';
import { Router } from './proxy/outbound/router.js';
import { Cluster, type ClusterDeps } from './proxy/upstream/cluster.js';
import type { Clock, Random } from './resilience/clock.js';
import { ExchangeRecorder } from './telemetry/exchange.js';
import { createLogger, flushLogger, type Logger } from './telemetry/logger.js';
import { MeshMetrics } from './telemetry/metrics.js';
import { MeshIdentity } from './tls/identity.js';

/** How often a drain checks whether the last in-flight request has finished. */
const DRAIN_POLL_INTERVAL_MS = 20;
const ADMIN_ADDRESS = '127.0.0.1';

export interface SidecarOptions {
  logger?: Logger;
  clock?: Clock;
  random?: Random;
}

export interface SidecarPorts {
  inbound: number;
  outbound: number;
  admin: number;
  /** The context API; 0 when the state agent is disabled. */
  context: number;
}

export class Sidecar implements AdminTarget {
  ready = false;
  draining = false;
  readonly ports: SidecarPorts = { inbound: 0, outbound: 0, admin: 0, context: 0 };
  /** The local state agent (context API, L1/L2, WAL); undefined when context.enabled is false. */
  state: StateAgent | undefined;
  private router: Router;
  private drained: Promise<void> | undefined;

  private constructor(
    readonly config: SidecarConfig,
    readonly logger: Logger,
    readonly identity: MeshIdentity,
    readonly metricsRegistry: MeshMetrics,
    private readonly clusterList: Cluster[],
    private readonly app: Cluster,
    private readonly outbound: Server,
    private readonly inbound: Server,
    private readonly admin: Server,
  ) {
    this.router = new Router(clusterList);
    metricsRegistry.onCollect(() => this.refreshGauges());
  }

  static async start(config: SidecarConfig, options: SidecarOptions = {}): Promise<Sidecar> {
    const logger = options.logger ?? createLogger({ level: config.log.level, name: config.node.id });
    const identity = MeshIdentity.load(config.identity);
    const metrics = new MeshMetrics();
    const recorder = new ExchangeRecorder(metrics, logger, config.log.accessLog);
    const deps: ClusterDeps = { identity, metrics, logger, clock: options.clock, random: options.random };
    const clusters = config.clusters.map((c) => new Cluster(c, deps));
    const app = new Cluster(appClusterConfig(config), deps);

    let sidecar: Sidecar | undefined;
    const draining = (): boolean => sidecar?.draining ?? false;
    const outbound = createOutboundServer({ limits: config.limits, recorder, router: () => sidecar!.router, draining });
    const inbound = createInboundServer({ identity, allow: config.inbound.allow, limits: config.limits, recorder, app, draining, metrics, logger });
    sidecar = new Sidecar(config, logger, identity, metrics, clusters, app, outbound, inbound, createAdminServer({
      get ready() { return sidecar!.ready; },
      get draining() { return sidecar!.draining; },
      metrics: () => metrics.render(),
      configDump: () => sidecar!.configDump(),
      clusters: () => sidecar!.clusters(),
      stateStats: () => sidecar!.stateStats(),
      checkpointAdmin: () => sidecar!.state,
      drain: () => sidecar!.drain(),
    }));

    identity.on('rotated', (id) => logger.info({ spiffeId: id, notAfter: identity.notAfter }, 'identity rotated'));
    identity.on('reload_error', (err) => logger.error({ err: err.message }, 'identity reload failed; keeping the current one'));
    identity.watch();

    try {
      if (config.context.enabled) {
        sidecar.state = await StateAgent.start(config, { logger, metrics, random: options.random });
        sidecar.ports.context = sidecar.state.port;
      }
      sidecar.ports.outbound = await listen(outbound, config.outbound.port, config.outbound.address);
      sidecar.ports.inbound = await listen(inbound, config.inbound.port, config.inbound.address);
      sidecar.ports.admin = await listen(sidecar.admin, config.admin.port, ADMIN_ADDRESS);
    } catch (err) {
      await sidecar.close();
      throw err;
    }
    sidecar.ready = true;
    logger.info({ spiffeId: identity.spiffeId, ports: sidecar.ports, clusters: clusters.map((c) => c.name) }, 'sidecar ready');
    return sidecar;
  }

  // AdminTarget
  metrics(): Promise<string> {
    return this.metricsRegistry.render();
  }

  configDump(): object {
    return {
      node: this.config.node,
      identity: { ...this.config.identity, spiffeId: this.identity.spiffeId, notAfter: this.identity.notAfter.toISOString() },
      listeners: { ...this.ports },
      config: this.config,
    };
  }

  checkpointAdmin(): StateAgent | undefined {
    return this.state;
  }

  stateStats(): object | undefined {
    return this.state?.stats();
  }

  clusters(): object {
    return { clusters: this.clusterList.map((c) => c.describe()), inbound_app: this.app.describe() };
  }

  /** Requests in flight through either listener. */
  get inFlight(): number {
    return this.clusterList.reduce((sum, c) => sum + c.active, this.app.active);
  }

  /**
   * Stops accepting, lets in-flight requests finish (their responses close their connections)
   * for up to `drainTimeout`, then cuts what remains. Idempotent.
   */
  drain(): Promise<void> {
    this.drained ??= this.runDrain();
    return this.drained;
  }

  private async runDrain(): Promise<void> {
    this.draining = true;
    this.ready = false;
    this.logger.info({ inFlight: this.inFlight, timeoutMs: this.config.drainTimeout }, 'draining');
    const closing = [closeServer(this.outbound), closeServer(this.inbound)];
    const deadline = performance.now() + this.config.drainTimeout;
    while (this.inFlight > 0 && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_INTERVAL_MS));
    }
    const cut = this.inFlight;
    if (cut > 0) this.logger.warn({ inFlight: cut }, 'drain timeout: closing remaining connections');
    this.outbound.closeAllConnections();
    this.inbound.closeAllConnections();
    await Promise.all(closing);
    await Promise.all([...this.clusterList, this.app].map((c) => (cut > 0 ? c.destroy() : c.close())));
    this.logger.info('drained');
  }

  /** Drains (bounded by drainTimeout), then stops the admin API and releases everything. */
  async close(): Promise<void> {
    if (this.ready || this.draining) await this.drain();
    else {
      for (const server of [this.outbound, this.inbound]) if (server.listening) server.closeAllConnections();
      await Promise.all([closeServer(this.outbound), closeServer(this.inbound), ...[...this.clusterList, this.app].map((c) => c.destroy())]);
    }
    // After the proxy has drained: in-flight requests may still have been using their context.
    await this.state?.close();
    this.admin.closeAllConnections();
    await closeServer(this.admin);
    this.identity.close();
    flushLogger(this.logger);
  }

  private refreshGauges(): void {
    const m = this.metricsRegistry;
    m.breakerState.reset();
    m.ejected.reset();
    for (const cluster of [...this.clusterList, this.app]) {
      m.activeRequests.labels(cluster.name).set(cluster.active);
      for (const e of cluster.endpoints) {
        const state = e.breaker.state;
        m.breakerState.labels(cluster.name, e.address).set(state === 'open' ? 2 : state === 'half_open' ? 1 : 0);
        m.ejected.labels(cluster.name, e.address).set(cluster.outliers.isEjected(e) ? 1 : 0);
      }
    }
  }
}

/**
 * The local app behind the inbound listener, as a one-endpoint plain-HTTP cluster: the same
 * pipeline as outbound, without retries, breaker trips or ejection — there is nowhere else to go.
 */
function appClusterConfig(config: SidecarConfig) {
  const app = new URL(config.inbound.app);
  return ClusterSchema.parse({
    name: 'inbound|app',
    domains: ['*'],
    tls: 'none',
    endpoints: [{ address: `${app.hostname}:${app.port || 80}` }],
    retry: { attempts: 0 },
    circuitBreaker: { errorThresholdPercentage: 100 },
    outlierDetection: { consecutive5xx: 0 },
    timeout: config.inbound.timeout,
  });
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(new Error(`cannot listen on ${host}:${port}: ${err.message}`));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closeServer(server: Server): Promise<void> {
  if (!server.listening) return Promise.resolve();
  return new Promise((resolve) => server.close(() => resolve()));
}
