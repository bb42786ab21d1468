// The sidecar's xDS client: one ADS stream (state of the world) to the control plane.
//   LDS and CDS are wildcard subscriptions; RDS follows the route names the listeners reference,
//   EDS the clusters' service names plus this sidecar's own service (for membership).
//   Each response is validated whole: ACK (its version and nonce) and apply, or NACK (the
//   previous version, the same nonce, the errors as error_detail) and keep the last good config.
//   A broken stream is reopened after a jittered exponential back-off and resubscribes with the
//   versions it holds; meanwhile the last good config keeps serving (static stability).
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import type { ClusterConfig } from '../config/schema.js';
import type { Random } from '../resilience/clock.js';
import type { Logger } from '../telemetry/logger.js';
import type { MeshMetrics } from '../telemetry/metrics.js';
import { loadXdsProtos, TYPE_URL, type AnyMessage } from '../../xds/protos.js';
import {
  composeClusters,
  decodeResponseResources,
  type DecodedByKind,
  type EndpointGroup,
  type ResourceKind,
  type XdsResources,
} from './translate.js';

/** google.rpc.Code INVALID_ARGUMENT, the code of a NACK's error_detail. */
const GRPC_INVALID_ARGUMENT = 3;
/** error_detail messages past this are cut: a response of many bad resources must not make a huge request. */
const MAX_ERROR_DETAIL_CHARS = 4_096;
const USER_AGENT = 'ctxmesh';
/** How long a new stream watches its channel come up (the stream's own failure ends it sooner). */
const CONNECT_WAIT_MS = 60_000;

export type TypeKey = 'lds' | 'rds' | 'cds' | 'eds';

interface TypeInfo {
  key: TypeKey;
  kind: ResourceKind;
  typeUrl: string;
  /** LDS and CDS ask for everything; RDS and EDS for the names the others reference. */
  wildcard: boolean;
}

/** In the order the first requests of a stream go out. */
const TYPES: readonly TypeInfo[] = [
  { key: 'lds', kind: 'listener', typeUrl: TYPE_URL.listener, wildcard: true },
  { key: 'cds', kind: 'cluster', typeUrl: TYPE_URL.cluster, wildcard: true },
  { key: 'rds', kind: 'routeConfiguration', typeUrl: TYPE_URL.routeConfiguration, wildcard: false },
  { key: 'eds', kind: 'clusterLoadAssignment', typeUrl: TYPE_URL.clusterLoadAssignment, wildcard: false },
];
const TYPE_BY_URL = new Map(TYPES.map((t) => [t.typeUrl, t]));

export interface XdsNode {
  id: string;
  /** The service this sidecar fronts. */
  cluster: string;
  zone: string;
  /** host:port of this sidecar's inbound mTLS listener, as other sidecars reach it. */
  address: string;
  version?: string;
  /** Rises with every start of the sidecar. Default: the time the client was built, in ms. */
  incarnation?: number;
}

export interface XdsClientOptions {
  /** host:port of the ADS server (plain gRPC). */
  server: string;
  node: XdsNode;
  reconnect: { baseMs: number; maxMs: number };
  logger: Logger;
  metrics?: MeshMetrics;
  random?: Random;
  /** The whole dynamic cluster set, after each accepted update that changes it. */
  onClusters: (configs: ClusterConfig[]) => void;
  /** The ClusterLoadAssignment of this sidecar's own service (node.cluster), whenever it changes. */
  onOwnEndpoints?: (group: EndpointGroup) => void;
}

interface AckRecord {
  version: string;
  nonce: string;
  at: string;
}

interface NackRecord extends AckRecord {
  error: string;
}

interface TypeState {
  info: TypeInfo;
  /** The last accepted version_info: what an ACK, a NACK and a resync report. */
  version: string;
  /** The nonce of the last response on the current stream. */
  nonce: string;
  /** Names subscribed (RDS, EDS). */
  names: string[];
  /** Whether a request of this type went out on the current stream. */
  requested: boolean;
  /** A response of this type was handled (accepted or rejected) at least once. */
  responded: boolean;
  lastAck: AckRecord | undefined;
  lastNack: NackRecord | undefined;
  acks: number;
  nacks: number;
}

interface DiscoveryResponse {
  version_info: string;
  resources: AnyMessage[];
  type_url: string;
  nonce: string;
}

interface DiscoveryRequest {
  version_info: string;
  node: object;
  resource_names: string[];
  type_url: string;
  response_nonce: string;
  error_detail?: { code: number; message: string };
}

type AdsCall = grpc.ClientDuplexStream<DiscoveryRequest, DiscoveryResponse>;

export interface XdsStatus {
  server: string;
  connected: boolean;
  /** Streams opened since start (1 + reconnections that reached the server). */
  streams: number;
  lastError: string | undefined;
  lastConnectedAt: string | undefined;
  lastDisconnectedAt: string | undefined;
  initialFetchDone: boolean;
  types: Record<TypeKey, {
    type_url: string;
    version: string;
    subscribed: string[] | '*';
    acks: number;
    nacks: number;
    last_ack: AckRecord | undefined;
    last_nack: NackRecord | undefined;
  }>;
  resources: { listeners: string[]; routes: string[]; clusters: string[]; endpoints: string[] };
  applied_clusters: string[];
}

export class XdsClient extends EventEmitter<{ applied: [configs: ClusterConfig[]]; nack: [type: TypeKey, error: string]; connected: []; disconnected: [] }> {
  private readonly types: Record<TypeKey, TypeState>;
  private resources: XdsResources = { listeners: new Map(), routes: new Map(), clusters: new Map(), endpoints: new Map() };
  private client: grpc.Client | undefined;
  private call: AdsCall | undefined;
  private connected = false;
  private closed = false;
  /** Consecutive streams that broke before a response: the back-off exponent. */
  private failures = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private streams = 0;
  private lastError: string | undefined;
  private lastConnectedAt: string | undefined;
  private lastDisconnectedAt: string | undefined;
  private applied: string | undefined;
  private appliedNames: string[] = [];
  private ownEndpoints: string | undefined;
  private initialFetchDone = false;
  private readonly initialFetchWaiters: Array<() => void> = [];
  private readonly random: Random;
  private readonly nodeMessage: object;

  constructor(private readonly options: XdsClientOptions) {
    super();
    this.random = options.random ?? Math.random;
    const state = (info: TypeInfo): TypeState => ({
      info,
      version: '',
      nonce: '',
      names: info.key === 'eds' ? [options.node.cluster] : [],
      requested: false,
      responded: false,
      lastAck: undefined,
      lastNack: undefined,
      acks: 0,
      nacks: 0,
    });
    this.types = { lds: state(TYPES[0]!), cds: state(TYPES[1]!), rds: state(TYPES[2]!), eds: state(TYPES[3]!) };
    const { node } = options;
    this.nodeMessage = {
      id: node.id,
      cluster: node.cluster,
      locality: { zone: node.zone },
      // The incarnation rises with every start (it is the start time), so the control plane can
      // tell a restarted sidecar, which clears a failure declaration, from one back from a pause.
      metadata: jsonToStruct({ 'ctxmesh.address': node.address, 'ctxmesh.role': 'sidecar', 'ctxmesh.incarnation': node.incarnation ?? Date.now() }),
      user_agent_name: USER_AGENT,
      user_agent_version: node.version ?? '',
    };
  }

  start(): void {
    this.connect();
  }

  /** Resolves true once the first full config arrived, false if `timeoutMs` passed first. */
  initialFetch(timeoutMs: number): Promise<boolean> {
    if (this.initialFetchDone) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.initialFetchWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  get isConnected(): boolean {
    return this.connected;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.dropStream();
    this.options.metrics?.xdsConnected.set(0);
  }

  status(): XdsStatus {
    const types = {} as XdsStatus['types'];
    for (const t of Object.values(this.types)) {
      types[t.info.key] = {
        type_url: t.info.typeUrl,
        version: t.version,
        subscribed: t.info.wildcard ? '*' : [...t.names],
        acks: t.acks,
        nacks: t.nacks,
        last_ack: t.lastAck,
        last_nack: t.lastNack,
      };
    }
    const names = (m: Map<string, unknown>): string[] => [...m.keys()].sort();
    return {
      server: this.options.server,
      connected: this.connected,
      streams: this.streams,
      lastError: this.lastError,
      lastConnectedAt: this.lastConnectedAt,
      lastDisconnectedAt: this.lastDisconnectedAt,
      initialFetchDone: this.initialFetchDone,
      types,
      resources: {
        listeners: names(this.resources.listeners),
        routes: names(this.resources.routes),
        clusters: names(this.resources.clusters),
        endpoints: names(this.resources.endpoints),
      },
      applied_clusters: this.appliedNames,
    };
  }

  // --- the stream ----------------------------------------------------------------------------

  private connect(): void {
    if (this.closed) return;
    const protos = loadXdsProtos();
    // A fresh channel per attempt: grpc's own channel back-off (1s growing to 2 minutes) would
    // otherwise sit under ours and delay the reconnection long after the server is back.
    const client = new protos.AdsClient(this.options.server, grpc.credentials.createInsecure(), {
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
    });
    const call = (client as unknown as { StreamAggregatedResources(): AdsCall }).StreamAggregatedResources();
    this.client = client;
    this.call = call;
    for (const t of Object.values(this.types)) {
      t.nonce = '';
      t.requested = false;
    }
    // Connected once the channel is up: a server with nothing to send yet sends no headers either.
    client.waitForReady(Date.now() + CONNECT_WAIT_MS, (err) => {
      if (!err) this.markConnected(call);
    });
    call.on('metadata', () => this.markConnected(call));
    call.on('data', (response: DiscoveryResponse) => {
      if (call !== this.call) return;
      this.markConnected(call);
      this.failures = 0;
      try {
        this.onResponse(response);
      } catch (err) {
        // A bug of ours must not take the stream down with it: log it, keep the config in force.
        this.options.logger.error({ err: (err as Error).message, type: response.type_url }, 'xDS response handling failed');
      }
    });
    call.on('error', (err: grpc.ServiceError) => this.onBroken(call, `${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`));
    call.on('status', (status: grpc.StatusObject) => this.onBroken(call, `stream ended: ${grpc.status[status.code] ?? status.code} ${status.details}`));
    call.on('end', () => this.onBroken(call, 'stream ended by the server'));
    // Resync: every type goes out with the version it holds, so an unchanged server can tell.
    for (const info of TYPES) {
      const t = this.types[info.key];
      if (info.wildcard || t.names.length > 0) this.send(info.key);
    }
  }

  private markConnected(call: AdsCall): void {
    if (call !== this.call || this.connected) return;
    this.connected = true;
    this.streams += 1;
    this.lastConnectedAt = new Date().toISOString();
    this.options.metrics?.xdsConnected.set(1);
    this.options.logger.info({ server: this.options.server, streams: this.streams }, 'xDS stream connected');
    this.emit('connected');
  }

  private onBroken(call: AdsCall, reason: string): void {
    if (call !== this.call) return;
    const wasConnected = this.connected;
    this.dropStream();
    this.lastError = reason;
    this.lastDisconnectedAt = new Date().toISOString();
    this.options.metrics?.xdsConnected.set(0);
    if (this.closed) return;
    const delay = reconnectDelay(this.failures, this.options.reconnect, this.random);
    this.failures += 1;
    const log = { server: this.options.server, reason, retryInMs: delay, attempt: this.failures };
    if (wasConnected) this.options.logger.warn(log, 'xDS stream lost; serving the last good config');
    else this.options.logger.debug(log, 'xDS connection failed');
    if (wasConnected) this.emit('disconnected');
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.retryTimer.unref();
  }

  private dropStream(): void {
    const { call, client } = this;
    this.call = undefined;
    this.client = undefined;
    this.connected = false;
    call?.cancel();
    client?.close();
  }

  private send(key: TypeKey, errorDetail?: string): void {
    const t = this.types[key];
    if (!this.call) return;
    const request: DiscoveryRequest = {
      version_info: t.version,
      node: this.nodeMessage,
      resource_names: t.info.wildcard ? [] : t.names,
      type_url: t.info.typeUrl,
      response_nonce: t.nonce,
    };
    if (errorDetail !== undefined) request.error_detail = { code: GRPC_INVALID_ARGUMENT, message: errorDetail };
    t.requested = true;
    this.call.write(request);
  }

  // --- responses -----------------------------------------------------------------------------

  private onResponse(response: DiscoveryResponse): void {
    const info = TYPE_BY_URL.get(response.type_url);
    if (!info) {
      this.options.logger.warn({ type: response.type_url }, 'xDS response of a type never asked for; ignored');
      return;
    }
    const t = this.types[info.key];
    t.nonce = response.nonce;
    t.responded = true;
    const decoded = decodeResponseResources(info.kind, info.typeUrl, response.resources);
    let errors: string[];
    let candidate: XdsResources | undefined;
    let configs: ClusterConfig[] = [];
    if (decoded.valid) {
      candidate = this.withResources(info, decoded.result);
      const composition = composeClusters(candidate);
      errors = composition.errors;
      configs = composition.configs;
    } else errors = decoded.errors;

    if (errors.length > 0 || !candidate) {
      this.reject(t, response, errors);
      return;
    }
    this.resources = candidate;
    t.version = response.version_info;
    // New route or endpoint names go out before the ACK, so the server learns them at once.
    this.resubscribe();
    this.send(info.key);
    t.acks += 1;
    t.lastAck = { version: response.version_info, nonce: response.nonce, at: new Date().toISOString() };
    this.options.metrics?.xdsUpdates.labels(info.key, 'ack').inc();
    this.options.logger.debug({ type: info.key, version: response.version_info, resources: response.resources.length }, 'xDS update accepted');
    this.publish(configs);
    if (info.key === 'eds') this.publishOwnEndpoints();
    this.checkInitialFetch();
  }

  private reject(t: TypeState, response: DiscoveryResponse, errors: string[]): void {
    let detail = errors.join('; ');
    if (detail.length > MAX_ERROR_DETAIL_CHARS) detail = `${detail.slice(0, MAX_ERROR_DETAIL_CHARS)}… (${errors.length} errors)`;
    this.send(t.info.key, detail);
    t.nacks += 1;
    t.lastNack = { version: response.version_info, nonce: response.nonce, at: new Date().toISOString(), error: detail };
    this.options.metrics?.xdsUpdates.labels(t.info.key, 'nack').inc();
    this.options.logger.warn({ type: t.info.key, version: response.version_info, keptVersion: t.version, error: detail }, 'xDS update rejected (NACK); keeping the last good config');
    this.emit('nack', t.info.key, detail);
    this.checkInitialFetch();
  }

  /**
   * The resources as they would be with this response accepted. LDS and CDS responses carry the
   * whole set (a missing resource is deleted); RDS and EDS only the named ones they update.
   */
  private withResources(info: TypeInfo, incoming: Map<string, DecodedByKind[ResourceKind]>): XdsResources {
    const next: XdsResources = { ...this.resources };
    if (info.key === 'lds') next.listeners = incoming as Map<string, DecodedByKind['listener']>;
    else if (info.key === 'cds') next.clusters = incoming as Map<string, DecodedByKind['cluster']>;
    else if (info.key === 'rds') next.routes = new Map([...this.resources.routes, ...(incoming as Map<string, DecodedByKind['routeConfiguration']>)]);
    else next.endpoints = new Map([...this.resources.endpoints, ...(incoming as Map<string, DecodedByKind['clusterLoadAssignment']>)]);
    return next;
  }

  /** Follows the names the listeners and clusters reference; forgets what is no longer referenced. */
  private resubscribe(): void {
    const routeNames = this.referencedRouteNames();
    const endpointNames = [...new Set([...this.referencedEndpointNames(), this.options.node.cluster])].sort();
    for (const [key, names, map] of [
      ['rds', routeNames, this.resources.routes],
      ['eds', endpointNames, this.resources.endpoints],
    ] as const) {
      const t = this.types[key];
      if (sameList(t.names, names)) continue;
      t.names = names;
      for (const name of [...map.keys()]) if (!names.includes(name)) map.delete(name);
      // An empty list on a type's first request would mean "everything": only unsubscribe from
      // names that were asked for on this stream.
      if (names.length > 0 || t.requested) this.send(key);
    }
  }

  private referencedRouteNames(): string[] {
    const names = new Set<string>();
    for (const l of this.resources.listeners.values()) if (l.routeConfigName) names.add(l.routeConfigName);
    return [...names].sort();
  }

  private referencedEndpointNames(): string[] {
    const names = new Set<string>();
    for (const c of this.resources.clusters.values()) if (c.edsServiceName !== undefined) names.add(c.edsServiceName);
    return [...names].sort();
  }

  private publish(configs: ClusterConfig[]): void {
    const serialized = JSON.stringify(configs);
    if (serialized === this.applied) return;
    this.applied = serialized;
    this.appliedNames = configs.map((c) => c.name);
    this.options.onClusters(configs);
    this.emit('applied', configs);
  }

  private publishOwnEndpoints(): void {
    const group = this.resources.endpoints.get(this.options.node.cluster);
    if (!group || !this.options.onOwnEndpoints) return;
    const serialized = JSON.stringify(group);
    if (serialized === this.ownEndpoints) return;
    this.ownEndpoints = serialized;
    this.options.onOwnEndpoints(group);
  }

  /** The first config is complete once LDS and CDS answered and every name they reference has. */
  private checkInitialFetch(): void {
    if (this.initialFetchDone) return;
    const { lds, cds, rds, eds } = this.types;
    if (!lds.responded || !cds.responded) return;
    if (!rds.lastNack && this.referencedRouteNames().some((n) => !this.resources.routes.has(n))) return;
    if (!eds.lastNack && this.referencedEndpointNames().some((n) => !this.resources.endpoints.has(n))) return;
    this.initialFetchDone = true;
    for (const resolve of this.initialFetchWaiters.splice(0)) resolve();
  }
}

/**
 * The wait before reconnection attempt `failures` (0 for the first after a loss): up to
 * base·2^failures, capped at max, with full jitter so that sidecars which lost the same control
 * plane do not all come back at once.
 */
export function reconnectDelay(failures: number, backoff: { baseMs: number; maxMs: number }, random: Random): number {
  const ceiling = Math.min(backoff.maxMs, backoff.baseMs * 2 ** Math.min(failures, 30));
  return Math.round(random() * ceiling);
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * A flat JSON object as google.protobuf.Struct. Each value carries both the snake_case and the
 * camelCase member name: protobufjs uses its built-in (camelCase) Struct whatever keepCase says,
 * and `fromObject` ignores the spelling it does not know.
 */
export function jsonToStruct(object: Record<string, string | number | boolean>): object {
  const fields: Record<string, object> = {};
  for (const [key, value] of Object.entries(object)) {
    fields[key] =
      typeof value === 'string'
        ? { string_value: value, stringValue: value }
        : typeof value === 'number'
          ? { number_value: value, numberValue: value }
          : { bool_value: value, boolValue: value };
  }
  return { fields };
}
