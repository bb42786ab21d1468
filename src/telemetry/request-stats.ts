// Per-request figures, kept where the hot path can afford them: plain numbers and a typed array
// per series, no label hashing per request (prom-client validates and hashes labels on every
// call, ~1 µs, more than the rest of a request's bookkeeping). prom-client's registry turns them
// into exposition text at scrape time through `get()`, the interface its own metrics implement.
import type { Registry } from 'prom-client';

type Labels = Record<string, string>;
interface Sample {
  value: number;
  labels: Labels;
  metricName?: string;
}
interface Collected {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  values: Sample[];
  aggregator: 'sum';
}

/** Latency and outcome counts of one (direction, cluster) pair. */
export class RequestSeries {
  /** Cumulative counts per bucket upper bound (last slot: +Inf). */
  readonly buckets: Float64Array;
  sum = 0;
  count = 0;
  /** Requests by status (or `status|error` for mesh errors). */
  readonly outcomes = new Map<number | string, { status: number; error: string; count: number }>();

  constructor(
    readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    this.buckets = new Float64Array(bounds.length + 1);
  }

  record(status: number, error: string | undefined, seconds: number): void {
    const key = error === undefined ? status : `${status}|${error}`;
    const outcome = this.outcomes.get(key);
    if (outcome) outcome.count += 1;
    else this.outcomes.set(key, { status, error: error ?? '', count: 1 });
    let i = 0;
    while (i < this.bounds.length && seconds > this.bounds[i]!) i += 1;
    this.buckets[i]! += 1;
    this.sum += seconds;
    this.count += 1;
  }
}

export class RequestStats {
  /** direction → cluster → series: two lookups by existing strings, no key built per request. */
  private readonly series = new Map<string, Map<string, RequestSeries>>();

  constructor(
    registry: Registry,
    private readonly bounds: readonly number[],
    names: { requests: string; latency: string },
  ) {
    const counter = {
      name: names.requests,
      help: 'Requests handled by the proxy, by direction, cluster, response status and mesh error code.',
      type: 'counter' as const,
      aggregator: 'sum' as const,
      get: (): Collected => ({ ...counter, values: this.outcomeSamples() }),
    };
    const histogram = {
      name: names.latency,
      help: 'Time from the request head to the end of the response, by direction and cluster.',
      type: 'histogram' as const,
      aggregator: 'sum' as const,
      get: (): Collected => ({ ...histogram, values: this.latencySamples(names.latency) }),
    };
    registry.registerMetric(counter as never);
    registry.registerMetric(histogram as never);
  }

  /** The series of a (direction, cluster) pair; callers keep it to skip the lookup per request. */
  of(direction: string, cluster: string): RequestSeries {
    let byCluster = this.series.get(direction);
    if (!byCluster) {
      byCluster = new Map();
      this.series.set(direction, byCluster);
    }
    let found = byCluster.get(cluster);
    if (!found) {
      found = new RequestSeries({ direction, cluster }, this.bounds);
      byCluster.set(cluster, found);
    }
    return found;
  }

  private all(): RequestSeries[] {
    return [...this.series.values()].flatMap((byCluster) => [...byCluster.values()]);
  }

  private outcomeSamples(): Sample[] {
    const samples: Sample[] = [];
    for (const s of this.all()) {
      for (const o of s.outcomes.values()) {
        samples.push({ value: o.count, labels: { ...s.labels, status: String(o.status), error: o.error } });
      }
    }
    return samples;
  }

  private latencySamples(name: string): Sample[] {
    const samples: Sample[] = [];
    for (const s of this.all()) {
      let cumulative = 0;
      this.bounds.forEach((bound, i) => {
        cumulative += s.buckets[i]!;
        samples.push({ metricName: `${name}_bucket`, value: cumulative, labels: { ...s.labels, le: String(bound) } });
      });
      cumulative += s.buckets[this.bounds.length]!;
      samples.push({ metricName: `${name}_bucket`, value: cumulative, labels: { ...s.labels, le: '+Inf' } });
      samples.push({ metricName: `${name}_sum`, value: s.sum, labels: s.labels });
      samples.push({ metricName: `${name}_count`, value: s.count, labels: s.labels });
    }
    return samples;
  }
}
