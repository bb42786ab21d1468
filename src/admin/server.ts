// The admin API, on 127.0.0.1 only: liveness, readiness, metrics, the effective config, cluster
// state, and drain. Its own errors go through the same table as the proxy's.
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendError } from '../errors/respond.js';
import { MeshError } from '../errors/table.js';

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

  return http.createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const byMethod = routes[path];
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
