// The context API over real sockets, in front of an in-memory ContextStore that behaves like the
// real one where the API can tell: HLC-stamped versions, expectations checked with `satisfies`
// atomically with the write, expiry on an injected clock, byte-ordered listing. Time is driven by
// the test, never slept on.
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SidecarConfigSchema, type ContextConfig } from '../../src/config/schema.js';
import { MeshError } from '../../src/errors/table.js';
import { createContextApiServer, type ContextApiOp } from '../../src/state/api/server.js';
import { satisfies, type Expectation, type ListPage } from '../../src/state/cache/l2.js';
import { formatTimestamp, HybridClock, parseTimestamp } from '../../src/state/hlc.js';
import { isExpired, type ContextRecord } from '../../src/state/record.js';
import type { Access, Consistency, ContextStore, Mutation, ReadResult, StoreStats } from '../../src/state/store.js';
import { etagOf, makeVersion, versionTimestamp } from '../../src/state/version.js';

const START_MS = 1_700_000_000_000;
/** `maxValueBytes` of the servers below. */
const MAX_VALUE_BYTES = 4 * 1024;
/** A raw exchange that has not settled by then is a hang, and fails the test. */
const RAW_TIMEOUT_MS = 5_000;

interface TestClock {
  now: () => number;
  advance: (ms: number) => void;
}

function testClock(): TestClock {
  let t = START_MS;
  return { now: () => t, advance: (ms) => (t += ms) };
}

const STATS: StoreStats = {
  l1: { entries: 1, bytes: 2, hits: 3, misses: 4, evictions: 5, hitRatio: 0.43, maxBytes: 1024, criticalEntries: 0 },
  l2: { hits: 1, misses: 2, hitRatio: 0.33, backend: 'memory', available: true, coherent: true },
  writeMode: 'write-through',
  writeBehind: { queued: 0, queuedBytes: 0, flushed: 0 },
  staleReads: 0,
};

/** A ContextStore in a Map; `read` sets what reads report, `failNext` makes the next call throw. */
class FakeStore implements ContextStore {
  readonly records = new Map<string, ContextRecord>();
  readonly accesses: Access[] = [];
  read: { stale: boolean; tier: ReadResult['tier'] } = { stale: false, tier: 'l1' };
  failNext: unknown;
  private readonly hlc: HybridClock;

  constructor(private readonly now: () => number) {
    this.hlc = new HybridClock(now);
  }

  async get(key: string, access: Access): Promise<ReadResult | undefined> {
    this.enter(access);
    await Promise.resolve();
    const record = this.live(key);
    return record && { record, ...this.read };
  }

  async getMany(keys: readonly string[], access: Access): Promise<Array<ReadResult | undefined>> {
    this.enter(access);
    await Promise.resolve();
    return keys.map((key) => {
      const record = this.live(key);
      return record && { record, ...this.read };
    });
  }

  async put(key: string, mutation: Mutation, expected: Expectation, access: Access): Promise<ContextRecord> {
    this.enter(access);
    await Promise.resolve();
    // Check and write in one synchronous step, as the real tiers do atomically.
    this.check(key, expected);
    return this.write(key, mutation);
  }

  async update(key: string, change: (current: ContextRecord | undefined) => Mutation, expected: Expectation, access: Access): Promise<ContextRecord> {
    this.enter(access);
    await Promise.resolve();
    this.check(key, expected);
    return this.write(key, change(this.live(key)));
  }

  async delete(key: string, expected: Expectation, access: Access): Promise<ContextRecord | undefined> {
    this.enter(access);
    await Promise.resolve();
    this.check(key, expected);
    const current = this.live(key);
    if (current === undefined) return undefined;
    this.records.delete(key);
    return { ...current, value: Buffer.alloc(0), version: makeVersion(this.hlc.tick(), 'test'), tombstone: true };
  }

  async list(prefix: string, after: string | undefined, limit: number, access: Access): Promise<ListPage> {
    this.enter(access);
    await Promise.resolve();
    const keys = [...this.records.keys()]
      .filter((k) => k.startsWith(prefix) && (after === undefined || k > after) && this.live(k) !== undefined)
      .sort();
    const page = keys.slice(0, limit);
    return keys.length > limit ? { keys: page, next: page[page.length - 1]! } : { keys: page };
  }

  stats(): StoreStats {
    return STATS;
  }

  private enter(access: Access): void {
    this.accesses.push(access);
    if (access.session) this.hlc.observe(access.session);
    if (this.failNext !== undefined) {
      const err = this.failNext;
      this.failNext = undefined;
      throw err;
    }
  }

  private live(key: string): ContextRecord | undefined {
    const record = this.records.get(key);
    if (record && isExpired(record, this.now())) {
      this.records.delete(key);
      return undefined;
    }
    return record;
  }

  private check(key: string, expected: Expectation): void {
    if (!satisfies(expected, this.live(key)?.version)) throw new MeshError('precondition_failed');
  }

  private write(key: string, mutation: Mutation): ContextRecord {
    const now = this.now();
    const record: ContextRecord = {
      key,
      value: mutation.value,
      contentType: mutation.contentType,
      version: makeVersion(this.hlc.tick(), 'test'),
      expiresAt: mutation.ttlMs === undefined ? 0 : now + mutation.ttlMs,
      retention: mutation.retention,
      updatedAt: now,
    };
    this.records.set(key, record);
    return record;
  }
}

interface Api {
  base: string;
  port: number;
  store: FakeStore;
  clock: TestClock;
  requests: Array<{ op: ContextApiOp; consistency: Consistency; status: number }>;
  internalErrors: unknown[];
  close(): Promise<void>;
}

async function startApi(context: Record<string, unknown> = {}): Promise<Api> {
  const clock = testClock();
  const store = new FakeStore(clock.now);
  const requests: Api['requests'] = [];
  const internalErrors: unknown[] = [];
  const config: ContextConfig = SidecarConfigSchema.shape.context.parse({ port: 0, maxValueBytes: MAX_VALUE_BYTES, ...context });
  const server = createContextApiServer({
    store,
    config,
    limits: SidecarConfigSchema.shape.limits.parse({}),
    defaultConsistency: 'session',
    now: clock.now,
    onRequest: (op, consistency, status) => requests.push({ op, consistency, status }),
    onInternalError: (err) => internalErrors.push(err),
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    base: `http://127.0.0.1:${port}`,
    port,
    store,
    clock,
    requests,
    internalErrors,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  text: string;
}

async function call(
  api: Api,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string | Buffer | Readable } = {},
): Promise<Reply> {
  const res = await request(`${api.base}${path}`, {
    method: (options.method ?? 'GET') as 'GET',
    headers: options.headers,
    body: options.body,
  });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body, text: body.toString() };
}

function json(reply: Reply): unknown {
  return JSON.parse(reply.text);
}

function errorOf(reply: Reply): { error: string; message: string } {
  expect(reply.headers['x-ctxmesh-error']).toBeDefined();
  return JSON.parse(reply.text) as { error: string; message: string };
}

async function put(api: Api, key: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return call(api, `/v1/contexts/${key}`, { method: 'PUT', headers, body });
}

/** Sends `parts` as the socket accepts them, stopping once the server answers; resolves with what it sent back. */
function raw(port: number, parts: Array<string | Buffer>): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = '';
    const socket = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`raw exchange did not settle (received ${JSON.stringify(received.slice(0, 200))})`));
    }, RAW_TIMEOUT_MS);
    const writeNext = (i: number): void => {
      if (i >= parts.length || received !== '' || socket.destroyed) return;
      socket.write(parts[i]!, () => setImmediate(() => writeNext(i + 1)));
    };
    socket.once('connect', () => writeNext(0));
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    // The server may reset a connection whose body it refused; what it sent before still counts.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(received);
    });
  });
}

describe('context API', () => {
  let api: Api;

  beforeAll(async () => {
    api = await startApi({ maxTtl: '1h' });
  });
  afterAll(() => api.close());
  beforeEach(() => {
    api.store.records.clear();
    api.store.read = { stale: false, tier: 'l1' };
    api.requests.length = 0;
  });

  describe('PUT and GET', () => {
    it('stores any bytes with their content type and serves them back with the ETag', async () => {
      const value = Buffer.from([0, 1, 2, 255, 254, 10, 13]);
      const written = await put(api, 'acme/s1', value, { 'content-type': 'image/x-test' });
      expect(written.status).toBe(204);
      expect(written.headers.etag).toBe(etagOf(api.store.records.get('acme/s1')!.version));
      expect(written.headers['ctxmesh-consistency']).toBe('session');

      const read = await call(api, '/v1/contexts/acme/s1');
      expect(read.status).toBe(200);
      expect(read.body.equals(value)).toBe(true);
      expect(read.headers['content-type']).toBe('image/x-test');
      expect(read.headers['content-length']).toBe(String(value.length));
      expect(read.headers.etag).toBe(written.headers.etag);
      expect(read.headers['ctxmesh-tier']).toBe('l1');
      expect(read.headers['ctxmesh-ttl']).toBeUndefined();
      expect(read.headers['ctxmesh-retention']).toBeUndefined();
      expect(read.headers['ctxmesh-stale']).toBeUndefined();
    });

    it('defaults the content type to application/octet-stream, and takes an empty body', async () => {
      expect((await put(api, 'acme/empty', '')).status).toBe(204);
      const read = await call(api, '/v1/contexts/acme/empty');
      expect(read.status).toBe(200);
      expect(read.headers['content-type']).toBe('application/octet-stream');
      expect(read.body.length).toBe(0);
    });

    it('a second PUT replaces the value with a new version', async () => {
      const first = await put(api, 'acme/s1', 'one');
      const second = await put(api, 'acme/s1', 'two');
      expect(second.headers.etag).not.toBe(first.headers.etag);
      expect((await call(api, '/v1/contexts/acme/s1')).text).toBe('two');
    });

    it('HEAD answers the same headers without a body', async () => {
      await put(api, 'acme/s1', 'hello', { 'content-type': 'text/plain', 'ctxmesh-ttl': '30s' });
      const get = await call(api, '/v1/contexts/acme/s1');
      const head = await call(api, '/v1/contexts/acme/s1', { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.body.length).toBe(0);
      for (const name of ['content-type', 'content-length', 'etag', 'ctxmesh-ttl', 'ctxmesh-tier', 'ctxmesh-session']) {
        expect(head.headers[name], name).toBe(get.headers[name]);
      }
      expect(api.requests.at(-1)).toEqual({ op: 'head', consistency: 'session', status: 200 });
    });

    it('404 not_found for a missing context, on GET and HEAD', async () => {
      const missing = await call(api, '/v1/contexts/acme/nothing');
      expect(missing.status).toBe(404);
      expect(errorOf(missing).error).toBe('not_found');
      expect((await call(api, '/v1/contexts/acme/nothing', { method: 'HEAD' })).status).toBe(404);
    });

    it('percent-encoded keys name the same context as their decoded form', async () => {
      await put(api, 'acme/user%3A42', 'x');
      expect(api.store.records.has('acme/user:42')).toBe(true);
      expect((await call(api, '/v1/contexts/acme/user:42')).text).toBe('x');
    });

    it('reports a stale read and the tier it came from', async () => {
      await put(api, 'acme/s1', 'v');
      api.store.read = { stale: true, tier: 'queue' };
      const read = await call(api, '/v1/contexts/acme/s1');
      expect(read.status).toBe(200);
      expect(read.headers['ctxmesh-stale']).toBe('true');
      expect(read.headers.warning).toBe('110 - "Response is Stale"');
      expect(read.headers['ctxmesh-tier']).toBe('queue');
    });
  });

  describe('If-None-Match on reads', () => {
    it('304 for the current ETag (also weak, in a list, or *), 200 for another', async () => {
      const { headers } = await put(api, 'acme/s1', 'v');
      const etag = headers.etag as string;
      for (const inm of [etag, `W/${etag}`, `"other", ${etag}`, '*']) {
        const reply = await call(api, '/v1/contexts/acme/s1', { headers: { 'if-none-match': inm } });
        expect(reply.status, inm).toBe(304);
        expect(reply.headers.etag).toBe(etag);
        expect(reply.body.length).toBe(0);
      }
      const changed = await call(api, '/v1/contexts/acme/s1', { headers: { 'if-none-match': '"older@test"' } });
      expect(changed.status).toBe(200);
      expect(changed.text).toBe('v');
    });
  });

  describe('conditional writes', () => {
    it('If-Match: the current ETag writes, any other is 412 precondition_failed', async () => {
      const first = await put(api, 'acme/s1', 'one');
      const etag = first.headers.etag as string;
      const ok = await put(api, 'acme/s1', 'two', { 'if-match': etag });
      expect(ok.status).toBe(204);
      const stale = await put(api, 'acme/s1', 'three', { 'if-match': etag });
      expect(stale.status).toBe(412);
      expect(errorOf(stale).error).toBe('precondition_failed');
      expect((await put(api, 'acme/s1', 'four', { 'if-match': `"nope", ${ok.headers.etag as string}` })).status).toBe(204);
      expect((await call(api, '/v1/contexts/acme/s1')).text).toBe('four');
    });

    it('a weak tag never satisfies If-Match', async () => {
      const { headers } = await put(api, 'acme/s1', 'one');
      expect((await put(api, 'acme/s1', 'two', { 'if-match': `W/${headers.etag as string}` })).status).toBe(412);
    });

    it('If-Match: * needs the context to exist; If-None-Match: * needs it absent', async () => {
      expect((await put(api, 'acme/s1', 'x', { 'if-match': '*' })).status).toBe(412);
      expect((await put(api, 'acme/s1', 'x', { 'if-none-match': '*' })).status).toBe(204);
      expect((await put(api, 'acme/s1', 'y', { 'if-none-match': '*' })).status).toBe(412);
      expect((await put(api, 'acme/s1', 'y', { 'if-match': '*' })).status).toBe(204);
    });

    it('400 for a malformed If-Match, for both headers at once, and for If-None-Match with tags', async () => {
      for (const headers of <Array<Record<string, string>>>[
        { 'if-match': 'v1' },
        { 'if-match': '"v1' },
        { 'if-match': '"v1" "v2"' },
        { 'if-match': '*, "v1"' },
        { 'if-match': '"a", "b' },
        { 'if-match': '*', 'if-none-match': '*' },
        { 'if-none-match': '"v1"' },
      ]) {
        const reply = await put(api, 'acme/s1', 'x', headers);
        expect(reply.status, JSON.stringify(headers)).toBe(400);
        expect(errorOf(reply).error).toBe('bad_request');
      }
      expect(api.store.records.size).toBe(0);
    });

    it('DELETE and PATCH honour If-Match too', async () => {
      const { headers } = await put(api, 'acme/s1', '{}', { 'content-type': 'application/json' });
      const patch = { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json', 'if-match': '"old@test"' }, body: '{"a":1}' };
      expect((await call(api, '/v1/contexts/acme/s1', patch)).status).toBe(412);
      expect((await call(api, '/v1/contexts/acme/s1', { method: 'DELETE', headers: { 'if-match': '"old@test"' } })).status).toBe(412);
      expect((await call(api, '/v1/contexts/acme/s1', { method: 'DELETE', headers: { 'if-match': headers.etag as string } })).status).toBe(204);
    });

    it('concurrent writers with the same If-Match: exactly one wins, the rest get 412', async () => {
      const WRITERS = 16;
      await put(api, 'acme/race', 'start');
      const etags = await Promise.all(Array.from({ length: WRITERS }, () => call(api, '/v1/contexts/acme/race').then((r) => r.headers.etag as string)));
      expect(new Set(etags).size).toBe(1);
      const results = await Promise.all(etags.map((etag, i) => put(api, 'acme/race', `writer-${i}`, { 'if-match': etag })));
      const statuses = results.map((r) => r.status).sort();
      expect(statuses.filter((s) => s === 204)).toHaveLength(1);
      expect(statuses.filter((s) => s === 412)).toHaveLength(WRITERS - 1);
      const winner = results.findIndex((r) => r.status === 204);
      expect((await call(api, '/v1/contexts/acme/race')).text).toBe(`writer-${winner}`);
    });
  });

  describe('body size', () => {
    it('takes a value of exactly maxValueBytes', async () => {
      expect((await put(api, 'acme/full', Buffer.alloc(MAX_VALUE_BYTES, 7))).status).toBe(204);
    });

    it('413 by declared Content-Length, before the body is read, and closes the connection', async () => {
      const reply = await put(api, 'acme/big', Buffer.alloc(MAX_VALUE_BYTES + 1, 7));
      expect(reply.status).toBe(413);
      expect(errorOf(reply).error).toBe('payload_too_large');
      expect(reply.headers.connection).toBe('close');
      expect(api.store.records.has('acme/big')).toBe(false);
    });

    it('413 while a chunked body streams past the limit', async () => {
      const chunk = Buffer.alloc(1024, 0x61);
      const chunked = Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]);
      const answer = await raw(api.port, [
        'PUT /v1/contexts/acme/big HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n',
        ...Array.from({ length: 16 }, () => chunked),
        '0\r\n\r\n',
      ]);
      expect(answer).toMatch(/^HTTP\/1\.1 413 /);
      expect(answer).toContain('x-ctxmesh-error: payload_too_large');
      expect(api.store.records.has('acme/big')).toBe(false);
    });

    it('a chunked body under the limit is stored whole', async () => {
      const parts = [Buffer.alloc(1000, 1), Buffer.alloc(1000, 2)];
      const reply = await call(api, '/v1/contexts/acme/chunked', { method: 'PUT', body: Readable.from(parts) });
      expect(reply.status).toBe(204);
      expect(api.store.records.get('acme/chunked')!.value.equals(Buffer.concat(parts))).toBe(true);
    });

    it('Expect: 100-continue over the limit is refused without inviting the body', async () => {
      const answer = await raw(api.port, [
        `PUT /v1/contexts/acme/big HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: ${MAX_VALUE_BYTES + 1}\r\n\r\n`,
      ]);
      expect(answer).toMatch(/^HTTP\/1\.1 413 /);
      expect(answer).not.toContain('100 Continue');
    });

    it('Expect: 100-continue within the limit is invited, and the body then stored', async () => {
      const answer = await new Promise<string>((resolve, reject) => {
        let received = '';
        const socket = net.connect(api.port, '127.0.0.1', () => {
          socket.write('PUT /v1/contexts/acme/cont HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\nconnection: close\r\n\r\n');
        });
        socket.on('data', (chunk: Buffer) => {
          // The body goes only once invited.
          if (received === '') socket.write('hello');
          received += chunk.toString('latin1');
        });
        socket.on('error', reject);
        socket.on('close', () => resolve(received));
      });
      expect(answer).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 204 /);
      expect(api.store.records.get('acme/cont')!.value.toString()).toBe('hello');
    });
  });

  describe('PATCH (JSON merge patch)', () => {
    const mergePatch = (body: string, headers: Record<string, string> = {}) => ({
      method: 'PATCH',
      headers: { 'content-type': 'application/merge-patch+json', ...headers },
      body,
    });

    it('merges into the stored document and answers it with its ETag', async () => {
      await put(api, 'acme/doc', '{"a":{"b":1,"c":2},"keep":[1,2]}', { 'content-type': 'application/json; charset=utf-8' });
      const reply = await call(api, '/v1/contexts/acme/doc', mergePatch('{"a":{"c":null,"d":3},"new":true}'));
      expect(reply.status).toBe(200);
      expect(reply.headers['content-type']).toBe('application/json');
      expect(json(reply)).toEqual({ a: { b: 1, d: 3 }, keep: [1, 2], new: true });
      const read = await call(api, '/v1/contexts/acme/doc');
      expect(read.headers.etag).toBe(reply.headers.etag);
      expect(read.headers['content-type']).toBe('application/json');
      expect(json(read)).toEqual(json(reply));
    });

    it('creates the document from {} when absent, and takes application/json too', async () => {
      const reply = await call(api, '/v1/contexts/acme/new', { ...mergePatch('{"a":1,"b":null}'), headers: { 'content-type': 'application/json' } });
      expect(reply.status).toBe(200);
      expect(json(reply)).toEqual({ a: 1 });
    });

    it('applies to any +json type', async () => {
      await put(api, 'acme/doc', '{"a":1}', { 'content-type': 'application/vnd.acme+json' });
      expect(json(await call(api, '/v1/contexts/acme/doc', mergePatch('{"b":2}')))).toEqual({ a: 1, b: 2 });
    });

    it('415 for another content type', async () => {
      for (const type of ['text/plain', 'application/json-patch+json']) {
        const reply = await call(api, '/v1/contexts/acme/doc', { method: 'PATCH', headers: { 'content-type': type }, body: '{}' });
        expect(reply.status, type).toBe(415);
        expect(errorOf(reply).error).toBe('unsupported_media_type');
      }
      expect((await call(api, '/v1/contexts/acme/doc', { method: 'PATCH', body: '{}' })).status).toBe(415);
    });

    it('400 with the parse error for a body that is not JSON', async () => {
      const reply = await call(api, '/v1/contexts/acme/doc', mergePatch('{"a":'));
      expect(reply.status).toBe(400);
      expect(errorOf(reply)).toMatchObject({ error: 'bad_request', message: expect.stringMatching(/merge patch is not JSON: .+/) });
    });

    it('409 not_mergeable when the stored value is not JSON', async () => {
      await put(api, 'acme/bin', 'plain text', { 'content-type': 'text/plain' });
      const reply = await call(api, '/v1/contexts/acme/bin', mergePatch('{"a":1}'));
      expect(reply.status).toBe(409);
      expect(errorOf(reply).error).toBe('not_mergeable');
      await put(api, 'acme/broken', '{nope', { 'content-type': 'application/json' });
      expect((await call(api, '/v1/contexts/acme/broken', mergePatch('{"a":1}'))).status).toBe(409);
      expect((await call(api, '/v1/contexts/acme/bin')).text).toBe('plain text');
    });

    it('keeps the retention and remaining TTL unless the patch says otherwise', async () => {
      await put(api, 'acme/doc', '{}', { 'content-type': 'application/json', 'ctxmesh-ttl': '60s', 'ctxmesh-retention': 'critical' });
      api.clock.advance(20_000);
      await call(api, '/v1/contexts/acme/doc', mergePatch('{"a":1}'));
      let read = await call(api, '/v1/contexts/acme/doc');
      expect(read.headers['ctxmesh-ttl']).toBe('40s');
      expect(read.headers['ctxmesh-retention']).toBe('critical');
      await call(api, '/v1/contexts/acme/doc', mergePatch('{"a":2}', { 'ctxmesh-ttl': '5m', 'ctxmesh-retention': 'normal' }));
      read = await call(api, '/v1/contexts/acme/doc');
      expect(read.headers['ctxmesh-ttl']).toBe('300s');
      expect(read.headers['ctxmesh-retention']).toBeUndefined();
    });

    it('413 when the patched document would be over maxValueBytes; the stored one is kept', async () => {
      await put(api, 'acme/doc', JSON.stringify({ a: 'x'.repeat(3_000) }), { 'content-type': 'application/json' });
      const reply = await call(api, '/v1/contexts/acme/doc', mergePatch(JSON.stringify({ b: 'y'.repeat(2_000) })));
      expect(reply.status).toBe(413);
      expect(errorOf(reply).message).toMatch(/patched context is \d+ bytes/);
      expect(json(await call(api, '/v1/contexts/acme/doc'))).toEqual({ a: 'x'.repeat(3_000) });
    });

    it('413 when the patch body is over maxValueBytes', async () => {
      const reply = await call(api, '/v1/contexts/acme/doc', mergePatch(JSON.stringify({ a: 'x'.repeat(MAX_VALUE_BYTES) })));
      expect(reply.status).toBe(413);
    });
  });

  describe('DELETE', () => {
    it('204, then 404 once nothing is there', async () => {
      await put(api, 'acme/s1', 'v');
      const deleted = await call(api, '/v1/contexts/acme/s1', { method: 'DELETE' });
      expect(deleted.status).toBe(204);
      expect(deleted.headers['ctxmesh-session']).toBeDefined();
      expect((await call(api, '/v1/contexts/acme/s1')).status).toBe(404);
      const again = await call(api, '/v1/contexts/acme/s1', { method: 'DELETE' });
      expect(again.status).toBe(404);
      expect(errorOf(again).error).toBe('not_found');
    });
  });

  describe('TTL and retention headers', () => {
    it('ctxmesh-ttl sets the expiry; GET reports the seconds left, rounded up; then it is gone', async () => {
      await put(api, 'acme/s1', 'v', { 'ctxmesh-ttl': '30s' });
      expect((await call(api, '/v1/contexts/acme/s1')).headers['ctxmesh-ttl']).toBe('30s');
      api.clock.advance(10_500);
      expect((await call(api, '/v1/contexts/acme/s1')).headers['ctxmesh-ttl']).toBe('20s');
      api.clock.advance(19_499);
      expect((await call(api, '/v1/contexts/acme/s1')).headers['ctxmesh-ttl']).toBe('1s');
      api.clock.advance(1);
      expect((await call(api, '/v1/contexts/acme/s1')).status).toBe(404);
    });

    it('takes every duration unit', async () => {
      for (const [ttl, seconds] of [['1500ms', '2s'], ['2m', '120s'], ['1h', '3600s']] as const) {
        await put(api, 'acme/s1', 'v', { 'ctxmesh-ttl': ttl });
        expect((await call(api, '/v1/contexts/acme/s1')).headers['ctxmesh-ttl'], ttl).toBe(seconds);
      }
    });

    it('400 for a TTL that is not a positive duration, or over maxTtl (naming the limit)', async () => {
      for (const ttl of ['0s', '0', '30', '-5s', 'soon', '0.0001s']) {
        const reply = await put(api, 'acme/s1', 'v', { 'ctxmesh-ttl': ttl });
        expect(reply.status, ttl).toBe(400);
        expect(errorOf(reply).error).toBe('bad_request');
      }
      const over = await put(api, 'acme/s1', 'v', { 'ctxmesh-ttl': '2h' });
      expect(over.status).toBe(400);
      expect(errorOf(over).message).toMatch(/exceeds the limit of 3600s \(context\.maxTtl\)/);
      expect(api.store.records.size).toBe(0);
    });

    it('ctxmesh-retention: critical is stored and reported; anything but normal|critical is 400', async () => {
      await put(api, 'acme/s1', 'v', { 'ctxmesh-retention': 'critical' });
      expect(api.store.records.get('acme/s1')!.retention).toBe('critical');
      expect((await call(api, '/v1/contexts/acme/s1')).headers['ctxmesh-retention']).toBe('critical');
      await put(api, 'acme/s1', 'v', { 'ctxmesh-retention': 'normal' });
      expect(api.store.records.get('acme/s1')!.retention).toBe('normal');
      expect((await put(api, 'acme/s1', 'v', { 'ctxmesh-retention': 'forever' })).status).toBe(400);
    });
  });

  describe('consistency and session tokens', () => {
    it('ctxmesh-consistency reaches the store, is echoed, and is counted; the default applies without it', async () => {
      await put(api, 'acme/s1', 'v', { 'ctxmesh-consistency': 'strong' });
      expect(api.store.accesses.at(-1)!.consistency).toBe('strong');
      const read = await call(api, '/v1/contexts/acme/s1', { headers: { 'ctxmesh-consistency': 'eventual' } });
      expect(read.headers['ctxmesh-consistency']).toBe('eventual');
      expect(api.store.accesses.at(-1)!.consistency).toBe('eventual');
      expect((await call(api, '/v1/contexts/acme/s1')).headers['ctxmesh-consistency']).toBe('session');
      expect(api.requests).toEqual([
        { op: 'put', consistency: 'strong', status: 204 },
        { op: 'get', consistency: 'eventual', status: 200 },
        { op: 'get', consistency: 'session', status: 200 },
      ]);
    });

    it('400 for an unknown consistency level or a malformed session token', async () => {
      await put(api, 'acme/s1', 'v');
      expect((await call(api, '/v1/contexts/acme/s1', { headers: { 'ctxmesh-consistency': 'linearizable' } })).status).toBe(400);
      for (const token of ['yesterday', '12', '1.2.3', '-1.0']) {
        const reply = await call(api, '/v1/contexts/acme/s1', { headers: { 'ctxmesh-session': token } });
        expect(reply.status, token).toBe(400);
        expect(errorOf(reply).error).toBe('bad_request');
      }
    });

    it('the session token is the version timestamp, passed to the store, and never goes backwards', async () => {
      const written = await put(api, 'acme/s1', 'v');
      const version = api.store.records.get('acme/s1')!.version;
      const token = written.headers['ctxmesh-session'] as string;
      expect(token).toBe(formatTimestamp(versionTimestamp(version)!));

      // An older token is raised to the version's timestamp.
      const older = await call(api, '/v1/contexts/acme/s1', { headers: { 'ctxmesh-session': '1.0' } });
      expect(older.headers['ctxmesh-session']).toBe(token);
      expect(api.store.accesses.at(-1)!.session).toEqual({ wall: 1, logical: 0 });

      // A newer one (the session saw a write elsewhere) is kept.
      const ahead = `${START_MS + 60_000}.7`;
      const newer = await call(api, '/v1/contexts/acme/s1', { headers: { 'ctxmesh-session': ahead } });
      expect(newer.headers['ctxmesh-session']).toBe(ahead);

      // Echoing the token through a run of writes and reads only ever moves it forward.
      let session = token;
      const seen = [parseTimestamp(session)!];
      for (let i = 0; i < 5; i++) {
        const w = await put(api, `acme/s${i % 2}`, `v${i}`, { 'ctxmesh-session': session });
        session = w.headers['ctxmesh-session'] as string;
        seen.push(parseTimestamp(session)!);
        const r = await call(api, '/v1/contexts/acme/s1', { headers: { 'ctxmesh-session': session } });
        session = r.headers['ctxmesh-session'] as string;
        seen.push(parseTimestamp(session)!);
      }
      for (let i = 1; i < seen.length; i++) {
        const [a, b] = [seen[i - 1]!, seen[i]!];
        expect(b.wall > a.wall || (b.wall === a.wall && b.logical >= a.logical), `${JSON.stringify(a)} → ${JSON.stringify(b)}`).toBe(true);
      }
    });
  });

  describe('listing', () => {
    it('pages through a prefix with an opaque cursor, in byte order, within the prefix only', async () => {
      const keys = ['acme/a', 'acme/b/1', 'acme/b/2', 'acme/c', 'acme/d'];
      for (const key of [...keys, 'acme2/x', 'other/y']) await put(api, key, 'v');
      const pages: string[][] = [];
      let cursor: string | undefined;
      do {
        const reply = await call(api, `/v1/contexts?prefix=acme/&limit=2${cursor ? `&cursor=${cursor}` : ''}`);
        expect(reply.status).toBe(200);
        const body = json(reply) as { keys: string[]; cursor?: string };
        pages.push(body.keys);
        cursor = body.cursor;
      } while (cursor !== undefined);
      expect(pages).toEqual([['acme/a', 'acme/b/1'], ['acme/b/2', 'acme/c'], ['acme/d']]);
      expect(api.requests.at(-1)).toMatchObject({ op: 'list', status: 200 });
    });

    it('a partial segment narrows the listing; the default limit is 100', async () => {
      for (let i = 0; i < 105; i++) await put(api, `acme/sess-${String(i).padStart(3, '0')}`, 'v');
      await put(api, 'acme/other', 'v');
      const first = json(await call(api, '/v1/contexts?prefix=acme/sess')) as { keys: string[]; cursor?: string };
      expect(first.keys).toHaveLength(100);
      expect(first.cursor).toBeDefined();
      const rest = json(await call(api, `/v1/contexts?prefix=acme/sess&cursor=${first.cursor!}`)) as { keys: string[]; cursor?: string };
      expect(rest.keys).toEqual(['acme/sess-100', 'acme/sess-101', 'acme/sess-102', 'acme/sess-103', 'acme/sess-104']);
      expect(rest.cursor).toBeUndefined();
    });

    it('an empty prefix listing is an empty page', async () => {
      expect(json(await call(api, '/v1/contexts?prefix=nobody/'))).toEqual({ keys: [] });
    });

    it('400 invalid_key for a prefix without the tenant and "/"; 400 for a bad limit or a foreign cursor', async () => {
      for (const query of ['', '?prefix=acme', '?prefix=_mesh/', '?prefix=', '?limit=5']) {
        const reply = await call(api, `/v1/contexts${query}`);
        expect(reply.status, query).toBe(400);
        expect(errorOf(reply).error).toBe('invalid_key');
      }
      for (const query of ['limit=0', 'limit=1001', 'limit=abc', 'limit=', 'limit=1.5', `cursor=${Buffer.from('other/x').toString('base64url')}`]) {
        const reply = await call(api, `/v1/contexts?prefix=acme/&${query}`);
        expect(reply.status, query).toBe(400);
        expect(errorOf(reply).error).toBe('bad_request');
      }
    });
  });

  describe('bulk-get', () => {
    const bulk = (body: unknown, type = 'application/json') => ({
      method: 'POST',
      headers: { 'content-type': type },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });

    it('answers every key in order: JSON values parsed, other bytes in base64, missing ones not found', async () => {
      await put(api, 'acme/json', '{"turns":[1,2]}', { 'content-type': 'application/json' });
      await put(api, 'acme/bin', Buffer.from([0, 255]), { 'content-type': 'application/octet-stream' });
      await put(api, 'beta/x', '"hi"', { 'content-type': 'application/ld+json' });
      const reply = await call(api, '/v1/bulk-get', bulk({ keys: ['acme/json', 'acme/missing', 'acme/bin', 'beta/x'] }));
      expect(reply.status).toBe(200);
      const records = api.store.records;
      expect(json(reply)).toEqual({
        items: [
          { key: 'acme/json', found: true, version: records.get('acme/json')!.version, contentType: 'application/json', value: { turns: [1, 2] } },
          { key: 'acme/missing', found: false },
          { key: 'acme/bin', found: true, version: records.get('acme/bin')!.version, contentType: 'application/octet-stream', valueBase64: 'AP8=' },
          { key: 'beta/x', found: true, version: records.get('beta/x')!.version, contentType: 'application/ld+json', value: 'hi' },
        ],
      });
      // The session token covers the newest version read.
      expect(reply.headers['ctxmesh-session']).toBe(formatTimestamp(versionTimestamp(records.get('beta/x')!.version)!));
      expect(api.requests.at(-1)).toMatchObject({ op: 'bulk_get', status: 200 });
    });

    it('marks stale items', async () => {
      await put(api, 'acme/s1', 'v');
      api.store.read = { stale: true, tier: 'l1' };
      const body = json(await call(api, '/v1/bulk-get', bulk({ keys: ['acme/s1'] }))) as { items: Array<{ stale?: boolean }> };
      expect(body.items[0]!.stale).toBe(true);
    });

    it('400 invalid_key naming the bad key; 400 for more than 1000 keys or a malformed body; 415 for non-JSON', async () => {
      const badKey = await call(api, '/v1/bulk-get', bulk({ keys: ['acme/ok', 'nosession'] }));
      expect(badKey.status).toBe(400);
      expect(errorOf(badKey)).toMatchObject({ error: 'invalid_key', message: expect.stringContaining('"nosession"') });
      expect((await call(api, '/v1/bulk-get', bulk({ keys: ['acme/ok', 42] }))).status).toBe(400);
      const tooMany = await call(api, '/v1/bulk-get', bulk({ keys: Array.from({ length: 1001 }, (_, i) => `acme/k${i}`) }));
      expect(tooMany.status).toBe(400);
      expect(errorOf(tooMany).message).toMatch(/at most 1000/);
      expect((await call(api, '/v1/bulk-get', bulk({ keys: Array.from({ length: 1000 }, (_, i) => `acme/k${i}`) }))).status).toBe(200);
      for (const body of ['{"keys":', '[]', '{"keys":"acme/x"}', 'null']) {
        expect((await call(api, '/v1/bulk-get', bulk(body))).status, body).toBe(400);
      }
      expect((await call(api, '/v1/bulk-get', bulk({ keys: [] }, 'text/plain'))).status).toBe(415);
    });
  });

  describe('stats, routing and errors', () => {
    it('GET /v1/stats answers the store stats as JSON', async () => {
      const reply = await call(api, '/v1/stats');
      expect(reply.status).toBe(200);
      expect(reply.headers['content-type']).toBe('application/json');
      expect(json(reply)).toEqual(STATS);
    });

    it('400 invalid_key with the reason for a bad key', async () => {
      for (const [path, reason] of [
        ['/v1/contexts/acme', /two segments/],
        ['/v1/contexts/', /empty/],
        ['/v1/contexts/_mesh/x', /reserved/],
        ['/v1/contexts/acme//x', /empty segment/],
        ['/v1/contexts/acme/%zz', /percent-encoding/],
        ['/v1/contexts/acme/a%20b', /character " "/],
        [`/v1/contexts/acme/${'x'.repeat(600)}`, /longer than 512 bytes/],
      ] as const) {
        const reply = await call(api, path);
        expect(reply.status, path).toBe(400);
        expect(errorOf(reply)).toMatchObject({ error: 'invalid_key', message: expect.stringMatching(reason) });
      }
    });

    it('404 for an unknown path; 405 with Allow for a wrong method', async () => {
      for (const path of ['/', '/v1', '/v1/context/acme/x', '/v2/contexts/acme/x', '/v1/stats/x']) {
        const reply = await call(api, path);
        expect(reply.status, path).toBe(404);
        expect(errorOf(reply).error).toBe('not_found');
      }
      for (const [method, path, allow] of [
        ['POST', '/v1/contexts/acme/x', 'GET, HEAD, PUT, PATCH, DELETE'],
        ['PUT', '/v1/contexts', 'GET, HEAD'],
        ['GET', '/v1/bulk-get', 'POST'],
        ['DELETE', '/v1/stats', 'GET, HEAD'],
      ] as const) {
        const reply = await call(api, path, { method });
        expect(reply.status, `${method} ${path}`).toBe(405);
        expect(reply.headers.allow).toBe(allow);
        expect(errorOf(reply).error).toBe('method_not_allowed');
      }
    });

    it('store MeshErrors go through the error table; anything else is 500 internal and the API keeps serving', async () => {
      api.store.failNext = new MeshError('l2_unavailable');
      const unavailable = await call(api, '/v1/contexts/acme/s1');
      expect(unavailable.status).toBe(503);
      expect(errorOf(unavailable).error).toBe('l2_unavailable');

      api.store.failNext = new MeshError('write_queue_full', undefined, { retryAfter: 2 });
      const full = await put(api, 'acme/s1', 'v');
      expect(full.status).toBe(503);
      expect(full.headers['retry-after']).toBe('2');

      const bug = new TypeError('boom');
      api.store.failNext = bug;
      const internal = await call(api, '/v1/contexts/acme/s1');
      expect(internal.status).toBe(500);
      expect(errorOf(internal)).toEqual({ error: 'internal', message: 'internal error' });
      expect(api.internalErrors).toContain(bug);

      expect((await put(api, 'acme/s1', 'v')).status).toBe(204);
    });

    it('a malformed request head is answered with 400 and counted', async () => {
      const answer = await raw(api.port, ['NOT HTTP AT ALL\r\n\r\n']);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toContain('x-ctxmesh-error: bad_request');
      expect(api.requests.at(-1)).toEqual({ op: 'other', consistency: 'session', status: 400 });
    });
  });
});

describe('context API with requireConditions', () => {
  let api: Api;
  beforeAll(async () => {
    api = await startApi({ requireConditions: true, defaultTtl: '10m' });
  });
  afterAll(() => api.close());

  it('428 precondition_required for writes without If-Match or If-None-Match; conditional writes go through', async () => {
    const unconditional = await put(api, 'acme/s1', 'v');
    expect(unconditional.status).toBe(428);
    expect(errorOf(unconditional).error).toBe('precondition_required');
    const patch = { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: '{}' };
    expect((await call(api, '/v1/contexts/acme/s1', patch)).status).toBe(428);
    expect((await call(api, '/v1/contexts/acme/s1', { method: 'DELETE' })).status).toBe(428);

    const created = await put(api, 'acme/s1', '{}', { 'if-none-match': '*', 'content-type': 'application/json' });
    expect(created.status).toBe(204);
    const patched = await call(api, '/v1/contexts/acme/s1', { ...patch, headers: { ...patch.headers, 'if-match': created.headers.etag as string } });
    expect(patched.status).toBe(200);
    expect((await call(api, '/v1/contexts/acme/s1', { method: 'DELETE', headers: { 'if-match': '*' } })).status).toBe(204);
  });

  it('reads need no condition', async () => {
    expect((await call(api, '/v1/contexts/acme/none')).status).toBe(404);
  });

  it('a write without ctxmesh-ttl gets defaultTtl', async () => {
    await put(api, 'acme/ttl', 'v', { 'if-none-match': '*' });
    expect((await call(api, '/v1/contexts/acme/ttl')).headers['ctxmesh-ttl']).toBe('600s');
  });
});

describe('context API rate limit', () => {
  let api: Api;
  beforeAll(async () => {
    api = await startApi({ rateLimit: { requestsPerSecond: 1, burst: 2 } });
  });
  afterAll(() => api.close());

  it('429 rate_limited with Retry-After once a tenant spends its burst; other tenants are unaffected; time refills it', async () => {
    expect((await call(api, '/v1/contexts/acme/s1')).status).toBe(404);
    expect((await put(api, 'acme/s1', 'v')).status).toBe(204);
    const limited = await call(api, '/v1/contexts/acme/s1');
    expect(limited.status).toBe(429);
    expect(errorOf(limited).error).toBe('rate_limited');
    expect(limited.headers['retry-after']).toBe('1');

    expect((await call(api, '/v1/contexts/beta/s1')).status).toBe(404);
    // Listing and bulk reads are charged to the tenant they read.
    expect((await call(api, '/v1/contexts?prefix=acme/')).status).toBe(429);
    const bulk = { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ keys: ['acme/s1'] }) };
    expect((await call(api, '/v1/bulk-get', bulk)).status).toBe(429);

    api.clock.advance(1_000);
    const after = await call(api, '/v1/contexts/acme/s1');
    expect(after.status).toBe(200);
    expect(after.text).toBe('v');
  });

  it('stats are not charged to any tenant', async () => {
    for (let i = 0; i < 5; i++) expect((await call(api, '/v1/stats')).status).toBe(200);
  });
});
