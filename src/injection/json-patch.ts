// A small RFC 6902 applier (add, remove, replace, test): `ctxmesh inject` applies the webhook's
// own patch with it, so the printed manifest is exactly what the API server would store.
export type JsonPatchOp =
  | { op: 'add' | 'replace' | 'test'; path: string; value: unknown }
  | { op: 'remove'; path: string };

export class JsonPatchError extends Error {
  override name = 'JsonPatchError';
}

/** Escape one reference token (RFC 6901 §3): `~` → `~0`, `/` → `~1`. */
export function escapePointerToken(token: string): string {
  return token.replace(/~/g, '~0').replace(/\//g, '~1');
}

function parsePointer(path: string): string[] {
  if (path === '') return [];
  if (!path.startsWith('/')) throw new JsonPatchError(`invalid JSON pointer "${path}"`);
  return path
    .slice(1)
    .split('/')
    .map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function arrayIndex(token: string, length: number, allowEnd: boolean, path: string): number {
  if (token === '-' && allowEnd) return length;
  if (!/^(0|[1-9]\d*)$/.test(token)) throw new JsonPatchError(`invalid array index "${token}" in ${path}`);
  const index = Number(token);
  if (index > length || (!allowEnd && index === length)) throw new JsonPatchError(`index ${index} out of range in ${path}`);
  return index;
}

/** Applies `ops` to a deep copy of `doc` and returns it; throws JsonPatchError on any failure. */
export function applyJsonPatch<T>(doc: T, ops: readonly JsonPatchOp[]): T {
  let root: unknown = structuredClone(doc);
  for (const op of ops) {
    const tokens = parsePointer(op.path);
    if (tokens.length === 0) {
      if (op.op === 'remove') throw new JsonPatchError('cannot remove the document root');
      if (op.op === 'test') {
        if (JSON.stringify(root) !== JSON.stringify(op.value)) throw new JsonPatchError('test failed at ""');
        continue;
      }
      root = structuredClone(op.value);
      continue;
    }
    let parent: unknown = root;
    for (const token of tokens.slice(0, -1)) {
      if (Array.isArray(parent)) parent = parent[arrayIndex(token, parent.length, false, op.path)];
      else if (parent && typeof parent === 'object' && token in parent) parent = (parent as Record<string, unknown>)[token];
      else throw new JsonPatchError(`path ${op.path} does not exist`);
    }
    const last = tokens[tokens.length - 1]!;
    if (Array.isArray(parent)) {
      const index = arrayIndex(last, parent.length, op.op === 'add', op.path);
      if (op.op === 'add') parent.splice(index, 0, structuredClone(op.value));
      else if (op.op === 'remove') parent.splice(index, 1);
      else if (op.op === 'replace') parent[index] = structuredClone(op.value);
      else if (JSON.stringify(parent[index]) !== JSON.stringify(op.value)) throw new JsonPatchError(`test failed at ${op.path}`);
    } else if (parent && typeof parent === 'object') {
      const obj = parent as Record<string, unknown>;
      if (op.op !== 'add' && !(last in obj)) throw new JsonPatchError(`path ${op.path} does not exist`);
      if (op.op === 'add' || op.op === 'replace') obj[last] = structuredClone(op.value);
      else if (op.op === 'remove') delete obj[last];
      else if (JSON.stringify(obj[last]) !== JSON.stringify(op.value)) throw new JsonPatchError(`test failed at ${op.path}`);
    } else {
      throw new JsonPatchError(`path ${op.path} does not exist`);
    }
  }
  return root as T;
}
