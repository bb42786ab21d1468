// Sidecars as child processes (`node dist/src/cli/main.js sidecar -c …`) replicating to each
// other, for tests that SIGKILL them or cut them apart with the peer fault switch
// (CTXMESH_FAULTS=1). Fixed ports per sidecar, one data dir each, so a killed sidecar restarts
// with its WAL; a sidecar can also be configured but left for the test to start (a joiner). Build first: npx tsc -p tsconfig.json.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { until, type IdentityFiles } from './mesh.js';
import { freePort } from './redis.js';

export const CLI = join(import.meta.dirname, '../../dist/src/cli/main.js');
const READY_TIMEOUT_MS = 15_000;

export interface SidecarProc {
  id: string;
  inbound: number;
  context: number;
  admin: number;
  configFile: string;
  child: ChildProcess | undefined;
  stderr: string;
}

export interface ProcCluster {
  procs: SidecarProc[];
  proc(id: string): SidecarProc;
  start(proc: SidecarProc): Promise<void>;
  kill(proc: SidecarProc, signal?: NodeJS.Signals): Promise<void>;
  /** Replaces the sidecar's blocked peers (ids); [] heals. */
  block(proc: SidecarProc, peers: string[]): Promise<void>;
  close(): Promise<void>;
}

export interface ProcClusterOptions {
  /** Merged into every sidecar's context.replication (factor 3, short timeouts by default). */
  replication?: Record<string, unknown>;
  /** Every sidecar's health section. Default { enabled: false }: placement stays fixed. */
  health?: Record<string, unknown>;
  /** context.wal.fsync. Default always. */
  fsync?: 'always' | 'batch' | 'none';
  /**
   * How many of `ids`, from the first, start at once and are the configured peers of every
   * sidecar; the rest are configured with those as peers and left for the test to start. Default all.
   */
  initial?: number;
}

export async function startProcCluster(identity: IdentityFiles, ids: string[], options: ProcClusterOptions = {}): Promise<ProcCluster> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build with npx tsc -p tsconfig.json`);
  const procs: SidecarProc[] = [];
  for (const id of ids) procs.push({ id, inbound: await freePort(), context: await freePort(), admin: await freePort(), configFile: '', child: undefined, stderr: '' });
  const initial = procs.slice(0, options.initial ?? procs.length);
  for (const proc of procs) {
    const work = mkdtempSync(join(tmpdir(), `ctxmesh-procs-${proc.id}-`));
    proc.configFile = join(work, 'sidecar.yaml');
    writeFileSync(
      proc.configFile,
      JSON.stringify({
        node: { id: proc.id },
        identity,
        inbound: { port: proc.inbound, address: '127.0.0.1', app: 'http://127.0.0.1:9' },
        outbound: { port: 0 },
        admin: { port: proc.admin },
        // By default no failure detector: it would shrink the ring under a partition.
        health: options.health ?? { enabled: false },
        context: {
          port: proc.context,
          l2: { backend: 'memory' },
          wal: { fsync: options.fsync ?? 'always' },
          checkpoint: { dir: join(work, 'data') },
          replication: {
            factor: 3,
            peers: initial.filter((p) => p !== proc).map((p) => ({ id: p.id, address: `127.0.0.1:${p.inbound}` })),
            peerTimeout: '1s',
            writeTimeout: '2s',
            hints: { interval: '100ms' },
            ...options.replication,
          },
        },
        log: { level: 'warn', accessLog: false },
      }),
    );
  }

  const start = async (proc: SidecarProc): Promise<void> => {
    proc.stderr = '';
    const child = spawn(process.execPath, [CLI, 'sidecar', '-c', proc.configFile], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CTXMESH_FAULTS: '1' } });
    proc.child = child;
    child.stderr!.on('data', (c: Buffer) => (proc.stderr += c.toString()));
    const exited = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`${proc.id} exited (${code}) before ready:\n${proc.stderr}`))));
    const ready = until(
      async () => (await request(`http://127.0.0.1:${proc.admin}/ready`).then(async (r) => (await r.body.text(), r.statusCode)).catch(() => 0)) === 200,
      READY_TIMEOUT_MS,
      `${proc.id} to be ready`,
    );
    await Promise.race([ready, exited]);
    exited.catch(() => undefined);
  };

  const kill = async (proc: SidecarProc, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    const child = proc.child;
    proc.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exit = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exit;
  };

  const block = async (proc: SidecarProc, peers: string[]): Promise<void> => {
    const res = await request(`http://127.0.0.1:${proc.admin}/faults`, peers.length === 0 ? { method: 'DELETE' } : { method: 'POST', body: JSON.stringify({ block: peers }), headers: { 'content-type': 'application/json' } });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`faults on ${proc.id}: ${res.statusCode} ${text}`);
  };

  await Promise.all(initial.map(start));
  return {
    procs,
    proc: (id) => procs.find((p) => p.id === id)!,
    start,
    kill,
    block,
    close: async () => {
      await Promise.all(procs.map((p) => kill(p)));
    },
  };
}

export interface ApiReply {
  status: number;
  body: string;
  etag: string | undefined;
  session: string | undefined;
  error: string | undefined;
}

/** One context API call; transport failures reject (the caller decides what they mean). */
export async function api(
  proc: SidecarProc,
  method: 'GET' | 'PUT' | 'DELETE',
  key: string,
  options: { body?: string; consistency?: string; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<ApiReply> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.body !== undefined) headers['content-type'] = 'text/plain';
  if (options.consistency) headers['ctxmesh-consistency'] = options.consistency;
  const res = await request(`http://127.0.0.1:${proc.context}/v1/contexts/${key}`, {
    method,
    body: options.body,
    headers,
    headersTimeout: options.timeoutMs ?? 8_000,
    bodyTimeout: options.timeoutMs ?? 8_000,
  });
  const one = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);
  return { status: res.statusCode, body: await res.body.text(), etag: one(res.headers.etag), session: one(res.headers['ctxmesh-session']), error: one(res.headers['x-ctxmesh-error']) };
}
