// Starts an in-process control plane on port 0 with a silent logger, closed after each test.
import { request } from 'undici';
import { ControlPlaneConfigSchema } from '../../src/config/schema.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { ControlPlane } from '../../xds/control-plane.js';

export async function startControlPlane(closers: Array<() => Promise<void>>, overrides: Record<string, unknown> = {}): Promise<ControlPlane> {
  const config = ControlPlaneConfigSchema.parse({ port: 0, address: '127.0.0.1', admin: { port: 0 }, ...overrides });
  const plane = await ControlPlane.start(config, { logger: createLogger({ level: 'silent' }) });
  closers.push(() => plane.close());
  return plane;
}

export async function adminGet<T = any>(plane: ControlPlane, path: string): Promise<T> {
  const res = await request(`http://127.0.0.1:${plane.adminPort}${path}`);
  if (res.statusCode !== 200) throw new Error(`GET ${path}: ${res.statusCode} ${await res.body.text()}`);
  return (path === '/metrics' ? await res.body.text() : await res.body.json()) as T;
}

export async function adminPost(plane: ControlPlane, path: string, body: unknown): Promise<{ status: number; error: string | undefined; body: any }> {
  const res = await request(`http://127.0.0.1:${plane.adminPort}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const header = res.headers['x-ctxmesh-error'];
  return { status: res.statusCode, error: typeof header === 'string' ? header : undefined, body: await res.body.json() };
}

export function xdsAddress(plane: ControlPlane): string {
  return `127.0.0.1:${plane.xdsPort}`;
}
