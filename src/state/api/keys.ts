// Context keys are `tenant/session[/…]` paths. The first segment names the tenant (what rate limits
// and, later, quotas and placement are charged to); tenants starting with `_` are reserved for the
// mesh itself. Segments are restricted to RFC 3986 unreserved and sub-delim characters plus `:` and
// `@` — exactly what a path segment may hold without escaping — so a key reads the same in a URL, a
// log line and a Redis key. Every allowed character is ASCII, so characters and bytes coincide.
//
// These checks run on every request, so they scan character codes against a table instead of
// matching a regular expression.

export const MAX_SEGMENT_BYTES = 128;
/** Segments a key needs at least: tenant and session. */
const MIN_SEGMENTS = 2;

const SLASH = 0x2f;
const DOT = 0x2e;
const UNDERSCORE = 0x5f;

const SEGMENT_CHAR = new Uint8Array(128);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:@!$&'()*+,;=-") SEGMENT_CHAR[c.charCodeAt(0)] = 1;

/**
 * The key a URL path segment names. Percent-encoding is decoded once, so `acme/s%3A1` and `acme/s:1`
 * are the same key (and `%2F` is a separator like `/`). Undefined when the encoding is malformed.
 */
export function decodeKey(raw: string): string | undefined {
  if (raw.indexOf('%') < 0) return raw;
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
}

/** Why `key` is not a valid context key, or undefined when it is. */
export function keyError(key: string, maxKeyBytes: number): string | undefined {
  // Length can only undercount bytes, and any non-ASCII character is refused below anyway.
  if (key.length > maxKeyBytes) return `key is longer than ${maxKeyBytes} bytes`;
  return segmentsError(key, false);
}

/**
 * Why `prefix` cannot be listed, or undefined when it can. A listing stays inside one tenant, so
 * the prefix holds at least the tenant and the `/` after it; its last segment may be partial
 * (`acme/sess` lists `acme/session-1`, `acme/sess/x`, …) or empty (`acme/`).
 */
export function prefixError(prefix: string, maxKeyBytes: number): string | undefined {
  if (prefix.length > maxKeyBytes) return `prefix is longer than ${maxKeyBytes} bytes`;
  if (prefix.indexOf('/') < 0) return 'prefix must hold at least the tenant and a "/" (e.g. "acme/")';
  return segmentsError(prefix, true);
}

/** The tenant (first segment) of a key or prefix that has passed validation. */
export function tenantOf(key: string): string {
  const slash = key.indexOf('/');
  return slash < 0 ? key : key.slice(0, slash);
}

function segmentsError(text: string, partialLast: boolean): string | undefined {
  let segments = 0;
  let start = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : SLASH;
    if (c !== SLASH) {
      if (c >= 128 || SEGMENT_CHAR[c] === 0) return `character ${JSON.stringify(text[i])} at ${i} is not allowed in a key`;
      continue;
    }
    const length = i - start;
    const last = i === text.length;
    if (length === 0) {
      if (!(last && partialLast)) return text.length === 0 ? 'key is empty' : `key has an empty segment at ${start}`;
    } else {
      if (length > MAX_SEGMENT_BYTES) return `segment at ${start} is longer than ${MAX_SEGMENT_BYTES} bytes`;
      // A partial last segment of a prefix may be `.`: it only matches longer segments.
      if (text.charCodeAt(start) === DOT && (length === 1 || (length === 2 && text.charCodeAt(start + 1) === DOT)) && !(last && partialLast)) {
        return `segment "${text.slice(start, i)}" is not allowed`;
      }
      if (segments === 0 && text.charCodeAt(start) === UNDERSCORE) return `tenant "${text.slice(start, i)}" is reserved (starts with "_")`;
    }
    segments++;
    start = i + 1;
  }
  if (!partialLast && segments < MIN_SEGMENTS) return 'key must have at least two segments: tenant/session';
  return undefined;
}
