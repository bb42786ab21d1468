// A scripted ADS server (state of the world) for the xDS client's tests: a real @grpc/grpc-js
// server with the Envoy protos from xds/protos.ts. A test sets the resources of each type
// (valid or not) with `set`, which pushes them to every stream that asked for that type, and
// reads back what the clients sent: their nodes, ACKs and NACKs.
import * as grpc from '@grpc/grpc-js';
import { loadXdsProtos, TYPE_URL, type AnyMessage } from '../../xds/protos.js';

export interface RecordedRequest {
  stream: number;
  typeUrl: string;
  versionInfo: string;
  resourceNames: string[];
  responseNonce: string;
  errorDetail: { code: number; message: string } | undefined;
  node: { id: string; cluster: string; zone: string; metadata: Record<string, unknown> } | undefined;
}

export interface Reply {
  stream: number;
  typeUrl: string;
  version: string;
  nonce: string;
  /** ack | nack */
  result: 'ack' | 'nack';
  error?: string;
  /** The version the client reported: the one it acked, or for a NACK the one it kept. */
  reportedVersion: string;
}

interface StreamState {
  id: number;
  call: grpc.ServerDuplexStream<any, any>;
  /** Per type: names asked for (empty = wildcard for LDS/CDS), last nonce and version sent. */
  types: Map<string, { names: string[]; lastNonce: string; sentVersion: string | undefined }>;
  open: boolean;
}

/** A resource as a plain object (encoded with its type) or as an Any already built (to send garbage). */
export type ScriptedResource = object | AnyMessage;

const FULL_STATE = new Set<string>([TYPE_URL.listener, TYPE_URL.cluster]);

export class ScriptedAdsServer {
  readonly requests: RecordedRequest[] = [];
  readonly replies: Reply[] = [];
  private readonly resources = new Map<string, { version: string; items: Array<{ name: string; any: AnyMessage }> }>();
  private readonly streams = new Map<number, StreamState>();
  private server: grpc.Server | undefined;
  private nextStream = 1;
  private nextNonce = 1;
  private versionCounter = 0;
  port = 0;

  /** Starts on 127.0.0.1:`port` (0: any free port). */
  async start(port = 0): Promise<this> {
    const protos = loadXdsProtos();
    const server = new grpc.Server();
    server.addService(protos.adsService, {
      StreamAggregatedResources: (call: grpc.ServerDuplexStream<any, any>) => this.serve(call),
      DeltaAggregatedResources: (call: grpc.ServerDuplexStream<any, any>) =>
        call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'delta xDS is not scripted' }),
    });
    this.port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
    );
    this.server = server;
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Streams open now. */
  get openStreams(): number {
    return [...this.streams.values()].filter((s) => s.open).length;
  }

  /** Streams ever opened. */
  get streamCount(): number {
    return this.nextStream - 1;
  }

  /**
   * Sets the resources of one type (each: a plain object of that type, or an Any as is) under a
   * new version, and pushes them to every stream subscribed to the type.
   */
  set(typeUrl: string, items: ScriptedResource[], version = `v${++this.versionCounter}`): string {
    const protos = loadXdsProtos();
    const encoded = items.map((item) => {
      const any = isAny(item) ? item : protos.encodeResource(typeUrl, item);
      return { name: resourceNameOf(typeUrl, item), any };
    });
    this.resources.set(typeUrl, { version, items: encoded });
    for (const stream of this.streams.values()) {
      const sub = stream.types.get(typeUrl);
      if (stream.open && sub) this.respond(stream, typeUrl);
    }
    return version;
  }

  /** ACKs and NACKs of one type (all types when omitted). */
  repliesOf(typeUrl?: string, result?: 'ack' | 'nack'): Reply[] {
    return this.replies.filter((r) => (!typeUrl || r.typeUrl === typeUrl) && (!result || r.result === result));
  }

  /** Whether some stream ACKed `version` of `typeUrl`. */
  acked(typeUrl: string, version: string): boolean {
    return this.replies.some((r) => r.typeUrl === typeUrl && r.result === 'ack' && r.version === version);
  }

  nacked(typeUrl: string, version: string): Reply | undefined {
    return this.replies.find((r) => r.typeUrl === typeUrl && r.result === 'nack' && r.version === version);
  }

  /** The node the last stream announced. */
  lastNode(): RecordedRequest['node'] {
    for (let i = this.requests.length - 1; i >= 0; i--) if (this.requests[i]!.node) return this.requests[i]!.node;
    return undefined;
  }

  /** Stops at once, cutting every stream (as a crashed control plane would). */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.streams.values()) s.open = false;
    server?.forceShutdown();
  }

  private serve(call: grpc.ServerDuplexStream<any, any>): void {
    const stream: StreamState = { id: this.nextStream++, call, types: new Map(), open: true };
    this.streams.set(stream.id, stream);
    const close = (): void => {
      stream.open = false;
    };
    call.on('end', () => {
      close();
      call.end();
    });
    call.on('error', close);
    call.on('cancelled', close);
    call.on('close', close);
    call.on('data', (request: any) => this.onRequest(stream, request));
  }

  private onRequest(stream: StreamState, request: any): void {
    const node = request.node
      ? {
          id: request.node.id as string,
          cluster: request.node.cluster as string,
          zone: (request.node.locality?.zone as string | undefined) ?? '',
          metadata: structToPlain(request.node.metadata),
        }
      : undefined;
    const error = request.error_detail && (request.error_detail.code || request.error_detail.message) ? request.error_detail : undefined;
    const recorded: RecordedRequest = {
      stream: stream.id,
      typeUrl: request.type_url,
      versionInfo: request.version_info,
      resourceNames: [...request.resource_names],
      responseNonce: request.response_nonce,
      errorDetail: error ? { code: error.code, message: error.message } : undefined,
      node,
    };
    this.requests.push(recorded);
    const typeUrl: string = request.type_url;
    let sub = stream.types.get(typeUrl);
    const names = [...request.resource_names].sort();
    const namesChanged = !sub || sub.names.join('\u0000') !== names.join('\u0000');
    if (request.response_nonce && sub && request.response_nonce === sub.lastNonce) {
      this.replies.push({
        stream: stream.id,
        typeUrl,
        version: sub.sentVersion ?? '',
        nonce: request.response_nonce,
        result: error ? 'nack' : 'ack',
        ...(error ? { error: error.message as string } : {}),
        reportedVersion: request.version_info,
      });
    }
    if (!sub) stream.types.set(typeUrl, (sub = { names, lastNonce: '', sentVersion: undefined }));
    sub.names = names;
    // Answer a new subscription, a changed one, or a resync; an ACK or NACK gets nothing back.
    if (!request.response_nonce || namesChanged) this.respond(stream, typeUrl);
  }

  private respond(stream: StreamState, typeUrl: string): void {
    const current = this.resources.get(typeUrl);
    const sub = stream.types.get(typeUrl)!;
    if (!current) return;
    const wildcard = FULL_STATE.has(typeUrl) && (sub.names.length === 0 || sub.names.includes('*'));
    const items = wildcard ? current.items : current.items.filter((i) => sub.names.includes(i.name));
    if (!FULL_STATE.has(typeUrl) && items.length === 0) return;
    const nonce = String(this.nextNonce++);
    sub.lastNonce = nonce;
    sub.sentVersion = current.version;
    stream.call.write({ version_info: current.version, resources: items.map((i) => i.any), type_url: typeUrl, nonce });
  }
}

function isAny(item: ScriptedResource): item is AnyMessage {
  return typeof (item as AnyMessage).type_url === 'string' && (item as AnyMessage).value instanceof Uint8Array;
}

function resourceNameOf(typeUrl: string, item: ScriptedResource): string {
  if (isAny(item)) {
    try {
      const decoded = loadXdsProtos().decodeResource<Record<string, unknown>>(item);
      return String((typeUrl === TYPE_URL.clusterLoadAssignment ? decoded.cluster_name : decoded.name) ?? '');
    } catch {
      return '';
    }
  }
  const plain = item as Record<string, unknown>;
  return String((typeUrl === TYPE_URL.clusterLoadAssignment ? plain.cluster_name : plain.name) ?? '');
}

function structToPlain(struct: { fields?: Record<string, any> } | null | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) {
    out[key] = value?.string_value ?? value?.stringValue ?? value?.number_value ?? value?.numberValue ?? value?.bool_value ?? value?.boolValue ?? null;
  }
  return out;
}

// --- Resource builders: Envoy v3 objects as a control plane would send them ----------------

const ADS = { ads: {}, resource_api_version: 'V3' };

export function listener(name: string, routeConfigName = name): object {
  const protos = loadXdsProtos();
  const hcm = protos.encodeResource('type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager', {
    stat_prefix: name,
    rds: { route_config_name: routeConfigName, config_source: ADS },
    http_filters: [{ name: 'envoy.filters.http.router', typed_config: protos.encodeResource('type.googleapis.com/envoy.extensions.filters.http.router.v3.Router', {}) }],
  });
  return { name, api_listener: { api_listener: hcm } };
}

export function routeConfiguration(name: string, hosts: Array<{ domains: string[]; cluster: string; route?: object }>): object {
  return {
    name,
    virtual_hosts: hosts.map((h, i) => ({
      name: `${name}-${i}`,
      domains: h.domains,
      routes: [{ match: { prefix: '/' }, route: { cluster: h.cluster, ...h.route } }],
    })),
  };
}

export function edsCluster(name: string, extra: object = {}): object {
  return { name, type: 'EDS', eds_cluster_config: { eds_config: ADS, service_name: name }, lb_policy: 'ROUND_ROBIN', ...extra };
}

export function meshTransportSocket(): object {
  const protos = loadXdsProtos();
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: protos.encodeResource('type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext', { common_tls_context: {} }),
  };
}

export interface ScriptedEndpoint {
  address: string;
  zone?: string;
  priority?: number;
  health?: 'HEALTHY' | 'UNHEALTHY' | 'DRAINING' | 'UNKNOWN';
  nodeId?: string;
  epoch?: number;
}

export function loadAssignment(clusterName: string, endpoints: ScriptedEndpoint[]): object {
  const groups = new Map<string, ScriptedEndpoint[]>();
  for (const e of endpoints) {
    const key = `${e.priority ?? 0}\u0000${e.zone ?? ''}`;
    groups.set(key, [...(groups.get(key) ?? []), e]);
  }
  return {
    cluster_name: clusterName,
    endpoints: [...groups.values()].map((group) => ({
      locality: { zone: group[0]!.zone ?? '' },
      priority: group[0]!.priority ?? 0,
      lb_endpoints: group.map((e) => {
        const colon = e.address.lastIndexOf(':');
        const meta: Record<string, object> = {};
        if (e.nodeId !== undefined) meta.node_id = { stringValue: e.nodeId };
        if (e.epoch !== undefined) meta.epoch = { numberValue: e.epoch };
        return {
          endpoint: {
            address: { socket_address: { address: e.address.slice(0, colon), port_value: Number(e.address.slice(colon + 1)) } },
            ...(e.nodeId !== undefined ? { hostname: e.nodeId } : {}),
          },
          health_status: e.health ?? 'HEALTHY',
          metadata: { filter_metadata: { ctxmesh: { fields: meta } } },
        };
      }),
    })),
  };
}

/** The four resources of one routable service, as our control plane shapes them. */
export function serviceResources(
  name: string,
  endpoints: ScriptedEndpoint[],
  options: { domains?: string[]; cluster?: object; route?: object } = {},
) {
  return {
    listener: listener(name),
    route: routeConfiguration(name, [{ domains: options.domains ?? [name], cluster: name, ...(options.route ? { route: options.route } : {}) }]),
    cluster: edsCluster(name, options.cluster),
    endpoints: loadAssignment(name, endpoints),
  };
}
