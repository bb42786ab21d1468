// The sidecar's cluster set once xDS adds to it: the static clusters of the config file, the
// dynamic ones from the control plane, and the replaced ones still finishing their requests.
//   - A static cluster keeps its name: a dynamic cluster of the same name is ignored (as Envoy
//     refuses to let CDS replace a static cluster). Static domains are routed first, too.
//   - An unchanged dynamic cluster keeps its Cluster object, so its breakers, outlier ejections
//     and connection pools carry on; a changed one is built anew.
//   - Each update yields a new Router, which the sidecar swaps in with one assignment: a request
//     routes on the old table or the new one, never a mix.
//   - A replaced or removed Cluster is closed only once its in-flight requests are done (their
//     retries included): they finish on the endpoints they started with.
import type { ClusterConfig } from '../config/schema.js';
import { Router } from '../proxy/outbound/router.js';
import { Cluster, type ClusterDeps } from '../proxy/upstream/cluster.js';
import type { Logger } from '../telemetry/logger.js';

/** How often a retired cluster checks whether its last request has finished. */
const RETIRE_POLL_INTERVAL_MS = 50;

export interface ApplyResult {
  router: Router;
  added: string[];
  changed: string[];
  removed: string[];
  /** Dynamic clusters ignored because a static cluster has the name. */
  shadowed: string[];
}

export class DynamicClusters {
  private dynamic = new Map<string, Cluster>();
  private readonly retiring = new Map<Cluster, NodeJS.Timeout>();
  private readonly staticNames: Set<string>;
  private readonly shadowWarned = new Set<string>();

  constructor(
    private readonly staticClusters: readonly Cluster[],
    private readonly deps: ClusterDeps,
    private readonly logger: Logger,
  ) {
    this.staticNames = new Set(staticClusters.map((c) => c.name));
  }

  /** Dynamic clusters in force, by name. */
  get current(): Cluster[] {
    return [...this.dynamic.values()];
  }

  /** Replaced clusters still serving requests that started on them. */
  get retired(): Cluster[] {
    return [...this.retiring.keys()];
  }

  get inFlight(): number {
    let sum = 0;
    for (const c of this.dynamic.values()) sum += c.active;
    for (const c of this.retiring.keys()) sum += c.active;
    return sum;
  }

  apply(configs: readonly ClusterConfig[]): ApplyResult {
    const next = new Map<string, Cluster>();
    const result: Omit<ApplyResult, 'router'> = { added: [], changed: [], removed: [], shadowed: [] };
    for (const config of configs) {
      if (this.staticNames.has(config.name)) {
        result.shadowed.push(config.name);
        if (!this.shadowWarned.has(config.name)) {
          this.shadowWarned.add(config.name);
          this.logger.warn({ cluster: config.name }, 'xDS cluster ignored: a static cluster has this name');
        }
        continue;
      }
      if (next.has(config.name)) continue;
      const current = this.dynamic.get(config.name);
      if (current && sameConfig(current.config, config)) {
        next.set(config.name, current);
        continue;
      }
      next.set(config.name, new Cluster(config, this.deps));
      (current ? result.changed : result.added).push(config.name);
    }
    for (const [name, cluster] of this.dynamic) {
      if (next.get(name) === cluster) continue;
      if (!next.has(name)) result.removed.push(name);
      this.retire(cluster);
    }
    this.dynamic = next;
    const router = new Router([...this.staticClusters, ...[...next.values()].sort((a, b) => (a.name < b.name ? -1 : 1))]);
    if (result.added.length + result.changed.length + result.removed.length > 0) {
      this.logger.info({ added: result.added, changed: result.changed, removed: result.removed }, 'xDS clusters applied');
    }
    return { router, ...result };
  }

  /** Closes everything (destroy: cut what is still in flight). */
  async close(destroy: boolean): Promise<void> {
    for (const timer of this.retiring.values()) clearInterval(timer);
    const all = [...this.dynamic.values(), ...this.retiring.keys()];
    this.retiring.clear();
    this.dynamic.clear();
    await Promise.all(all.map((c) => (destroy ? c.destroy() : c.close())));
  }

  private retire(cluster: Cluster): void {
    const finish = (): void => {
      clearInterval(this.retiring.get(cluster));
      this.retiring.delete(cluster);
      cluster.close().catch((err: Error) => this.logger.warn({ cluster: cluster.name, err: err.message }, 'closing a replaced cluster failed'));
    };
    if (cluster.active === 0) {
      // Stop its timers now; the pools close once undici has nothing queued.
      finish();
      return;
    }
    const timer = setInterval(() => {
      if (cluster.active === 0) finish();
    }, RETIRE_POLL_INTERVAL_MS);
    timer.unref();
    this.retiring.set(cluster, timer);
  }
}

function sameConfig(a: ClusterConfig, b: ClusterConfig): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
