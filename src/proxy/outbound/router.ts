// Host → cluster. Exact domains are a map lookup; `*.suffix` wildcards are tried longest first;
// a lone `*` is the default route.
import type { Cluster } from '../upstream/cluster.js';

export class Router {
  private readonly exact = new Map<string, Cluster>();
  private readonly wildcards: Array<[suffix: string, cluster: Cluster]> = [];
  private catchAll: Cluster | undefined;

  constructor(clusters: Iterable<Cluster>) {
    for (const cluster of clusters) {
      for (const domain of cluster.config.domains) {
        const d = domain.toLowerCase();
        if (d === '*') this.catchAll ??= cluster;
        else if (d.startsWith('*.')) this.wildcards.push([d.slice(1), cluster]);
        else if (!this.exact.has(d)) this.exact.set(d, cluster);
      }
    }
    this.wildcards.sort((a, b) => b[0].length - a[0].length);
  }

  route(authority: string): Cluster | undefined {
    const host = hostOf(authority);
    const hit = this.exact.get(host);
    if (hit) return hit;
    for (const [suffix, cluster] of this.wildcards) if (host.endsWith(suffix)) return cluster;
    return this.catchAll;
  }
}

/** `Chat.Default.svc:8080` → `chat.default.svc`; `[::1]:80` → `[::1]`. */
export function hostOf(authority: string): string {
  let host = authority;
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    if (end > 0) host = host.slice(0, end + 1);
  } else {
    const colon = host.lastIndexOf(':');
    if (colon !== -1) host = host.slice(0, colon);
  }
  return host.toLowerCase();
}
