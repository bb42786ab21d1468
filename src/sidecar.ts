// The sidecar process, assembled: identity, clusters, the two proxy listeners and the admin API.
// It is ready only once its config, its certificates and every listener are up.
import type { Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
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
import { MutableMembership, type Member } from './membership/membership.js';
import { PeerClient } from './peer/client.js';
import { PeerRouter, isSidecarIdentity } from './peer/router.js';
import { Fencing } from './peer/fencing.js';
import { XdsClient } from './xds-client/ads-client.js';
import { DynamicClusters } from './xds-client/dynamic-clusters.js';
import { syncMembership } from './xds-client/membership-sync.js';
import type { EndpointGroup } from './xds-client/translate.js';
import type { ClusterConfig } from './config/schema.js';
import { VERSION } from './cli/version.js';
import { HealthMonitor } from './membership/health-monitor.js';
import { Handover } from './membership/handover.js';
import { healthReportTarget } from './membership/health-reporter.js';
import { FAULTS_ENV, PeerFaults, faultsArmed } from './state/replication/faults.js';
import { membershipAdmin } from './state/replication/rebalance.js';
import { advertisedAddress } from './config/host-port.js';

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
  /**
   * This run's incarnation (its start time, ms): registered with the control plane and the failure
   * detector's starting incarnation alike, so reports about an earlier run are told apart.
   */
  readonly incarnation = Date.now();
  readonly ports: SidecarPorts = { inbound: 0, outbound: 0, admin: 0, context: 0 };
  /** The local state agent (context API, L1/L2, WAL); undefined when context.enabled is false. */
  state: StateAgent | undefined;
  /** Handlers of sidecar-to-sidecar calls (`/.ctxmesh/peer/<name>` on the inbound listener). */
  readonly peers: PeerRouter;
  /** Calls to other sidecars' peer handlers, over mTLS with this sidecar's identity. */
  readonly peerClient: PeerClient;
  /** The member set: self, then context.replication.peers (later: xDS and health updates). */
  readonly membership: MutableMembership;
  /** Ownership epochs on peer calls (src/peer/fencing.ts): stale senders refused, writes refused while fenced. */
  readonly fencing: Fencing;
  /** The failure detector (health.*); undefined when it is off. */
  health: HealthMonitor | undefined;
  /** The xDS client; undefined without `xds.server`. */
  xds: XdsClient | undefined;
  private router: Router;
  private drained: Promise<void> | undefined;
  /** The drain's context handover (created on first use: the state agent exists by then). */
  private handover_: Handover | undefined;
  get handover(): Handover {
    this.handover_ ??= new Handover({
      membership: this.membership,
      antiEntropy: this.state?.antiEntropy,
      controlPlane: this.config.xds ? healthReportTarget(this.config) : undefined,
      service: this.config.node.cluster,
      logger: this.logger.child({ component: 'drain' }),
    });
    return this.handover_;
  }
  /** Clusters learnt over xDS beside the static ones (set in start). */
  private dynamic!: DynamicClusters;

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
    peering: { peers: PeerRouter; peerClient: PeerClient; membership: MutableMembership; fencing: Fencing },
  ) {
    this.fencing = peering.fencing;
    this.peers = peering.peers;
    this.peerClient = peering.peerClient;
    this.membership = peering.membership;
    this.router = new Router(clusterList);
    metricsRegistry.onCollect(() => this.refreshGauges());
  }

  static async start(config: SidecarConfig, options: SidecarOptions = {}): Promise<Sidecar> {
    const logger = options.logger ?? createLogger({ level: config.log.level, name: config.node.id });
    const identity = MeshIdentity.load(config.identity);
    const metrics = new MeshMetrics();
    const recorder = new ExchangeRecorder(metrics, logger, config.log.accessLog);
    let health: HealthMonitor | undefined;
    // The health monitor's own evidence steers endpoint choice before any control-plane push.
    const unreachable = (address: string): boolean => health?.isUnreachable(address) ?? false;
    const deps: ClusterDeps = { identity, metrics, logger, clock: options.clock, random: options.random, unreachable, localZone: config.node.zone };
    const clusters = config.clusters.map((c) => new Cluster(c, deps));
    const app = new Cluster(appClusterConfig(config), deps);

    let sidecar: Sidecar | undefined;
    const draining = (): boolean => sidecar?.draining ?? false;
    const outbound = trackAccepted(createOutboundServer({ limits: config.limits, recorder, router: () => sidecar!.router, draining }));
    const replication = config.context.replication;
    // The peer fault switch exists only when the environment arms it (tests, chaos drills).
    const faults = faultsArmed() ? new PeerFaults(config.node.id, (id) => sidecar?.membership.get(id)?.address) : undefined;
    if (faults) logger.warn({ env: FAULTS_ENV }, 'peer fault switch armed: POST /faults on the admin API can cut this sidecar off from peers');
    const fencing = new Fencing(config.node.id);
    const peers = new PeerRouter({ maxBodyBytes: replication.maxMessageBytes, logger, faults, fencing });
    const peerClient = new PeerClient(identity, { connectTimeoutMs: replication.connectTimeout, timeoutMs: replication.peerTimeout, maxResponseBytes: replication.maxMessageBytes, faults, fencing });
    const membership = new MutableMembership(
      selfMember(config, config.inbound.port),
      replication.peers.map((p): Member => ({ id: p.id, address: p.address, state: 'alive', epoch: 0 })),
    );
    const isSidecar = (spiffeId: string | undefined): boolean => isSidecarIdentity(spiffeId, identity.trustDomain, replication.allow);
    const inbound = trackAccepted(createInboundServer({ identity, allow: config.inbound.allow, limits: config.limits, recorder, app, draining, metrics, logger, peers: { router: peers, isSidecar } }));
    sidecar = new Sidecar(config, logger, identity, metrics, clusters, app, outbound, inbound, createAdminServer({
      get ready() { return sidecar!.ready; },
      get draining() { return sidecar!.draining; },
      metrics: () => metrics.render(),
      configDump: () => sidecar!.configDump(),
      clusters: () => sidecar!.clusters(),
      stateStats: () => sidecar!.stateStats(),
      checkpointAdmin: () => sidecar!.state,
      drain: () => sidecar!.drain(),
      faults: () => faults,
      members: () => (sidecar!.state?.antiEntropy ? membershipAdmin(sidecar!.membership, sidecar!.state.antiEntropy) : undefined),
    }), { peers, peerClient, membership, fencing });
    sidecar.dynamic = new DynamicClusters(clusters, deps, logger);

    identity.on('rotated', (id) => logger.info({ spiffeId: id, notAfter: identity.notAfter }, 'identity rotated'));
    identity.on('reload_error', (err) => logger.error({ err: err.message }, 'identity reload failed; keeping the current one'));
    identity.watch();

    try {
      if (config.context.enabled) {
        sidecar.state = await StateAgent.start(config, { logger, metrics, random: options.random, peering: { router: peers, client: peerClient, membership }, fencing });
        sidecar.ports.context = sidecar.state.port;
      }
      sidecar.ports.outbound = await listen(outbound, config.outbound.port, config.outbound.address);
      sidecar.ports.inbound = await listen(inbound, config.inbound.port, config.inbound.address);
      membership.upsert(selfMember(config, sidecar.ports.inbound));
      if (HealthMonitor.wanted(config)) {
        health = sidecar.health = HealthMonitor.start({ config, membership, peers, peerClient, state: sidecar.state, logger, metrics, incarnation: sidecar.incarnation, fencing });
      }
      sidecar.ports.admin = await listen(sidecar.admin, config.admin.port, ADMIN_ADDRESS);
    } catch (err) {
      await sidecar.close();
      throw err;
    }
    if (config.xds) await sidecar.startXds(config.xds);
    sidecar.ready = true;
    logger.info({ spiffeId: identity.spiffeId, ports: sidecar.ports, clusters: clusters.map((c) => c.name) }, 'sidecar ready');
    return sidecar;
  }

  /**
   * Installs the clusters learnt over xDS beside the static ones (a static name wins). The new
   * route table replaces the old in one assignment; replaced clusters finish their requests.
   */
  applyDynamicClusters(configs: ClusterConfig[]): void {
    this.router = this.dynamic.apply(configs).router;
  }

  /** Follows the EDS of this sidecar's own service into the member set. */
  applyXdsMembership(group: EndpointGroup): void {
    syncMembership(this.membership, group, this.config.context.replication.peers.map((p) => p.id), this.fencing);
  }

  private async startXds(xds: NonNullable<SidecarConfig['xds']>): Promise<void> {
    const client = new XdsClient({
      server: xds.server,
      node: { id: this.config.node.id, cluster: this.config.node.cluster, zone: this.config.node.zone, address: this.membership.self.address, version: VERSION, incarnation: this.incarnation },
      reconnect: { baseMs: xds.reconnect.base, maxMs: xds.reconnect.max },
      logger: this.logger.child({ component: 'xds' }),
      metrics: this.metricsRegistry,
      onClusters: (configs) => this.applyDynamicClusters(configs),
      onOwnEndpoints: (group) => this.applyXdsMembership(group),
    });
    this.xds = client;
    client.start();
    // Readiness waits for the first config, but not forever: static clusters serve meanwhile.
    if (!(await client.initialFetch(xds.initialFetchTimeout))) {
      this.logger.warn({ server: xds.server, timeoutMs: xds.initialFetchTimeout }, 'no complete xDS config within initialFetchTimeout; ready with what is known');
    }
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
      ...(this.xds ? { xds: this.xds.status() } : {}),
    };
  }

  checkpointAdmin(): StateAgent | undefined {
    return this.state;
  }

  stateStats(): object | undefined {
    return this.state?.stats();
  }

  clusters(): object {
    return {
      clusters: [...this.clusterList.map((c) => c.describe()), ...this.dynamic.current.map((c) => ({ ...c.describe(), source: 'xds' }))],
      inbound_app: this.app.describe(),
      fencing: this.fencing.status(),
      handover: this.handover.status(),
      members: this.health?.describe() ?? { self: this.membership.self, members: this.membership.members().filter((m) => m.id !== this.membership.self.id) },
    };
  }

  /** Requests in flight through either listener. */
  get inFlight(): number {
    return this.clusterList.reduce((sum, c) => sum + c.active, this.app.active) + this.dynamic.inFlight;
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
    // Ownership first, while the listeners and the xDS stream still work: the keys held here go to
    // their next owners (src/membership/handover.ts); requests keep being served meanwhile.
    await this.handover.run(performance.now() + this.config.drainTimeout);
    this.xds?.close();
    this.logger.info({ inFlight: this.inFlight, timeoutMs: this.config.drainTimeout }, 'draining');
    const closing = [closeServer(this.outbound), closeServer(this.inbound)];
    const deadline = performance.now() + this.config.drainTimeout;
    while (this.inFlight > 0 && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_INTERVAL_MS));
    }
    const cut = this.inFlight;
    if (cut > 0) this.logger.warn({ inFlight: cut }, 'drain timeout: closing remaining connections');
    cutConnections(this.outbound);
    cutConnections(this.inbound);
    await Promise.all(closing);
    await Promise.all([...this.clusterList, this.app].map((c) => (cut > 0 ? c.destroy() : c.close())));
    await this.dynamic.close(cut > 0);
    this.logger.info('drained');
  }

  /** Drains (bounded by drainTimeout), then stops the admin API and releases everything. */
  async close(): Promise<void> {
    this.health?.close();
    if (this.ready || this.draining) await this.drain();
    else {
      for (const server of [this.outbound, this.inbound]) if (server.listening) cutConnections(server);
      this.xds?.close();
      await Promise.all([closeServer(this.outbound), closeServer(this.inbound), ...[...this.clusterList, this.app].map((c) => c.destroy()), this.dynamic.close(true)]);
    }
    // After the proxy has drained: in-flight requests may still have been using their context.
    await this.state?.close();
    await this.peerClient.close();
    this.admin.closeAllConnections();
    await closeServer(this.admin);
    this.identity.close();
    flushLogger(this.logger);
  }

  private refreshGauges(): void {
    const m = this.metricsRegistry;
    m.breakerState.reset();
    m.ejected.reset();
    this.health?.refreshGauges();
    for (const cluster of [...this.clusterList, ...this.dynamic.current, this.app]) {
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

/** This sidecar as a member: its node id at the address peers reach its inbound listener on. */
function selfMember(config: SidecarConfig, inboundPort: number): Member {
  // inbound.advertise names the address other hosts use; a bare IP (the pod IP) gets the bound port.
  const zone = config.node.zone === '' ? {} : { zone: config.node.zone };
  return { id: config.node.id, address: advertisedAddress(config.inbound.advertise, inboundPort), state: 'alive', epoch: 0, ...zone };
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

/**
 * Every socket a proxy listener accepted. node's closeAllConnections knows only connections that
 * reached HTTP: a TLS handshake still running at the cut would finish afterwards and, kept alive,
 * hold close() open for the whole idle timeout.
 */
const accepted = new WeakMap<Server, Set<Socket>>();

function trackAccepted<S extends Server>(server: S): S {
  const sockets = new Set<Socket>();
  accepted.set(server, sockets);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return server;
}

function cutConnections(server: Server): void {
  server.closeAllConnections();
  for (const socket of accepted.get(server) ?? []) socket.destroy();
}

function closeServer(server: Server): Promise<void> {
  if (!server.listening) return Promise.resolve();
  return new Promise((resolve) => server.close(() => resolve()));
}
