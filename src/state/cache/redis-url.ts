// The l2 url, parsed once at the boundary into what ioredis needs. One line of config names a
// single Redis, a Sentinel group or a Cluster, so moving between them changes nothing else:
//
//   redis://[user:password@]host:port[/db]                      rediss://… for TLS
//   redis+sentinel://[:password@]h:p[,h:p…]/masterName[/db]      rediss+sentinel://…
//   redis+cluster://[:password@]h:p[,h:p…]                       rediss+cluster://…
import type { ClusterNode, RedisOptions } from 'ioredis';

export const REDIS_DEFAULT_PORT = 6379;
export const SENTINEL_DEFAULT_PORT = 26379;

export interface RedisEndpoint {
  host: string;
  port: number;
}

interface Credentials {
  username?: string;
  password?: string;
}

export type ParsedRedisUrl =
  | (Credentials & { mode: 'standalone'; tls: boolean; host: string; port: number; db: number })
  | (Credentials & { mode: 'sentinel'; tls: boolean; sentinels: RedisEndpoint[]; masterName: string; db: number })
  | (Credentials & { mode: 'cluster'; tls: boolean; nodes: RedisEndpoint[] });

export class RedisUrlError extends Error {
  override name = 'RedisUrlError';
}

const URL_SHAPE = /^(rediss?)(?:\+(sentinel|cluster))?:\/\/(?:([^@/]*)@)?([^/?#]*)(\/[^?#]*)?([?#].*)?$/;

export function parseRedisUrl(url: string): ParsedRedisUrl {
  const m = URL_SHAPE.exec(url);
  if (!m) {
    throw new RedisUrlError(
      `l2 url ${redact(url)}: expected redis://host:port[/db], rediss://…, redis+sentinel://h:p[,h:p]/master[/db] or redis+cluster://h:p[,h:p]`,
    );
  }
  const [, scheme, topology, userinfo, hostList, path, rest] = m;
  const where = `l2 url ${redact(url)}`;
  if (rest) throw new RedisUrlError(`${where}: query strings and fragments are not supported`);
  const tls = scheme === 'rediss';
  const credentials = parseUserinfo(userinfo, where);
  const segments = path === undefined || path === '/' ? [] : path.slice(1).split('/');

  switch (topology) {
    case undefined: {
      const hosts = parseHosts(hostList!, REDIS_DEFAULT_PORT, where);
      if (hosts.length !== 1) throw new RedisUrlError(`${where}: names ${hosts.length} hosts; use redis+sentinel:// or redis+cluster:// for several`);
      if (segments.length > 1) throw new RedisUrlError(`${where}: the path may only hold a database number`);
      return { mode: 'standalone', tls, ...hosts[0]!, db: parseDb(segments[0], where), ...credentials };
    }
    case 'sentinel': {
      const sentinels = parseHosts(hostList!, SENTINEL_DEFAULT_PORT, where);
      const masterName = segments[0] ? decode(segments[0], where) : '';
      if (!masterName) throw new RedisUrlError(`${where}: a sentinel url needs the master name as its path: redis+sentinel://h:p/masterName`);
      if (segments.length > 2) throw new RedisUrlError(`${where}: the path may only hold the master name and a database number`);
      return { mode: 'sentinel', tls, sentinels, masterName, db: parseDb(segments[1], where), ...credentials };
    }
    case 'cluster': {
      const nodes = parseHosts(hostList!, REDIS_DEFAULT_PORT, where);
      // A Cluster has only database 0: a path would be silently ignored, so it is refused.
      if (segments.length > 0) throw new RedisUrlError(`${where}: a cluster url has no path (Redis Cluster only has database 0)`);
      return { mode: 'cluster', tls, nodes, ...credentials };
    }
    default:
      throw new RedisUrlError(`${where}: unknown topology ${topology}`);
  }
}

/** Options shared by every connection to a data node (not to a sentinel). */
export function nodeOptions(parsed: ParsedRedisUrl): RedisOptions {
  const options: RedisOptions = {};
  if (parsed.username !== undefined) options.username = parsed.username;
  if (parsed.password !== undefined) options.password = parsed.password;
  // Certificates are verified against the system CAs; the servername is the host dialled.
  if (parsed.tls) options.tls = {};
  return options;
}

/**
 * ioredis options for a standalone or sentinel url. Sentinel: the password is the data nodes'
 * (sentinels are usually unauthenticated); `rediss+sentinel` means TLS to the sentinels too.
 */
export function connectionOptions(parsed: Exclude<ParsedRedisUrl, { mode: 'cluster' }>): RedisOptions {
  const options = nodeOptions(parsed);
  options.db = parsed.db;
  if (parsed.mode === 'standalone') {
    options.host = parsed.host;
    options.port = parsed.port;
  } else {
    options.sentinels = parsed.sentinels.map((s) => ({ host: s.host, port: s.port }));
    options.name = parsed.masterName;
    if (parsed.tls) {
      options.enableTLSForSentinelMode = true;
      options.sentinelTLS = {};
    }
  }
  return options;
}

export function clusterNodes(parsed: Extract<ParsedRedisUrl, { mode: 'cluster' }>): ClusterNode[] {
  return parsed.nodes.map((n) => ({ host: n.host, port: n.port }));
}

/** The url without its password, for logs and error messages. */
export function redact(url: string): string {
  return url.replace(/^([a-z+]+:\/\/)([^@/]*)@/i, (_, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    return colon < 0 ? `${scheme}***@` : `${scheme}${userinfo.slice(0, colon)}:***@`;
  });
}

function parseUserinfo(userinfo: string | undefined, where: string): Credentials {
  if (userinfo === undefined || userinfo === '') return {};
  const colon = userinfo.indexOf(':');
  // `redis://secret@host` is the legacy password-only form; `redis://:secret@host` the explicit one.
  if (colon < 0) return { password: decode(userinfo, where) };
  const username = decode(userinfo.slice(0, colon), where);
  const password = decode(userinfo.slice(colon + 1), where);
  const out: Credentials = {};
  if (username) out.username = username;
  if (password) out.password = password;
  return out;
}

function parseHosts(list: string, defaultPort: number, where: string): RedisEndpoint[] {
  if (list === '') throw new RedisUrlError(`${where}: no host`);
  return list.split(',').map((item) => parseHost(item, defaultPort, where));
}

function parseHost(item: string, defaultPort: number, where: string): RedisEndpoint {
  // [v6]:port, [v6], host:port or host.
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+))(?::(\d*))?$/.exec(item);
  if (!m) throw new RedisUrlError(`${where}: "${item}" is not host:port`);
  const host = m[1] ?? m[2]!;
  if (m[3] === undefined) return { host, port: defaultPort };
  const port = Number(m[3]);
  if (m[3] === '' || !Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new RedisUrlError(`${where}: "${item}" has no valid port (1-65535)`);
  }
  return { host, port };
}

function parseDb(segment: string | undefined, where: string): number {
  if (segment === undefined || segment === '') return 0;
  // The upper bound is the server's `databases` setting, which only the server knows.
  if (!/^\d{1,9}$/.test(segment)) throw new RedisUrlError(`${where}: database "${segment}" is not a number`);
  return Number(segment);
}

function decode(part: string, where: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new RedisUrlError(`${where}: bad percent-encoding in "${part.replace(/./g, '*')}"`);
  }
}
