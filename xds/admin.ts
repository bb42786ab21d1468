// The control plane's admin/API listener (127.0.0.1:15014 by default): liveness and readiness,
// metrics, the registry, per-client xDS state (ACKed versions, NACKs), failover history, and the
// three writes sidecars and operators make — drain, health reports, registration heartbeats.
// Request bodies are parsed with a schema at this boundary; errors go through the error table.
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { z } from 'zod';
import { IpPortSchema } from '../src/config/schema.js';
import { sendError } from '../src/errors/respond.js';
import { MeshError, toMeshError } from '../src/errors/table.js';
import type { ClientStatus } from './ads-server.js';
import type { HealthReportBatch, SubjectOutcome } from './health/failure-declarer.js';
import type { FailoverRecord, NodeRegistration, RegistryEndpoint, RegistryService } from './registry.js';
import type { StoreStatus } from './store/store.js';

/** Largest admin request body; health batches from a large mesh fit well under it. */
const MAX_BODY_BYTES = 1024 * 1024;

const DrainBody = z.strictObject({ service: z.string().min(1), address: IpPortSchema, reason: z.string().optional() });
const HealthReportsBody = z.strictObject({
  observer: z.string().min(1),
  reports: z.array(
    z.strictObject({
      subject: z.string().min(1),
      status: z.enum(['alive', 'suspect', 'dead']),
      incarnation: z.number().int().nonnegative().default(0),
    }),
  ),
});
const RegisterBody = z.strictObject({
  nodeId: z.string().min(1),
  service: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'expected letters, digits, ".", "_" or "-"'),
  address: IpPortSchema,
  zone: z.string().default(''),
  priority: z.number().int().min(0).max(7).default(0),
  incarnation: z.number().int().nonnegative().default(0),
});

export interface ControlPlaneAdminTarget {
  readonly ready: boolean;
  metrics(): Promise<string>;
  services(): RegistryService[];
  clients(): ClientStatus[];
  failovers(): FailoverRecord[];
  /** The registry store's state: a degraded store is reported on /ready and /v1/registry. */
  store?(): StoreStatus;
  drain(service: string, address: string, reason?: string): RegistryEndpoint | Promise<RegistryEndpoint>;
  reportHealth(batch: HealthReportBatch): SubjectOutcome[] | Promise<SubjectOutcome[]>;
  register(registration: NodeRegistration): void | Promise<void>;
  /** TTL of a registration, so heartbeating clients know how often to call. */
  readonly registrationTtlMs: number;
}

type Route = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export function createControlPlaneAdmin(target: ControlPlaneAdminTarget): http.Server {
  const routes: Record<string, Record<string, Route>> = {
    '/healthz': { GET: (_req, res) => text(res, 200, 'ok\n') },
    '/ready': {
      GET: (_req, res) => {
        if (!target.ready) return sendError(res, new MeshError('not_ready', 'control plane is not ready'));
        // Degraded stays ready: it serves its last known state (static stability), and failing
        // readiness on a store outage would pull every replica out of service at once.
        const store = target.store?.();
        if (store?.degraded) {
          res.setHeader('x-ctxmesh-degraded', 'store');
          return text(res, 200, `ready (degraded: registry store unavailable: ${store.reason ?? 'unknown'})\n`);
        }
        text(res, 200, 'ready\n');
      },
    },
    '/metrics': {
      GET: async (_req, res) => {
        const body = await target.metrics();
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
        res.end(body);
      },
    },
    '/v1/registry': {
      GET: (_req, res) => {
        const store = target.store?.();
        json(res, 200, { services: target.services(), ...(store ? { store } : {}) });
      },
    },
    '/v1/clients': { GET: (_req, res) => json(res, 200, { clients: target.clients() }) },
    '/v1/failovers': { GET: (_req, res) => json(res, 200, { failovers: target.failovers() }) },
    '/v1/endpoints/drain': {
      POST: async (req, res) => {
        const body = await readJson(req, DrainBody);
        json(res, 200, { endpoint: await target.drain(body.service, body.address, body.reason) });
      },
    },
    '/v1/health/reports': {
      POST: async (req, res) => {
        const body = await readJson(req, HealthReportsBody);
        json(res, 200, { results: await target.reportHealth(body) });
      },
    },
    '/v1/register': {
      POST: async (req, res) => {
        const body = await readJson(req, RegisterBody);
        await target.register(body);
        json(res, 200, { registered: body.nodeId, ttlMs: target.registrationTtlMs });
      },
    },
  };

  return http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://admin').pathname;
    const methods = routes[path];
    if (!methods) return sendError(res, new MeshError('not_found', `no admin endpoint ${path}`));
    const handler = methods[req.method ?? 'GET'];
    if (!handler) {
      res.setHeader('allow', Object.keys(methods).join(', '));
      return sendError(res, new MeshError('method_not_allowed'));
    }
    Promise.resolve()
      .then(() => handler(req, res))
      .catch((err: unknown) => sendError(res, toMeshError(err)));
  });
}

async function readJson<S extends z.ZodType>(req: IncomingMessage, schema: S): Promise<z.output<S>> {
  const type = req.headers['content-type'] ?? '';
  if (!type.startsWith('application/json')) throw new MeshError('unsupported_media_type', 'expected content-type: application/json');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new MeshError('payload_too_large', `admin request bodies are limited to ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new MeshError('bad_request', `invalid JSON: ${(err as Error).message}`);
  }
  const result = schema.safeParse(parsed);
  if (!result.success) {
    const detail = result.error.issues.map((issue) => `${issue.path.join('.') || '(body)'}: ${issue.message}`).join('; ');
    throw new MeshError('bad_request', detail);
  }
  return result.data;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function text(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(body);
}
