// Sidecar-to-sidecar calls, server side. Peer traffic (replication, reads, hints, probes) rides the
// inbound mTLS listener: as framed connections (ALPN ctxmesh-peer/1, frames.ts), which the listener
// hands here whole, or as `POST /.ctxmesh/peer/<name>` requests. Only callers whose verified SPIFFE
// ID is a sidecar identity reach a handler, so a peer handler never sees the app's callers and the
// app never sees peer traffic. Both ways end in one dispatch: the same fault switch, limits,
// fencing and error answers.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { sendError } from '../errors/respond.js';
import { ERROR_HEADER, MeshError, errorBody, toMeshError } from '../errors/table.js';
import { FrameReader, FrameWriter, encodeReply, type CallFrame, type Frame } from './frames.js';
import type { Logger } from '../telemetry/logger.js';
import { isAllowed, trustDomainOf } from '../tls/spiffe.js';
import { PEER_NODE_HEADER, type PeerFaults } from '../state/replication/faults.js';
import type { Fencing } from './fencing.js';
import { readBody } from '../proxy/body-limit.js';

export const PEER_PATH_PREFIX = '/.ctxmesh/peer/';
/** Default bound on a peer request body (context.replication.maxMessageBytes). */
export const DEFAULT_PEER_MAX_BODY_BYTES = 16 * 1024 ** 2;

export interface PeerCaller {
  spiffeId: string;
}

export interface PeerReply {
  status?: number;
  /** A Buffer is sent as application/octet-stream, an object as JSON. */
  body?: Buffer | object;
}

export type PeerHandler = (body: Buffer, caller: PeerCaller) => PeerReply | Promise<PeerReply>;

export interface PeerRouterOptions {
  maxBodyBytes?: number;
  logger?: Logger;
  /** The fault switch (CTXMESH_FAULTS=1 only): calls from blocked peers are cut off. */
  faults?: PeerFaults;
  /** Ownership epochs: calls from a sender with a stale epoch are refused (409 stale_epoch). */
  fencing?: Fencing;
}

export class PeerRouter {
  private readonly handlers = new Map<string, PeerHandler>();
  /** Largest request body a handler is given; larger ones get 413 before being read. */
  maxBodyBytes: number;
  private readonly logger: Logger | undefined;
  private readonly faults: PeerFaults | undefined;
  private readonly fencing: Fencing | undefined;

  constructor(options: PeerRouterOptions = {}) {
    this.maxBodyBytes = options.maxBodyBytes ?? DEFAULT_PEER_MAX_BODY_BYTES;
    this.logger = options.logger;
    this.faults = options.faults;
    this.fencing = options.fencing;
  }

  add(name: string, handler: PeerHandler): void {
    if (!/^[a-z0-9][a-z0-9._-]*$/.test(name)) throw new Error(`peer handler name "${name}" must be lower-case letters, digits, '.', '_' or '-'`);
    if (this.handlers.has(name)) throw new Error(`peer handler "${name}" is already registered`);
    this.handlers.set(name, handler);
  }

  remove(name: string): void {
    this.handlers.delete(name);
  }

  /** The handler registered under `name`: for wrapping it (fault injection in tests, tracing). */
  get(name: string): PeerHandler | undefined {
    return this.handlers.get(name);
  }

  /** Replaces the handler registered under `name` (it must exist). */
  replace(name: string, handler: PeerHandler): void {
    if (!this.handlers.has(name)) throw new Error(`no peer handler "${name}" to replace`);
    this.handlers.set(name, handler);
  }

  has(name: string): boolean {
    return this.handlers.has(name);
  }

  /** Serves one request whose path starts with PEER_PATH_PREFIX, from an already authorised caller. */
  serve(req: IncomingMessage, res: ServerResponse, caller: PeerCaller): void {
    if (this.cutOff(req.headers)) {
      // As a partition looks to the caller: the connection goes away without an answer.
      req.socket.destroy();
      return;
    }
    void this.serveHttp(req, res, caller).catch((err: unknown) => {
      const failure = this.failure(err, req.url);
      // A body refused for its size may still be arriving: closing is cheaper than draining it.
      sendError(res, failure, { close: failure.code === 'payload_too_large' && !req.complete });
    });
  }

  private async serveHttp(req: IncomingMessage, res: ServerResponse, caller: PeerCaller): Promise<void> {
    const url = req.url ?? '/';
    const query = url.indexOf('?');
    const name = (query < 0 ? url : url.slice(0, query)).slice(PEER_PATH_PREFIX.length);
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      throw new MeshError('method_not_allowed', `peer calls are POST, not ${req.method}`);
    }
    // Before the body is read: an unknown call costs no upload.
    this.handler(name);
    const body = await readBody(req, this.maxBodyBytes, { what: 'peer request body' });
    const { status, body: bytes, error, json } = await this.dispatch(name, req.headers, body, caller);
    const headers = ['content-type', json ? 'application/json' : 'application/octet-stream', 'content-length', String(bytes.length)];
    if (error) headers.push(ERROR_HEADER, error);
    res.writeHead(status, headers);
    res.end(bytes);
  }

  /**
   * Serves a framed connection (ALPN ctxmesh-peer/1) until it closes: each call dispatched as it
   * arrives, each reply sent as it is ready. `refusal`: the caller is not allowed peer calls, and
   * every call is answered with it.
   */
  serveConnection(socket: TLSSocket, caller: PeerCaller, refusal?: MeshError): void {
    // Back-pressure: at most MAX_CALLS_IN_PROGRESS calls of one connection run at once, none start
    // while the socket holds more unsent replies than its high-water mark, and the connection is
    // not read while calls wait. A caller that leaves its replies unread thus stops being read,
    // and what it costs here is bounded by those calls' replies, not by what it sends.
    let inProgress = 0;
    const waiting: CallFrame[] = [];
    const writer = new FrameWriter(socket);
    // Replies queued or unsent past the high-water mark: a write of them returns (or will return)
    // false, so 'drain' follows.
    const full = (): boolean => socket.writableNeedDrain || writer.queuedBytes + socket.writableLength > socket.writableHighWaterMark;
    const answer = (id: number, outcome: CallOutcome): void => writer.send(encodeReply(id, outcome.status, outcome.error ?? '', outcome.body));
    const refuse = (id: number, err: unknown, call?: string): void => answer(id, this.refusal(this.failure(err, call)));
    const settled = (): void => {
      inProgress--;
      startWaiting();
    };
    const startWaiting = (): void => {
      while (!full() && inProgress < MAX_CALLS_IN_PROGRESS && waiting.length > 0) {
        const frame = waiting.shift()!;
        inProgress++;
        this.dispatch(frame.name, frame.meta, frame.body, caller)
          .then((outcome) => answer(frame.id, outcome), (err: unknown) => refuse(frame.id, err, frame.name))
          .finally(settled);
      }
      if (waiting.length > 0) socket.pause();
      else if (socket.isPaused()) socket.resume();
    };
    socket.on('drain', startWaiting);
    const reader = new FrameReader({
      // The call's name and meta beside its body.
      maxFrameBytes: this.maxBodyBytes + CALL_HEAD_BYTES,
      onFrame: (frame: Frame) => {
        if (frame.kind !== 'call') throw new Error(`a ${frame.kind} frame where calls are expected`);
        if (refusal) return refuse(frame.id, refusal);
        if (this.cutOff(frame.meta)) return socket.destroy();
        waiting.push(frame);
      },
      onOversized: (id, length) => refuse(id, new MeshError('payload_too_large', `peer call of ${length} bytes exceeds the limit of ${this.maxBodyBytes} bytes for its body`)),
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        this.logger?.warn({ err: (err as Error).message, remote: socket.remoteAddress }, 'peer connection closed: not ctxmesh-peer/1 frames');
        socket.destroy();
        return;
      }
      startWaiting();
    });
    socket.on('error', () => undefined);
  }

  /** The fault switch's verdict on a call from the sender these headers name. */
  private cutOff(headers: IncomingHttpHeaders | Record<string, string>): boolean {
    if (!this.faults) return false;
    const from = headers[PEER_NODE_HEADER];
    return this.faults.refusesCallFrom(typeof from === 'string' ? from : undefined);
  }

  private handler(name: string): PeerHandler {
    const handler = this.handlers.get(name);
    // Before the state agent has registered its handlers, or a peer running a newer version.
    if (!handler) throw new MeshError('not_found', `no peer handler "${name}" on this sidecar`);
    return handler;
  }

  /** Fencing, then the handler: one call's answer, however it came. Throws refusals as MeshErrors. */
  private async dispatch(name: string, headers: IncomingHttpHeaders | Record<string, string>, body: Buffer, caller: PeerCaller): Promise<CallOutcome> {
    const handler = this.handler(name);
    if (body.length > this.maxBodyBytes) throw new MeshError('payload_too_large', `peer request body of ${body.length} bytes exceeds the limit of ${this.maxBodyBytes}`);
    const verdict = this.fencing?.judge(name, headers);
    if (verdict) {
      // Before the handler: nothing of a fenced sender's call is applied. The verdict goes back so
      // the sender knows which epoch it must learn before it acknowledges writes again.
      this.logger?.warn({ call: name, ...verdict }, 'peer call refused: stale ownership epoch (fenced)');
      const refusal = new MeshError('stale_epoch', `node ${verdict.node} called ${name} with epoch ${verdict.epoch}; this member holds epoch ${verdict.knownEpoch} (${verdict.knownState}) for it`);
      return { status: refusal.status, error: refusal.code, json: true, body: Buffer.from(JSON.stringify({ error: refusal.code, message: refusal.message, fence: verdict })) };
    }
    const reply = await handler(body, caller);
    const status = reply.status ?? 200;
    if (reply.body === undefined) return { status, body: EMPTY, json: false };
    if (Buffer.isBuffer(reply.body)) return { status, body: reply.body, json: false };
    return { status, body: Buffer.from(JSON.stringify(reply.body)), json: true };
  }

  /** `err` as the MeshError to answer with; anything else is a handler's bug, and logged. */
  private failure(err: unknown, call?: string): MeshError {
    if (err instanceof MeshError) return err;
    this.logger?.error({ err: (err as Error)?.message, call }, 'peer handler failed');
    return toMeshError(err);
  }

  private refusal(err: MeshError): CallOutcome {
    return { status: err.status, error: err.code, json: true, body: Buffer.from(errorBody(err)) };
  }
}

/** Room for a call frame's name and meta beside the largest body accepted. */
const CALL_HEAD_BYTES = 4096;
/** Calls of one framed connection running at once; more wait, unread. */
const MAX_CALLS_IN_PROGRESS = 128;
const EMPTY = Buffer.alloc(0);

interface CallOutcome {
  status: number;
  body: Buffer;
  /** The refusal's error code (x-ctxmesh-error). */
  error?: string;
  /** Whether the body is JSON (an object reply or a refusal), for HTTP's content type. */
  json: boolean;
}

/**
 * Whether a verified caller is a sidecar that may make peer calls: one listed in
 * `context.replication.allow` when that list is set, else any identity of our own trust domain.
 */
export function isSidecarIdentity(spiffeId: string | undefined, trustDomain: string, allow: readonly string[]): spiffeId is string {
  if (spiffeId === undefined || spiffeId === '') return false;
  if (allow.length > 0) return isAllowed(spiffeId, allow);
  try {
    return trustDomainOf(spiffeId) === trustDomain.toLowerCase();
  } catch {
    return false;
  }
}
