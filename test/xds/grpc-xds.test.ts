// A standard xDS client — gRPC's own, @grpc/grpc-js-xds — resolves `xds:///echo` through our
// control plane (LDS → RDS → CDS → EDS) and reaches real gRPC servers; when the primary endpoint
// is drained, and when a quorum declares the backup failed, its calls follow.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { describe, expect, it } from 'vitest';
import { closeAfterEach, until } from '../helpers/mesh.js';
import { adminGet, adminPost, startControlPlane } from './harness.js';

const closers = closeAfterEach();
const ECHO_PROTO = fileURLToPath(new URL('./fixtures/echo.proto', import.meta.url));
const CLIENT_SCRIPT = fileURLToPath(new URL('./fixtures/grpc-xds-client.mjs', import.meta.url));
/** Time for the child to start, load grpc-js-xds and resolve through LDS/RDS/CDS/EDS. */
const RESOLVE_TIMEOUT_MS = 15_000;

async function startEchoServer(name: string): Promise<string> {
  const definition = protoLoader.loadSync(ECHO_PROTO, { keepCase: true });
  const { Echo } = (grpc.loadPackageDefinition(definition) as any).ctxmesh.test;
  const server = new grpc.Server();
  server.addService(Echo.service, {
    Say: (call: grpc.ServerUnaryCall<{ text: string }, unknown>, callback: grpc.sendUnaryData<unknown>) =>
      callback(null, { server: name, text: call.request.text }),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  closers.push(() => new Promise<void>((resolve) => server.tryShutdown(() => resolve())));
  return `127.0.0.1:${port}`;
}

interface CallLog {
  results: Array<{ n: number; server?: string; error?: string }>;
  child: ChildProcess;
}

function startXdsClient(xdsPort: number, target: string): CallLog {
  const bootstrap = {
    xds_servers: [{ server_uri: `127.0.0.1:${xdsPort}`, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
    node: { id: 'grpc-client-1', cluster: 'tester', locality: { zone: 'z1' } },
  };
  const child = spawn(process.execPath, [CLIENT_SCRIPT, target], {
    env: { ...process.env, GRPC_XDS_BOOTSTRAP_CONFIG: JSON.stringify(bootstrap) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log: CallLog = { results: [], child };
  createInterface({ input: child.stdout! }).on('line', (line) => log.results.push(JSON.parse(line)));
  let stderr = '';
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  closers.push(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      await new Promise((resolve) => child.once('exit', resolve));
    }
    if (stderr.trim()) console.error(stderr);
  });
  return log;
}

/** Resolves once `count` consecutive calls, all after index `from`, reached `server`. */
async function callsSettleOn(log: CallLog, server: string, from: number, count = 10): Promise<number> {
  let settledAt = -1;
  await until(
    () => {
      const recent = log.results.slice(from);
      for (let i = recent.length - count; i >= 0; i--) {
        if (recent.slice(i, i + count).every((r) => r.server === server)) {
          settledAt = from + i;
          return true;
        }
      }
      return false;
    },
    RESOLVE_TIMEOUT_MS,
    `calls settling on ${server}`,
  );
  return settledAt;
}

describe('gRPC xDS client through the control plane', () => {
  it('resolves xds:///echo and follows a drain of the primary to the backup priority', async () => {
    const primary = await startEchoServer('primary');
    const backup = await startEchoServer('backup');
    const plane = await startControlPlane(closers, {
      services: [
        {
          name: 'echo',
          tls: 'none',
          endpoints: [
            { address: primary, zone: 'z1', priority: 0 },
            { address: backup, zone: 'z2', priority: 1 },
          ],
        },
      ],
    });
    const log = startXdsClient(plane.xdsPort, 'xds:///echo');

    // Priority 0 takes every call while it is healthy.
    await callsSettleOn(log, 'primary', 0);
    const { clients } = await adminGet<{ clients: any[] }>(plane, '/v1/clients');
    const grpcClient = clients.find((c) => c.nodeId === 'grpc-client-1');
    expect(grpcClient.variant).toBe('sotw');
    expect(grpcClient.types.map((t: any) => t.typeUrl.split('.').pop()).sort()).toEqual(['Cluster', 'ClusterLoadAssignment', 'Listener', 'RouteConfiguration']);
    for (const type of grpcClient.types) expect(type.nacks).toBe(0);

    // Planned failover: drain the primary; calls move to the backup priority.
    const drained = await adminPost(plane, '/v1/endpoints/drain', { service: 'echo', address: primary });
    expect(drained.status).toBe(200);
    expect(drained.body.endpoint.health).toBe('DRAINING');
    const before = log.results.length;
    await callsSettleOn(log, 'backup', before);
    // A planned drain loses no call.
    expect(log.results.filter((r) => r.error !== undefined)).toEqual([]);

    const { failovers } = await adminGet<{ failovers: any[] }>(plane, '/v1/failovers');
    expect(failovers.at(-1)).toMatchObject({ kind: 'drain', service: 'echo', address: primary });
    // Every response the gRPC client received was accepted.
    const after = await adminGet<{ clients: any[] }>(plane, '/v1/clients');
    for (const type of after.clients.find((c) => c.nodeId === 'grpc-client-1').types) expect(type.nacks).toBe(0);
  }, 40_000);

  it('moves calls off an endpoint that a quorum of sidecars declares failed', async () => {
    const first = await startEchoServer('first');
    const second = await startEchoServer('second');
    const plane = await startControlPlane(closers, { services: [{ name: 'echo', tls: 'none' }] });
    // Two echo servers registered as members, plus two observers: three voters on each subject.
    const members = [
      { nodeId: 'echo-1', address: first },
      { nodeId: 'echo-2', address: second },
      { nodeId: 'watcher-1', address: '127.0.0.1:1', priority: 1 },
      { nodeId: 'watcher-2', address: '127.0.0.2:1', priority: 1 },
    ];
    for (const m of members) {
      const res = await adminPost(plane, '/v1/register', { service: 'echo', zone: 'z1', ...m });
      expect(res.status).toBe(200);
    }
    const log = startXdsClient(plane.xdsPort, 'xds:///echo');
    await until(() => new Set(log.results.map((r) => r.server)).size >= 2, RESOLVE_TIMEOUT_MS, 'calls on both servers');

    for (const observer of ['echo-2', 'watcher-1']) {
      const res = await adminPost(plane, '/v1/health/reports', { observer, reports: [{ subject: 'echo-1', status: 'dead', incarnation: 0 }] });
      expect(res.status).toBe(200);
    }
    const registry = await adminGet<{ services: any[] }>(plane, '/v1/registry');
    const endpoint = registry.services[0].endpoints.find((e: any) => e.nodeId === 'echo-1');
    expect(endpoint).toMatchObject({ health: 'UNHEALTHY', epoch: 1 });
    await callsSettleOn(log, 'second', log.results.length);
  }, 40_000);
});
