// L2 on Redis: a single server, a Sentinel group or a Cluster, chosen by the url alone.
//
// Layout, for key `tenant/rest` under keyPrefix P:
//   P{tenant}/rest     the envelope (record.ts), expiring at PXAT expiresAt
//   Pidx:{tenant}      sorted set of the tenant's keys, all at score 0, for lexicographic ranges
//   Pinvalidate        pub/sub channel; message `<instanceId> <key>` after every write
// The `{tenant}` hash tag puts a tenant's data keys and its index in one Cluster slot, so one script
// can check, write, index and publish atomically in every topology.
//
// Failure policy: fail fast. No offline queue, no retries per request, a command timeout: a caller
// gets MeshError l2_unavailable at once and decides (serve stale, queue, 503). Reconnection runs in
// the background with exponential backoff and full jitter.
import { EventEmitter } from 'node:events';
import { Cluster, type ChainableCommander, type Redis, type Result } from 'ioredis';
import { MeshError } from '../../errors/table.js';
import type { Logger } from '../../telemetry/logger.js';
import { decodeRecord, encodeRecord, isExpired, type ContextRecord } from '../record.js';
import type { Version } from '../version.js';
import { ANY, type Expectation, type L2Tier, type ListPage, type WriteOutcome } from './l2.js';
import { connectCommands, connectSubscriber, knownMasters } from './redis-connect.js';
import { parseRedisUrl, redact, type ParsedRedisUrl } from './redis-url.js';

export interface RedisL2Options {
  url: string;
  keyPrefix: string;
  /** ms a command may take before it fails with l2_unavailable. */
  commandTimeout: number;
  /** ms allowed to connect; also how long `ready()` waits. */
  connectTimeout: number;
  /** ms: first reconnect delay bound, doubled per attempt. */
  reconnectBase: number;
  /** ms: largest reconnect delay bound. */
  reconnectMax: number;
  /** Tags this process's invalidations so that it ignores its own. Must not contain a space. */
  instanceId: string;
  logger?: Logger;
  /** [0, 1): the jitter source; tests inject it. */
  random?: () => number;
}

/** ms `close()` waits for QUIT before dropping the sockets. */
const QUIT_TIMEOUT_MS = 250;

// KEYS: data key, index key.
// ARGV: channel, message, index member (the key), op ('set' | 'del'), pxat ms (0 = none), envelope,
//       expectation ('any' | 'absent' | 'present' | 'version'), versions…
// Returns {1} when written, {0} when the condition failed and the key is absent, {0, version} when
// it failed against a present key. Tables, never Lua booleans: a boolean turns into a RESP3
// boolean on a RESP3 connection but a nil on RESP2, and ioredis may speak either.
const WRITE_LUA = `
local current = redis.call('GET', KEYS[1])
local version = nil
if current then
  -- A value that is not an envelope still exists: it counts as present with an unknown version.
  version = string.match(current, '^CTX1 ([^\\n]+)\\n') or ''
end
local kind = ARGV[7]
local ok
if kind == 'any' then
  ok = true
elseif kind == 'absent' then
  ok = version == nil
elseif kind == 'present' then
  ok = version ~= nil
else
  ok = false
  if version ~= nil then
    for i = 8, #ARGV do
      if ARGV[i] == version then ok = true break end
    end
  end
end
if not ok then
  if version == nil then return {0} end
  return {0, version}
end
if ARGV[4] == 'del' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  if ARGV[5] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[6], 'PXAT', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[6])
  end
  redis.call('ZADD', KEYS[2], 0, ARGV[3])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {1}
`;

// KEYS: index key. ARGV: min, max (ZRANGEBYLEX bounds), limit, data key prefix `P{tenant}`,
// tenant length in bytes. Returns up to limit + 1 live keys (the extra one says "more").
// Index entries outlive keys that expired (Redis cannot ZREM on expiry), so each member's data key
// is checked and the dead ones removed. Those data keys are not declared in KEYS: they are only
// known here, and they share the index's hash slot, which is all Cluster needs.
const LIST_LUA = `
local want = tonumber(ARGV[3]) + 1
local min = ARGV[1]
local out = {}
local dataPrefix = ARGV[4]
local skip = tonumber(ARGV[5]) + 1
while #out < want do
  local members = redis.call('ZRANGEBYLEX', KEYS[1], min, ARGV[2], 'LIMIT', 0, want - #out)
  if #members == 0 then break end
  for _, member in ipairs(members) do
    if redis.call('EXISTS', dataPrefix .. string.sub(member, skip)) == 1 then
      out[#out + 1] = member
    else
      redis.call('ZREM', KEYS[1], member)
    end
  end
  min = '(' .. members[#members]
end
return out
`;

declare module 'ioredis' {
  interface RedisCommander<Context> {
    ctxmeshWrite(dataKey: string, indexKey: string, ...args: Array<string | Buffer>): Result<[0 | 1, string?], Context>;
    ctxmeshList(indexKey: string, min: Buffer, max: Buffer, limit: number, dataPrefix: string, tenantBytes: number): Result<string[], Context>;
  }
}

const SCRIPTS = {
  ctxmeshWrite: { numberOfKeys: 2, lua: WRITE_LUA },
  ctxmeshList: { numberOfKeys: 1, lua: LIST_LUA },
} as const;

const WRITTEN: WriteOutcome = Object.freeze({ ok: true });
const LEX_MAX_BYTE = Buffer.from([0xff]);

export class RedisL2 extends EventEmitter implements L2Tier {
  readonly kind = 'redis';
  private readonly parsed: ParsedRedisUrl;
  private readonly client: Redis | Cluster;
  private readonly subscriber: Redis;
  private readonly prefix: string;
  private readonly channel: string;
  private readonly ownTag: string;
  private readonly where: string;
  private readonly random: () => number;
  private linkUp = false;
  private closed = false;
  private lastError: string | undefined;

  constructor(private readonly options: RedisL2Options) {
    super();
    if (options.instanceId.includes(' ')) throw new Error(`RedisL2: instanceId "${options.instanceId}" must not contain a space`);
    // A brace in the prefix would become the hash tag and scatter a tenant over several slots.
    if (/[{}]/.test(options.keyPrefix)) throw new Error(`RedisL2: keyPrefix "${options.keyPrefix}" must not contain { or }`);
    this.parsed = parseRedisUrl(options.url);
    this.prefix = options.keyPrefix;
    this.channel = `${options.keyPrefix}invalidate`;
    this.ownTag = `${options.instanceId} `;
    this.where = `Redis ${redact(options.url)}`;
    this.random = options.random ?? Math.random;
    this.client = this.createClient();
    this.subscriber = this.createSubscriber();
  }

  /** The command connection is ready. */
  get available(): boolean {
    return !this.closed && this.client.status === 'ready';
  }

  /** The invalidation subscription is active. */
  get coherent(): boolean {
    return this.linkUp;
  }

  ready(): Promise<void> {
    if (this.available && this.linkUp) return Promise.resolve();
    if (this.closed) return Promise.reject(new MeshError('l2_unavailable', `${this.where}: closed`));
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!this.available || !this.linkUp) return;
        done();
        resolve();
      };
      const timer = setTimeout(() => {
        done();
        const why = this.lastError ? `: ${this.lastError}` : '';
        reject(new MeshError('l2_unavailable', `${this.where}: not ready within ${this.options.connectTimeout}ms${why}`));
      }, this.options.connectTimeout);
      const done = (): void => {
        clearTimeout(timer);
        this.client.off('ready', check);
        this.off('link', check);
      };
      this.client.on('ready', check);
      this.on('link', check);
    });
  }

  async get(key: string): Promise<ContextRecord | undefined> {
    const dataKey = this.dataKey(key);
    let bytes: Buffer | null;
    try {
      bytes = await this.client.getBuffer(dataKey);
    } catch (err) {
      throw this.unavailable(err);
    }
    return bytes === null ? undefined : this.decode(key, bytes, Date.now());
  }

  async getMany(keys: readonly string[]): Promise<Array<ContextRecord | undefined>> {
    if (keys.length === 0) return [];
    const dataKeys = keys.map((k) => this.dataKey(k));
    let values: Array<Buffer | null>;
    try {
      values = this.client instanceof Cluster ? await this.mgetPerSlot(this.client, keys, dataKeys) : await this.client.mgetBuffer(dataKeys);
    } catch (err) {
      throw this.unavailable(err);
    }
    const now = Date.now();
    return values.map((bytes, i) => (bytes === null ? undefined : this.decode(keys[i]!, bytes, now)));
  }

  async write(record: ContextRecord, expected: Expectation): Promise<WriteOutcome> {
    const args = this.writeArgs(record, expected);
    let reply: [0 | 1, string?];
    try {
      reply = await this.client.ctxmeshWrite(...args);
    } catch (err) {
      throw this.unavailable(err);
    }
    return reply[0] === 1 ? WRITTEN : { ok: false, current: reply[1] as Version | undefined };
  }

  async writeBatch(records: readonly ContextRecord[]): Promise<void> {
    if (records.length === 0) return;
    try {
      if (this.client instanceof Cluster) {
        // A pipeline goes to one node, and slots move between nodes, so the batch is split per
        // tenant (one hash slot each). A key's writes stay in one pipeline, so in order; pipelines
        // of different tenants touch disjoint keys and may run side by side.
        const perTenant = new Map<string, ContextRecord[]>();
        for (const record of records) {
          const tenant = tenantOf(record.key);
          const group = perTenant.get(tenant);
          if (group) group.push(record);
          else perTenant.set(tenant, [record]);
        }
        await Promise.all(Array.from(perTenant.values(), (group) => this.execWrites(this.client.pipeline(), group)));
      } else {
        await this.execWrites(this.client.pipeline(), records);
      }
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  async list(prefix: string, after: string | undefined, limit: number): Promise<ListPage> {
    if (prefix === '') return this.listEveryTenant(after, limit);
    const slash = prefix.indexOf('/');
    if (slash <= 0) throw new MeshError('bad_request', `list prefix "${prefix}" must start with the tenant: <tenant>/…`);
    if (!Number.isInteger(limit) || limit < 1) throw new MeshError('bad_request', `list limit ${limit} must be a positive integer`);
    const tenant = prefix.slice(0, slash);
    const prefixBytes = Buffer.from(prefix);
    // Byte order, as ZRANGEBYLEX compares: `after` before the prefix means "from the start".
    const afterBytes = after === undefined ? undefined : Buffer.from(after);
    const min =
      afterBytes !== undefined && Buffer.compare(afterBytes, prefixBytes) >= 0
        ? Buffer.concat([OPEN_BOUND, afterBytes])
        : Buffer.concat([CLOSED_BOUND, prefixBytes]);
    // 0xff never occurs in UTF-8, so `prefix` + 0xff sorts after every key that starts with it.
    const max = Buffer.concat([CLOSED_BOUND, prefixBytes, LEX_MAX_BYTE]);
    let keys: string[];
    try {
      keys = await this.client.ctxmeshList(
        `${this.prefix}idx:{${tenant}}`,
        min,
        max,
        limit,
        `${this.prefix}{${tenant}}`,
        Buffer.byteLength(tenant),
      );
    } catch (err) {
      throw this.unavailable(err);
    }
    if (keys.length <= limit) return { keys };
    keys.length = limit;
    return { keys, next: keys[limit - 1]! };
  }

  /**
   * Every key of every tenant (anti-entropy's index, at start). Tenants are visited in the byte
   * order of `<tenant>/`, which is the byte order of their keys, so `after` resumes as in `list`.
   */
  private async listEveryTenant(after: string | undefined, limit: number): Promise<ListPage> {
    const tenants = (await this.tenants()).sort((a, b) => Buffer.compare(Buffer.from(`${a}/`), Buffer.from(`${b}/`)));
    const keys: string[] = [];
    for (const tenant of tenants) {
      const prefix = `${tenant}/`;
      if (after !== undefined && Buffer.compare(Buffer.from(prefix), Buffer.from(after)) < 0 && !after.startsWith(prefix)) continue;
      const page = await this.list(prefix, after, limit - keys.length);
      keys.push(...page.keys);
      if (page.next !== undefined) return { keys, next: page.next };
      if (keys.length === limit) return { keys, next: keys[limit - 1]! };
    }
    return { keys };
  }

  /** The tenants that have an index in Redis, found with SCAN (never KEYS: it blocks Redis). */
  private async tenants(): Promise<string[]> {
    const pattern = `${this.prefix.replace(/[*?[\]\\]/g, '\\$&')}idx:{*}`;
    const found = new Set<string>();
    const start = this.prefix.length + 'idx:{'.length;
    // A Cluster's keys are spread over its masters: each is scanned.
    const servers = this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
    try {
      for (const server of servers) {
        let cursor = '0';
        do {
          const [next, batch] = await server.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
          for (const key of batch) found.add(key.slice(start, -1));
          cursor = next;
        } while (cursor !== '0');
      }
    } catch (err) {
      throw this.unavailable(err);
    }
    return [...found];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Silently: a closing tier has no listener left to act on a link event.
    this.linkUp = false;
    await Promise.all([quitQuickly(this.client), quitQuickly(this.subscriber)]);
  }

  // --- connections ---

  /** Full jitter: uniform in [0, min(max, base * 2^attempt)]; attempt counts from 0. */
  private backoff(times: number): number {
    const { reconnectBase, reconnectMax } = this.options;
    return this.random() * Math.min(reconnectMax, reconnectBase * 2 ** Math.max(0, times - 1));
  }

  private createClient(): Redis | Cluster {
    const client = connectCommands(this.parsed, {
      connectTimeout: this.options.connectTimeout,
      commandTimeout: this.options.commandTimeout,
      backoff: (times) => this.backoff(times),
      connectionName: `ctxmesh:${this.options.instanceId}`,
      scripts: SCRIPTS,
      autoPipelining: true,
    });
    client.on('error', (err: Error) => {
      this.lastError = err.message;
      this.options.logger?.debug({ err: err.message }, 'l2 redis connection error');
    });
    client.on('ready', () => {
      this.lastError = undefined;
      this.options.logger?.info({ l2: this.where }, 'l2 redis ready');
    });
    client.on('close', () => {
      if (!this.closed) this.options.logger?.warn({ l2: this.where, err: this.lastError }, 'l2 redis connection lost');
    });
    return client;
  }

  /**
   * The invalidation link. It subscribes on every `ready` itself so that `link(true)` means the
   * SUBSCRIBE was acknowledged, not merely that a socket opened.
   */
  private createSubscriber(): Redis {
    const sub = connectSubscriber(this.parsed, {
      connectTimeout: this.options.connectTimeout,
      commandTimeout: this.options.commandTimeout,
      backoff: (times) => this.backoff(times),
      connectionName: `ctxmesh:${this.options.instanceId}:sub`,
      nodes: () => knownMasters(this.client),
    });
    sub.on('error', (err: Error) => {
      this.options.logger?.debug({ err: err.message }, 'l2 redis subscriber error');
    });
    sub.on('ready', () => {
      sub.subscribe(this.channel).then(
        () => {
          if (sub.status === 'ready') this.setLink(true);
        },
        (err: Error) => {
          this.options.logger?.warn({ err: err.message }, 'l2 invalidation subscribe failed');
          // Drop the connection so that the next `ready` tries again.
          if (!this.closed) sub.disconnect(true);
        },
      );
    });
    sub.on('close', () => this.setLink(false));
    sub.on('message', (channel: string, message: string) => this.onInvalidation(channel, message));
    return sub;
  }

  private onInvalidation(channel: string, message: string): void {
    if (channel !== this.channel || message.startsWith(this.ownTag)) return;
    const space = message.indexOf(' ');
    if (space < 0) return;
    this.emit('invalidate', message.slice(space + 1));
  }

  private setLink(up: boolean): void {
    if (this.linkUp === up || (up && this.closed)) return;
    this.linkUp = up;
    if (!up && !this.closed) this.options.logger?.warn({ l2: this.where }, 'l2 invalidation link down');
    this.emit('link', up);
  }

  // --- commands ---

  private dataKey(key: string): string {
    const slash = key.indexOf('/');
    const end = slash < 0 ? key.length : slash;
    // `{}` is not a hash tag: the key would hash whole, away from its index.
    if (end === 0) throw new MeshError('invalid_key', `context key "${key}" has an empty tenant`);
    return `${this.prefix}{${key.slice(0, end)}}${key.slice(end)}`;
  }

  private writeArgs(record: ContextRecord, expected: Expectation): Parameters<Redis['ctxmeshWrite']> {
    const { key } = record;
    const tenant = tenantOf(key);
    // A record already past its expiry is a delete, as in the memory tier: SET with a PXAT in the
    // past would also vanish, but would leave an index entry behind.
    const del = record.tombstone === true || isExpired(record, Date.now());
    const args: Parameters<Redis['ctxmeshWrite']> = [
      this.dataKey(key),
      `${this.prefix}idx:{${tenant}}`,
      this.channel,
      this.ownTag + key,
      key,
      del ? 'del' : 'set',
      del ? '0' : String(record.expiresAt),
      del ? '' : encodeRecord(record),
      expected.kind,
    ];
    if (expected.kind === 'version') args.push(...expected.versions);
    return args;
  }

  private async execWrites(pipeline: ChainableCommander, records: readonly ContextRecord[]): Promise<void> {
    for (const record of records) pipeline.ctxmeshWrite(...this.writeArgs(record, ANY));
    const results = await pipeline.exec();
    if (results === null) throw new Error('pipeline discarded');
    for (const [err] of results) if (err) throw err;
  }

  private async mgetPerSlot(cluster: Cluster, keys: readonly string[], dataKeys: string[]): Promise<Array<Buffer | null>> {
    // MGET may not span slots; a tenant's keys share one. Positions are kept to reassemble.
    const perTenant = new Map<string, number[]>();
    for (let i = 0; i < keys.length; i++) {
      const tenant = tenantOf(keys[i]!);
      const group = perTenant.get(tenant);
      if (group) group.push(i);
      else perTenant.set(tenant, [i]);
    }
    const out = new Array<Buffer | null>(keys.length);
    await Promise.all(
      Array.from(perTenant.values(), async (positions) => {
        const values = await cluster.mgetBuffer(positions.map((i) => dataKeys[i]!));
        for (let j = 0; j < positions.length; j++) out[positions[j]!] = values[j] ?? null;
      }),
    );
    return out;
  }

  private decode(key: string, bytes: Buffer, now: number): ContextRecord | undefined {
    let record: ContextRecord;
    try {
      record = decodeRecord(key, bytes);
    } catch (err) {
      // Corrupt data must not pass for a miss: a miss would let a conditional write overwrite it.
      this.options.logger?.error({ key, err: (err as Error).message }, 'l2 holds a value that is not a ctxmesh envelope');
      throw new MeshError('internal', `L2 value of ${key} is corrupt: ${(err as Error).message}`, { cause: err });
    }
    // Redis expires by its own clock; this keeps a skewed one from serving what L1 would refuse.
    return isExpired(record, now) ? undefined : record;
  }

  private unavailable(err: unknown): MeshError {
    if (err instanceof MeshError) return err;
    const message = (err as Error | null)?.message ?? String(err);
    return new MeshError('l2_unavailable', `${this.where}: ${message}`, { cause: err });
  }
}

const OPEN_BOUND = Buffer.from('(');
const CLOSED_BOUND = Buffer.from('[');

function tenantOf(key: string): string {
  const slash = key.indexOf('/');
  return slash < 0 ? key : key.slice(0, slash);
}

async function quitQuickly(connection: Redis | Cluster): Promise<void> {
  if (connection.status === 'ready') {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      connection.quit().catch(() => undefined),
      new Promise((resolve) => {
        timer = setTimeout(resolve, QUIT_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
  }
  // Stops reconnection too; a no-op once QUIT has closed the socket.
  connection.disconnect();
}
