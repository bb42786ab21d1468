// What a deep ping proves beyond "the TLS listener answers": that this sidecar's state agent takes
// a write and serves it back. The write goes to the local store only (never replicated, so a slow
// peer cannot fail our check) under a reserved key of the mesh's own `_ctxmesh` tenant.
import { ANY } from '../state/cache/l2.js';
import type { LocalStore } from '../state/local-store.js';

/** The tenant reserved for the mesh's own keys (see src/state/api/keys.ts). */
const HEALTH_KEY_PREFIX = '_ctxmesh/health/';
/** The health key expires on its own when the sidecar stops probing. */
const HEALTH_KEY_TTL_MS = 60_000;

export function contextPathCheck(store: LocalStore, nodeId: string): () => Promise<void> {
  const key = `${HEALTH_KEY_PREFIX}${nodeId}`;
  return async () => {
    const written = await store.put(
      key,
      { value: Buffer.from(new Date().toISOString()), contentType: 'text/plain', ttlMs: HEALTH_KEY_TTL_MS, retention: 'normal' },
      ANY,
    );
    const read = await store.get(key, { consistency: 'strong' });
    if (!read || !read.record.value.equals(written.value)) throw new Error('the health key did not read back as written');
  };
}
