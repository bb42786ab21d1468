// The admin API on a real sidecar, and graceful shutdown: POST /drain in process, SIGTERM on a
// real child process running the built CLI.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { ServerResponse } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createPki,
  send,
  sidecarConfig,
  startApp,
  startSidecar,
  until,
  type IdentityFiles,
  type RunningSidecar,
  type TestApp,
  type TestPki,
} from '../helpers/mesh.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(ROOT, 'dist/src/cli/main.js');

/** An app that holds each request open until the test releases it, so "in flight" is a fact, not a race. */
async function startHeldApp(name: string): Promise<TestApp & { held: ServerResponse[]; release(): void }> {
  const held: ServerResponse[] = [];
  const app = await startApp(name, (_req, res) => held.push(res));
  return Object.assign(app, {
    held,
    release() {
      for (const res of held.splice(0)) res.end(`released by ${name}`);
    },
  });
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A request on its own connection (no agent), so that what happens to it is about this request alone. */
function request(port: number, path: string, host: string, method = 'GET'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method, agent: false, headers: { host } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

function connectError(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code));
  });
}

/** The value of one sample of the Prometheus text whose labels include all of `labels`. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found = Object.fromEntries([...(match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) return Number(match[3]);
  }
  return undefined;
}

describe('admin API', () => {
  let pki: TestPki;
  let app: TestApp;
  let identity: IdentityFiles;
  let s: RunningSidecar;

  beforeAll(async () => {
    pki = await createPki();
    app = await startApp('plain');
    identity = await pki.issue('admin-test');
    s = await startSidecar(
      sidecarConfig(identity, {
        node: { id: 'node-admin', cluster: 'chat', zone: 'z1' },
        clusters: [{ name: 'plain', domains: ['plain'], tls: 'none', lb: 'least_request', endpoints: [{ address: app.address }] }],
      }),
    );
  });

  afterAll(async () => {
    await s?.sidecar.close();
    await app?.close();
  });

  it('GET /healthz is 200', async () => {
    const reply = await send(s.admin, '/healthz');
    expect(reply.status).toBe(200);
    expect(reply.body).toBe('ok\n');
    expect((await send(s.admin, '/healthz?verbose=1')).status).toBe(200);
  });

  it('GET /ready is 200 once started', async () => {
    const reply = await send(s.admin, '/ready');
    expect(reply.status).toBe(200);
    expect(reply.body).toBe('ready\n');
  });

  it('GET /metrics counts requests by cluster and status, and times them in buckets', async () => {
    const before = (await send(s.admin, '/metrics')).body;
    const ok = { direction: 'outbound', cluster: 'plain', status: '200' };
    const okBefore = sample(before, 'ctxmesh_requests_total', ok) ?? 0;
    const countBefore = sample(before, 'ctxmesh_request_duration_seconds_count', { direction: 'outbound', cluster: 'plain' }) ?? 0;

    for (let i = 0; i < 3; i++) expect((await send(s.outbound, `/m${i}`, { host: 'plain' })).status).toBe(200);
    expect((await send(s.outbound, '/nowhere', { host: 'nowhere' })).status).toBe(404);

    const reply = await send(s.admin, '/metrics');
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = reply.body;
    expect(text).toContain('# TYPE ctxmesh_requests_total counter');
    expect(text).toContain('# TYPE ctxmesh_request_duration_seconds histogram');
    expect(sample(text, 'ctxmesh_requests_total', { ...ok, error: '' })).toBe(okBefore + 3);
    expect(sample(text, 'ctxmesh_requests_total', { direction: 'outbound', cluster: '-', status: '404', error: 'no_route' })).toBeGreaterThanOrEqual(1);

    const labels = { direction: 'outbound', cluster: 'plain' };
    const count = sample(text, 'ctxmesh_request_duration_seconds_count', labels);
    expect(count).toBe(countBefore + 3);
    expect(sample(text, 'ctxmesh_request_duration_seconds_bucket', { ...labels, le: '+Inf' })).toBe(count);
    const buckets = [...text.matchAll(/^ctxmesh_request_duration_seconds_bucket\{([^}]*)\} (\S+)$/gm)].filter((m) => m[1]!.includes('cluster="plain"'));
    expect(buckets.length).toBeGreaterThan(5);
    // Cumulative: each bucket holds at least as many as the one before it.
    const values = buckets.map((m) => Number(m[2]));
    expect(values).toEqual([...values].sort((a, b) => a - b));
    expect(sample(text, 'ctxmesh_request_duration_seconds_sum', labels)).toBeGreaterThan(0);
  });

  it('GET /config_dump shows the node and listeners, and never the private key', async () => {
    const reply = await send(s.admin, '/config_dump');
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toBe('application/json');
    const dump = JSON.parse(reply.body);
    expect(dump.node).toEqual({ id: 'node-admin', cluster: 'chat', zone: 'z1' });
    expect(dump.listeners).toEqual({
      inbound: s.sidecar.ports.inbound,
      outbound: s.sidecar.ports.outbound,
      admin: s.sidecar.ports.admin,
      context: s.sidecar.ports.context,
    });
    expect(s.sidecar.ports.context).toBeGreaterThan(0);
    expect(dump.identity.spiffeId).toBe('spiffe://ctxmesh.local/ns/default/sa/admin-test');
    expect(dump.config.clusters[0].name).toBe('plain');

    expect(reply.body).not.toMatch(/PRIVATE KEY/);
    const keyBody = readFileSync(identity.key, 'utf8').split('\n').filter((line) => line && !line.startsWith('-----'));
    expect(keyBody.length).toBeGreaterThan(5);
    for (const line of keyBody) expect(reply.body).not.toContain(line);
  });

  it('GET /clusters describes each cluster and its endpoints', async () => {
    const reply = await send(s.admin, '/clusters');
    expect(reply.status).toBe(200);
    const body = JSON.parse(reply.body);
    expect(body.clusters).toHaveLength(1);
    expect(body.clusters[0]).toMatchObject({
      name: 'plain',
      lb: 'least_request',
      tls: 'none',
      domains: ['plain'],
      active_requests: 0,
      pending_requests: 0,
      active_retries: 0,
    });
    expect(body.clusters[0].endpoints).toEqual([
      expect.objectContaining({ address: app.address, priority: 0, healthy: true, circuit_breaker: 'closed', ejected: false, active_requests: 0 }),
    ]);
    expect(body.inbound_app).toMatchObject({ name: 'inbound|app', endpoints: [expect.objectContaining({ address: '127.0.0.1:9' })] });
  });

  it('answers an unknown path with 404 not_found', async () => {
    const reply = await send(s.admin, '/nope');
    expect(reply.status).toBe(404);
    expect(reply.headers['x-ctxmesh-error']).toBe('not_found');
    expect(JSON.parse(reply.body).error).toBe('not_found');
  });

  it('answers a wrong method with 405 method_not_allowed', async () => {
    for (const [method, path] of [['POST', '/healthz'], ['DELETE', '/metrics'], ['GET', '/drain']] as const) {
      const reply = await send(s.admin, path, { method });
      expect(reply.status, `${method} ${path}`).toBe(405);
      expect(reply.headers['x-ctxmesh-error']).toBe('method_not_allowed');
    }
    // The refused GET /drain did not drain.
    expect((await send(s.admin, '/ready')).status).toBe(200);
  });
});

describe('POST /drain', () => {
  let pki: TestPki;
  let app: Awaited<ReturnType<typeof startHeldApp>>;
  let s: RunningSidecar;

  beforeAll(async () => {
    pki = await createPki();
    app = await startHeldApp('slow');
    s = await startSidecar(
      sidecarConfig(await pki.issue('drainer'), {
        drainTimeout: '10s',
        clusters: [{ name: 'slow', domains: ['slow'], tls: 'none', endpoints: [{ address: app.address }] }],
      }),
    );
  });

  afterAll(async () => {
    app?.release();
    await s?.sidecar.close();
    await app?.close();
  });

  it('stops readiness and new connections, lets the in-flight request finish, then completes', async () => {
    const outboundPort = s.sidecar.ports.outbound;
    const inFlight = request(outboundPort, '/slow', 'slow');
    await until(() => app.held.length === 1, 2_000, 'the slow request to reach the app');

    const drainReply = await send(s.admin, '/drain', { method: 'POST' });
    expect(drainReply.status).toBe(202);
    expect(JSON.parse(drainReply.body)).toEqual({ draining: true });
    let drained = false;
    void s.sidecar.drain().then(() => (drained = true));

    const ready = await send(s.admin, '/ready');
    expect(ready.status).toBe(503);
    expect(ready.headers['x-ctxmesh-error']).toBe('draining');
    expect(await connectError(outboundPort)).toBe('ECONNREFUSED');
    expect(await connectError(s.sidecar.ports.inbound)).toBe('ECONNREFUSED');
    // The admin API stays up through the drain; the drain waits for the request.
    expect((await send(s.admin, '/healthz')).status).toBe(200);
    expect(drained).toBe(false);
    expect(s.sidecar.inFlight).toBe(1);

    app.release();
    const answer = await inFlight;
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('released by slow');
    expect(answer.headers.connection).toBe('close');
    await until(() => drained, 2_000, 'the drain to complete');
    expect(s.sidecar.inFlight).toBe(0);
    expect(s.logs.lines.some((l) => l.msg === 'drained')).toBe(true);
    expect(s.logs.lines.some((l) => l.msg === 'drain timeout: closing remaining connections')).toBe(false);
  });
});

describe('a drain that outlasts drainTimeout', () => {
  let pki: TestPki;
  let app: Awaited<ReturnType<typeof startHeldApp>>;
  let s: RunningSidecar;

  beforeAll(async () => {
    pki = await createPki();
    app = await startHeldApp('stuck');
    s = await startSidecar(
      sidecarConfig(await pki.issue('stuck'), {
        drainTimeout: '200ms',
        clusters: [{ name: 'stuck', domains: ['stuck'], tls: 'none', endpoints: [{ address: app.address }] }],
      }),
    );
  });

  afterAll(async () => {
    app?.release();
    await s?.sidecar.close();
    await app?.close();
  });

  it('cuts what is still in flight at the deadline and completes', async () => {
    const inFlight = request(s.sidecar.ports.outbound, '/never-answered', 'stuck').then(
      (answer) => ({ answer, error: undefined }),
      (error: NodeJS.ErrnoException) => ({ answer: undefined, error }),
    );
    await until(() => app.held.length === 1, 2_000, 'the request to reach the app');
    const startedAt = performance.now();
    await s.sidecar.drain();
    const tookMs = performance.now() - startedAt;
    expect(tookMs).toBeGreaterThanOrEqual(180);
    expect(tookMs).toBeLessThan(2_000);
    const outcome = await inFlight;
    expect(outcome.answer).toBeUndefined();
    expect(outcome.error?.code).toBe('ECONNRESET');
    expect(s.logs.lines.some((l) => l.msg === 'drain timeout: closing remaining connections' && l.inFlight === 1)).toBe(true);
    expect((await send(s.admin, '/ready')).status).toBe(503);
  });
});

describe('a drain with a TLS handshake still open', () => {
  it('cuts the half-open connection instead of waiting out the handshake timeout', async () => {
    const pki = await createPki();
    const s = await startSidecar(sidecarConfig(await pki.issue('half-open'), { drainTimeout: '10s', limits: { headersTimeout: '120s' } }));
    try {
      // A TCP connection that never sends its ClientHello: node's HTTP layer has not seen it, so
      // only the listener's own socket list can close it (otherwise it holds close() until the
      // handshake times out, here after 120 s: past this test's timeout).
      const socket = net.connect(s.sidecar.ports.inbound, '127.0.0.1');
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.on('error', () => {});
      await s.sidecar.drain();
      await closed;
      expect(socket.destroyed).toBe(true);
      expect(s.logs.lines.some((l) => l.msg === 'drained')).toBe(true);
    } finally {
      await s.sidecar.close();
    }
  });
});

describe('the sidecar as a child process', () => {
  let pki: TestPki;
  let app: Awaited<ReturnType<typeof startHeldApp>>;
  let dir: string;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'ignore', timeout: 120_000 });
    pki = await createPki();
    app = await startHeldApp('slow');
    dir = mkdtempSync(join(tmpdir(), 'ctxmesh-admin-'));
  });

  afterAll(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    app?.release();
    await app?.close();
  });

  interface Child {
    process: ChildProcess;
    ports: { inbound: number; outbound: number; admin: number };
    lines: Array<Record<string, unknown>>;
    exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  }

  async function spawnSidecar(name: string): Promise<Child> {
    const identity = await pki.issue(name);
    const file = join(dir, `${name}.yaml`);
    writeFileSync(
      file,
      [
        `node: { id: ${name} }`,
        `identity: { cert: ${identity.cert}, key: ${identity.key}, ca: ${identity.ca} }`,
        `inbound: { port: 0, address: 127.0.0.1, app: ${app.url} }`,
        'outbound: { port: 0 }',
        'admin: { port: 0 }',
        'drainTimeout: 10s',
        'clusters:',
        `  - { name: slow, domains: [slow], tls: none, endpoints: [{ address: ${app.address} }] }`,
      ].join('\n'),
    );
    const child = spawn(process.execPath, [CLI, 'sidecar', '-c', file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    const lines: Array<Record<string, unknown>> = [];
    let partial = '';
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      const text = partial + chunk.toString();
      const parts = text.split('\n');
      partial = parts.pop()!;
      for (const line of parts) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
    });
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    await until(() => lines.some((l) => l.msg === 'sidecar ready') || child.exitCode !== null, 10_000, `${name} to be ready`);
    const ready = lines.find((l) => l.msg === 'sidecar ready');
    if (!ready) throw new Error(`${name} exited with ${child.exitCode}: ${stderr}`);
    return { process: child, ports: ready.ports as Child['ports'], lines, exited };
  }

  it('on SIGTERM finishes the in-flight request with 200, then exits 0', async () => {
    const child = await spawnSidecar('term');
    expect((await send(`http://127.0.0.1:${child.ports.admin}`, '/ready')).status).toBe(200);
    const inFlight = request(child.ports.outbound, '/slow-through-child', 'slow');
    await until(() => app.held.length === 1, 5_000, 'the slow request to reach the app');

    child.process.kill('SIGTERM');
    await until(() => child.lines.some((l) => l.msg === 'draining'), 5_000, 'the child to start draining');
    expect(child.process.exitCode).toBeNull();
    expect(await connectError(child.ports.outbound)).toBe('ECONNREFUSED');

    app.release();
    const answer = await inFlight;
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('released by slow');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(child.lines.some((l) => l.msg === 'drained')).toBe(true);
    expect(child.lines.find((l) => l.kind === 'access' && l.path === '/slow-through-child')).toMatchObject({ status: 200 });
  });

  it('SIGKILL leaves nothing listening behind', async () => {
    const child = await spawnSidecar('kill');
    expect((await send(`http://127.0.0.1:${child.ports.admin}`, '/healthz')).status).toBe(200);
    child.process.kill('SIGKILL');
    expect(await child.exited).toEqual({ code: null, signal: 'SIGKILL' });
    for (const port of [child.ports.outbound, child.ports.inbound, child.ports.admin]) expect(await connectError(port)).toBe('ECONNREFUSED');
  });
});
