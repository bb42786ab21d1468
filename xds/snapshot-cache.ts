// The current set of encoded resources, per type. Each resource's version is a hash of its
// encoded bytes, so rebuilding a service whose resources came out identical changes nothing and
// pushes nothing; each type also has a counter that rises whenever any of its resources changes,
// which is the `version_info` of state-of-the-world responses.
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { type AnyMessage, loadXdsProtos, TYPE_URL, type TypeUrl } from './protos.js';

export interface CachedResource {
  name: string;
  version: string;
  resource: AnyMessage;
}

export interface CacheChange {
  typeUrl: TypeUrl;
  /** Names added or whose version changed. */
  changed: Set<string>;
  removed: Set<string>;
  /** The type's version after the change. */
  version: string;
}

export const ALL_TYPE_URLS: readonly TypeUrl[] = [TYPE_URL.listener, TYPE_URL.routeConfiguration, TYPE_URL.cluster, TYPE_URL.clusterLoadAssignment];

interface TypeEntry {
  version: number;
  resources: Map<string, CachedResource>;
}

export class SnapshotCache extends EventEmitter<{ change: [change: CacheChange] }> {
  private readonly types = new Map<TypeUrl, TypeEntry>(ALL_TYPE_URLS.map((url) => [url, { version: 0, resources: new Map() }]));

  /** Sets resources of one type (plain objects, encoded here) and removes others; emits one change. */
  update(typeUrl: TypeUrl, upserts: ReadonlyArray<{ name: string; message: object }>, removals: readonly string[] = []): CacheChange | undefined {
    const entry = this.entry(typeUrl);
    const protos = loadXdsProtos();
    const changed = new Set<string>();
    const removed = new Set<string>();
    for (const { name, message } of upserts) {
      const resource = protos.encodeResource(typeUrl, message);
      const version = createHash('sha256').update(resource.value).digest('base64url').slice(0, 16);
      if (entry.resources.get(name)?.version === version) continue;
      entry.resources.set(name, { name, version, resource });
      changed.add(name);
    }
    for (const name of removals) if (entry.resources.delete(name)) removed.add(name);
    if (changed.size === 0 && removed.size === 0) return undefined;
    entry.version += 1;
    const change: CacheChange = { typeUrl, changed, removed, version: String(entry.version) };
    this.emit('change', change);
    return change;
  }

  /** A type's version, as state-of-the-world responses carry it. */
  version(typeUrl: TypeUrl): string {
    return String(this.entry(typeUrl).version);
  }

  get(typeUrl: TypeUrl, name: string): CachedResource | undefined {
    return this.entry(typeUrl).resources.get(name);
  }

  all(typeUrl: TypeUrl): CachedResource[] {
    return [...this.entry(typeUrl).resources.values()];
  }

  names(typeUrl: TypeUrl): string[] {
    return [...this.entry(typeUrl).resources.keys()];
  }

  private entry(typeUrl: TypeUrl): TypeEntry {
    const entry = this.types.get(typeUrl);
    if (!entry) throw new Error(`unsupported resource type ${typeUrl}`);
    return entry;
  }
}

export function isTypeUrl(value: string): value is TypeUrl {
  return (ALL_TYPE_URLS as readonly string[]).includes(value);
}
