// The one schema of the sidecar's configuration. Every field says its unit and default; the
// README's config reference is written from this file. Objects are strict: a misspelt key is an
// error at startup, not a setting silently ignored.
import { isIP } from 'node:net';
import { z } from 'zod';
import { duration, size } from './units.js';
import { parseRedisUrl } from '../state/cache/redis-url.js';
import { canonicalHost, normalizeHostPort } from './host-port.js';

/**
 * An address to dial: `host:port`, or `[ipv6]:port` (brackets required, as in a URL). The value
 * comes out in canonical text (IPv6 lower case and compressed), see host-port.ts. In YAML, quote
 * a bracketed address: `"[fd00::7]:15006"` (unquoted, `[` starts a list).
 */
function addressSchema(options: { ipOnly?: boolean } = {}) {
  const example = options.ipOnly ? 'e.g. 10.0.0.7:15006 or [fd00::7]:15006 (EDS endpoints cannot be host names)' : 'e.g. 127.0.0.1:25006 or [fd00::7]:25006';
  return z.string().transform((value, ctx) => {
    const address = normalizeHostPort(value, options);
    if (typeof address === 'string') return address;
    ctx.addIssue({ code: 'custom', message: `${address.error}; expected ${options.ipOnly ? 'ip:port' : 'host:port'}, ${example}` });
    return z.NEVER;
  });
}

const hostPort = addressSchema();

const port = z.number().int().min(0).max(65_535);

const NodeSchema = z.strictObject({
  /** Unique name of this sidecar in the mesh. Required. */
  id: z.string().min(1),
  /** Service (cluster) this sidecar's app belongs to. Default "default". */
  cluster: z.string().min(1).default('default'),
  /** Locality zone, used for zone-aware routing. Default "". */
  zone: z.string().default(''),
});

const IdentitySchema = z.strictObject({
  /** PEM certificate chain of this sidecar (SPIFFE ID in the URI SAN). Reloaded when it changes. */
  cert: z.string().min(1),
  /** PEM private key of the certificate. */
  key: z.string().min(1),
  /** PEM bundle of the mesh CA(s) that peers' certificates must chain to. */
  ca: z.string().min(1),
});

const InboundSchema = z.strictObject({
  /** mTLS listener for peers. Default 15006. */
  port: port.default(15_006),
  /** Bind address. Default 0.0.0.0 (peers reach it from other hosts). */
  address: z.string().default('0.0.0.0'),
  /** The local app the sidecar delivers inbound requests to, e.g. http://127.0.0.1:8080. */
  app: z.url({ protocol: /^https?$/ }),
  /** SPIFFE IDs allowed to call: exact, or a prefix ending in `*`. Default: none (all refused). */
  allow: z.array(z.string().min(1)).default([]),
  /** Time allowed for the app's response headers. Default 15s. */
  timeout: duration().default(15_000),
  /**
   * host:port other sidecars reach this inbound listener on: the member address and the
   * `ctxmesh.address` a sidecar registers with the control plane. A bare IP (v4 or v6, e.g. the
   * pod IP) gets the bound inbound port appended, `[v6]:port` for IPv6. Default 127.0.0.1:<bound port>.
   */
  advertise: z
    .string()
    .transform((value, ctx) => {
      if (isIP(value) !== 0 && !value.includes('%')) return canonicalHost(value);
      const address = normalizeHostPort(value);
      if (typeof address === 'string') return address;
      ctx.addIssue({ code: 'custom', message: `${address.error}; expected an IP address (the inbound port is added) or host:port, e.g. 10.0.0.7, fd00::7 or 10.0.0.7:15006` });
      return z.NEVER;
    })
    .optional(),
});

const OutboundSchema = z.strictObject({
  /** Plain-HTTP listener for the local app (transparent or explicit proxy). Default 15001. */
  port: port.default(15_001),
  /** Bind address. Default 127.0.0.1 (only the local app may use it). */
  address: z.string().default('127.0.0.1'),
});

const AdminSchema = z.strictObject({
  /** Admin listener, always bound to 127.0.0.1. Default 15000. */
  port: port.default(15_000),
});

const EndpointSchema = z.strictObject({
  /** host:port of the peer sidecar (tls: mesh) or of the service itself (tls: none). */
  address: hostPort,
  /** 0 = primary, 1 = backup: used only when no priority-0 endpoint is healthy. Default 0. */
  priority: z.number().int().min(0).max(1).default(0),
  /** Locality zone of the endpoint. Default "". */
  zone: z.string().default(''),
  /**
   * node.id of the sidecar behind the endpoint (xDS: EDS endpoint.hostname). ring_hash places
   * endpoints that have one by it, as context replication places keys on member ids, so a key's
   * request reaches the sidecar owning its context. Default: none (placed by address).
   */
  hostname: z.string().min(1).optional(),
});

const CircuitBreakerSchema = z.strictObject({
  // Cluster-wide limits, as Envoy's circuit-breaker thresholds: over a limit, the request gets
  // an immediate 503 `overflow` rather than joining a queue that grows without bound.
  /** Upstream connections per endpoint. Default 1024. */
  maxConnections: z.number().int().positive().default(1024),
  /** Requests waiting for a connection, cluster-wide. Default 1024. */
  maxPendingRequests: z.number().int().nonnegative().default(1024),
  /** Requests in flight, cluster-wide. Default 1024. */
  maxRequests: z.number().int().positive().default(1024),
  /** Retries in flight, cluster-wide. Default 3. */
  maxRetries: z.number().int().nonnegative().default(3),
  // Per-endpoint breaker: trips when the failure rate in the rolling window passes the threshold.
  /** Failure percentage that opens an endpoint's breaker. Default 50. */
  errorThresholdPercentage: z.number().min(0).max(100).default(50),
  /** Requests in the window before the breaker may open. Default 20. */
  volumeThreshold: z.number().int().nonnegative().default(20),
  /** Time an open breaker waits before letting one probe through (half-open). Default 5s. */
  resetTimeout: duration().default(5_000),
  /** Length of the rolling statistics window. Default 10s. */
  rollingWindow: duration().default(10_000),
});

const OutlierDetectionSchema = z.strictObject({
  /** Consecutive 5xx or connect failures that eject an endpoint; 0 disables. Default 5. */
  consecutive5xx: z.number().int().nonnegative().default(5),
  /** How often ejections are reviewed. Default 10s. */
  interval: duration().default(10_000),
  /** Ejection time; multiplied by the number of times the endpoint was ejected. Default 30s. */
  baseEjectionTime: duration().default(30_000),
  /** Upper bound of an ejection. Default 300s. */
  maxEjectionTime: duration().default(300_000),
  /** At most this percentage of the cluster's endpoints is ejected at once. Default 10. */
  maxEjectionPercent: z.number().min(0).max(100).default(10),
});

const RetrySchema = z.strictObject({
  /** Retries after the first try (so attempts + 1 tries at most). Default 2. */
  attempts: z.number().int().nonnegative().default(2),
  /** Time allowed for response headers on each try. Default: the cluster timeout. */
  perTryTimeout: duration().optional(),
  /** Concurrent retries allowed as a percentage of active requests. Default 20. */
  budgetPercent: z.number().min(0).max(100).default(20),
  /** Retries always allowed regardless of the budget's percentage. Default 3. */
  minRetryConcurrency: z.number().int().nonnegative().default(3),
  /** Base of the jittered exponential back-off between tries. Default 25ms. */
  backoff: duration().default(25),
  /** Upstream statuses that are retried (connect failures and resets always are). Default [503]. */
  retryOn: z.array(z.number().int().min(500).max(599)).default([503]),
});

export const ClusterSchema = z.strictObject({
  /** Cluster name, shown in metrics and logs. */
  name: z.string().min(1),
  /** Host header values (port ignored) routed to this cluster; `*.suffix` wildcards allowed. */
  domains: z.array(z.string().min(1)).min(1),
  /** round_robin | least_request | ring_hash. Default round_robin. */
  lb: z.enum(['round_robin', 'least_request', 'ring_hash']).default('round_robin'),
  /** Request header whose value is hashed by ring_hash. Default x-ctx-key. */
  hashHeader: z.string().toLowerCase().default('x-ctx-key'),
  /** mesh: mTLS to a peer sidecar with this sidecar's identity; none: plain HTTP. Default mesh. */
  tls: z.enum(['mesh', 'none']).default('mesh'),
  endpoints: z.array(EndpointSchema).default([]),
  circuitBreaker: CircuitBreakerSchema.prefault({}),
  outlierDetection: OutlierDetectionSchema.prefault({}),
  retry: RetrySchema.prefault({}),
  /** Time allowed for response headers across all tries (504 upstream_timeout). Default 15s. */
  timeout: duration().default(15_000),
  /** Time allowed to establish an upstream connection (TCP + TLS). Default 5s. */
  connectTimeout: duration().default(5_000),
  /** Longest silence between two chunks of a streamed response body. Default 5m. */
  idleTimeout: duration().default(300_000),
});

const XdsSchema = z.strictObject({
  /** host:port of the ADS server (plain gRPC). Static clusters are used without it. */
  server: hostPort,
  /**
   * Time the sidecar waits at startup for its first xDS config before it reports ready anyway,
   * serving its static clusters (and the dynamic ones once they arrive), as Envoy's
   * initial_fetch_timeout. Default 5s.
   */
  initialFetchTimeout: duration().default(5_000),
  reconnect: z
    .strictObject({
      /** First reconnect delay after the ADS stream breaks; doubled per failed attempt, with full jitter. Default 200ms. */
      base: duration().default(200),
      /** Longest reconnect delay. Default 10s. */
      max: duration().default(10_000),
    })
    .prefault({}),
});

// The state agent: the context API, its two cache tiers, the write-ahead log and checkpoints.
const RedisUrl = z
  .string()
  .regex(
    /^rediss?(\+sentinel|\+cluster)?:\/\/.+/,
    'expected redis://host:port[/db], rediss://…, redis+sentinel://h:p[,h:p]/master[/db] or redis+cluster://h:p[,h:p]',
  );

const L2Schema = z
  .strictObject({
    /** memory (embedded default: no Redis needed) | redis. */
    backend: z.enum(['memory', 'redis']).default('memory'),
    /**
     * Where Redis is, when backend is redis: `redis://[:password@]host:port[/db]` (rediss:// for
     * TLS), `redis+sentinel://host:port[,host:port…]/masterName[/db]`, or
     * `redis+cluster://host:port[,host:port…]`. Moving from one Redis to a Cluster is this line.
     */
    url: RedisUrl.optional(),
    /** Prefix of every Redis key and of the invalidation channel. Default "ctxmesh:". */
    keyPrefix: z.string().min(1).default('ctxmesh:'),
    /** Time a Redis command may take before the tier counts as unavailable. Default 1s. */
    commandTimeout: duration().default(1_000),
    /** Time allowed to (re)connect to Redis. Default 2s. */
    connectTimeout: duration().default(2_000),
    /** First reconnect delay; doubled per attempt, with full jitter, up to `reconnectMax`. Default 50ms. */
    reconnectBase: duration().default(50),
    /** Longest reconnect delay. Default 2s. */
    reconnectMax: duration().default(2_000),
  })
  .refine((l2) => l2.backend !== 'redis' || l2.url !== undefined, { message: 'url is required when backend is redis', path: ['url'] });

const ContextSchema = z.strictObject({
  /** Run the state agent and its context API. Default true. */
  enabled: z.boolean().default(true),
  /** Context API listener, always bound to 127.0.0.1. Default 15020. */
  port: port.default(15_020),
  /** Largest stored value (413 above). Default 1MiB. */
  maxValueBytes: size().default(1024 ** 2),
  /** Longest key in bytes (400 above). Default 512. */
  maxKeyBytes: z.number().int().min(16).max(4096).default(512),
  /** Writes without If-Match / If-None-Match are refused with 428. Default false. */
  requireConditions: z.boolean().default(false),
  /** TTL of writes that carry no ctxmesh-ttl header. Default: none (kept until deleted). */
  defaultTtl: duration().optional(),
  /** Longest TTL a write may ask for. Default: unbounded. */
  maxTtl: duration().optional(),
  rateLimit: z
    .strictObject({
      /** Context API requests per second per tenant (first key segment); 0 = unlimited. Default 0. */
      requestsPerSecond: z.number().nonnegative().default(0),
      /** Requests a tenant may make at once above the rate. Default: one second's worth. */
      burst: z.number().int().positive().optional(),
    })
    .prefault({}),
  l1: z
    .strictObject({
      /**
       * In-process cache bound (values + keys). Default 256MiB with Redis; 0 (no L1) with the
       * embedded L2, which is in process already: an L1 in front of it would keep a second copy of
       * every value read or written, and at the write rate feed the old generation the garbage its
       * major GCs stall writes on (bench/RESULTS.md, "Records off the heap").
       */
      maxBytes: size().optional(),
      /**
       * While L2 is unreachable, cached contexts are served (marked ctxmesh-stale) for at most this
       * long after the invalidation link dropped; later reads fail with 503 l2_unavailable. Default 30s.
       */
      maxStale: duration().default(30_000),
    })
    .prefault({}),
  l2: L2Schema.prefault({}),
  /** write-through (ack after L2 has it) | write-behind (ack after L1 + the WAL). Default write-through. */
  writeMode: z.enum(['write-through', 'write-behind']).default('write-through'),
  writeBehind: z
    .strictObject({
      /** Writes waiting for L2 before new ones get 503 write_queue_full. Default 10000. */
      maxQueue: z.number().int().positive().default(10_000),
      /** Bytes waiting for L2 before the same. Default 64MiB. */
      maxQueueBytes: size().default(64 * 1024 ** 2),
      /** Writes sent to L2 in one pipelined batch. Default 256. */
      batchSize: z.number().int().positive().default(256),
    })
    .prefault({}),
  warm: z
    .strictObject({
      /** Bytes of the previous run's hottest contexts loaded into L1 at start. 0 disables. Default 64MiB. */
      maxBytes: size().default(64 * 1024 ** 2),
      /** Time warming may take before the agent starts anyway. Default 2s. */
      timeout: duration().default(2_000),
    })
    .prefault({}),
  replication: z
    .strictObject({
      /** Replicas per key. Default 3. */
      factor: z.number().int().positive().default(3),
      /** Default consistency level: strong | session | eventual. */
      consistency: z.enum(['strong', 'session', 'eventual']).default('session'),
      /** Other sidecars holding replicas: node.id and host:port of their inbound mTLS listener. Default []. */
      peers: z.array(z.strictObject({ id: z.string().min(1), address: hostPort })).default([]),
      /**
       * SPIFFE IDs (exact, or a prefix ending in `*`) allowed to make peer calls (/.ctxmesh/peer/*).
       * Default []: any identity of this sidecar's own trust domain.
       */
      allow: z.array(z.string().min(1)).default([]),
      /** Default consistency per key prefix, longest prefix first wins; else `consistency`. Default []. */
      levels: z.array(z.strictObject({ prefix: z.string(), consistency: z.enum(['strong', 'session', 'eventual']) })).default([]),
      /**
       * How concurrent writes to a key are reconciled, per key prefix (longest prefix wins; keys no
       * entry matches use lww): lww (last writer by HLC) | json-merge (JSON merged member by member,
       * message lists as a union by id in timestamp order) | siblings (every concurrent version kept
       * until resolved through /v1/conflicts). Default [].
       */
      conflicts: z
        .array(
          z.strictObject({
            prefix: z.string(),
            strategy: z.enum(['lww', 'json-merge', 'siblings']),
            /** Concurrent versions kept per key (json-merge, siblings); past it the oldest by HLC are dropped (logged, counted). Default 8. */
            maxSiblings: z.number().int().min(1).max(64).default(8),
          }),
        )
        .default([]),
      /** Time a strong or session write may wait for its acknowledgements before answering indeterminate. Default 2s. */
      writeTimeout: duration().default(2_000),
      /** Time one peer call (replicate, read, hint delivery) may take. Default 1s. */
      peerTimeout: duration().default(1_000),
      /** Time allowed to open a connection to a peer (TCP + TLS). Default 1s. */
      connectTimeout: duration().default(1_000),
      /** Largest peer message (a replication batch, a read answer); also the peer request body limit. Default 16MiB. */
      maxMessageBytes: size().default(16 * 1024 ** 2),
      /** A peer this far behind (oldest write not yet delivered to it) is logged as a warning. Default 5s. */
      lagWarning: duration().default(5_000),
      hints: z
        .strictObject({
          /** Bytes of undelivered writes kept per unreachable peer; past it the oldest are dropped (logged). Default 64MiB. */
          maxBytes: size().default(64 * 1024 ** 2),
          /** How often delivery of kept hints is retried. Default 500ms. */
          interval: duration().default(500),
        })
        .prefault({}),
      antiEntropy: z
        .strictObject({
          /**
           * How often this sidecar compares Merkle trees with each replica peer (the lower id of a
           * pair starts the round); rounds also run after membership changes. Default 30s.
           */
          interval: duration().default(30_000),
          /** Peer calls in flight at once for rebalancing (handing keys to their new replicas). Default 4. */
          concurrency: z.number().int().min(1).max(64).default(4),
          /** Keys per record message of a round or a handoff (also bounded by maxMessageBytes). Default 512. */
          batchKeys: z.number().int().min(1).max(100_000).default(512),
        })
        .prefault({}),
    })
    .prefault({}),
  wal: z
    .strictObject({
      /** always (ack after fsync) | batch (fsync every batchInterval) | none (the OS decides). Default always. */
      fsync: z.enum(['always', 'batch', 'none']).default('always'),
      /** Longest time between fsyncs under `batch`. Default 10ms. */
      batchInterval: duration().default(10),
      /** A segment is closed and a new one started past this size. Default 64MiB. */
      segmentBytes: size().default(64 * 1024 ** 2),
    })
    .prefault({}),
  checkpoint: z
    .strictObject({
      /** Directory of the WAL, snapshots, the audit log and the L1 hot-key list. Default ./data/<node.id>. */
      dir: z.string().optional(),
      /** Snapshot interval, 30s to 5m. Default 60s. */
      interval: duration()
        .default(60_000)
        .refine((ms) => ms >= 30_000 && ms <= 300_000, 'interval must be between 30s and 5m'),
      /** A snapshot is also taken after this many writes since the last one; 0 disables. Default 100000. */
      changedWrites: z.number().int().nonnegative().default(100_000),
      /** … or after this many bytes written since the last one; 0 disables. Default 256MiB. */
      changedBytes: size().default(256 * 1024 ** 2),
      /** An incremental chain is closed by a full snapshot after this many incrementals. Default 10. */
      fullEvery: z.number().int().positive().default(10),
      retention: z
        .strictObject({
          /** Snapshots kept (and the WAL they need); 1 to 1000. Default 100. */
          count: z.number().int().min(1).max(1_000).default(100),
          /** Snapshots older than this are removed (never one a kept snapshot builds on). Default: no age limit. */
          maxAge: duration().optional(),
        })
        .prefault({}),
      /** Compress snapshot blocks (deflate). Default false: snapshots are disk-bound, not size-bound. */
      compress: z.boolean().default(false),
      /** File with a 32-byte key (raw, hex or base64): snapshots are encrypted at rest with AES-256-GCM. */
      encryptionKeyFile: z.string().optional(),
    })
    .prefault({}),
});

const LimitsSchema = z.strictObject({
  /** Largest request head (431 above). Default 16KiB. */
  maxHeaderBytes: size().default(16 * 1024),
  /** Largest request body (413 above). Default 64MiB. */
  maxBodyBytes: size().default(64 * 1024 ** 2),
  /** Time a client has to send the complete request head (slowloris guard, 408). Default 10s. */
  headersTimeout: duration().default(10_000),
  /** Idle keep-alive connections from clients are closed after this. Default 60s. */
  idleTimeout: duration().default(60_000),
});

const LogSchema = z.strictObject({
  /** pino level: trace | debug | info | warn | error | silent. Default info. */
  level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  /** One JSON line per proxied request. Default true. */
  accessLog: z.boolean().default(true),
});

// The health monitor: SWIM/Lifeguard-style probing of the other members (context.replication.peers
// and members learnt from xDS), local exclusion of failed ones, reports to the control plane.
export const HealthSchema = z
  .strictObject({
    /** Run the health monitor. Default: true when the sidecar has peers. */
    enabled: z.boolean().optional(),
    /** Time between two probes (one member each, round-robin). Default 5s; ~200ms for sub-second detection. */
    interval: duration().default(5_000),
    /** Time a direct ping (and, separately, the indirect pings) may take before counting as missed. Default 1s. */
    probeTimeout: duration().default(1_000),
    /** Members asked to ping a member that missed a direct ping, before it is suspected; 0 disables. Default 3. */
    indirectProbes: z.number().int().min(0).max(16).default(3),
    /** Time a suspect has to refute before it is declared dead locally, with no other member confirming. Default 15s. */
    suspicionTimeout: duration().default(15_000),
    /** Lower bound the window shrinks to as other members confirm the suspicion. Default: a third of suspicionTimeout. */
    suspicionMinTimeout: duration().optional(),
    /** A suspect is excluded from outbound endpoint choice once suspected this long (dead ones always are). Default 0ms. */
    excludeSuspectAfter: duration().default(0),
    /** Every Nth probe of a member also exercises its context path (state agent), not only TLS; 0 disables. Default 5. */
    deepCheckEvery: z.number().int().min(0).default(5),
    /** Largest local health multiplier: a prober missing acks itself slows its probes by up to (1 + this)×. Default 8. */
    maxLocalHealthMultiplier: z.number().int().min(0).max(64).default(8),
    flapBackoff: z
      .strictObject({
        /** Hold-down before a member that was dead is trusted again; doubled per return. Default 1s. */
        base: duration().default(1_000),
        /** Longest hold-down; a member that stays up this long starts again from `base`. Default 60s. */
        max: duration().default(60_000),
      })
      .prefault({}),
    /** host:port of the control plane's admin/API listener for health reports. Default: xds.server's host, port 15014; none without xds. */
    reportTo: hostPort.optional(),
    /** Reports are repeated this often while a member is suspect or dead. Default 1s. */
    reportInterval: duration().default(1_000),
    /**
     * Membership lease, ms: with live peers, replicated writes are acknowledged only while a majority
     * of the mesh acknowledged this sidecar's pings within this time (else 503 fenced); renewed every
     * quarter of it. Must be shorter than probeTimeout + the shortest suspicion window, so it runs out
     * before the mesh can declare this sidecar failed. Default: suspicionMinTimeout (a third of
     * suspicionTimeout when unset).
     */
    lease: duration().optional(),
  })
  .refine((h) => h.probeTimeout <= h.interval, { message: 'probeTimeout must not exceed interval', path: ['probeTimeout'] })
  .refine((h) => h.lease === undefined || (h.lease > 0 && h.lease < h.probeTimeout + (h.suspicionMinTimeout ?? Math.round(h.suspicionTimeout / 3))), {
    message: 'lease must be positive and shorter than probeTimeout + suspicionMinTimeout (the least time the mesh takes to declare a member failed)',
    path: ['lease'],
  })
  .refine((h) => h.suspicionMinTimeout === undefined || h.suspicionMinTimeout <= h.suspicionTimeout, {
    message: 'suspicionMinTimeout must not exceed suspicionTimeout',
    path: ['suspicionMinTimeout'],
  });

export const SidecarConfigSchema = z.strictObject({
  node: NodeSchema,
  identity: IdentitySchema,
  inbound: InboundSchema,
  outbound: OutboundSchema.prefault({}),
  admin: AdminSchema.prefault({}),
  clusters: z.array(ClusterSchema).default([]),
  xds: XdsSchema.optional(),
  context: ContextSchema.prefault({}),
  limits: LimitsSchema.prefault({}),
  log: LogSchema.prefault({}),
  health: HealthSchema.prefault({}),
  /** Time SIGTERM or POST /drain lets in-flight requests finish. Default 15s. */
  drainTimeout: duration().default(15_000),
});

export type SidecarConfig = z.infer<typeof SidecarConfigSchema>;
export type ClusterConfig = z.infer<typeof ClusterSchema>;
export type EndpointConfig = z.infer<typeof EndpointSchema>;
export type CircuitBreakerConfig = z.infer<typeof CircuitBreakerSchema>;
export type OutlierDetectionConfig = z.infer<typeof OutlierDetectionSchema>;
export type RetryConfig = z.infer<typeof RetrySchema>;
export type LimitsConfig = z.infer<typeof LimitsSchema>;
export type ContextConfig = z.infer<typeof ContextSchema>;
export type HealthConfig = z.infer<typeof HealthSchema>;

// ---------------------------------------------------------------------------------------------
// The control plane (`ctxmesh control-plane -c control-plane.yaml`): its xDS and admin listeners,
// the services it publishes, and how long registrations and health suspicions last. A service's
// routing options mirror the sidecar's ClusterSchema and are translated into Envoy v3 resources.

/** ip:port, IPv6 in brackets: EDS endpoints are addresses, not names (Envoy and gRPC both insist). */
const ipPort = addressSchema({ ipOnly: true });

const ServiceEndpointSchema = z.strictObject({
  /** ip:port of the endpoint (IPv6 in brackets). */
  address: ipPort,
  /** Locality zone. Default "". */
  zone: z.string().default(''),
  /** 0 = primary; higher numbers are used only when every lower priority is unhealthy. Default 0. */
  priority: z.number().int().min(0).max(7).default(0),
});

const MeshServiceSchema = z.strictObject({
  /** Service name: the Listener, RouteConfiguration, Cluster and ClusterLoadAssignment `X`. */
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'expected letters, digits, ".", "_" or "-"'),
  /** Namespace, for the `X.<namespace>.svc…` domains. Default "default". */
  namespace: z.string().min(1).default('default'),
  /** Static endpoints; sidecars that register through ADS are added to these. Default []. */
  endpoints: z.array(ServiceEndpointSchema).default([]),
  /** round_robin | least_request | ring_hash. Default round_robin. */
  lb: ClusterSchema.shape.lb,
  /** Request header hashed by ring_hash. Default x-ctx-key. */
  hashHeader: ClusterSchema.shape.hashHeader,
  /** mesh: endpoints are sidecars reached over mTLS; none: plain. Default mesh. */
  tls: ClusterSchema.shape.tls,
  /** Time allowed for response headers across all tries. Default: the client's own default. */
  timeout: duration().optional(),
  /** Time allowed to connect to an endpoint. Default: the client's own default. */
  connectTimeout: duration().optional(),
  /** Retry policy, as in a sidecar cluster. Default: the client's own default. */
  retry: RetrySchema.optional(),
  /** Circuit-breaker thresholds, as in a sidecar cluster. Default: the client's own default. */
  circuitBreaker: CircuitBreakerSchema.optional(),
  /** Outlier detection, as in a sidecar cluster. Default: the client's own default. */
  outlierDetection: OutlierDetectionSchema.optional(),
});

export const ControlPlaneConfigSchema = z
  .strictObject({
    /** xDS (gRPC ADS) listener. Default 15010. */
    port: port.default(15_010),
    /** xDS bind address. Default 0.0.0.0 (sidecars connect from other hosts). */
    address: z.string().default('0.0.0.0'),
    admin: z
      .strictObject({
        /** Admin/API listener (registry, clients, failovers, drain, health reports). Default 15014. */
        port: port.default(15_014),
        /** Admin bind address. Default 127.0.0.1. */
        address: z.string().default('127.0.0.1'),
      })
      .prefault({}),
    services: z.array(MeshServiceSchema).default([]),
    registration: z
      .strictObject({
        /** A sidecar stays an endpoint this long after its ADS stream closes or its last heartbeat. Default 15s. */
        ttl: duration().default(15_000),
      })
      .prefault({}),
    health: z
      .strictObject({
        /** Reports older than this no longer count towards declaring a member failed. Default 5s. */
        suspicionWindow: duration().default(5_000),
      })
      .prefault({}),
    /**
     * Where the registry's shared state lives (registrations, endpoint health, epochs, health
     * reports, failover history). memory (default): this process only, epochs restart at 0 with
     * it. redis: shared by every replica of the control plane, epochs survive restarts.
     */
    store: z
      .strictObject({
        /** memory (default) | redis. */
        backend: z.enum(['memory', 'redis']).default('memory'),
        /** When backend is redis: the same url forms as context.l2.url (redis://, rediss://, redis+sentinel://, redis+cluster://). */
        url: RedisUrl.optional(),
        /** Prefix of every key and of the change channel. Default "ctxmesh:cp:". */
        keyPrefix: z.string().min(1).default('ctxmesh:cp:'),
        /** Time a Redis command may take before the store counts as unavailable. Default 1s. */
        commandTimeout: duration().default(1_000),
        /** Time allowed to (re)connect to Redis. Default 2s. */
        connectTimeout: duration().default(2_000),
        /** Full reload from Redis this often, the safety net behind pub/sub change notices. Default 5s. */
        resyncInterval: duration().default(5_000),
        /** Failover history entries kept (a capped list). Default 1000. */
        historyLimit: z.number().int().min(1).max(100_000).default(1_000),
      })
      .superRefine((store, ctx) => {
        if (store.backend !== 'redis') return;
        if (store.url === undefined) return ctx.addIssue({ code: 'custom', message: 'url is required when backend is redis', path: ['url'] });
        try {
          parseRedisUrl(store.url);
        } catch (err) {
          ctx.addIssue({ code: 'custom', message: (err as Error).message.replace(/^l2 url /, ''), path: ['url'] });
        }
      })
      .prefault({}),
    log: LogSchema.prefault({}),
  })
  .superRefine((config, ctx) => {
    const seen = new Set<string>();
    config.services.forEach((service, index) => {
      if (seen.has(service.name)) ctx.addIssue({ code: 'custom', path: ['services', index, 'name'], message: `duplicate service ${service.name}` });
      seen.add(service.name);
      const addresses = new Set<string>();
      service.endpoints.forEach((endpoint, e) => {
        if (addresses.has(endpoint.address)) {
          ctx.addIssue({ code: 'custom', path: ['services', index, 'endpoints', e, 'address'], message: `duplicate endpoint ${endpoint.address}` });
        }
        addresses.add(endpoint.address);
      });
    });
  });

export type ControlPlaneConfig = z.infer<typeof ControlPlaneConfigSchema>;
export type MeshServiceConfig = z.infer<typeof MeshServiceSchema>;
export type ServiceEndpointConfig = z.infer<typeof ServiceEndpointSchema>;
export { ipPort as IpPortSchema };
