// Load-balancing policies. The cluster decides which endpoints are candidates (priority level,
// health, not yet tried); a balancer only chooses among them.
import HashRing from 'hashring';
import type { Random } from '../../resilience/clock.js';
import type { UpstreamCall } from './dispatch.js';
import type { Endpoint } from './endpoint.js';

export interface Balancer {
  pick(candidates: readonly Endpoint[], call: UpstreamCall): Endpoint;
}

export class RoundRobinBalancer implements Balancer {
  private cursor = 0;
  pick(candidates: readonly Endpoint[]): Endpoint {
    this.cursor = (this.cursor + 1) % 0x7fffffff;
    return candidates[this.cursor % candidates.length]!;
  }
}

/** Power of two choices: two random candidates, the one with fewer requests in flight wins. */
export class LeastRequestBalancer implements Balancer {
  constructor(private readonly random: Random = Math.random) {}
  pick(candidates: readonly Endpoint[]): Endpoint {
    const n = candidates.length;
    if (n === 1) return candidates[0]!;
    const i = Math.floor(this.random() * n);
    let j = Math.floor(this.random() * (n - 1));
    if (j >= i) j += 1;
    const a = candidates[i]!;
    const b = candidates[j]!;
    return b.active < a.active ? b : a;
  }
}

/**
 * Ketama ring over every endpoint of the cluster, healthy or not, so that a key's order of
 * preference never changes with health: when the owner is unavailable the key goes to the next
 * endpoint clockwise, the replica that context replication already placed it on.
 *
 * An endpoint whose sidecar is known (EDS hostname = node.id) sits on the ring by that id, the
 * name context replication builds its ring over (src/state/replication/ring.ts): the same ids give
 * the same ring, so a key's request goes to its context's primary and, on failover, to the next
 * replica, which holds the context. Endpoints without one sit there by address.
 */
export class RingHashBalancer implements Balancer {
  private readonly ring: HashRing;
  private readonly size: number;
  private readonly fallback = new RoundRobinBalancer();

  constructor(endpoints: readonly Endpoint[]) {
    const names = [...new Set(endpoints.map(ringName))].sort(); // sorted, as replication's ring is built
    this.ring = new HashRing(names);
    this.size = names.length;
  }

  pick(candidates: readonly Endpoint[], call: UpstreamCall): Endpoint {
    if (call.hashKey === undefined || candidates.length === 1) return this.fallback.pick(candidates);
    for (const name of this.ring.range(call.hashKey, this.size, true)) {
      const found = candidates.find((e) => ringName(e) === name);
      if (found) return found;
    }
    return this.fallback.pick(candidates);
  }
}

function ringName(endpoint: Endpoint): string {
  return endpoint.hostname ?? endpoint.address;
}
