// The registry: which services exist and which endpoints serve them, with each endpoint's health
// and epoch. Endpoints come from the config file and from sidecars that register themselves —
// through the node of their ADS stream, or `POST /v1/register` plus heartbeats. A registration
// outlives its stream (or last heartbeat) by `registration.ttl`, so a control-plane restart or a
// brief stream drop does not empty EDS while the sidecars reconnect.
import { EventEmitter } from 'node:events';
import type { MeshServiceConfig } from '../src/config/schema.js';
import { MeshError } from '../src/errors/table.js';
import type { EndpointHealth, EndpointView, ServiceDefinition, ServiceView } from './resources.js';

export type EndpointSource = 'config' | 'registered';

export interface NodeRegistration {
  nodeId: string;
  service: string;
  address: string;
  zone: string;
  priority?: number;
  /** Rises each time the sidecar restarts; a higher one clears a failure declaration. Default 0. */
  incarnation?: number;
}

export type FailoverKind = 'declared' | 'recovered' | 'drain' | 'registered' | 'expired';

export interface FailoverRecord {
  at: string;
  kind: FailoverKind;
  service: string;
  address: string;
  nodeId?: string | undefined;
  epoch: number;
  reason: string;
}

export interface RegistryEndpoint extends EndpointView {
  source: EndpointSource;
  /** Why the endpoint has its current health (declaration, drain, registration). */
  reason?: string | undefined;
  registration?: { incarnation: number; openStreams: number; expiresAt: string | null } | undefined;
}

export interface RegistryService extends ServiceDefinition {
  /** true when the service is in the config file; false when only sidecars registered it. */
  configured: boolean;
  endpoints: RegistryEndpoint[];
}

interface Registration extends Required<NodeRegistration> {
  openStreams: number;
  /** ms (registry clock) after which a registration with no open stream is gone. */
  leaseUntil: number;
}

interface EndpointState {
  health: EndpointHealth;
  epoch: number;
  reason?: string | undefined;
}

export interface RegistryOptions {
  ttlMs: number;
  now?: () => number;
  /** Failover history entries kept. Default 1000. */
  historyLimit?: number;
  /**
   * Whether this registry expires lapsed registrations itself. Default true. A registry mirroring a
   * shared store sets false: expiry is decided once, in the store, for every replica.
   */
  expireLocally?: boolean;
}

/** A registration as a shared store holds it: no stream counts, which are per replica. */
export interface SharedRegistration {
  nodeId: string;
  service: string;
  address: string;
  zone: string;
  priority: number;
  incarnation: number;
  /** ms (epoch clock) after which the registration is gone unless renewed. */
  leaseUntil: number;
}

export interface SharedEndpointState {
  service: string;
  address: string;
  health: EndpointHealth;
  epoch: number;
  reason?: string | undefined;
}

/** The registry state that replicas share through a store. */
export interface SharedRegistryState {
  registrations: SharedRegistration[];
  states: SharedEndpointState[];
  history: FailoverRecord[];
}

/** Defaults of a service that only sidecars registered: mesh mTLS, round robin. */
function implicitService(name: string): ServiceDefinition {
  return { name, namespace: 'default', lb: 'round_robin', hashHeader: 'x-ctx-key', tls: 'mesh' };
}

const endpointKey = (service: string, address: string): string => `${service}\u0000${address}`;

export class ServiceRegistry extends EventEmitter<{ change: [services: string[]]; expired: [nodeId: string]; failover: [record: FailoverRecord] }> {
  private readonly configured = new Map<string, MeshServiceConfig>();
  private readonly registrations = new Map<string, Registration>();
  private readonly states = new Map<string, EndpointState>();
  private readonly failovers: FailoverRecord[] = [];
  private readonly now: () => number;
  private readonly ttlMs: number;
  private readonly historyLimit: number;
  private readonly sweeper: NodeJS.Timeout;

  constructor(services: readonly MeshServiceConfig[], options: RegistryOptions) {
    super();
    for (const service of services) this.configured.set(service.name, service);
    this.now = options.now ?? Date.now;
    this.ttlMs = options.ttlMs;
    this.historyLimit = options.historyLimit ?? 1000;
    // Expiry is checked often relative to the TTL so a lapsed sidecar leaves EDS promptly.
    this.sweeper = setInterval(() => {
      if (options.expireLocally !== false) this.sweep();
    }, Math.max(25, Math.min(1000, this.ttlMs / 4)));
    this.sweeper.unref();
  }

  /** The TTL of a registration, ms. */
  get registrationTtlMs(): number {
    return this.ttlMs;
  }

  /** Everything a shared store holds, as this registry knows it (for writing back after an outage). */
  sharedState(): SharedRegistryState {
    return {
      registrations: [...this.registrations.values()].map(({ nodeId, service, address, zone, priority, incarnation, openStreams, leaseUntil }) => ({
        nodeId,
        service,
        address,
        zone,
        priority,
        incarnation,
        // A registration with an open stream here is as good as renewed now.
        leaseUntil: openStreams > 0 ? Math.max(leaseUntil, this.now() + this.ttlMs) : leaseUntil,
      })),
      states: [...this.states.entries()].map(([key, state]) => {
        const [service, address] = key.split('\u0000') as [string, string];
        return { service, address, ...state };
      }),
      history: [...this.failovers],
    };
  }

  /**
   * Replaces registrations, endpoint states and history with a store's (a replica's mirror of the
   * shared state). `openStreams` counts this replica's own streams per node id. Emits `change` for
   * the services whose resources may differ, `expired` for nodes that are gone.
   */
  applyShared(shared: SharedRegistryState, openStreams: ReadonlyMap<string, number>): void {
    const before = new Map(this.serviceNames().map((name) => [name, JSON.stringify(this.service(name))]));
    const previousNodes = new Set(this.registrations.keys());
    this.registrations.clear();
    for (const registration of shared.registrations) {
      this.registrations.set(registration.nodeId, { ...registration, openStreams: openStreams.get(registration.nodeId) ?? 0 });
    }
    this.states.clear();
    for (const { service, address, health, epoch, reason } of shared.states) this.states.set(endpointKey(service, address), { health, epoch, reason });
    this.failovers.splice(0, this.failovers.length, ...shared.history.slice(-this.historyLimit));
    const changed = new Set<string>();
    for (const name of new Set([...before.keys(), ...this.serviceNames()])) {
      if (before.get(name) !== JSON.stringify(this.service(name))) changed.add(name);
    }
    for (const nodeId of previousNodes) if (!this.registrations.has(nodeId)) this.emit('expired', nodeId);
    if (changed.size > 0) this.emitChange([...changed]);
  }

  close(): void {
    clearInterval(this.sweeper);
  }

  serviceNames(): string[] {
    const names = new Set(this.configured.keys());
    for (const registration of this.registrations.values()) names.add(registration.service);
    return [...names].sort();
  }

  /** The service as resources are built from it, or undefined when it does not exist. */
  service(name: string): ServiceView | undefined {
    const detailed = this.describe(name);
    if (!detailed) return undefined;
    const { configured: _configured, endpoints, ...definition } = detailed;
    return {
      ...definition,
      endpoints: endpoints.map(({ address, zone, priority, health, epoch, nodeId }) => ({ address, zone, priority, health, epoch, nodeId })),
    };
  }

  services(): RegistryService[] {
    return this.serviceNames().flatMap((name) => this.describe(name) ?? []);
  }

  describe(name: string): RegistryService | undefined {
    const config = this.configured.get(name);
    const registered = [...this.registrations.values()].filter((r) => r.service === name);
    if (!config && registered.length === 0) return undefined;
    const { endpoints: staticEndpoints = [], ...definition } = config ?? { ...implicitService(name), endpoints: [] };
    const byAddress = new Map<string, RegistryEndpoint>();
    for (const endpoint of staticEndpoints) {
      byAddress.set(endpoint.address, { ...endpoint, ...this.stateOf(name, endpoint.address), source: 'config' });
    }
    // A sidecar registered at a configured address takes that endpoint over (same key, same
    // health and epoch), and the config entry comes back if the registration lapses.
    for (const registration of registered) {
      byAddress.set(registration.address, {
        address: registration.address,
        zone: registration.zone,
        priority: registration.priority,
        nodeId: registration.nodeId,
        ...this.stateOf(name, registration.address),
        source: 'registered',
        registration: {
          incarnation: registration.incarnation,
          openStreams: registration.openStreams,
          expiresAt: registration.openStreams > 0 ? null : new Date(registration.leaseUntil).toISOString(),
        },
      });
    }
    return { ...definition, configured: config !== undefined, endpoints: [...byAddress.values()].sort((a, b) => a.address.localeCompare(b.address)) };
  }

  /** With a shared store: how many of the node's ADS streams are open on this replica. */
  setOpenStreams(nodeId: string, count: number): void {
    const registration = this.registrations.get(nodeId);
    if (registration) registration.openStreams = count;
  }

  /** Node ids of the registered sidecars of a service that are still registered. */
  liveMembers(service: string): string[] {
    return [...this.registrations.values()].filter((r) => r.service === service).map((r) => r.nodeId);
  }

  registration(nodeId: string): Readonly<Registration> | undefined {
    return this.registrations.get(nodeId);
  }

  /** A sidecar's ADS stream opened; returns the release to call when that stream closes. */
  attachStream(node: NodeRegistration): () => void {
    const registration = this.upsert(node);
    registration.openStreams += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const current = this.registrations.get(node.nodeId);
      if (current !== registration) return;
      current.openStreams -= 1;
      current.leaseUntil = this.now() + this.ttlMs;
    };
  }

  /** `POST /v1/register`: registers or renews a lease of one TTL. */
  heartbeat(node: NodeRegistration): void {
    const registration = this.upsert(node);
    registration.leaseUntil = Math.max(registration.leaseUntil, this.now() + this.ttlMs);
  }

  private upsert(node: NodeRegistration): Registration {
    const incarnation = node.incarnation ?? 0;
    const existing = this.registrations.get(node.nodeId);
    const wanted = { service: node.service, address: node.address, zone: node.zone, priority: node.priority ?? 0 };
    if (existing && existing.service === wanted.service && existing.address === wanted.address) {
      const moved = existing.zone !== wanted.zone || existing.priority !== wanted.priority;
      Object.assign(existing, wanted);
      if (incarnation > existing.incarnation) {
        existing.incarnation = incarnation;
        const state = this.stateOf(existing.service, existing.address);
        if (state.health !== 'HEALTHY') {
          this.transition(existing.service, existing.address, 'HEALTHY', 'recovered', `re-registered with incarnation ${incarnation}`, existing.nodeId);
          return existing;
        }
      }
      if (moved) this.emitChange([existing.service]);
      return existing;
    }
    const changed = new Set<string>([node.service]);
    if (existing) {
      // Same node, new service or address: the old endpoint goes away at once.
      this.registrations.delete(node.nodeId);
      changed.add(existing.service);
    }
    const registration: Registration = { nodeId: node.nodeId, ...wanted, incarnation, openStreams: 0, leaseUntil: this.now() + this.ttlMs };
    this.registrations.set(node.nodeId, registration);
    // A fresh registration starts healthy, with an epoch above any the address had before.
    const key = endpointKey(node.service, node.address);
    const previous = this.states.get(key);
    this.states.set(key, { health: 'HEALTHY', epoch: (previous?.epoch ?? -1) + 1, reason: 'registered' });
    this.record('registered', node.service, node.address, node.nodeId, `registered via ${existing ? 'move' : 'node'}`);
    this.emitChange([...changed]);
    return registration;
  }

  /** Removes registrations whose stream is closed and whose lease ran out. */
  sweep(): void {
    const now = this.now();
    const changed = new Set<string>();
    for (const registration of [...this.registrations.values()]) {
      if (registration.openStreams > 0 || registration.leaseUntil > now) continue;
      this.registrations.delete(registration.nodeId);
      changed.add(registration.service);
      this.record('expired', registration.service, registration.address, registration.nodeId, `no stream or heartbeat for ${this.ttlMs}ms`);
      this.emit('expired', registration.nodeId);
    }
    if (changed.size > 0) this.emitChange([...changed]);
  }

  /** Quorum declared the node failed: UNHEALTHY, epoch + 1. Returns false when already so. */
  declareFailed(nodeId: string, reason: string): boolean {
    const registration = this.registrations.get(nodeId);
    if (!registration) return false;
    if (this.stateOf(registration.service, registration.address).health === 'UNHEALTHY') return false;
    this.transition(registration.service, registration.address, 'UNHEALTHY', 'declared', reason, nodeId);
    return true;
  }

  /** Quorum vouches for the node again. Returns false when it was not unhealthy. */
  declareRecovered(nodeId: string, reason: string): boolean {
    const registration = this.registrations.get(nodeId);
    if (!registration) return false;
    if (this.stateOf(registration.service, registration.address).health !== 'UNHEALTHY') return false;
    this.transition(registration.service, registration.address, 'HEALTHY', 'recovered', reason, nodeId);
    return true;
  }

  /** Planned failover: the endpoint stops taking new work. Throws not_found for an unknown endpoint. */
  drain(service: string, address: string, reason = 'drain requested'): RegistryEndpoint {
    const endpoint = this.describe(service)?.endpoints.find((e) => e.address === address);
    if (!endpoint) throw new MeshError('not_found', `no endpoint ${address} in service ${service}`);
    if (endpoint.health !== 'DRAINING') this.transition(service, address, 'DRAINING', 'drain', reason, endpoint.nodeId);
    return this.describe(service)!.endpoints.find((e) => e.address === address)!;
  }

  history(): FailoverRecord[] {
    return [...this.failovers];
  }

  private stateOf(service: string, address: string): EndpointState {
    return this.states.get(endpointKey(service, address)) ?? { health: 'HEALTHY', epoch: 0 };
  }

  private transition(service: string, address: string, health: EndpointHealth, kind: FailoverKind, reason: string, nodeId?: string): void {
    const state = this.stateOf(service, address);
    this.states.set(endpointKey(service, address), { health, epoch: state.epoch + 1, reason });
    this.record(kind, service, address, nodeId, reason);
    this.emitChange([service]);
  }

  private record(kind: FailoverKind, service: string, address: string, nodeId: string | undefined, reason: string): void {
    const epoch = this.stateOf(service, address).epoch;
    const entry: FailoverRecord = { at: new Date(this.now()).toISOString(), kind, service, address, nodeId, epoch, reason };
    this.failovers.push(entry);
    this.emit('failover', entry);
    if (this.failovers.length > this.historyLimit) this.failovers.splice(0, this.failovers.length - this.historyLimit);
  }

  private emitChange(services: string[]): void {
    this.emit('change', services);
  }
}
