import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPki, send, sidecarConfig, startApp, startSidecar, type RunningSidecar, type TestApp, type TestPki } from '../helpers/mesh.js';

describe('outbound routing and the mTLS path between two sidecars', () => {
  let pki: TestPki;
  let appB: TestApp;
  let plain: TestApp;
  let a: RunningSidecar;
  let b: RunningSidecar;

  beforeAll(async () => {
    pki = await createPki();
    appB = await startApp('b');
    plain = await startApp('plain');
    b = await startSidecar(sidecarConfig(await pki.issue('b'), { node: { id: 'b' }, inbound: { app: appB.url } }));
    a = await startSidecar(
      sidecarConfig(await pki.issue('a'), {
        node: { id: 'a' },
        clusters: [
          { name: 'chat', domains: ['chat', 'chat.default.svc'], tls: 'mesh', endpoints: [{ address: b.inboundAddress }] },
          { name: 'plain', domains: ['*.plain.test'], tls: 'none', endpoints: [{ address: plain.address }] },
        ],
      }),
    );
  });

  afterAll(async () => {
    await a?.sidecar.close();
    await b?.sidecar.close();
    await appB?.close();
    await plain?.close();
  });

  it('routes by Host over mTLS and tells the app who called, verified', async () => {
    const reply = await send(a.outbound, '/v1/chat?x=1', { host: 'chat', headers: { 'x-ctxmesh-peer-identity': 'spiffe://evil/forged' } });
    expect(reply.status).toBe(200);
    const seen = JSON.parse(reply.body);
    expect(seen.app).toBe('b');
    expect(seen.url).toBe('/v1/chat?x=1');
    expect(seen.headers.host).toBe('chat');
    expect(seen.headers['x-ctxmesh-peer-identity']).toBe('spiffe://ctxmesh.local/ns/default/sa/a');
    expect(seen.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('routes an absolute-form target (explicit proxy mode) by its authority', async () => {
    const reply = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: a.sidecar.ports.outbound, path: 'http://chat.default.svc:80/abs', method: 'GET' }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).url).toBe('/abs');
    expect(JSON.parse(reply.body).headers.host).toBe('chat.default.svc:80');
  });

  it('matches wildcard domains and ignores the port in Host', async () => {
    const reply = await send(a.outbound, '/w', { host: 'api.plain.test:8080' });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).app).toBe('plain');
  });

  it('answers an unknown host with 404 no_route', async () => {
    const reply = await send(a.outbound, '/', { host: 'nowhere' });
    expect(reply.status).toBe(404);
    expect(reply.headers['x-ctxmesh-error']).toBe('no_route');
    expect(JSON.parse(reply.body).error).toBe('no_route');
  });

  it('streams a request body to the app and a chunked response back', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024, 'x');
    const reply = await send(a.outbound, '/upload', { host: 'chat', method: 'POST', body: big });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).body.length).toBe(big.length);
  });

  it('relays a response as it streams, before the upstream has finished it', async () => {
    let finish!: () => void;
    const streaming = await startApp('stream', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first;');
      finish = () => res.end('last');
    });
    const c = await startSidecar(
      sidecarConfig(await pki.issue('c'), { clusters: [{ name: 's', domains: ['s'], tls: 'none', endpoints: [{ address: streaming.address }] }] }),
    );
    try {
      const first = await new Promise<string>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: c.sidecar.ports.outbound, path: '/', headers: { host: 's' } }, (res) => {
          res.once('data', (chunk: Buffer) => {
            resolve(chunk.toString());
            finish();
            res.resume();
          });
        });
        req.on('error', reject);
        req.end();
      });
      expect(first).toBe('first;');
    } finally {
      await c.sidecar.close();
      await streaming.close();
    }
  });

  it('writes one access-log line per request with the fields operators need', async () => {
    await send(a.outbound, '/logged', { host: 'chat' });
    const line = a.logs.access().find((l) => l.path === '/logged');
    expect(line).toMatchObject({ direction: 'outbound', method: 'GET', authority: 'chat', status: 200, upstream: b.inboundAddress, attempts: 1 });
    expect(typeof line?.duration_ms).toBe('number');
    const inbound = b.logs.access().find((l) => l.path === '/logged');
    expect(inbound).toMatchObject({ direction: 'inbound', peer: 'spiffe://ctxmesh.local/ns/default/sa/a', status: 200 });
  });
});
