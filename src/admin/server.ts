// The admin API, on 127.0.0.1 only: liveness, readiness, metrics, the effective config, cluster
// state, and drain. Its own errors go through the same table as the proxy's.
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendError } from '../errors/respond.js';
import { MeshError } from '../errors/table.js';
import type { PeerFaults } from '../state/replication/faults.js';

/** The checkpoint operations `ctxmesh checkpoint … -c sidecar.yaml` runs online. */
export interface CheckpointAdmin {
  createCheckpoint(reason?: string): Promise<object>;
  listCheckpoints(): Promise<object[]>;
  verifyCheckpoints(key?: string): Promise<object & { ok: boolean }>;
  erase(key: string): Promise<object>;
}

export interface AdminTarget {
  readonly ready: boolean;
  readonly draining: boolean;
  metrics(): Promise<string>;
  configDump(): object;
  clusters(): object;
  /** The state agent's tiers (sizes, hit ratios, queue); undefined when it is disabled. */
  stateStats(): object | undefined;
  /** Checkpoint operations; undefined when the state agent is disabled. */
  checkpointAdmin(): CheckpointAdmin | undefined;
  /** Starts draining; resolves when drained. */
  drain(): Promise<void>;
  /** The peer fault switch; undefined (and /faults absent) unless CTXMESH_FAULTS=1 armed it. */
  faults?(): PeerFaults | undefined;
  /** Membership by hand (static peers) and the keys held here; undefined without replication. */
  members?(): MembersAdmin | undefined;
}

/**
 * `GET /members`, `POST /members` {id, address} (add, or bring back alive), `DELETE /members/{id}`
 * (remove a peer; this sidecar's own id: it leaves — its keys are handed to their new replicas),
 * `GET /members/held?prefix=&after=&limit=` (keys this sidecar holds, with versions).
 */
export interface MembersAdmin {
  list(): object;
  add(id: string, address: string): object;
  remove(id: string): object;
  held(prefix: string, after: string | undefined, limit: number): Promise<object>;
}

type Route = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export function createAdminServer(target: AdminTarget): http.Server {
  const routes: Record<string, Record<string, Route>> = {
    '/healthz': { GET: (_req, res) => text(res, 200, 'ok\n') },
    '/ready': {
      GET: (_req, res) =>
        target.ready
          ? text(res, 200, 'ready\n')
          : sendError(res, new MeshError(target.draining ? 'draining' : 'not_ready')),
    },
    '/metrics': {
      GET: async (_req, res) => {
        const body = await target.metrics();
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
        res.end(body);
      },
    },
    '/config_dump': { GET: (_req, res) => json(res, 200, target.configDump()) },
    '/clusters': { GET: (_req, res) => json(res, 200, target.clusters()) },
    '/state': {
      GET: (_req, res) => {
        const state = target.stateStats();
        if (!state) return sendError(res, new MeshError('not_found', 'the state agent is disabled (context.enabled: false)'));
        json(res, 200, state);
      },
    },
    '/checkpoints': {
      GET: withCheckpoints(async (c, _req, res) => json(res, 200, { checkpoints: await c.listCheckpoints() })),
      POST: withCheckpoints(async (c, req, res) => json(res, 201, await c.createCheckpoint(queryParam(req, 'reason') ?? 'manual'))),
    },
    '/checkpoints/verify': {
      POST: withCheckpoints(async (c, req, res) => {
        const report = await c.verifyCheckpoints(queryParam(req, 'key'));
        json(res, report.ok ? 200 : 409, report);
      }),
    },
    '/checkpoints/erase': {
      POST: withCheckpoints(async (c, req, res) => {
        const key = queryParam(req, 'key');
        if (!key) return sendError(res, new MeshError('bad_request', 'erase needs ?key=<context key or prefix>'));
        json(res, 200, await c.erase(key));
      }),
    },
    '/faults': {
      GET: withFaults((f, _req, res) => json(res, 200, f.describe())),
      POST: withFaults(async (f, req, res) => {
        try {
          let body: { block?: unknown };
          try {
            body = JSON.parse((await readSmallBody(req)).toString('utf8')) as { block?: unknown };
          } catch (err) {
            throw err instanceof MeshError ? err : new MeshError('bad_request', 'POST /faults takes JSON {"block": ["<peer id or host:port>", …]}');
          }
          f.block(body?.block);
          json(res, 200, f.describe());
        } catch (err) {
          sendError(res, err instanceof MeshError ? err : new MeshError('internal', (err as Error).message));
        }
      }),
      DELETE: withFaults((f, _req, res) => {
        f.clear();
        json(res, 200, f.describe());
      }),
    },
    '/members': {
      GET: withMembers((m, _req, res) => json(res, 200, m.list())),
      POST: withMembers(async (m, req, res) => {
        let body: { id?: unknown; address?: unknown };
        try {
          body = JSON.parse((await readSmallBody(req)).toString('utf8')) as { id?: unknown; address?: unknown };
        } catch (err) {
          return sendError(res, err instanceof MeshError ? err : new MeshError('bad_request', 'POST /members takes JSON {"id": "<node id>", "address": "<host:port>"}'));
        }
        if (typeof body?.id !== 'string' || body.id.length === 0 || typeof body.address !== 'string' || !/^[^\s:]+:\d{1,5}$/.test(body.address)) {
          return sendError(res, new MeshError('bad_request', 'POST /members takes JSON {"id": "<node id>", "address": "<host:port>"}'));
        }
        json(res, 200, m.add(body.id, body.address));
      }),
    },
    '/members/held': {
      GET: withMembers(async (m, req, res) => {
        const limit = Number(queryParam(req, 'limit') ?? 1_000);
        if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) return sendError(res, new MeshError('bad_request', 'limit must be 1..10000'));
        json(res, 200, await m.held(queryParam(req, 'prefix') ?? '', queryParam(req, 'after'), limit));
      }),
    },
    '/drain': {
      POST: (_req, res) => {
        void target.drain();
        json(res, 202, { draining: true });
      },
    },
  };

  function withCheckpoints(route: (c: CheckpointAdmin, req: IncomingMessage, res: ServerResponse) => Promise<void>): Route {
    return (req, res) => {
      const admin = target.checkpointAdmin();
      if (!admin) return sendError(res, new MeshError('not_found', 'the state agent is disabled (context.enabled: false)'));
      return route(admin, req, res);
    };
  }

  function withMembers(route: (m: MembersAdmin, req: IncomingMessage, res: ServerResponse) => void | Promise<void>): Route {
    return (req, res) => {
      const members = target.members?.();
      if (!members) return sendError(res, new MeshError('not_found', 'replication is off (no context.replication.peers)'));
      return route(members, req, res);
    };
  }

  function withFaults(route: (f: PeerFaults, req: IncomingMessage, res: ServerResponse) => void | Promise<void>): Route {
    return (req, res) => {
      const faults = target.faults?.();
      // Unarmed, the switch does not exist: the same answer as any unknown path.
      if (!faults) return sendError(res, new MeshError('not_found', `no admin endpoint /faults`));
      return route(faults, req, res);
    };
  }

  return http.createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    // DELETE /members/{id}: the one route with a parameter.
    const memberId = req.method === 'DELETE' ? /^\/members\/([^/]+)$/.exec(path)?.[1] : undefined;
    const byMethod = memberId === undefined ? routes[path] : { DELETE: withMembers((m, _req, res) => removeMember(m, decodeURIComponent(memberId), res)) };
    if (!byMethod) return sendError(res, new MeshError('not_found', `no admin endpoint ${path}`));
    const route = byMethod[req.method ?? 'GET'];
    if (!route) return sendError(res, new MeshError('method_not_allowed', `${req.method} ${path} is not supported`));
    try {
      await route(req, res);
    } catch (err) {
      sendError(res, new MeshError('internal', (err as Error).message));
    }
  });
}

function removeMember(members: MembersAdmin, id: string, res: ServerResponse): void {
  try {
    json(res, 200, members.remove(id));
  } catch (err) {
    sendError(res, err instanceof MeshError ? err : new MeshError('internal', (err as Error).message));
  }
}

/** A request body of at most 64 KiB (admin requests are small). */
function readSmallBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > 65_536) {
        req.destroy();
        reject(new MeshError('payload_too_large', 'admin request body over 64 KiB'));
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function queryParam(req: IncomingMessage, name: string): string | undefined {
  return new URL(req.url ?? '/', 'http://admin').searchParams.get(name) ?? undefined;
}

function text(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain' });
  res.end(body);
}

function json(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value, null, 2);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
