// The Aggregated Discovery Service: StreamAggregatedResources (state of the world) and
// DeltaAggregatedResources (incremental) over @grpc/grpc-js, serving what the snapshot cache
// holds. Per stream and per type it tracks the subscription, the nonce and version of the last
// response, the version the client last ACKed and its NACKs.
//
// Protocol rules followed (envoyproxy xDS protocol, "ACK/NACK and resource type instance version"):
// - a request whose response_nonce is not the nonce of our latest response of that type is stale
//   and ignored in state of the world: the client will answer the latest one too;
// - error_detail set = NACK: the client keeps the version it last accepted (version_info), so we
//   do not resend the rejected content; the next change of that content is pushed as usual;
// - SotW: an empty resource_names for LDS/CDS on the first request, or `*`, is a wildcard; LDS and
//   CDS responses carry the full set (absence = deletion), RDS/EDS carry the subscribed resources;
// - delta: `*` and subscribe/unsubscribe lists, initial_resource_versions tells what a reconnecting
//   client already has; only changed resources and removed_resources are sent.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../src/telemetry/logger.js';
import type { ControlPlaneMetrics } from '../src/telemetry/metrics.js';
import { type AnyMessage, loadXdsProtos, TYPE_URL, type TypeUrl } from './protos.js';
import { fromStruct } from './resources.js';
import { type CacheChange, type CachedResource, isTypeUrl, type SnapshotCache } from './snapshot-cache.js';

export type StreamVariant = 'sotw' | 'delta';

/** The node of a stream's first request, in the parts the control plane uses. */
export interface AdsNode {
  id: string;
  cluster: string;
  zone: string;
  metadata: Record<string, unknown>;
}

/**
 * Called with a stream's node once it is known; may return a release called when the stream
 * closes (the registry's registration), or throw to refuse the stream (INVALID_ARGUMENT).
 */
export type NodeHandler = (node: AdsNode, variant: StreamVariant) => (() => void) | undefined;

export interface NackRecord {
  at: string;
  nonce: string;
  /** The version the client says it keeps (its last accepted). */
  keptVersion: string;
  error: string;
}

export interface TypeStatus {
  typeUrl: string;
  wildcard: boolean;
  subscribed: string[];
  /** Version the client last ACKed (SotW: version_info; delta: system_version_info of the ACKed response). */
  ackedVersion: string | null;
  lastNonce: string | null;
  lastSentVersion: string | null;
  pushes: number;
  nacks: number;
  lastNack: NackRecord | null;
}

export interface ClientStatus {
  stream: number;
  nodeId: string;
  cluster: string;
  variant: StreamVariant;
  peer: string;
  connectedAt: string;
  types: TypeStatus[];
}

interface TypeState {
  typeUrl: TypeUrl;
  wildcard: boolean;
  names: Set<string>;
  /** SotW: name → version of what the latest response carried. Delta: what the client has. */
  sent: Map<string, string>;
  ackedVersion: string | null;
  lastNonce: string | null;
  lastSentVersion: string | null;
  pushes: number;
  nacks: number;
  lastNack: NackRecord | null;
  /** Delta: per unacknowledged nonce, what the response changed (name → previous version, or null if none). */
  pendingDelta: Map<string, { version: string; previous: Map<string, string | null>; sent: Map<string, string | null> }>;
  /** Delta: versions the client NACKed, not offered again. */
  rejected: Map<string, string>;
}

interface StreamState {
  id: number;
  variant: StreamVariant;
  peer: string;
  connectedAt: string;
  node: AdsNode | undefined;
  nonceCounter: number;
  types: Map<TypeUrl, TypeState>;
  release: (() => void) | undefined;
  closed: boolean;
}

/** LDS and CDS: a state-of-the-world response must carry every resource (absence = deletion). */
const FULL_STATE_TYPES = new Set<string>([TYPE_URL.listener, TYPE_URL.cluster]);

const TYPE_LABEL: Record<TypeUrl, string> = {
  [TYPE_URL.listener]: 'lds',
  [TYPE_URL.routeConfiguration]: 'rds',
  [TYPE_URL.cluster]: 'cds',
  [TYPE_URL.clusterLoadAssignment]: 'eds',
};

export const CONTROL_PLANE_IDENTIFIER = 'ctxmesh-control-plane';

// Shapes of the requests as proto-loader decodes them (keepCase, defaults on).
interface NodeMessage {
  id?: string;
  cluster?: string;
  locality?: { zone?: string } | null;
  metadata?: { fields?: Record<string, unknown> } | null;
}
interface StatusMessage {
  code?: number;
  message?: string;
}
interface DiscoveryRequest {
  version_info: string;
  node: NodeMessage | null;
  resource_names: string[];
  type_url: string;
  response_nonce: string;
  error_detail: StatusMessage | null;
}
interface DeltaDiscoveryRequest {
  node: NodeMessage | null;
  type_url: string;
  resource_names_subscribe: string[];
  resource_names_unsubscribe: string[];
  initial_resource_versions: Record<string, string>;
  response_nonce: string;
  error_detail: StatusMessage | null;
}

export interface AdsServerOptions {
  cache: SnapshotCache;
  logger: Logger;
  metrics: ControlPlaneMetrics;
  onNode?: NodeHandler;
}

export class AdsServer {
  private readonly streams = new Map<number, { state: StreamState; call: grpc.ServerDuplexStream<unknown, unknown> }>();
  private nextStreamId = 1;
  private readonly cache: SnapshotCache;
  private readonly logger: Logger;
  private readonly metrics: ControlPlaneMetrics;
  private readonly onNode: NodeHandler | undefined;

  constructor(options: AdsServerOptions) {
    this.cache = options.cache;
    this.logger = options.logger;
    this.metrics = options.metrics;
    this.onNode = options.onNode;
    this.cache.on('change', (change) => this.onCacheChange(change));
  }

  addTo(server: grpc.Server): void {
    server.addService(loadXdsProtos().adsService, {
      StreamAggregatedResources: (call: grpc.ServerDuplexStream<DiscoveryRequest, unknown>) => this.serve(call, 'sotw'),
      DeltaAggregatedResources: (call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, unknown>) => this.serve(call, 'delta'),
    });
  }

  clients(): ClientStatus[] {
    return [...this.streams.values()].map(({ state }) => ({
      stream: state.id,
      nodeId: state.node?.id ?? '',
      cluster: state.node?.cluster ?? '',
      variant: state.variant,
      peer: state.peer,
      connectedAt: state.connectedAt,
      types: [...state.types.values()].map((t) => ({
        typeUrl: t.typeUrl,
        wildcard: t.wildcard,
        subscribed: [...t.names].sort(),
        ackedVersion: t.ackedVersion,
        lastNonce: t.lastNonce,
        lastSentVersion: t.lastSentVersion,
        pushes: t.pushes,
        nacks: t.nacks,
        lastNack: t.lastNack,
      })),
    }));
  }

  /** Ends every stream (clients reconnect to another replica or to our successor). */
  closeStreams(): void {
    for (const { state, call } of [...this.streams.values()]) {
      this.finish(state);
      call.end();
    }
  }

  private serve(call: grpc.ServerDuplexStream<any, unknown>, variant: StreamVariant): void {
    const state: StreamState = {
      id: this.nextStreamId++,
      variant,
      peer: call.getPeer(),
      connectedAt: new Date().toISOString(),
      node: undefined,
      nonceCounter: 0,
      types: new Map(),
      release: undefined,
      closed: false,
    };
    this.streams.set(state.id, { state, call });
    this.metrics.streams.inc({ variant });
    call.on('data', (request: DiscoveryRequest | DeltaDiscoveryRequest) => {
      if (state.closed) return;
      try {
        if (!state.node && request.node) this.acceptNode(state, request.node);
        if (variant === 'sotw') this.onSotwRequest(state, call, request as DiscoveryRequest);
        else this.onDeltaRequest(state, call, request as DeltaDiscoveryRequest);
      } catch (err) {
        this.logger.warn({ stream: state.id, err: (err as Error).message }, 'ADS stream refused');
        this.finish(state);
        call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message });
      }
    });
    const end = () => {
      this.finish(state);
      // Half-close from the client ends our side too, as the protocol expects.
      if (!call.writableEnded) call.end();
    };
    call.on('end', end);
    call.on('error', () => this.finish(state));
    call.on('close', () => this.finish(state));
    call.on('cancelled', () => this.finish(state));
  }

  private finish(state: StreamState): void {
    if (state.closed) return;
    state.closed = true;
    this.streams.delete(state.id);
    this.metrics.streams.dec({ variant: state.variant });
    state.release?.();
    state.release = undefined;
    this.logger.debug({ stream: state.id, node: state.node?.id }, 'ADS stream closed');
  }

  private acceptNode(state: StreamState, message: NodeMessage): void {
    const node: AdsNode = {
      id: message.id ?? '',
      cluster: message.cluster ?? '',
      zone: message.locality?.zone ?? '',
      metadata: message.metadata ? fromStruct(message.metadata) : {},
    };
    state.node = node;
    state.release = this.onNode?.(node, state.variant);
    this.logger.info({ stream: state.id, node: node.id, cluster: node.cluster, variant: state.variant }, 'ADS stream opened');
  }

  private typeState(state: StreamState, typeUrl: TypeUrl): TypeState {
    let sub = state.types.get(typeUrl);
    if (!sub) {
      sub = {
        typeUrl,
        wildcard: false,
        names: new Set(),
        sent: new Map(),
        ackedVersion: null,
        lastNonce: null,
        lastSentVersion: null,
        pushes: 0,
        nacks: 0,
        lastNack: null,
        pendingDelta: new Map(),
        rejected: new Map(),
      };
      state.types.set(typeUrl, sub);
    }
    return sub;
  }

  private recordNack(state: StreamState, sub: TypeState, nonce: string, keptVersion: string, error: StatusMessage): void {
    sub.nacks += 1;
    sub.lastNack = { at: new Date().toISOString(), nonce, keptVersion, error: error.message || `status ${error.code ?? 'unknown'}` };
    this.metrics.nacks.inc({ type: TYPE_LABEL[sub.typeUrl] });
    this.logger.warn({ stream: state.id, node: state.node?.id, type: TYPE_LABEL[sub.typeUrl], nonce, keptVersion, error: sub.lastNack.error }, 'xDS NACK');
  }

  // --- state of the world ---------------------------------------------------------------------

  private onSotwRequest(state: StreamState, call: grpc.ServerDuplexStream<unknown, unknown>, request: DiscoveryRequest): void {
    if (!isTypeUrl(request.type_url)) {
      this.logger.debug({ stream: state.id, type: request.type_url }, 'request for an unserved resource type ignored');
      return;
    }
    const isNew = !state.types.has(request.type_url);
    const sub = this.typeState(state, request.type_url);
    const nonce = request.response_nonce;
    if (nonce && nonce !== sub.lastNonce) return;
    if (nonce && hasError(request.error_detail)) {
      this.recordNack(state, sub, nonce, request.version_info, request.error_detail!);
      // A NACK's version_info is the version the client kept: its last accepted one.
      if (request.version_info) sub.ackedVersion = request.version_info;
    } else if (nonce) {
      sub.ackedVersion = request.version_info;
      this.metrics.acks.inc({ type: TYPE_LABEL[sub.typeUrl] });
    } else if (request.version_info) {
      // A client reconnecting (e.g. after our restart) reports the version it kept.
      sub.ackedVersion = request.version_info;
    }
    const names = request.resource_names.filter((name) => name !== '*');
    sub.wildcard =
      request.resource_names.includes('*') ||
      (FULL_STATE_TYPES.has(sub.typeUrl) && request.resource_names.length === 0 && (isNew || sub.wildcard));
    sub.names = new Set(names);
    this.respondSotw(state, call, sub, isNew);
  }

  private sotwView(sub: TypeState): CachedResource[] {
    if (sub.wildcard) {
      const all = this.cache.all(sub.typeUrl);
      // `*` plus names: the names are covered by the wildcard already.
      return all;
    }
    return [...sub.names].flatMap((name) => this.cache.get(sub.typeUrl, name) ?? []);
  }

  private respondSotw(state: StreamState, call: grpc.ServerDuplexStream<unknown, unknown>, sub: TypeState, force: boolean): void {
    const view = this.sotwView(sub);
    const fullState = FULL_STATE_TYPES.has(sub.typeUrl);
    let differs: boolean;
    if (fullState) {
      differs = force || view.length !== sub.sent.size || view.some((r) => sub.sent.get(r.name) !== r.version);
    } else {
      differs = view.some((r) => sub.sent.get(r.name) !== r.version);
    }
    if (!differs) return;
    const nonce = String(++state.nonceCounter);
    const version = this.cache.version(sub.typeUrl);
    sub.sent = new Map(view.map((r) => [r.name, r.version]));
    sub.lastNonce = nonce;
    sub.lastSentVersion = version;
    sub.pushes += 1;
    this.metrics.pushes.inc({ type: TYPE_LABEL[sub.typeUrl] });
    call.write({
      version_info: version,
      resources: view.map((r) => r.resource),
      type_url: sub.typeUrl,
      nonce,
      control_plane: { identifier: CONTROL_PLANE_IDENTIFIER },
    });
  }

  // --- incremental ----------------------------------------------------------------------------

  private onDeltaRequest(state: StreamState, call: grpc.ServerDuplexStream<unknown, unknown>, request: DeltaDiscoveryRequest): void {
    if (!isTypeUrl(request.type_url)) {
      this.logger.debug({ stream: state.id, type: request.type_url }, 'request for an unserved resource type ignored');
      return;
    }
    const isNew = !state.types.has(request.type_url);
    const sub = this.typeState(state, request.type_url);
    const nonce = request.response_nonce;
    if (nonce) {
      const pending = sub.pendingDelta.get(nonce);
      if (pending) {
        sub.pendingDelta.delete(nonce);
        if (hasError(request.error_detail)) {
          this.recordNack(state, sub, nonce, sub.ackedVersion ?? '', request.error_detail!);
          // The client kept what it had: roll back what this response changed, unless a later
          // response already changed it again, and do not offer the rejected versions again.
          for (const [name, previous] of pending.previous) {
            const sentVersion = pending.sent.get(name);
            if (sentVersion) sub.rejected.set(name, sentVersion);
            if (sub.sent.get(name) !== (sentVersion ?? undefined)) continue;
            if (previous === null) sub.sent.delete(name);
            else sub.sent.set(name, previous);
          }
        } else {
          sub.ackedVersion = pending.version;
          this.metrics.acks.inc({ type: TYPE_LABEL[sub.typeUrl] });
        }
      }
    }
    if (isNew) {
      for (const [name, version] of Object.entries(request.initial_resource_versions ?? {})) sub.sent.set(name, version);
      if (FULL_STATE_TYPES.has(sub.typeUrl) && request.resource_names_subscribe.length === 0) sub.wildcard = true;
    }
    const subscribed: string[] = [];
    for (const name of request.resource_names_subscribe) {
      if (name === '*') sub.wildcard = true;
      else if (!sub.names.has(name)) {
        sub.names.add(name);
        subscribed.push(name);
      }
    }
    for (const name of request.resource_names_unsubscribe) {
      if (name === '*') sub.wildcard = false;
      else sub.names.delete(name);
      // The client forgets an unsubscribed resource; subscribing again must resend it.
      if (!this.inDeltaScope(sub, name)) sub.sent.delete(name);
    }
    const candidates = new Set<string>([...subscribed, ...sub.sent.keys()]);
    if (sub.wildcard) for (const name of this.cache.names(sub.typeUrl)) candidates.add(name);
    else for (const name of sub.names) candidates.add(name);
    this.respondDelta(state, call, sub, candidates);
  }

  private inDeltaScope(sub: TypeState, name: string): boolean {
    return sub.wildcard || sub.names.has(name);
  }

  private respondDelta(state: StreamState, call: grpc.ServerDuplexStream<unknown, unknown>, sub: TypeState, candidates: Iterable<string>): void {
    const resources: Array<{ name: string; version: string; resource: AnyMessage }> = [];
    const removed: string[] = [];
    const previous = new Map<string, string | null>();
    const sent = new Map<string, string | null>();
    for (const name of candidates) {
      if (!this.inDeltaScope(sub, name)) continue;
      const cached = this.cache.get(sub.typeUrl, name);
      const known = sub.sent.get(name);
      if (cached) {
        if (known === cached.version || sub.rejected.get(name) === cached.version) continue;
        resources.push({ name, version: cached.version, resource: cached.resource });
        previous.set(name, known ?? null);
        sent.set(name, cached.version);
        sub.sent.set(name, cached.version);
      } else if (known !== undefined) {
        removed.push(name);
        previous.set(name, known);
        sent.set(name, null);
        sub.sent.delete(name);
      }
    }
    if (resources.length === 0 && removed.length === 0) return;
    const nonce = String(++state.nonceCounter);
    const version = this.cache.version(sub.typeUrl);
    sub.pendingDelta.set(nonce, { version, previous, sent });
    sub.lastNonce = nonce;
    sub.lastSentVersion = version;
    sub.pushes += 1;
    this.metrics.pushes.inc({ type: TYPE_LABEL[sub.typeUrl] });
    call.write({ system_version_info: version, resources, type_url: sub.typeUrl, removed_resources: removed, nonce });
  }

  // --- pushes ---------------------------------------------------------------------------------

  private onCacheChange(change: CacheChange): void {
    for (const { state, call } of this.streams.values()) {
      const sub = state.types.get(change.typeUrl);
      if (!sub) continue;
      if (state.variant === 'sotw') this.respondSotw(state, call, sub, false);
      else this.respondDelta(state, call, sub, [...change.changed, ...change.removed]);
    }
  }
}

function hasError(status: StatusMessage | null | undefined): boolean {
  return !!status && ((status.code ?? 0) !== 0 || !!status.message);
}
