// The current set of encoded resources, per type. Each resource's version is a hash of its
// encoded bytes, so rebuilding a service whose resources came out identical changes nothing and
// pushes nothing. A type's version — the `version_info` of state-of-the-world responses — is a hash
// of its resources' names and versions, so two control-plane replicas serving the same resources
// answer with the same version_info (a client moving between them sees no change), and a type that
// returns to earlier content returns to its earlier version.
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
  version: string;
  resources: Map<string, CachedResource>;
}

const hashOf = (text: string | Uint8Array): string => createHash('sha256').update(text).digest('base64url').slice(0, 16);

/** The content version of a type: its resources' names and versions, in name order, hashed. */
function contentVersion(resources: ReadonlyMap<string, CachedResource>): string {
  const names = [...resources.keys()].sort();
  return hashOf(names.map((name) => `${name}\u0000${resources.get(name)!.version}`).join('\n'));
}

export class SnapshotCache extends EventEmitter<{ change: [change: CacheChange] }> {
  private readonly types = new Map<TypeUrl, TypeEntry>(ALL_TYPE_URLS.map((url) => [url, { version: contentVersion(new Map()), resources: new Map() }]));

  /** Sets resources of one type (plain objects, encoded here) and removes others; emits one change. */
  update(typeUrl: TypeUrl, upserts: ReadonlyArray<{ name: string; message: object }>, removals: readonly string[] = []): CacheChange | undefined {
    const entry = this.entry(typeUrl);
    const protos = loadXdsProtos();
    const changed = new Set<string>();
    const removed = new Set<string>();
    for (const { name, message } of upserts) {
      const resource = protos.encodeResource(typeUrl, message);
      const version = hashOf(resource.value);
      if (entry.resources.get(name)?.version === version) continue;
      entry.resources.set(name, { name, version, resource });
      changed.add(name);
    }
    for (const name of removals) if (entry.resources.delete(name)) removed.add(name);
    if (changed.size === 0 && removed.size === 0) return undefined;
    entry.version = contentVersion(entry.resources);
    const change: CacheChange = { typeUrl, changed, removed, version: entry.version };
    this.emit('change', change);
    return change;
  }

  /** A type's version, as state-of-the-world responses carry it. */
  version(typeUrl: TypeUrl): string {
    return this.entry(typeUrl).version;
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
