// The two kinds of Redis connection ctxmesh opens — one for commands, one for pub/sub — built the
// same way for every user (the state agent's L2, the control plane's registry store) from a parsed
// url, so that a single server, a Sentinel group and a Cluster behave alike everywhere.
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { clusterNodes, connectionOptions, nodeOptions, type ParsedRedisUrl, type RedisEndpoint } from './redis-url.js';

export interface RedisConnectOptions {
  connectTimeout: number;
  commandTimeout: number;
  /** Delay before reconnect attempt `times` (from 1). */
  backoff: (times: number) => number;
  /** CLIENT SETNAME, so that `CLIENT LIST` tells the connections apart. */
  connectionName: string;
}

/**
 * The command connection. It fails fast: no retries, no offline queue, and nothing resent after a
 * broken link — a write in flight then may or may not have run, and resending it could apply it
 * twice, after writes that followed it; the caller sees the failure instead.
 */
export function connectCommands(
  parsed: ParsedRedisUrl,
  options: RedisConnectOptions & { scripts: NonNullable<RedisOptions['scripts']>; autoPipelining?: boolean },
): Redis | Cluster {
  const common: RedisOptions = {
    connectTimeout: options.connectTimeout,
    commandTimeout: options.commandTimeout,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
  };
  // Concurrent commands from many requests leave in one write and one round trip.
  const enableAutoPipelining = options.autoPipelining ?? false;
  if (parsed.mode === 'cluster') {
    const clusterOptions: ClusterOptions = {
      enableOfflineQueue: false,
      enableAutoPipelining,
      clusterRetryStrategy: options.backoff,
      // Without it a node that restarts in place is never dialled again until a MOVED.
      clusterNodeRetryStrategy: options.backoff,
      slotsRefreshTimeout: options.commandTimeout,
      redisOptions: { ...nodeOptions(parsed), ...common, connectionName: options.connectionName },
      scripts: options.scripts,
    };
    return new Cluster(clusterNodes(parsed), clusterOptions);
  }
  return new Redis({
    ...connectionOptions(parsed),
    ...common,
    scripts: options.scripts,
    enableAutoPipelining,
    retryStrategy: options.backoff,
    sentinelRetryStrategy: options.backoff,
    connectionName: options.connectionName,
  });
}

/**
 * The pub/sub connection: its own, since a subscribed RESP2 connection runs no other command.
 * The caller subscribes on every `ready` (autoResubscribe is off), so that it knows when the
 * SUBSCRIBE was acknowledged. In Cluster mode PUBLISH reaches every node's subscribers, so one
 * plain connection to any node hears everything; each reconnect attempt dials the next node that
 * `nodes()` names (the masters the command connection knows), so a node that stays down is left behind.
 */
export function connectSubscriber(parsed: ParsedRedisUrl, options: RedisConnectOptions & { nodes?: () => RedisEndpoint[] }): Redis {
  let rotation = 0;
  const first = parsed.mode === 'cluster' ? parsed.nodes[0]! : undefined;
  const sub: Redis = new Redis({
    ...(parsed.mode === 'cluster' ? { ...nodeOptions(parsed), host: first!.host, port: first!.port } : connectionOptions(parsed)),
    connectTimeout: options.connectTimeout,
    commandTimeout: options.commandTimeout,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    autoResubscribe: false,
    connectionName: options.connectionName,
    retryStrategy: (times) => {
      if (parsed.mode === 'cluster') {
        const known = options.nodes?.() ?? [];
        const candidates = known.length > 0 ? known : parsed.nodes;
        const next = candidates[++rotation % candidates.length]!;
        sub.options.host = next.host;
        sub.options.port = next.port;
      }
      return options.backoff(times);
    },
    sentinelRetryStrategy: options.backoff,
  });
  return sub;
}

/** The masters a Cluster connection knows, for `connectSubscriber`'s rotation. */
export function knownMasters(client: Redis | Cluster): RedisEndpoint[] {
  return client instanceof Cluster ? client.nodes('master').map((n) => ({ host: n.options.host!, port: n.options.port! })) : [];
}
