// Three (or more) in-process sidecars replicating to each other over real mTLS, for the
// replication tests: fixed inbound ports (peers are configured by address), one data dir each so
// a sidecar can be stopped and started again with its state, and the context API as a client
// would call it.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { beforeAll } from 'vitest';
import type { PeerHandler } from '../../../src/peer/router.js';
import { closeAfterEach, createPki, sidecarConfig, startSidecar, type ConfigInput, type IdentityFiles, type RunningSidecar } from '../../helpers/mesh.js';
import { freePort } from '../../helpers/redis.js';

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export interface Node {
  id: string;
  inboundPort: number;
  dir: string;
  running: RunningSidecar | undefined;
  api(): string;
}

export interface TestCluster {
  nodes: Node[];
  node(id: string): Node;
  start(id: string): Promise<Node>;
  stop(id: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * For a describe block: one replica identity (issued once, before its tests) and a function that
 * starts a cluster with it, closed after the test that started it.
 */
export function clusterPerTest(): (ids: string[], replication?: ConfigInput) => Promise<TestCluster> {
  const closers = closeAfterEach();
  let identity: IdentityFiles;
  beforeAll(async () => {
    identity = await (await createPki()).issue('replica');
  });
  return async (ids, replication = {}) => {
    const c = await startCluster(identity, ids, replication);
    closers.push(() => c.close());
    return c;
  };
}

export async function startCluster(identity: IdentityFiles, ids: string[], replication: ConfigInput = {}): Promise<TestCluster> {
  const nodes: Node[] = [];
  for (const id of ids) {
    const node: Node = {
      id,
      inboundPort: await freePort(),
      dir: mkdtempSync(join(tmpdir(), `ctxmesh-repl-${id}-`)),
      running: undefined,
      api() {
        if (!this.running) throw new Error(`${id} is not running`);
        return `http://127.0.0.1:${this.running.sidecar.ports.context}`;
      },
    };
    nodes.push(node);
  }
  const node = (id: string): Node => nodes.find((n) => n.id === id)!;
  const start = async (id: string): Promise<Node> => {
    const self = node(id);
    const config = sidecarConfig(identity, {
      node: { id },
      inbound: { port: self.inboundPort },
      context: {
        port: 0,
        wal: { fsync: 'none' },
        checkpoint: { dir: self.dir },
        replication: {
          factor: 3,
          peers: nodes.filter((n) => n.id !== id).map((n) => ({ id: n.id, address: `127.0.0.1:${n.inboundPort}` })),
          peerTimeout: '1s',
          writeTimeout: '2s',
          hints: { interval: '100ms' },
          ...replication,
        },
      },
      log: { level: 'warn', accessLog: false },
    });
    self.running = await startSidecar(config);
    return self;
  };
  const stop = async (id: string): Promise<void> => {
    const self = node(id);
    const running = self.running;
    self.running = undefined;
    await running?.sidecar.close();
  };
  for (const id of ids) await start(id);
  return {
    nodes,
    node,
    start,
    stop,
    async close() {
      for (const n of nodes) await stop(n.id);
    },
  };
}

export async function call(
  base: string,
  method: 'GET' | 'PUT' | 'DELETE' | 'PATCH',
  key: string,
  options: { body?: string; consistency?: string; session?: string; headers?: Record<string, string> } = {},
): Promise<Reply> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.body !== undefined) headers['content-type'] ??= 'text/plain';
  if (options.consistency) headers['ctxmesh-consistency'] = options.consistency;
  if (options.session) headers['ctxmesh-session'] = options.session;
  const res = await request(`${base}/v1/contexts/${key}`, { method, body: options.body, headers });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

/** Wraps a node's peer handler: `gate` decides per call whether to pass, fail (status) or hold. */
export function interceptPeer(node: Node, name: string, gate: (body: Buffer) => 'pass' | number | Promise<'pass' | number>): () => void {
  const router = node.running!.sidecar.peers;
  const original = router.get(name)!;
  const wrapped: PeerHandler = async (body, caller) => {
    const verdict = await gate(body);
    if (verdict === 'pass') return original(body, caller);
    return { status: verdict, body: { error: 'injected', message: `injected failure of ${name}` } };
  };
  router.replace(name, wrapped);
  return () => router.replace(name, original);
}
