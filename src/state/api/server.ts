// The context API, on 127.0.0.1 only: contexts by key (PUT, GET/HEAD, PATCH, DELETE), listing by
// prefix, bulk reads, store stats, and the keys replication holds in conflict (GET /v1/conflicts,
// POST /v1/conflicts/{key}/resolve; a read of such a key says so in `ctxmesh-conflict` and returns
// its siblings with `?siblings=true`). Each request runs one pipeline:
//
//   route (path, method) → key → consistency, session → tenant rate limit → conditions, TTL,
//   retention → body (bounded) → store → response headers (ETag, TTL, tier, session token)
//
// Every refusal is a MeshError thrown from its stage and written once, by `fail`, through the
// error table. The store is the only source of data.
//
// GET of a cached context is the hot path and is benchmarked against a bare node:http server: it
// parses `req.url` by hand (no URL object), validates the key with a table scan, reuses one frozen
// Access object per consistency level when no session token came, and writes a flat header array.
import http from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { ContextConfig, LimitsConfig } from '../../config/schema.js';
import { parseDuration } from '../../config/units.js';
import { sendError } from '../../errors/respond.js';
import { MeshError } from '../../errors/table.js';
import { answerClientErrors, serverOptions } from '../../proxy/listener.js';
import { readBody } from '../../proxy/body-limit.js';
import { ANY, type Expectation } from '../cache/l2.js';
import { formatTimestamp, maxTimestamp, parseTimestamp } from '../hlc.js';
import { remainingTtl, type ContextRecord, type Retention } from '../record.js';
import type { Access, Consistency, ContextStore, Mutation } from '../store.js';
import { etagOf, versionTimestamp, type Version } from '../version.js';
import { decodeKey, keyError, prefixError, tenantOf } from './keys.js';
import { applyMergePatch, type Json } from './merge-patch.js';
import { TenantRateLimiter } from './rate-limit.js';
import { DEFAULT_CONFLICT_LIST_LIMIT, isConflictStore, MAX_CONFLICT_LIST_LIMIT, type SiblingReadResult } from '../replication/conflicts.js';
import type { ConflictVersion } from '../replication/merge.js';

/** What a request was, for metrics; `other` covers unknown paths and heads node refused. */
export type ContextApiOp = 'get' | 'head' | 'put' | 'patch' | 'delete' | 'list' | 'bulk_get' | 'stats' | 'conflicts' | 'resolve' | 'other';

export interface ContextApiOptions {
  store: ContextStore;
  config: ContextConfig;
  limits: LimitsConfig;
  /** Consistency of requests without a ctxmesh-consistency header (context.replication.consistency). */
  defaultConsistency: Consistency;
  /** The default consistency of one key (context.replication.levels); else `defaultConsistency`. */
  consistencyFor?: (key: string) => Consistency;
  /** Epoch ms; for TTLs left and the rate limiter. Default Date.now. */
  now?: () => number;
  /** Called once per request after its response was written: cheap, so metrics can count here. */
  onRequest?: (op: ContextApiOp, consistency: Consistency, status: number) => void;
  /** An error that is not a MeshError (a bug, or a store failure without a code): answered 500. */
  onInternalError?: (err: unknown, op: ContextApiOp) => void;
}

const CONTEXTS = '/v1/contexts';
const CONTEXT_PREFIX = '/v1/contexts/';
const BULK_GET = '/v1/bulk-get';
const STATS = '/v1/stats';
const CONFLICTS = '/v1/conflicts';
const CONFLICT_PREFIX = '/v1/conflicts/';
const RESOLVE_SUFFIX = '/resolve';
/** Names the conflict a resolution settles when the client has no ETag for it: an encoded context (clock.ts). */
const CONTEXT_HEADER = 'ctxmesh-context';

const ALLOW_CONTEXT = 'GET, HEAD, PUT, PATCH, DELETE';
const ALLOW_LIST = 'GET, HEAD';
const ALLOW_BULK_GET = 'POST';
const ALLOW_STATS = 'GET, HEAD';
const ALLOW_CONFLICTS = 'GET, HEAD';
const ALLOW_RESOLVE = 'POST';

export const DEFAULT_LIST_LIMIT = 100;
export const MAX_LIST_LIMIT = 1_000;
export const MAX_BULK_KEYS = 1_000;
/** Per key in a bulk-get body beyond the key itself: quotes, comma, a little whitespace. */
const BULK_BYTES_PER_KEY_OVERHEAD = 16;
const BULK_BYTES_OVERHEAD = 1_024;

const OCTET_STREAM = 'application/octet-stream';
const JSON_TYPE = 'application/json';
const STALE_WARNING = '110 - "Response is Stale"';

const ABSENT: Expectation = { kind: 'absent' };
const PRESENT: Expectation = { kind: 'present' };

export function createContextApiServer(options: ContextApiOptions): http.Server {
  const api = new ContextApi(options);
  const server = http.createServer(serverOptions(options.limits), api.handle);
  // Taking over `Expect: 100-continue` lets a request refused before its body (405, 400, 413 by
  // declared length, 428, 429) be answered without inviting the body first; `readBody` sends the
  // 100 only when it is about to read.
  server.on('checkContinue', api.handle);
  answerClientErrors(server, (err) => options.onRequest?.('other', options.defaultConsistency, err.status));
  return server;
}

class ContextApi {
  private readonly store: ContextStore;
  private readonly config: ContextConfig;
  private readonly defaultConsistency: Consistency;
  private readonly now: () => number;
  private readonly limiter: TenantRateLimiter | undefined;
  private readonly bulkBodyBytes: number;
  /** The Access of every request without a session token, one per level, shared. */
  private readonly plainAccess: Record<Consistency, Access>;

  constructor(private readonly options: ContextApiOptions) {
    this.store = options.store;
    this.config = options.config;
    this.defaultConsistency = options.defaultConsistency;
    this.now = options.now ?? Date.now;
    const { requestsPerSecond, burst } = options.config.rateLimit;
    this.limiter = requestsPerSecond > 0 ? new TenantRateLimiter({ requestsPerSecond, burst }, this.now) : undefined;
    this.bulkBodyBytes = MAX_BULK_KEYS * (options.config.maxKeyBytes + BULK_BYTES_PER_KEY_OVERHEAD) + BULK_BYTES_OVERHEAD;
    this.plainAccess = {
      strong: Object.freeze({ consistency: 'strong' }),
      session: Object.freeze({ consistency: 'session' }),
      eventual: Object.freeze({ consistency: 'eventual' }),
    };
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    void this.serve(req, res);
  };

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '/';
    const query = url.indexOf('?');
    const path = query < 0 ? url : url.slice(0, query);
    const method = req.method ?? 'GET';
    let op: ContextApiOp = 'other';
    let consistency = this.defaultConsistency;
    try {
      if (path.startsWith(CONTEXT_PREFIX)) {
        op = contextOp(method);
        if (op === 'other') throw notAllowed(res, method, path, ALLOW_CONTEXT);
        const key = this.keyOf(path.slice(CONTEXT_PREFIX.length));
        consistency = this.consistencyOf(req.headers, key);
        this.admit(tenantOf(key));
        const access = this.accessOf(req.headers, consistency);
        switch (op) {
          case 'get':
          case 'head':
            await this.get(req, res, key, access, op === 'head', query < 0 ? '' : url.slice(query + 1));
            break;
          case 'put':
            await this.put(req, res, key, access);
            break;
          case 'patch':
            await this.patch(req, res, key, access);
            break;
          case 'delete':
            await this.delete(req, res, key, access);
            break;
        }
      } else if (path === CONTEXTS) {
        if (method !== 'GET' && method !== 'HEAD') throw notAllowed(res, method, path, ALLOW_LIST);
        op = 'list';
        consistency = this.consistencyOf(req.headers);
        await this.list(req, res, query < 0 ? '' : url.slice(query + 1), consistency, method === 'HEAD');
      } else if (path === BULK_GET) {
        if (method !== 'POST') throw notAllowed(res, method, path, ALLOW_BULK_GET);
        op = 'bulk_get';
        consistency = this.consistencyOf(req.headers);
        await this.bulkGet(req, res, consistency);
      } else if (path === CONFLICTS) {
        if (method !== 'GET' && method !== 'HEAD') throw notAllowed(res, method, path, ALLOW_CONFLICTS);
        op = 'conflicts';
        await this.listConflicts(res, query < 0 ? '' : url.slice(query + 1), method === 'HEAD');
      } else if (path.startsWith(CONFLICT_PREFIX) && path.endsWith(RESOLVE_SUFFIX) && path.length > CONFLICT_PREFIX.length + RESOLVE_SUFFIX.length) {
        if (method !== 'POST') throw notAllowed(res, method, path, ALLOW_RESOLVE);
        op = 'resolve';
        const key = this.keyOf(path.slice(CONFLICT_PREFIX.length, -RESOLVE_SUFFIX.length));
        consistency = this.consistencyOf(req.headers, key);
        this.admit(tenantOf(key));
        await this.resolve(req, res, key, this.accessOf(req.headers, consistency));
      } else if (path === STATS) {
        if (method !== 'GET' && method !== 'HEAD') throw notAllowed(res, method, path, ALLOW_STATS);
        op = 'stats';
        sendJson(res, 200, this.store.stats(), undefined, method === 'HEAD');
      } else {
        throw new MeshError('not_found', `no context API endpoint ${path}`);
      }
    } catch (err) {
      this.fail(req, res, err, op);
    }
    try {
      this.options.onRequest?.(op, consistency, res.statusCode);
    } catch (err) {
      // `serve` runs detached: a throw here would be an unhandled rejection, which ends the process.
      this.options.onInternalError?.(err, op);
    }
  }

  // --- Routes ---

  private async get(req: IncomingMessage, res: ServerResponse, key: string, access: Access, head: boolean, query: string): Promise<void> {
    const result: SiblingReadResult | undefined = await this.store.get(key, access);
    if (result === undefined) throw new MeshError('not_found', `no context ${key}`);
    const record = result.record;
    const etag = etagOf(record.version);
    if (query !== '' && parseQuery(query).get('siblings') === 'true') {
      // Every stored version of the key; one for a key that is not in conflict.
      const siblings = result.siblings ?? [{ version: record.version, contentType: record.contentType, value: record.value, tombstone: false }];
      const body = { key, etag, conflict: result.conflict === true, siblings: siblings.map(describeSibling) };
      res.setHeader('etag', etag);
      if (result.conflict) res.setHeader(CONFLICT_HEADER, String(siblings.length));
      sendJson(res, 200, body, { consistency: access.consistency, session: sessionAfter(access, record.version) }, head);
      return;
    }
    const ifNoneMatch = req.headers['if-none-match'];
    if (ifNoneMatch !== undefined && !noneMatchHolds(ifNoneMatch, etag, record.version)) {
      res.writeHead(304, withSession(['etag', etag, 'ctxmesh-consistency', access.consistency], access, record.version));
      res.end();
      return;
    }
    const headers = [
      'content-type', record.contentType,
      'content-length', String(record.value.length),
      'etag', etag,
      'ctxmesh-tier', result.tier,
      'ctxmesh-consistency', access.consistency,
    ];
    withSession(headers, access, record.version);
    const ttlMs = remainingTtl(record, this.now());
    if (ttlMs !== undefined) headers.push('ctxmesh-ttl', `${Math.ceil(ttlMs / 1_000)}s`);
    if (record.retention === 'critical') headers.push('ctxmesh-retention', 'critical');
    if (result.stale) headers.push('ctxmesh-stale', 'true', 'warning', STALE_WARNING);
    if (result.conflict) headers.push(CONFLICT_HEADER, String(result.siblings?.length ?? 2));
    res.writeHead(200, headers);
    if (head) res.end();
    else res.end(record.value);
  }

  private async put(req: IncomingMessage, res: ServerResponse, key: string, access: Access): Promise<void> {
    const expected = this.expectationOf(req.headers);
    const ttlMs = this.ttlOf(req.headers) ?? this.config.defaultTtl;
    const retention = retentionOf(req.headers) ?? 'normal';
    const value = await readBody(req, this.config.maxValueBytes, { res });
    const mutation: Mutation = { value, contentType: req.headers['content-type'] || OCTET_STREAM, ttlMs, retention };
    const record = await this.store.put(key, mutation, expected, access);
    res.writeHead(204, withSession(['etag', etagOf(record.version), 'ctxmesh-consistency', access.consistency], access, record.version));
    res.end();
  }

  private async patch(req: IncomingMessage, res: ServerResponse, key: string, access: Access): Promise<void> {
    const mediaType = mediaTypeOf(req.headers['content-type']);
    if (mediaType !== 'application/merge-patch+json' && mediaType !== JSON_TYPE) {
      throw new MeshError('unsupported_media_type', 'PATCH takes application/merge-patch+json (or application/json)');
    }
    const expected = this.expectationOf(req.headers);
    const ttlMs = this.ttlOf(req.headers);
    const retention = retentionOf(req.headers);
    const patch = parseJson(await readBody(req, this.config.maxValueBytes, { res }), 'merge patch');
    const maxValueBytes = this.config.maxValueBytes;
    const now = this.now;
    const defaultTtl = this.config.defaultTtl;
    const record = await this.store.update(
      key,
      (current) => {
        const value = Buffer.from(JSON.stringify(applyMergePatch(current === undefined ? {} : currentJson(current), patch)));
        if (value.length > maxValueBytes) {
          throw new MeshError('payload_too_large', `the patched context is ${value.length} bytes, over the limit of ${maxValueBytes}`);
        }
        // A patch changes the document, not how long it lives or how it is kept: without the
        // headers, the current context's remaining TTL and retention carry over.
        return {
          value,
          contentType: JSON_TYPE,
          ttlMs: ttlMs ?? (current === undefined ? defaultTtl : carriedTtl(current, now())),
          retention: retention ?? current?.retention ?? 'normal',
        };
      },
      expected,
      access,
    );
    const headers = [
      'content-type', JSON_TYPE,
      'content-length', String(record.value.length),
      'etag', etagOf(record.version),
      'ctxmesh-consistency', access.consistency,
    ];
    res.writeHead(200, withSession(headers, access, record.version));
    res.end(record.value);
  }

  private async delete(req: IncomingMessage, res: ServerResponse, key: string, access: Access): Promise<void> {
    const expected = this.expectationOf(req.headers);
    const tombstone = await this.store.delete(key, expected, access);
    if (tombstone === undefined) throw new MeshError('not_found', `no context ${key}`);
    res.writeHead(204, withSession(['ctxmesh-consistency', access.consistency], access, tombstone.version));
    res.end();
  }

  private async list(req: IncomingMessage, res: ServerResponse, query: string, consistency: Consistency, head: boolean): Promise<void> {
    const params = parseQuery(query);
    const prefix = params.get('prefix');
    if (prefix === undefined) throw new MeshError('invalid_key', 'prefix is required (e.g. ?prefix=acme/)');
    const reason = prefixError(prefix, this.config.maxKeyBytes);
    if (reason !== undefined) throw new MeshError('invalid_key', reason);
    const limitText = params.get('limit');
    const limit = limitText === undefined ? DEFAULT_LIST_LIMIT : Number(limitText);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT || limitText === '') {
      throw new MeshError('bad_request', `limit must be an integer from 1 to ${MAX_LIST_LIMIT}`);
    }
    const cursor = params.get('cursor');
    let after: string | undefined;
    if (cursor !== undefined) {
      after = Buffer.from(cursor, 'base64url').toString('utf8');
      if (!after.startsWith(prefix)) throw new MeshError('bad_request', 'cursor does not belong to this prefix');
    }
    this.admit(tenantOf(prefix));
    const access = this.accessOf(req.headers, consistency);
    const page = await this.store.list(prefix, after, limit, access);
    const body: { keys: string[]; cursor?: string } = { keys: page.keys };
    if (page.next !== undefined) body.cursor = Buffer.from(page.next, 'utf8').toString('base64url');
    sendJson(res, 200, body, access, head);
  }

  private async listConflicts(res: ServerResponse, query: string, head: boolean): Promise<void> {
    const params = parseQuery(query);
    const prefix = params.get('prefix') ?? '';
    if (prefix !== '') {
      const reason = prefixError(prefix, this.config.maxKeyBytes);
      if (reason !== undefined) throw new MeshError('invalid_key', reason);
    }
    const limitText = params.get('limit');
    const limit = limitText === undefined ? DEFAULT_CONFLICT_LIST_LIMIT : Number(limitText);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_CONFLICT_LIST_LIMIT || limitText === '') {
      throw new MeshError('bad_request', `limit must be an integer from 1 to ${MAX_CONFLICT_LIST_LIMIT}`);
    }
    const after = params.get('after');
    // A store without replication never holds conflicts.
    const page = isConflictStore(this.store) ? await this.store.listConflicts(prefix, after, limit) : { conflicts: [] };
    sendJson(res, 200, page, undefined, head);
  }

  private async resolve(req: IncomingMessage, res: ServerResponse, key: string, access: Access): Promise<void> {
    const seen = req.headers['if-match'] ?? header(req.headers, CONTEXT_HEADER);
    if (seen === undefined || seen.trim() === '') {
      throw new MeshError('precondition_required', `a resolution names the siblings it settles: If-Match with the ETag read (or ${CONTEXT_HEADER})`);
    }
    if (!isConflictStore(this.store)) throw new MeshError('not_found', `${key} is not in conflict (this sidecar does not replicate)`);
    const ttlMs = this.ttlOf(req.headers) ?? this.config.defaultTtl;
    const retention = retentionOf(req.headers) ?? 'normal';
    const value = await readBody(req, this.config.maxValueBytes, { res });
    const mutation: Mutation = { value, contentType: req.headers['content-type'] || OCTET_STREAM, ttlMs, retention };
    const record = await this.store.resolveConflict(key, mutation, seen, access);
    res.writeHead(204, withSession(['etag', etagOf(record.version), 'ctxmesh-consistency', access.consistency], access, record.version));
    res.end();
  }

  private async bulkGet(req: IncomingMessage, res: ServerResponse, consistency: Consistency): Promise<void> {
    if (!isJsonType(req.headers['content-type'])) throw new MeshError('unsupported_media_type', 'bulk-get takes application/json');
    const body = parseJson(await readBody(req, this.bulkBodyBytes, { res }), 'bulk-get body');
    const keys = isObject(body) ? body.keys : undefined;
    if (!Array.isArray(keys)) throw new MeshError('bad_request', 'bulk-get body must be {"keys": ["tenant/session", …]}');
    if (keys.length > MAX_BULK_KEYS) throw new MeshError('bad_request', `bulk-get takes at most ${MAX_BULK_KEYS} keys, not ${keys.length}`);
    const tenants = new Set<string>();
    for (const key of keys) {
      if (typeof key !== 'string') throw new MeshError('invalid_key', `bulk-get keys must be strings, not ${JSON.stringify(key)}`);
      const reason = keyError(key, this.config.maxKeyBytes);
      if (reason !== undefined) throw new MeshError('invalid_key', `${JSON.stringify(key)}: ${reason}`);
      tenants.add(tenantOf(key));
    }
    // One request, charged once to every tenant it reads from.
    for (const tenant of tenants) this.admit(tenant);
    const access = this.accessOf(req.headers, consistency);
    const results = await this.store.getMany(keys as string[], access);
    let session = access.session;
    const items = (keys as string[]).map((key, i) => {
      const result = results[i];
      if (result === undefined) return { key, found: false };
      const { record } = result;
      const at = versionTimestamp(record.version);
      if (at !== undefined) session = maxTimestamp(session, at);
      return { key, found: true, version: record.version, contentType: record.contentType, ...encodedValue(record), ...(result.stale ? { stale: true } : {}) };
    });
    sendJson(res, 200, { items }, { consistency, session }, false);
  }

  // --- Stages ---

  private keyOf(raw: string): string {
    const key = decodeKey(raw);
    if (key === undefined) throw new MeshError('invalid_key', 'key has malformed percent-encoding');
    const reason = keyError(key, this.config.maxKeyBytes);
    if (reason !== undefined) throw new MeshError('invalid_key', reason);
    return key;
  }

  private consistencyOf(headers: IncomingHttpHeaders, key?: string): Consistency {
    const level = header(headers, 'ctxmesh-consistency');
    if (level === undefined) return key !== undefined && this.options.consistencyFor ? this.options.consistencyFor(key) : this.defaultConsistency;
    if (level === 'strong' || level === 'session' || level === 'eventual') return level;
    throw new MeshError('bad_request', `ctxmesh-consistency must be strong, session or eventual, not "${level}"`);
  }

  private accessOf(headers: IncomingHttpHeaders, consistency: Consistency): Access {
    const token = header(headers, 'ctxmesh-session');
    if (token === undefined) return this.plainAccess[consistency];
    const session = parseTimestamp(token);
    if (session === undefined) throw new MeshError('bad_request', `ctxmesh-session "${token}" is not a session token (<wall>.<logical>)`);
    return { consistency, session };
  }

  private admit(tenant: string): void {
    if (this.limiter === undefined) return;
    const waitSeconds = this.limiter.take(tenant);
    if (waitSeconds > 0) throw new MeshError('rate_limited', `tenant ${tenant} is over its request rate`, { retryAfter: waitSeconds });
  }

  /** If-Match / If-None-Match of a write, as the store checks them. */
  private expectationOf(headers: IncomingHttpHeaders): Expectation {
    const ifMatch = headers['if-match'];
    const ifNoneMatch = headers['if-none-match'];
    if (ifMatch !== undefined && ifNoneMatch !== undefined) {
      throw new MeshError('bad_request', 'a write takes If-Match or If-None-Match, not both');
    }
    if (ifMatch !== undefined) {
      if (ifMatch.trim() === '*') return PRESENT;
      const tags = parseEntityTags(ifMatch);
      if (tags === undefined) throw new MeshError('bad_request', `malformed If-Match: ${ifMatch}`);
      // If-Match compares strongly: a weak tag never matches, so only strong ones are expected.
      return { kind: 'version', versions: tags.strong };
    }
    if (ifNoneMatch !== undefined) {
      if (ifNoneMatch.trim() === '*') return ABSENT;
      throw new MeshError('bad_request', 'on a write, If-None-Match takes only * (create if absent)');
    }
    if (this.config.requireConditions) throw new MeshError('precondition_required');
    return ANY;
  }

  /** ctxmesh-ttl in ms; undefined when the header is absent. */
  private ttlOf(headers: IncomingHttpHeaders): number | undefined {
    const text = header(headers, 'ctxmesh-ttl');
    if (text === undefined) return undefined;
    let ttlMs: number;
    try {
      ttlMs = parseDuration(text);
    } catch {
      throw new MeshError('bad_request', `ctxmesh-ttl "${text}" is not a duration (e.g. 30s, 5m, 1h)`);
    }
    if (!(ttlMs > 0)) throw new MeshError('bad_request', `ctxmesh-ttl "${text}" must be positive`);
    const maxTtl = this.config.maxTtl;
    if (maxTtl !== undefined && ttlMs > maxTtl) {
      throw new MeshError('bad_request', `ctxmesh-ttl "${text}" exceeds the limit of ${maxTtl / 1_000}s (context.maxTtl)`);
    }
    return ttlMs;
  }

  private fail(req: IncomingMessage, res: ServerResponse, err: unknown, op: ContextApiOp): void {
    let failure: MeshError;
    if (err instanceof MeshError) {
      failure = err;
    } else {
      this.options.onInternalError?.(err, op);
      failure = new MeshError('internal', undefined, { cause: err });
    }
    // A body refused for its size is still arriving (or was never invited): closing is cheaper
    // than draining it. Any other unread body node drains itself to keep the connection.
    sendError(res, failure, { close: failure.code === 'payload_too_large' && !req.complete });
  }
}

function contextOp(method: string): ContextApiOp {
  switch (method) {
    case 'GET':
      return 'get';
    case 'HEAD':
      return 'head';
    case 'PUT':
      return 'put';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return 'delete';
    default:
      return 'other';
  }
}

function notAllowed(res: ServerResponse, method: string, path: string, allow: string): MeshError {
  // sendError's writeHead merges this with its own headers.
  res.setHeader('allow', allow);
  return new MeshError('method_not_allowed', `${method} ${path} is not supported (allow: ${allow})`);
}

function retentionOf(headers: IncomingHttpHeaders): Retention | undefined {
  const retention = header(headers, 'ctxmesh-retention');
  if (retention === undefined || retention === 'normal' || retention === 'critical') return retention;
  throw new MeshError('bad_request', `ctxmesh-retention must be normal or critical, not "${retention}"`);
}

/** The conflict header of a read: the number of siblings the key holds. */
const CONFLICT_HEADER = 'ctxmesh-conflict';

function describeSibling(sibling: ConflictVersion): Record<string, unknown> {
  const body = sibling.tombstone ? {} : encodedValue(sibling);
  return { version: sibling.version, etag: etagOf(sibling.version), contentType: sibling.contentType, deleted: sibling.tombstone, ...body };
}

function sessionAfter(access: Access, version: Version) {
  const at = versionTimestamp(version);
  return at === undefined ? access.session : maxTimestamp(access.session, at);
}

/**
 * Adds the session token to answer with: the newer of the caller's and the version's timestamp,
 * so a client that echoes it carries its session's high-water mark.
 */
function withSession(headers: string[], access: Access, version: Version): string[] {
  const at = versionTimestamp(version);
  const newest = at === undefined ? access.session : maxTimestamp(access.session, at);
  if (newest !== undefined) headers.push('ctxmesh-session', formatTimestamp(newest));
  return headers;
}

// --- Bodies ---

function parseJson(body: Buffer, what: string): Json {
  try {
    return JSON.parse(body.toString('utf8')) as Json;
  } catch (err) {
    throw new MeshError('bad_request', `${what} is not JSON: ${(err as Error).message}`);
  }
}

/** The TTL a patched context keeps: what is left of the current one (at least 1ms: 0 is no TTL to some tiers). */
function carriedTtl(current: ContextRecord, now: number): number | undefined {
  const left = remainingTtl(current, now);
  return left === undefined ? undefined : Math.max(1, left);
}

/** The stored document a merge patch applies to: it must be JSON, by type and by content. */
function currentJson(current: ContextRecord): Json {
  if (!isJsonType(current.contentType)) {
    throw new MeshError('not_mergeable', `context ${current.key} is ${current.contentType}, not JSON`);
  }
  try {
    return JSON.parse(current.value.toString('utf8')) as Json;
  } catch {
    throw new MeshError('not_mergeable', `context ${current.key} does not hold valid JSON`);
  }
}

function encodedValue(record: Pick<ContextRecord, 'contentType' | 'value'>): { value: Json } | { valueBase64: string } {
  if (isJsonType(record.contentType)) {
    try {
      return { value: JSON.parse(record.value.toString('utf8')) as Json };
    } catch {
      // Labelled JSON but not JSON: hand back the bytes as they are.
    }
  }
  return { valueBase64: record.value.toString('base64') };
}

function sendJson(res: ServerResponse, status: number, value: unknown, access: Access | undefined, head: boolean): void {
  const body = JSON.stringify(value);
  const headers = ['content-type', JSON_TYPE, 'content-length', String(Buffer.byteLength(body))];
  if (access !== undefined) {
    headers.push('ctxmesh-consistency', access.consistency);
    if (access.session !== undefined) headers.push('ctxmesh-session', formatTimestamp(access.session));
  }
  res.writeHead(status, headers);
  if (head) res.end();
  else res.end(body);
}

// --- Header and query syntax ---

/** An extension header's value; node joins repeated ones with ", " (typed as possibly an array). */
function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

function mediaTypeOf(contentType: string | undefined): string {
  if (contentType === undefined) return '';
  const semicolon = contentType.indexOf(';');
  return (semicolon < 0 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase();
}

function isJsonType(contentType: string | undefined): boolean {
  const type = mediaTypeOf(contentType);
  return type === JSON_TYPE || type.endsWith('+json');
}

function isObject(value: Json): value is { [member: string]: Json } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The entity tags of an If-Match / If-None-Match list (`"a", W/"b"`), split by strength, or
 * undefined when the list is malformed (RFC 9110 §8.8.3: etagc is %x21 / %x23-7E / obs-text).
 */
function parseEntityTags(header: string): { strong: string[]; weak: string[] } | undefined {
  const strong: string[] = [];
  const weak: string[] = [];
  let i = 0;
  const n = header.length;
  for (;;) {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
    if (i === n) break;
    let isWeak = false;
    if (header[i] === 'W' && header[i + 1] === '/') {
      isWeak = true;
      i += 2;
    }
    if (header[i] !== '"') return undefined;
    const end = header.indexOf('"', i + 1);
    if (end < 0) return undefined;
    for (let j = i + 1; j < end; j++) {
      const c = header.charCodeAt(j);
      if (c < 0x21 || c === 0x7f) return undefined;
    }
    (isWeak ? weak : strong).push(header.slice(i + 1, end));
    i = end + 1;
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
    if (i === n) break;
    if (header[i] !== ',') return undefined;
    i++;
  }
  return strong.length + weak.length === 0 ? undefined : { strong, weak };
}

/**
 * Whether `If-None-Match` lets a GET proceed (false → 304). It compares weakly: `W/"v"` matches
 * version v. A malformed header is ignored, as if absent.
 */
function noneMatchHolds(header: string, etag: string, version: Version): boolean {
  if (header === etag || header.trim() === '*') return false;
  const tags = parseEntityTags(header);
  if (tags === undefined) return true;
  return !tags.strong.includes(version) && !tags.weak.includes(version);
}

/**
 * `a=1&b=2` → Map. Values are percent-decoded but `+` stays `+`: it is a legal key character, and
 * no key holds a space for `+` to stand for.
 */
function parseQuery(query: string): Map<string, string> {
  const params = new Map<string, string>();
  if (query === '') return params;
  for (const pair of query.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const name = eq < 0 ? pair : pair.slice(0, eq);
    const raw = eq < 0 ? '' : pair.slice(eq + 1);
    const value = decodeKey(raw);
    if (value === undefined) throw new MeshError('bad_request', `query parameter ${name} has malformed percent-encoding`);
    if (!params.has(name)) params.set(name, value);
  }
  return params;
}
