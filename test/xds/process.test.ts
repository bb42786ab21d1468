// `ctxmesh control-plane` as users run it: the built CLI as a child process. Bad config exits 2
// naming the field; SIGKILL and a restart lose nothing a reconnecting client needs (the control
// plane rebuilds from its config and from sidecars re-registering); SIGTERM ends streams, exits 0.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { closeAfterEach, until } from '../helpers/mesh.js';
import { freePort } from '../helpers/redis.js';
import { DeltaClient, SotwClient, TYPE_URL } from './ads-client.js';

const CLI = resolve('dist/src/cli/main.js');
const START_TIMEOUT_MS = 10_000;

const closers = closeAfterEach();
const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-cp-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));


function writeConfig(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

interface Running {
  child: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
}

function runCli(...args: string[]): Running {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolvePromise) => child.once('exit', (code) => resolvePromise(code)));
  closers.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { child, exited, output: () => output };
}

async function startPlane(config: string, adminPort: number): Promise<Running> {
  const running = runCli('control-plane', '-c', config);
  await until(
    async () => {
      if (running.child.exitCode !== null) throw new Error(`control plane exited: ${running.output()}`);
      try {
        return (await request(`http://127.0.0.1:${adminPort}/ready`)).statusCode === 200;
      } catch {
        return false;
      }
    },
    START_TIMEOUT_MS,
    'control plane ready',
  );
  return running;
}

function track<T extends { close(): void }>(client: T): T {
  closers.push(async () => client.close());
  return client;
}

describe('ctxmesh control-plane', () => {
  it('exits 2 on a bad config, naming the field', async () => {
    const bad = writeConfig('bad.yaml', 'services:\n  - name: chat\n    endpoints: [{ address: "nowhere" }]\n    lb: fastest\n');
    const run = runCli('control-plane', '-c', bad);
    expect(await run.exited).toBe(2);
    expect(run.output()).toContain('services[0].endpoints[0].address');
    expect(run.output()).toContain('services[0].lb');
  });

  it('after SIGKILL and a restart, reconnecting clients get the same resources', async () => {
    const [xdsPort, adminPort] = [await freePort(), await freePort()];
    const config = writeConfig(
      'plane.yaml',
      [
        `port: ${xdsPort}`,
        'address: 127.0.0.1',
        `admin: { port: ${adminPort} }`,
        'log: { level: warn }',
        'services:',
        '  - name: search',
        '    tls: none',
        '    lb: ring_hash',
        '    endpoints: [{ address: 127.0.0.1:7001, zone: z1 }, { address: 127.0.0.1:7002, zone: z2, priority: 1 }]',
      ].join('\n'),
    );
    const xds = `127.0.0.1:${xdsPort}`;
    const sidecarNode = { id: 'node-a', cluster: 'chat', zone: 'z1', metadata: { 'ctxmesh.address': '127.0.0.1:25006' } };
    const names = ['search', 'chat'];

    let plane = await startPlane(config, adminPort);
    let sidecar = track(new SotwClient(xds, sidecarNode));
    sidecar.request(TYPE_URL.cluster, []);
    await sidecar.next(TYPE_URL.cluster);
    const observer = track(new DeltaClient(xds, { id: 'observer' }));
    observer.request(TYPE_URL.clusterLoadAssignment, { subscribe: names });
    const before = await observer.next(TYPE_URL.clusterLoadAssignment);
    const versions = Object.fromEntries(before.resources.map((r) => [r.name, r.version]));
    expect(Object.keys(versions).sort()).toEqual(['chat', 'search']);

    plane.child.kill('SIGKILL');
    await plane.exited;
    // Both streams break; the sidecar reconnects (to the restarted plane) with its node as before.
    await expect(observer.next(TYPE_URL.clusterLoadAssignment)).rejects.toThrow();
    plane = await startPlane(config, adminPort);
    sidecar = track(new SotwClient(xds, sidecarNode));
    sidecar.request(TYPE_URL.cluster, []);
    await sidecar.next(TYPE_URL.cluster);

    // A delta client resyncing with what it had gets nothing: every version is the same.
    const resync = track(new DeltaClient(xds, { id: 'observer' }));
    resync.request(TYPE_URL.clusterLoadAssignment, { subscribe: names, initialVersions: versions });
    const fresh = track(new DeltaClient(xds, { id: 'fresh' }));
    fresh.request(TYPE_URL.clusterLoadAssignment, { subscribe: names });
    const after = await fresh.next(TYPE_URL.clusterLoadAssignment);
    expect(Object.fromEntries(after.resources.map((r) => [r.name, r.version]))).toEqual(versions);
    // The resyncing client's first push is a later change, not a resend of what it already had.
    await request(`http://127.0.0.1:${adminPort}/v1/endpoints/drain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'search', address: '127.0.0.1:7001' }),
    });
    const pushed = await resync.next(TYPE_URL.clusterLoadAssignment);
    expect(pushed.resources.map((r) => r.name)).toEqual(['search']);

    plane.child.kill('SIGTERM');
    expect(await plane.exited).toBe(0);
    await expect(sidecar.responses.next(() => false)).rejects.toThrow();
  });
});
