// RFC 7396 JSON Merge Patch: a patch that is an object merges into the target member by member
// (null removes a member, nested objects merge, everything else — arrays included — replaces);
// a patch that is not an object replaces the target whole.

export type Json = null | boolean | number | string | Json[] | { [member: string]: Json };

type JsonObject = { [member: string]: Json };

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The patched document; neither argument is modified. */
export function applyMergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return patch;
  // Spread copies own members as data properties, so a parsed `"__proto__"` member stays a member.
  const result: JsonObject = isObject(target) ? { ...target } : {};
  for (const name of Object.keys(patch)) {
    const value = patch[name]!;
    if (value === null) {
      delete result[name];
    } else {
      const merged = applyMergePatch(Object.hasOwn(result, name) ? result[name] : undefined, value);
      // Assignment to `__proto__` would set the prototype instead of a member.
      Object.defineProperty(result, name, { value: merged, enumerable: true, writable: true, configurable: true });
    }
  }
  return result;
}
