// Sidecar-to-sidecar calls, client side, over mTLS to the peer's inbound listener. A peer that
// speaks ALPN ctxmesh-peer/1 is called over framed connections (channel.ts): calls multiplexed by
// id on one kept-open connection, those of one tick in one TLS write. Two lanes per peer, so that
// bulk transfers (anti-entropy, hint delivery: megabytes) never queue ahead of replication and
// probes. A peer that does not (an older sidecar) gets `POST https://<address>/.ctxmesh/peer/<name>`
// through an undici Pool of kept-alive connections. Every failure is a MeshError that names the
// peer and the call.
import { createRequire } from 'node:module';
import type { Dispatcher } from 'undici';
import { ERROR_HEADER, MeshError, toMeshError, type ErrorCode, ERRORS } from '../errors/table.js';
import type { TLSSocket } from 'node:tls';
import { dialMesh, meshConnector } from '../proxy/upstream/connect.js';
import { formatHostPort, parseHostPort } from '../config/host-port.js';
import { Pool } from '../proxy/upstream/undici.js';
import type { MeshIdentity } from '../tls/identity.js';
import { PEER_PATH_PREFIX } from './router.js';
import { PEER_NODE_HEADER, type PeerFaults } from '../state/replication/faults.js';
import { Fencing, type FenceVerdict } from './fencing.js';
import { NotFramedError, PeerChannel, cancelled, timedOut, unreachable, type ChannelReply } from './channel.js';
import { PEER_ALPN } from './frames.js';

const require = createRequire(import.meta.url);
/** undici's request API, without the rest of undici's entry point (see ../proxy/upstream/undici.ts). */
const undiciRequest = require('undici/lib/api/api-request.js') as (this: Dispatcher, options: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;

const DEFAULT_CONNECT_TIMEOUT_MS = 2_000;
const DEFAULT_CALL_TIMEOUT_MS = 5_000;
const DEFAULT_CONNECTIONS = 4;
const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 ** 2;

export interface PeerResponse {
  status: number;
  body: Buffer;
  /** The peer's x-ctxmesh-error code on a refusal. */
  error?: string;
  json<T>(): T;
}

export interface PeerClientOptions {
  connectTimeoutMs?: number;
  /** Timeout of a call without its own. Default 5s. */
  timeoutMs?: number;
  /** Connections per peer. Default 4. */
  connections?: number;
  maxResponseBytes?: number;
  /** The fault switch (CTXMESH_FAULTS=1 only): calls to blocked peers fail as unreachable. */
  faults?: PeerFaults;
  /** Ownership epochs: every call carries ours; a 409 stale_epoch answer fences this sidecar. */
  fencing?: Fencing;
}

export interface PeerCallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** A transfer of possibly many megabytes: it goes on the peer's bulk lane. */
  bulk?: boolean;
}

export class PeerClient {
  /** Framed connections by lane and address. */
  private readonly channels = new Map<string, PeerChannel>();
  /** Peers that answered the framed protocol's offer with HTTP: called through `pools`. */
  private readonly httpOnly = new Set<string>();
  private readonly pools = new Map<string, Pool>();
  private readonly sessions = new Map<string, Buffer>();
  private readonly identity: MeshIdentity;
  private readonly connector;
  private readonly connectTimeoutMs: number;
  private readonly timeoutMs: number;
  private readonly connections: number;
  private readonly maxResponseBytes: number;
  private readonly faults: PeerFaults | undefined;
  private readonly fencing: Fencing | undefined;
  private closed = false;

  constructor(identity: MeshIdentity, options: PeerClientOptions = {}) {
    this.connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.connections = options.connections ?? DEFAULT_CONNECTIONS;
    this.maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.faults = options.faults;
    this.fencing = options.fencing;
    this.identity = identity;
    this.connector = meshConnector(identity, this.connectTimeoutMs);
  }

  /**
   * Calls handler `name` on the peer at `address` (host:port of its inbound listener). Resolves with
   * any HTTP answer (check `status`); rejects with a MeshError when there is none: connect_failure
   * (refused, unreachable, TLS or identity refused), upstream_timeout (no answer within the
   * timeout), upstream_reset (connection lost mid-call).
   */
  async call(address: string, name: string, body: Buffer | object, options: PeerCallOptions = {}): Promise<PeerResponse> {
    if (this.closed) throw new MeshError('internal', 'the peer client is closed');
    if (this.faults?.dropsCallTo(address)) throw unreachable(address, name, 'blocked by the fault switch');
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const payload = Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
    const meta = { ...(this.faults ? { [PEER_NODE_HEADER]: this.faults.selfId } : {}), ...this.fencing?.headers() };
    let reply: ChannelReply | undefined;
    if (!this.httpOnly.has(address)) {
      try {
        reply = await this.channel(address, options.bulk === true).call(name, meta, payload, timeoutMs, options.signal);
      } catch (err) {
        if (!(err instanceof NotFramedError)) throw err;
        this.httpOnly.add(address);
      }
    }
    reply ??= await this.overHttp(address, name, payload, Buffer.isBuffer(body), meta, timeoutMs, options.signal);
    const { status, error, body: bytes } = reply;
    if (this.fencing && status < 300 && Fencing.judges(name)) this.fencing.acceptedBy(address);
    if (error === 'stale_epoch' && this.fencing) {
      try {
        const verdict = (JSON.parse(bytes.toString('utf8')) as { fence?: FenceVerdict }).fence;
        if (verdict) this.fencing.refusedBy(address, verdict);
      } catch {
        // Not our body: no verdict to act on; the refusal still fails the call.
      }
    }
    return {
      status,
      body: bytes,
      ...(error !== '' ? { error } : {}),
      json<T>(): T {
        return JSON.parse(bytes.toString('utf8')) as T;
      },
    };
  }

  private channel(address: string, bulk: boolean): PeerChannel {
    const lane = laneOf(address, bulk);
    let channel = this.channels.get(lane);
    if (!channel) {
      const peer = parseHostPort(address);
      if (typeof peer === 'string') throw new MeshError('connect_failure', `peer address ${address} cannot be dialled: ${peer}`);
      const dial = { host: peer.host, port: peer.port, alpn: [PEER_ALPN, 'http/1.1'], timeoutMs: this.connectTimeoutMs, sessions: this.sessions };
      channel = new PeerChannel({
        address,
        maxReplyBytes: this.maxResponseBytes,
        dial: () => new Promise<TLSSocket>((resolve, reject) => dialMesh(this.identity, dial, (err, socket) => (err ? reject(err) : resolve(socket!)))),
      });
      this.channels.set(lane, channel);
    }
    return channel;
  }

  /** The call as an HTTP request, for a peer without the framed protocol. */
  private async overHttp(address: string, name: string, payload: Buffer, binary: boolean, meta: Record<string, string>, timeoutMs: number, callerSignal: AbortSignal | undefined): Promise<ChannelReply> {
    // One controller and one timer per call, cleared when the call ends: AbortSignal.timeout
    // would keep its timer (and build a DOMException) for the full timeout after every call.
    const controller = new AbortController();
    let expired = false;
    const timer = setTimeout(() => {
      expired = true;
      controller.abort();
    }, timeoutMs);
    const cancel = (): void => controller.abort();
    if (callerSignal?.aborted) controller.abort();
    else callerSignal?.addEventListener('abort', cancel, { once: true });
    try {
      const response = await undiciRequest.call(this.pool(address), {
        path: `${PEER_PATH_PREFIX}${name}`,
        method: 'POST',
        headers: { 'content-type': binary ? 'application/octet-stream' : 'application/json', 'content-length': String(payload.length), ...meta },
        body: payload,
        signal: controller.signal,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      const bytes = await readBounded(response.body, this.maxResponseBytes, address, name);
      const error = response.headers[ERROR_HEADER];
      return { status: response.statusCode, body: bytes, error: typeof error === 'string' ? error : '' };
    } catch (err) {
      throw describe(err, address, name, timeoutMs, expired, callerSignal?.aborted ?? false);
    } finally {
      clearTimeout(timer);
      callerSignal?.removeEventListener('abort', cancel);
    }
  }

  /** Throws the peer's refusal as a MeshError unless the answer is 2xx. */
  static ok(response: PeerResponse, address: string, name: string): PeerResponse {
    if (response.status >= 200 && response.status < 300) return response;
    const code = response.error !== undefined && response.error in ERRORS ? (response.error as ErrorCode) : 'upstream_reset';
    let detail = '';
    try {
      detail = response.json<{ message?: string }>().message ?? '';
    } catch {
      // Not a mesh error body.
    }
    throw new MeshError(code, `peer ${address} refused ${name} (${response.status}${detail ? `: ${detail}` : ''})`);
  }

  private pool(address: string): Pool {
    let pool = this.pools.get(address);
    if (!pool) {
      // `[v6]:port` goes into the URL as written; an unbracketed IPv6 address would not parse.
      const peer = parseHostPort(address);
      if (typeof peer === 'string') throw new MeshError('connect_failure', `peer address ${address} cannot be dialled: ${peer}`);
      pool = new Pool(`https://${formatHostPort(peer.host, peer.port)}`, {
        connections: this.connections,
        pipelining: 1,
        connect: this.connector,
        keepAliveTimeout: 30_000,
        keepAliveMaxTimeout: 600_000,
      });
      this.pools.set(address, pool);
    }
    return pool;
  }

  /** Drops the connections to one peer (it left the mesh). */
  async forget(address: string): Promise<void> {
    for (const lane of [laneOf(address, false), laneOf(address, true)]) {
      this.channels.get(lane)?.close();
      this.channels.delete(lane);
    }
    this.httpOnly.delete(address);
    const pool = this.pools.get(address);
    this.pools.delete(address);
    await pool?.destroy();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const channel of this.channels.values()) channel.close();
    this.channels.clear();
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(pools.map((p) => p.destroy()));
  }
}

function laneOf(address: string, bulk: boolean): string {
  return `${bulk ? 'bulk' : 'calls'} ${address}`;
}

function describe(err: unknown, address: string, name: string, timeoutMs: number, wasTimedOut: boolean, wasCancelled: boolean): MeshError {
  if (err instanceof MeshError) {
    return err.code === 'connect_failure' ? new MeshError('connect_failure', `peer ${address} (${name}): ${err.message}`, { cause: err }) : err;
  }
  if (wasTimedOut) return timedOut(address, name, timeoutMs, err);
  if (wasCancelled) return cancelled(address, name, err);
  const mapped = toMeshError(err);
  const reason = (err as Error)?.message ?? String(err);
  if (mapped.code === 'connect_failure') return unreachable(address, name, reason, err);
  if (mapped.code === 'upstream_timeout') return timedOut(address, name, timeoutMs, err);
  return new MeshError(mapped.code === 'internal' ? 'upstream_reset' : mapped.code, `peer ${address} (${name}): ${reason}`, { cause: err });
}

async function readBounded(body: Dispatcher.ResponseData['body'], maxBytes: number, address: string, name: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let received = 0;
  for await (const chunk of body) {
    received += (chunk as Buffer).length;
    if (received > maxBytes) {
      body.destroy();
      throw new MeshError('payload_too_large', `peer ${address} answered ${name} with more than ${maxBytes} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received);
}
