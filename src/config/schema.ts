// The one schema of the sidecar's configuration. Every field says its unit and default; the
// README's config reference is written from this file. Objects are strict: a misspelt key is an
// error at startup, not a setting silently ignored.
import { z } from 'zod';
import { duration, size } from './units.js';

const hostPort = z
  .string()
  .regex(/^[^\s:/]+:\d{1,5}$/, 'expected host:port, e.g. 127.0.0.1:25006');

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
  /** host:port of the ADS server. Static clusters are used without it. */
  server: hostPort,
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
      /** In-process cache bound (values + keys). Default 256MiB. */
      maxBytes: size().default(256 * 1024 ** 2),
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
      peers: z.array(z.strictObject({ id: z.string().min(1), address: hostPort })).default([]),
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
