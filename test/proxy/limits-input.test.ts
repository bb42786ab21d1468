// Hostile and broken input at the listeners, from raw sockets: oversized heads and bodies,
// slowloris, malformed requests. Each is answered by the proxy itself with its mesh error, never
// reaches the upstream, and leaves the sidecar serving everyone else.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
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

/** `4KiB` and `64KiB` in the sidecar's config below. */
const MAX_HEADER_BYTES = 4 * 1024;
const MAX_BODY_BYTES = 64 * 1024;
const HEADERS_TIMEOUT_MS = 300;
/** A raw exchange that has not settled by then is a hang, and fails the test. */
const RAW_TIMEOUT_MS = 5_000;

interface RawResult {
  received: string;
  error: NodeJS.ErrnoException | undefined;
  /** ms from connect to the first byte of the answer (undefined if none came). */
  firstByteMs: number | undefined;
}

type Connect = () => net.Socket;

/**
 * Writes `parts` one after another as the socket accepts them, stopping early once the server
 * has answered, and resolves when the connection closes with everything the server sent.
 */
function rawExchange(connect: Connect, parts: Array<string | Buffer>): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const result: RawResult = { received: '', error: undefined, firstByteMs: undefined };
    const socket = connect();
    const startedAt = performance.now();
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`raw exchange did not settle in ${RAW_TIMEOUT_MS}ms (received ${JSON.stringify(result.received.slice(0, 200))})`));
    }, RAW_TIMEOUT_MS);
    const writeNext = (i: number): void => {
      if (i >= parts.length || result.received !== '' || socket.destroyed) return;
      socket.write(parts[i]!, () => setImmediate(() => writeNext(i + 1)));
    };
    socket.once(socket instanceof tls.TLSSocket ? 'secureConnect' : 'connect', () => writeNext(0));
    socket.on('data', (chunk: Buffer) => {
      result.firstByteMs ??= performance.now() - startedAt;
      result.received += chunk.toString('latin1');
    });
    socket.on('error', (err: NodeJS.ErrnoException) => (result.error ??= err));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(result);
    });
  });
}

function statusOf(raw: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
}

function headerOf(raw: string, name: string): string | undefined {
  const head = raw.split('\r\n\r\n')[0] ?? '';
  return new RegExp(`^${name}: *(.*)$`, 'im').exec(head)?.[1]?.trim();
}

/** Asserts a complete mesh error response: status line, error header, JSON body, connection closed. */
function expectMeshError(result: RawResult, status: number, code: string): void {
  expect(statusOf(result.received), result.received.slice(0, 300)).toBe(status);
  expect(headerOf(result.received, 'x-ctxmesh-error')).toBe(code);
  expect(headerOf(result.received, 'connection')).toBe('close');
  expect(JSON.parse(result.received.split('\r\n\r\n')[1]!).error).toBe(code);
}

/** What the upstream app saw of each request, body bytes included, complete or not. */
interface Sighting {
  url: string;
  bytes: number;
  /** The body arrived to its end. */
  complete: boolean;
  /** The request is over for the app: answered, or its connection cut. */
  closed: boolean;
}

function watchRequests(app: TestApp): Sighting[] {
  const seen: Sighting[] = [];
  app.server.on('request', (req: IncomingMessage) => {
    const sighting: Sighting = { url: req.url ?? '', bytes: 0, complete: false, closed: false };
    seen.push(sighting);
    req.on('data', (chunk: Buffer) => (sighting.bytes += chunk.length));
    req.on('end', () => (sighting.complete = true));
    req.on('close', () => (sighting.closed = true));
  });
  return seen;
}

function chunked(body: Buffer, chunkBytes: number): string[] {
  const parts: string[] = [];
  for (let offset = 0; offset < body.length; offset += chunkBytes) {
    const piece = body.subarray(offset, offset + chunkBytes);
    parts.push(`${piece.length.toString(16)}\r\n${piece.toString('latin1')}\r\n`);
  }
  return parts;
}

describe('input limits on the outbound listener', () => {
  let pki: TestPki;
  let app: TestApp;
  let seen: Sighting[];
  let s: RunningSidecar;
  let outbound: Connect;

  beforeAll(async () => {
    pki = await createPki();
    app = await startApp('app');
    seen = watchRequests(app);
    s = await startSidecar(
      sidecarConfig(await pki.issue('s'), {
        limits: { maxHeaderBytes: '4KiB', maxBodyBytes: '64KiB', headersTimeout: `${HEADERS_TIMEOUT_MS}ms` },
        clusters: [
          {
            name: 'app',
            domains: ['app'],
            tls: 'none',
            endpoints: [{ address: app.address }],
            // A low threshold, so that a client's fault wrongly charged to the endpoint would show.
            outlierDetection: { consecutive5xx: 2 },
            circuitBreaker: { volumeThreshold: 2 },
          },
        ],
      }),
    );
    outbound = () => net.connect(s.sidecar.ports.outbound, '127.0.0.1');
  });

  afterAll(async () => {
    await s?.sidecar.close();
    await app?.close();
  });

  async function expectStillServing(): Promise<void> {
    const reply = await send(s.outbound, '/still-serving', { host: 'app' });
    expect(reply.status).toBe(200);
    expect(JSON.parse(reply.body).app).toBe('app');
  }

  it('serves an ordinary request under the limits (the control)', async () => {
    const result = await rawExchange(outbound, [`POST /ok HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`]);
    expect(statusOf(result.received)).toBe(200);
    expect(JSON.parse(result.received.split('\r\n\r\n')[1]!).body).toBe('hello');
  });

  it('answers a request head over maxHeaderBytes with 431 headers_too_large', async () => {
    const before = seen.length;
    const result = await rawExchange(outbound, [`GET /big-head HTTP/1.1\r\nHost: app\r\nX-Filler: ${'a'.repeat(2 * MAX_HEADER_BYTES)}\r\n\r\n`]);
    expectMeshError(result, 431, 'headers_too_large');
    expect(seen.length).toBe(before);
    await expectStillServing();
  });

  it('refuses a declared Content-Length over maxBodyBytes with 413 before the upstream sees anything', async () => {
    const before = seen.length;
    // Only the head is sent: the answer must not wait for a body it is going to refuse.
    const result = await rawExchange(outbound, [`POST /too-big HTTP/1.1\r\nHost: app\r\nContent-Length: ${MAX_BODY_BYTES + 1}\r\n\r\n`]);
    expectMeshError(result, 413, 'payload_too_large');
    expect(seen.length).toBe(before);
    const line = s.logs.access().find((l) => l.path === '/too-big');
    expect(line).toMatchObject({ status: 413, error: 'payload_too_large', attempts: 0 });
    await expectStillServing();
  });

  it('refuses an over-limit `Expect: 100-continue` upload without inviting its body', async () => {
    const before = seen.length;
    const result = await rawExchange(outbound, [
      `POST /expect-too-big HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: ${MAX_BODY_BYTES + 1}\r\n\r\n`,
    ]);
    expect(result.received).not.toMatch(/^HTTP\/1\.1 100/);
    expectMeshError(result, 413, 'payload_too_large');
    expect(seen.length).toBe(before);
  });

  it('invites the body of an `Expect: 100-continue` upload within the limit, and relays it', async () => {
    const result = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: s.sidecar.ports.outbound, method: 'POST', path: '/expect-ok', headers: { host: 'app', expect: '100-continue', 'content-length': 5 } },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('continue', () => req.end('hello'));
      req.on('error', reject);
    });
    expect(result.status).toBe(200);
    expect(JSON.parse(result.body).body).toBe('hello');
  });

  it('accepts a chunked body of exactly maxBodyBytes', async () => {
    const body = Buffer.alloc(MAX_BODY_BYTES, 'b');
    const result = await rawExchange(outbound, [
      'POST /at-limit HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n',
      ...chunked(body, 16 * 1024),
      '0\r\n\r\n',
    ]);
    expect(statusOf(result.received)).toBe(200);
    expect(seen.find((r) => r.url === '/at-limit')).toMatchObject({ url: '/at-limit', bytes: MAX_BODY_BYTES, complete: true });
  });

  it('cuts a chunked body at maxBodyBytes: 413 to the client, never a complete body upstream', async () => {
    const body = Buffer.alloc(4 * MAX_BODY_BYTES, 'c');
    const result = await rawExchange(outbound, [
      'POST /over-limit HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n',
      ...chunked(body, 16 * 1024),
      '0\r\n\r\n',
    ]);
    // The app answers only once the whole body has arrived, so no response head was sent before
    // the limit was hit: the client gets the complete mesh error, and the connection is closed.
    expectMeshError(result, 413, 'payload_too_large');
    // The request was already streaming upstream when the limit was hit (the proxy does not
    // buffer bodies); the upstream request is then cut: it got at most the limit, never the end.
    const upstream = seen.filter((r) => r.url === '/over-limit');
    expect(upstream).toHaveLength(1);
    const sighting = upstream[0]!;
    await until(() => sighting.closed, 2_000, 'the upstream request to be cut');
    expect(sighting.bytes).toBeGreaterThan(0);
    expect(sighting.bytes).toBeLessThanOrEqual(MAX_BODY_BYTES);
    expect(sighting.complete).toBe(false);
    expect(app.received.some((r) => r.url === '/over-limit')).toBe(false);
    expect(s.logs.access().find((l) => l.path === '/over-limit')).toMatchObject({ status: 413, error: 'payload_too_large' });
    await expectStillServing();
  });

  it('does not hold oversized uploads against the upstream endpoint (no ejection, breaker closed)', async () => {
    // consecutive5xx is 2: were a client's oversized body counted as the endpoint failing, these
    // three would eject the only endpoint and every other caller would get 503.
    for (let i = 0; i < 3; i++) {
      const result = await rawExchange(outbound, [
        `POST /over-limit-${i} HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n`,
        ...chunked(Buffer.alloc(2 * MAX_BODY_BYTES, 'd'), 16 * 1024),
        '0\r\n\r\n',
      ]);
      expectMeshError(result, 413, 'payload_too_large');
    }
    const clusters = (await (await fetch(`${s.admin}/clusters`)).json()) as { clusters: Array<{ endpoints: Array<{ ejected: boolean; circuit_breaker: string }> }> };
    expect(clusters.clusters[0]!.endpoints[0]).toMatchObject({ ejected: false, circuit_breaker: 'closed' });
    await expectStillServing();
  });

  it('answers a stalled request head (slowloris) with 408 after headersTimeout, while serving others', async () => {
    const before = seen.length;
    const stalled = rawExchange(outbound, ['GET /slow HTTP/1.1\r\nHost: app\r\nX-Partial: ']);
    // While that connection dribbles, another client is served at once.
    const startedAt = performance.now();
    await expectStillServing();
    expect(performance.now() - startedAt).toBeLessThan(HEADERS_TIMEOUT_MS);

    const result = await stalled;
    expectMeshError(result, 408, 'request_timeout');
    expect(result.firstByteMs).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 20);
    // Checked every headersTimeout/2, so the answer comes within about 1.5 × headersTimeout.
    expect(result.firstByteMs).toBeLessThan(HEADERS_TIMEOUT_MS * 4);
    expect(seen.filter((r) => r.url === '/slow')).toHaveLength(0);
    expect(seen.length).toBe(before + 1);
  });

  it.each([
    ['garbage bytes', [Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x0d, 0x0a, 0x0d, 0x0a])]],
    ['a bogus request line', ['HELLO THERE\r\n\r\n']],
    ['a control character in a header name', ['GET /x HTTP/1.1\r\nHost: app\r\nX-B\x01d: v\r\n\r\n']],
    ['a control character in a header value', ['GET /x HTTP/1.1\r\nHost: app\r\nX-Bad: v\x00v\r\n\r\n']],
    ['a header line without a colon', ['GET /x HTTP/1.1\r\nHost: app\r\nno colon here\r\n\r\n']],
    ['both Content-Length and chunked', ['POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n']],
    ['a non-numeric Content-Length', ['POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: abc\r\n\r\n']],
  ])('answers %s with 400 bad_request and keeps serving', async (_what, parts) => {
    const before = seen.length;
    const result = await rawExchange(outbound, parts);
    expectMeshError(result, 400, 'bad_request');
    expect(seen.length).toBe(before);
    await expectStillServing();
  });

  it('answers a bad chunk size with 400 bad_request, and the upstream never gets a complete body', async () => {
    const result = await rawExchange(outbound, [
      'POST /bad-chunk HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n',
      '5\r\nhello\r\nZZZ\r\nabc\r\n0\r\n\r\n',
    ]);
    expectMeshError(result, 400, 'bad_request');
    // The head was valid, so the request may have started upstream; its body must not have ended.
    for (const sighting of seen.filter((r) => r.url === '/bad-chunk')) {
      await until(() => sighting.closed, 2_000, 'the upstream request to be cut');
      expect(sighting.bytes).toBeLessThanOrEqual('hello'.length);
      expect(sighting.complete).toBe(false);
    }
    expect(app.received.some((r) => r.url === '/bad-chunk')).toBe(false);
    await expectStillServing();
  });
});

describe('malformed body after the upstream has started answering', () => {
  let pki: TestPki;
  let early: http.Server;
  let bodyEnded = false;
  let s: RunningSidecar;

  beforeAll(async () => {
    pki = await createPki();
    // Answers as soon as the head arrives and streams the response while the body is still coming.
    early = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('started;');
      req.on('data', () => {});
      req.on('end', () => {
        bodyEnded = true;
        res.end('done');
      });
    });
    await new Promise<void>((resolve) => early.listen(0, '127.0.0.1', resolve));
    const { port } = early.address() as net.AddressInfo;
    s = await startSidecar(
      sidecarConfig(await pki.issue('s'), { clusters: [{ name: 'early', domains: ['early'], tls: 'none', endpoints: [{ address: `127.0.0.1:${port}` }] }] }),
    );
  });

  afterAll(async () => {
    await s?.sidecar.close();
    early?.closeAllConnections();
    await new Promise<void>((resolve) => (early ? early.close(() => resolve()) : resolve()));
  });

  it('cuts the relayed response short instead of writing a 400 into the middle of it', async () => {
    const socket = net.connect(s.sidecar.ports.outbound, '127.0.0.1');
    let received = '';
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    socket.write('POST /stream HTTP/1.1\r\nHost: early\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
    await until(() => received.includes('started;'), 2_000, 'the relayed response to start');
    socket.write('ZZZ\r\nnot a chunk\r\n');
    await closed;
    // One response on the wire, its 200 head first; the malformed body ends it early.
    expect(statusOf(received)).toBe(200);
    expect(received.match(/HTTP\/1\.1 /g)).toHaveLength(1);
    expect(received).not.toContain('bad_request');
    expect(received).not.toMatch(/0\r\n\r\n$/);
    expect(bodyEnded).toBe(false);
    const reply = await send(s.outbound, '/after', { host: 'early', method: 'POST', body: 'x' });
    expect(reply.status).toBe(200);
  });
});

describe('malformed input on the inbound (mTLS) listener', () => {
  let pki: TestPki;
  let app: TestApp;
  let seen: Sighting[];
  let s: RunningSidecar;
  let client: IdentityFiles;
  let inbound: Connect;

  beforeAll(async () => {
    pki = await createPki();
    app = await startApp('app');
    seen = watchRequests(app);
    s = await startSidecar(sidecarConfig(await pki.issue('s'), { inbound: { app: app.url }, limits: { headersTimeout: `${HEADERS_TIMEOUT_MS}ms` } }));
    client = await pki.issue('client');
    const options = {
      host: '127.0.0.1',
      port: s.sidecar.ports.inbound,
      ca: readFileSync(join(pki.caDir, 'ca.pem')),
      cert: readFileSync(client.cert),
      key: readFileSync(client.key),
      checkServerIdentity: () => undefined,
    };
    inbound = () => tls.connect(options);
  });

  afterAll(async () => {
    await s?.sidecar.close();
    await app?.close();
  });

  it('answers garbage after a valid handshake with 400 bad_request, and keeps serving', async () => {
    const result = await rawExchange(inbound, ['GET /x HTTP/1.1\r\nHost: app\r\nX-B\x01d: v\r\n\r\n']);
    expectMeshError(result, 400, 'bad_request');
    expect(seen).toHaveLength(0);

    const ok = await rawExchange(inbound, ['GET /fine HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n']);
    expect(statusOf(ok.received)).toBe(200);
    expect(seen.map((r) => r.url)).toEqual(['/fine']);
  });

  it('answers a stalled head after the handshake with 408', async () => {
    const result = await rawExchange(inbound, ['GET /slow HTTP/1.1\r\nHost: app\r\n']);
    expectMeshError(result, 408, 'request_timeout');
    expect(result.firstByteMs).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 20);
    expect(seen.some((r) => r.url === '/slow')).toBe(false);
  });

  it('closes a connection that never starts the TLS handshake within the head timeout', async () => {
    const socket = net.connect(s.sidecar.ports.inbound, '127.0.0.1');
    const startedAt = performance.now();
    socket.on('error', () => {});
    const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(performance.now() - startedAt)));
    // Meanwhile a real peer is served.
    const ok = await rawExchange(inbound, ['GET /during-stall HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n']);
    expect(statusOf(ok.received)).toBe(200);
    const closedAfterMs = await Promise.race([closed, new Promise<number>((resolve) => setTimeout(() => resolve(Infinity), 3_000))]);
    socket.destroy();
    expect(closedAfterMs).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 20);
    expect(closedAfterMs).toBeLessThan(HEADERS_TIMEOUT_MS * 4);
  });
});
