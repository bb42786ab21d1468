// The Envoy v3 / xDS protos, loaded from the copy that ships inside @grpc/grpc-js-xds (its deps/
// folder) rather than vendored into this repo. Loading parses a few hundred .proto files (about
// half a second), so it happens once, on first use, and both the control plane and the sidecar's
// xDS client share the result.
import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
// proto-loader's own helper returns the protobufjs Root it parses into; the package definition
// from `loadSync` hides it, and encoding a resource into google.protobuf.Any needs the Root's types.
import { loadProtosWithOptionsSync } from '@grpc/proto-loader/build/src/util.js';

export const TYPE_URL = {
  listener: 'type.googleapis.com/envoy.config.listener.v3.Listener',
  routeConfiguration: 'type.googleapis.com/envoy.config.route.v3.RouteConfiguration',
  cluster: 'type.googleapis.com/envoy.config.cluster.v3.Cluster',
  clusterLoadAssignment: 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
} as const;

export type ResourceKind = keyof typeof TYPE_URL;
export type TypeUrl = (typeof TYPE_URL)[ResourceKind];

/** Type URLs of the messages resources embed as Any (filters, transport sockets, LB policies). */
export const EMBEDDED_TYPE_URL = {
  httpConnectionManager:
    'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
  router: 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
  upstreamTlsContext: 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
  leastRequest: 'type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest',
  roundRobin: 'type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin',
  wrrLocality: 'type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality',
} as const;

/** google.protobuf.Any as proto-loader presents it (keepCase). */
export interface AnyMessage {
  type_url: string;
  value: Buffer | Uint8Array;
}

export interface XdsProtos {
  /** envoy.service.discovery.v3.AggregatedDiscoveryService, for `server.addService`. */
  adsService: grpc.ServiceDefinition;
  /** Client constructor of the same service: `new AdsClient(address, credentials)`. */
  AdsClient: grpc.ServiceClientConstructor;
  /** Encodes a plain object (snake_case field names, enums as strings) as Any of that type. */
  encodeResource(typeUrl: string, message: object): AnyMessage;
  /** Decodes an Any into a plain object: snake_case keys, enums as strings, longs as strings, defaults filled. */
  decodeResource<T = Record<string, unknown>>(any: AnyMessage): T;
}

const RESOURCE_PROTO_FILES = [
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls.proto',
  'envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto',
  'envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto',
  'envoy/extensions/load_balancing_policies/wrr_locality/v3/wrr_locality.proto',
];

/** Options shared by the service definition and the decoder, as grpc-js-xds itself uses them. */
const PROTO_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true } as const;

function protoIncludeDirs(): string[] {
  const require = createRequire(import.meta.url);
  const xdsPackageDir = path.dirname(require.resolve('@grpc/grpc-js-xds/package.json'));
  return ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((dir) => path.join(xdsPackageDir, 'deps', dir));
}

let loaded: XdsProtos | undefined;

export function loadXdsProtos(): XdsProtos {
  if (loaded) return loaded;
  const includeDirs = protoIncludeDirs();
  const definition = protoLoader.loadSync('envoy/service/discovery/v3/ads.proto', { ...PROTO_OPTIONS, includeDirs });
  const AdsClient = lookupService(grpc.loadPackageDefinition(definition), 'envoy.service.discovery.v3.AggregatedDiscoveryService');
  const root = loadProtosWithOptionsSync(RESOURCE_PROTO_FILES, { keepCase: true, includeDirs });

  const typeOf = (typeUrl: string) => {
    const name = typeUrl.slice(typeUrl.lastIndexOf('/') + 1);
    try {
      return root.lookupType(name);
    } catch {
      throw new Error(`unknown xDS message type ${typeUrl}`);
    }
  };

  loaded = {
    adsService: AdsClient.service,
    AdsClient,
    encodeResource(typeUrl, message) {
      const type = typeOf(typeUrl);
      // fromObject (not create) so enum names, nested objects and Any values are all converted.
      return { type_url: typeUrl, value: Buffer.from(type.encode(type.fromObject(message as Record<string, unknown>)).finish()) };
    },
    decodeResource<T>(any: AnyMessage): T {
      const type = typeOf(any.type_url);
      return type.toObject(type.decode(any.value), PROTO_OPTIONS) as T;
    },
  };
  return loaded;
}

function lookupService(root: grpc.GrpcObject, fullName: string): grpc.ServiceClientConstructor {
  let node: unknown = root;
  for (const part of fullName.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  if (typeof node !== 'function') throw new Error(`service ${fullName} not found in the xDS protos`);
  return node as grpc.ServiceClientConstructor;
}
