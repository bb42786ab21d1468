// Test fixtures with real parts: a dev CA on disk, sidecars on port 0, real HTTP apps.
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { request } from 'undici';
import { afterEach } from 'vitest';
import { SidecarConfigSchema, type SidecarConfig } from '../../src/config/schema.js';
import { Sidecar, type SidecarOptions } from '../../src/sidecar.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { initCa, issueCert } from '../../src/tls/ca.js';

export interface IdentityFiles {
  cert: string;
  key: string;
  ca: string;
}

export interface TestPki {
  dir: string;
  caDir: string;
  issue(name: string, options?: { spiffe?: string; notBefore?: Date; notAfter?: Date; ca?: string }): Promise<IdentityFiles>;
}

/** A dev CA in a temp dir; `issue` writes a leaf identity signed by it (or by `options.ca`). */
export async function createPki(): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-pki-'));
  const caDir = join(dir, 'ca');
  await initCa({ out: caDir });
  return {
    dir,
    caDir,
    async issue(name, options = {}) {
      const out = join(dir, `${name}-${Math.random().toString(36).slice(2, 8)}`);
      await issueCert({ ca: options.ca ?? caDir, name, out, spiffe: options.spiffe, notBefore: options.notBefore, notAfter: options.notAfter });
      return { cert: join(out, 'cert.pem'), key: join(out, 'key.pem'), ca: join(out, 'ca.pem') };
    },
  };
}

/** Log lines a sidecar wrote, parsed. */
export class LogCapture extends Writable {
  readonly lines: Array<Record<string, unknown>> = [];
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    for (const line of chunk.toString().split('\n')) if (line) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    callback();
  }
  access(): Array<Record<string, unknown>> {
    return this.lines.filter((l) => l.kind === 'access');
  }
}

export type ConfigInput = Record<string, unknown>;

/** A sidecar config on port 0 everywhere, bound to 127.0.0.1, merged with `overrides`. */
export function sidecarConfig(identity: IdentityFiles, overrides: ConfigInput = {}): SidecarConfig {
  const base: ConfigInput = {
    node: { id: 'test' },
    identity,
    inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9', allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
    outbound: { port: 0 },
    admin: { port: 0 },
    context: { port: 0, checkpoint: { dir: mkdtempSync(join(tmpdir(), 'ctxmesh-state-')) } },
    log: { level: 'info', accessLog: true },
  };
  return SidecarConfigSchema.parse(merge(base, overrides));
}

function merge(base: ConfigInput, overrides: ConfigInput): ConfigInput {
  const out: ConfigInput = { ...base };
  for (const [key, value] of Object.entries(overrides)) {
    const current = out[key];
    out[key] =
      value && typeof value === 'object' && !Array.isArray(value) && current && typeof current === 'object' && !Array.isArray(current)
        ? merge(current as ConfigInput, value as ConfigInput)
        : value;
  }
  return out;
}

export interface RunningSidecar {
  sidecar: Sidecar;
  logs: LogCapture;
  outbound: string;
  admin: string;
  inboundAddress: string;
}

export async function startSidecar(config: SidecarConfig, options: Omit<SidecarOptions, 'logger'> = {}): Promise<RunningSidecar> {
  const logs = new LogCapture();
  const sidecar = await Sidecar.start(config, { ...options, logger: createLogger({ level: config.log.level, destination: logs }) });
  return {
    sidecar,
    logs,
    outbound: `http://127.0.0.1:${sidecar.ports.outbound}`,
    admin: `http://127.0.0.1:${sidecar.ports.admin}`,
    inboundAddress: `127.0.0.1:${sidecar.ports.inbound}`,
  };
}

export interface TestApp {
  address: string;
  url: string;
  server: http.Server;
  /** Requests the app received, in order. */
  received: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders; body: string }>;
  close(): Promise<void>;
}

export type AppHandler = (req: IncomingMessage, res: ServerResponse, body: string) => void;

/** A real HTTP app on 127.0.0.1:0. The default handler echoes what it received as JSON. */
export async function startApp(name: string, handler?: AppHandler): Promise<TestApp> {
  const received: TestApp['received'] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      received.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      if (handler) return handler(req, res, body);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ app: name, method: req.method, url: req.url, headers: req.headers, body }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    address: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    server,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A request through an outbound listener (or any plain-HTTP URL) with the given Host. */
export async function send(
  base: string,
  path: string,
  options: { host?: string; method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<Reply> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.host) headers.host = options.host;
  const res = await request(`${base}${path}`, {
    method: (options.method ?? 'GET') as 'GET',
    headers,
    body: options.body,
  });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

/** Resolves when `predicate` holds, checking on every turn of the event loop, or fails after `timeoutMs`. */
export async function until(predicate: () => boolean | Promise<boolean>, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

// --- Resilience and load-balancing helpers (admin state, metrics, holding apps, dead ports) ---

/** One endpoint as `GET /clusters` describes it. */
export interface EndpointStatus {
  address: string;
  priority: number;
  healthy: boolean;
  active_requests: number;
  circuit_breaker: 'closed' | 'open' | 'half_open';
  ejected: boolean;
  times_ejected: number;
  consecutive_failures: number;
}

/** One cluster as `GET /clusters` describes it. */
export interface ClusterStatus {
  name: string;
  active_requests: number;
  pending_requests: number;
  active_retries: number;
  endpoints: EndpointStatus[];
}

/** A cluster's entry in the admin API's `GET /clusters`. */
export async function clusterStatus(admin: string, cluster: string): Promise<ClusterStatus> {
  const reply = await send(admin, '/clusters');
  const { clusters } = JSON.parse(reply.body) as { clusters: ClusterStatus[] };
  const found = clusters.find((c) => c.name === cluster);
  if (!found) throw new Error(`no cluster ${cluster} in /clusters`);
  return found;
}

/** An endpoint's entry in the admin API's `GET /clusters`. */
export async function endpointStatus(admin: string, cluster: string, address: string): Promise<EndpointStatus> {
  const found = (await clusterStatus(admin, cluster)).endpoints.find((e) => e.address === address);
  if (!found) throw new Error(`no endpoint ${address} in cluster ${cluster}`);
  return found;
}

/** The value of one Prometheus sample from `GET /metrics` whose labels include `labels`; undefined when absent. */
export async function metricValue(admin: string, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const text = (await send(admin, '/metrics')).body;
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) found[key!] = value!;
    if (Object.entries(labels).every(([key, value]) => found[key] === value)) return Number(match[3]);
  }
  return undefined;
}

export interface HoldingApp extends TestApp {
  /** Responses of requests that arrived and are held open, oldest first. */
  held: ServerResponse[];
  /** Answers every held request with 200 and `{ app: name }`. */
  releaseAll(): void;
}

/** A real HTTP app that holds every request open until `releaseAll` (or `close`). */
export async function startHoldingApp(name: string): Promise<HoldingApp> {
  const held: ServerResponse[] = [];
  const app = await startApp(name, (_req, res) => held.push(res));
  return Object.assign(app, {
    held,
    releaseAll() {
      for (const res of held.splice(0)) {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ app: name }));
      }
    },
  });
}

/** host:port of a port that was bound and then released: connecting to it is refused. */
export async function deadAddress(): Promise<string> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `127.0.0.1:${port}`;
}

/**
 * A value of the ring_hash header whose owner (first endpoint clockwise on the ketama ring over
 * `addresses`, as the RingHashBalancer builds it) is `owner`.
 */
export function keyOwnedBy(addresses: readonly string[], owner: string, prefix = 'key'): string {
  const ring = new HashRing([...addresses]);
  for (let i = 0; i < 10_000; i++) if (ring.get(`${prefix}-${i}`) === owner) return `${prefix}-${i}`;
  throw new Error(`no key owned by ${owner}`);
}
// Import declarations are hoisted; this one sits with the helpers that use it.
import HashRing from 'hashring';

/**
 * Things a test started, closed after that test, last started first: a test that fails halfway
 * still releases its ports and processes.
 */
export function closeAfterEach(): Array<() => Promise<void>> {
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
  });
  return closers;
}
