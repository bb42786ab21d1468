// Sidecar-to-sidecar calls, server side. Peer traffic (replication, reads, hints) rides the inbound
// mTLS listener as `POST /.ctxmesh/peer/<name>`; the listener hands those requests here, and only
// for callers whose verified SPIFFE ID is a sidecar identity, so a peer handler never sees the app's
// callers and the app never sees peer traffic.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendError } from '../errors/respond.js';
import { ERROR_HEADER, MeshError, toMeshError } from '../errors/table.js';
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
    const from = req.headers[PEER_NODE_HEADER];
    if (this.faults?.refusesCallFrom(typeof from === 'string' ? from : undefined)) {
      // As a partition looks to the caller: the connection goes away without an answer.
      req.socket.destroy();
      return;
    }
    void this.run(req, res, caller).catch((err: unknown) => this.reply(req, res, err));
  }

  private async run(req: IncomingMessage, res: ServerResponse, caller: PeerCaller): Promise<void> {
    const url = req.url ?? '/';
    const query = url.indexOf('?');
    const name = (query < 0 ? url : url.slice(0, query)).slice(PEER_PATH_PREFIX.length);
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      throw new MeshError('method_not_allowed', `peer calls are POST, not ${req.method}`);
    }
    const handler = this.handlers.get(name);
    if (!handler) {
      // Before the state agent has registered its handlers, or a peer running a newer version.
      throw new MeshError('not_found', `no peer handler "${name}" on this sidecar`);
    }
    const body = await readBody(req, this.maxBodyBytes, { what: 'peer request body' });
    const verdict = this.fencing?.judge(name, req);
    if (verdict) {
      // Before the handler: nothing of a fenced sender's call is applied. The verdict goes back so
      // the sender knows which epoch it must learn before it acknowledges writes again.
      this.logger?.warn({ call: name, ...verdict }, 'peer call refused: stale ownership epoch (fenced)');
      const refusal = new MeshError('stale_epoch', `node ${verdict.node} called ${name} with epoch ${verdict.epoch}; this member holds epoch ${verdict.knownEpoch} (${verdict.knownState}) for it`);
      const bytes = Buffer.from(JSON.stringify({ error: refusal.code, message: refusal.message, fence: verdict }));
      res.writeHead(refusal.status, ['content-type', 'application/json', 'content-length', String(bytes.length), ERROR_HEADER, refusal.code]);
      res.end(bytes);
      return;
    }
    const reply = await handler(body, caller);
    const status = reply.status ?? 200;
    if (reply.body === undefined) {
      res.writeHead(status, ['content-length', '0']);
      res.end();
      return;
    }
    const isBinary = Buffer.isBuffer(reply.body);
    const bytes = isBinary ? (reply.body as Buffer) : Buffer.from(JSON.stringify(reply.body));
    res.writeHead(status, ['content-type', isBinary ? 'application/octet-stream' : 'application/json', 'content-length', String(bytes.length)]);
    res.end(bytes);
  }

  private reply(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    const failure = err instanceof MeshError ? err : toMeshError(err);
    if (!(err instanceof MeshError)) this.logger?.error({ err: (err as Error)?.message, path: req.url }, 'peer handler failed');
    // A body refused for its size may still be arriving: closing is cheaper than draining it.
    sendError(res, failure, { close: failure.code === 'payload_too_large' && !req.complete });
  }
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
