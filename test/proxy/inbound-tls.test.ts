// The inbound listener's mTLS gate, with real handshakes: who gets in, who is refused and how,
// and what a certificate rotation does to open and new connections.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import { join, dirname } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initCa, issueCert } from '../../src/tls/ca.js';
import {
  createPki,
  send,
  sidecarConfig,
  startApp,
  startSidecar,
  type IdentityFiles,
  type RunningSidecar,
  type TestApp,
  type TestPki,
} from '../helpers/mesh.js';

const DAY_MS = 24 * 3_600_000;
/** Every probe settles (close) well within this; a hang is a failure, not a slow pass. */
const PROBE_TIMEOUT_MS = 5_000;

interface ProbeResult {
  /** Whether the client saw its side of the handshake complete. */
  secureConnected: boolean;
  /** Every byte the server sent after the handshake. */
  received: string;
  error: NodeJS.ErrnoException | undefined;
  /** Whether the server closed its side (FIN) rather than the connection erroring. */
  ended: boolean;
}

interface ClientTls {
  cert?: Buffer;
  key?: Buffer;
  maxVersion?: tls.SecureVersion;
}

function clientTls(files: IdentityFiles | undefined, extra: ClientTls = {}): ClientTls {
  return files ? { cert: readFileSync(files.cert), key: readFileSync(files.key), ...extra } : extra;
}

/**
 * Opens a TLS connection as a peer would, sends one request once the handshake completes, and
 * resolves when the connection closes, with everything the server sent. In TLS 1.3 the client's
 * handshake completes before the server has judged the client's certificate, so a refusal shows
 * up after `secureConnect`: as an alert (error) on the first read, or as a closed socket.
 */
function probe(port: number, caPem: Buffer, options: ClientTls, request = 'GET /probe HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n'): Promise<ProbeResult> {
  return new Promise((resolve, reject) => {
    const result: ProbeResult = { secureConnected: false, received: '', error: undefined, ended: false };
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca: caPem,
      // Sidecar certificates carry a SPIFFE URI, not a host name; the chain is still verified.
      checkServerIdentity: () => undefined,
      ALPNProtocols: ['http/1.1'],
      ...options,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`probe did not settle in ${PROBE_TIMEOUT_MS}ms (received ${JSON.stringify(result.received)})`));
    }, PROBE_TIMEOUT_MS);
    socket.on('secureConnect', () => {
      result.secureConnected = true;
      socket.write(request);
    });
    socket.on('data', (chunk: Buffer) => (result.received += chunk.toString('latin1')));
    socket.on('error', (err: NodeJS.ErrnoException) => (result.error ??= err));
    socket.on('end', () => (result.ended = true));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(result);
    });
  });
}

/**
 * A refusal: not one byte of HTTP came back, and the connection ended. OpenSSL itself refuses a
 * missing certificate or an old protocol version with an alert, which the client reads as an
 * error (`alert`); a certificate that fails verification is judged by node after the handshake,
 * which destroys the socket without an alert, so the client sees the server close (`closed`).
 */
function expectRefused(result: ProbeResult, how: { alert: RegExp } | 'closed'): void {
  expect(result.received).toBe('');
  if (how === 'closed') {
    expect(result.error === undefined ? result.ended : true, 'the server should close the connection').toBe(true);
  } else {
    expect(result.error, 'the refusal should surface as a TLS alert').toBeDefined();
    expect(result.error!.code ?? result.error!.message).toMatch(how.alert);
  }
}

function statusOf(raw: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
}

function headerOf(raw: string, name: string): string | undefined {
  const head = raw.split('\r\n\r\n')[0] ?? '';
  return new RegExp(`^${name}: *(.*)$`, 'im').exec(head)?.[1]?.trim();
}

describe('inbound mTLS: who is let in', () => {
  let pki: TestPki;
  let app: TestApp;
  let server: RunningSidecar;
  let serverCa: Buffer;
  let good: IdentityFiles;

  beforeAll(async () => {
    pki = await createPki();
    app = await startApp('app');
    server = await startSidecar(
      sidecarConfig(await pki.issue('server'), {
        node: { id: 'server' },
        inbound: { app: app.url, allow: ['spiffe://ctxmesh.local/ns/default/sa/*', 'spiffe://ctxmesh.local/ns/other/sa/exact'] },
      }),
    );
    serverCa = readFileSync(join(pki.caDir, 'ca.pem'));
    good = await pki.issue('client');
  });

  afterAll(async () => {
    await server?.sidecar.close();
    await app?.close();
  });

  it('serves a caller with a valid mesh certificate (the control for every refusal below)', async () => {
    const result = await probe(server.sidecar.ports.inbound, serverCa, clientTls(good));
    expect(result.secureConnected).toBe(true);
    expect(statusOf(result.received)).toBe(200);
    expect(JSON.parse(result.received.split('\r\n\r\n')[1]!).headers['x-ctxmesh-peer-identity']).toBe(
      'spiffe://ctxmesh.local/ns/default/sa/client',
    );
  });

  it('refuses a client that presents no certificate', async () => {
    const before = app.received.length;
    const result = await probe(server.sidecar.ports.inbound, serverCa, {});
    expectRefused(result, { alert: /CERTIFICATE_REQUIRED/ });
    expect(app.received.length).toBe(before);
  });

  it('refuses a certificate issued by another CA', async () => {
    const otherCa = join(pki.dir, 'other-ca');
    await initCa({ out: otherCa });
    const foreign = await pki.issue('client', { ca: otherCa });
    const result = await probe(server.sidecar.ports.inbound, serverCa, clientTls(foreign));
    expectRefused(result, 'closed');
  });

  it('refuses an expired certificate', async () => {
    const now = Date.now();
    const expired = await pki.issue('client', { notBefore: new Date(now - 2 * DAY_MS), notAfter: new Date(now - DAY_MS) });
    expect(new Date(new X509Certificate(readFileSync(expired.cert)).validTo).getTime()).toBeLessThan(now);
    const result = await probe(server.sidecar.ports.inbound, serverCa, clientTls(expired));
    expectRefused(result, 'closed');
  });

  it('refuses a TLS 1.2-only client', async () => {
    const result = await probe(server.sidecar.ports.inbound, serverCa, clientTls(good, { maxVersion: 'TLSv1.2' }));
    expect(result.secureConnected).toBe(false);
    expectRefused(result, { alert: /PROTOCOL_VERSION/ });
  });

  it('does not count refused handshakes as requests', async () => {
    // A refusal happens before HTTP: the request metrics must not show it as an inbound request
    // failing upstream (which would page someone about a healthy app).
    const port = server.sidecar.ports.inbound;
    expectRefused(await probe(port, serverCa, {}), { alert: /CERTIFICATE_REQUIRED/ });
    expectRefused(await probe(port, serverCa, clientTls(good, { maxVersion: 'TLSv1.2' })), { alert: /PROTOCOL_VERSION/ });
    expect(statusOf((await probe(port, serverCa, clientTls(good))).received)).toBe(200);
    const metrics = await send(server.admin, '/metrics');
    const inbound = metrics.body.split('\n').filter((line) => line.startsWith('ctxmesh_requests_total{') && line.includes('direction="inbound"'));
    expect(inbound.length).toBeGreaterThan(0);
    for (const line of inbound) expect(line).toMatch(/status="200",error=""/);
  });

  it('answers a valid certificate whose SPIFFE ID is not allowed with 403 forbidden, before the app', async () => {
    const before = app.received.length;
    const outsider = await pki.issue('x', { spiffe: 'spiffe://ctxmesh.local/ns/other/sa/x' });
    const result = await probe(server.sidecar.ports.inbound, serverCa, clientTls(outsider));
    expect(result.secureConnected).toBe(true);
    expect(statusOf(result.received)).toBe(403);
    expect(headerOf(result.received, 'x-ctxmesh-error')).toBe('forbidden');
    expect(app.received.length).toBe(before);
  });

  it('admits an exact allow entry, and only that exact identity', async () => {
    const exact = await pki.issue('exact', { spiffe: 'spiffe://ctxmesh.local/ns/other/sa/exact' });
    const ok = await probe(server.sidecar.ports.inbound, serverCa, clientTls(exact));
    expect(statusOf(ok.received)).toBe(200);
    expect(JSON.parse(ok.received.split('\r\n\r\n')[1]!).headers['x-ctxmesh-peer-identity']).toBe('spiffe://ctxmesh.local/ns/other/sa/exact');

    const longer = await pki.issue('exact2', { spiffe: 'spiffe://ctxmesh.local/ns/other/sa/exact2' });
    const refused = await probe(server.sidecar.ports.inbound, serverCa, clientTls(longer));
    expect(statusOf(refused.received)).toBe(403);
    expect(headerOf(refused.received, 'x-ctxmesh-error')).toBe('forbidden');
  });
});

describe('inbound mTLS: certificate rotation', () => {
  let pki: TestPki;
  let app: TestApp;
  let server: RunningSidecar;
  let serverIdentity: IdentityFiles;
  let agent: https.Agent;

  beforeAll(async () => {
    pki = await createPki();
    app = await startApp('app');
    serverIdentity = await pki.issue('server');
    server = await startSidecar(sidecarConfig(serverIdentity, { node: { id: 'server' }, inbound: { app: app.url } }));
  });

  afterAll(async () => {
    agent?.destroy();
    await server?.sidecar.close();
    await app?.close();
  });

  function get(path: string, options: https.RequestOptions): Promise<{ res: IncomingMessage; socket: tls.TLSSocket; body: string; reused: boolean }> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        { host: '127.0.0.1', port: server.sidecar.ports.inbound, path, headers: { host: 'app' }, checkServerIdentity: () => undefined, ...options },
        (res) => {
          // Read now: once the body ends, a keep-alive socket goes back to the agent and res.socket is null.
          const socket = res.socket as tls.TLSSocket;
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ res, socket, body, reused: req.reusedSocket }));
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  it('keeps open connections on the old certificate and gives new ones the new certificate', async () => {
    const client = await pki.issue('client');
    const ca = readFileSync(join(pki.caDir, 'ca.pem'));
    const tlsOptions = { ca, cert: readFileSync(client.cert), key: readFileSync(client.key) };
    agent = new https.Agent({ keepAlive: true, maxSockets: 1, ...tlsOptions });

    const first = await get('/before', { agent });
    expect(first.res.statusCode).toBe(200);
    const longLived = first.socket;
    const oldCert = new X509Certificate(readFileSync(serverIdentity.cert));
    expect(longLived.getPeerCertificate().fingerprint256).toBe(oldCert.fingerprint256);

    // Re-issue into the directory the sidecar loaded from: the three files are replaced in place.
    const rotated = new Promise<string>((resolve) => server.sidecar.identity.once('rotated', resolve));
    await issueCert({ ca: pki.caDir, name: 'server', out: dirname(serverIdentity.cert) });
    const newCert = new X509Certificate(readFileSync(serverIdentity.cert));
    expect(newCert.serialNumber).not.toBe(oldCert.serialNumber);
    expect(await rotated).toBe('spiffe://ctxmesh.local/ns/default/sa/server');
    expect(server.sidecar.identity.cert.equals(readFileSync(serverIdentity.cert))).toBe(true);

    // The open connection is untouched: same socket, same certificate, still served.
    const again = await get('/after-on-old-connection', { agent });
    expect(again.res.statusCode).toBe(200);
    expect(again.reused).toBe(true);
    expect(again.socket).toBe(longLived);
    expect(longLived.getPeerCertificate().fingerprint256).toBe(oldCert.fingerprint256);

    // A new connection is handshaken with the new certificate.
    const fresh = await get('/after-on-new-connection', { agent: false, ...tlsOptions });
    expect(fresh.res.statusCode).toBe(200);
    const seen = fresh.socket.getPeerCertificate();
    expect(seen.fingerprint256).toBe(newCert.fingerprint256);
    expect(seen.serialNumber).toBe(newCert.serialNumber);
    expect(app.received.map((r) => r.url)).toEqual(['/before', '/after-on-old-connection', '/after-on-new-connection']);
  });

  it('still requires and verifies client certificates after a rotation', async () => {
    // setSecureContext replaces the server's TLS context: the mTLS requirement must survive it.
    expect(server.sidecar.identity.listenerCount('rotated')).toBeGreaterThan(0);
    const ca = readFileSync(join(pki.caDir, 'ca.pem'));
    const anonymous = await probe(server.sidecar.ports.inbound, ca, {});
    expectRefused(anonymous, { alert: /CERTIFICATE_REQUIRED/ });
    const downgraded = await probe(server.sidecar.ports.inbound, ca, clientTls(await pki.issue('client'), { maxVersion: 'TLSv1.2' }));
    expectRefused(downgraded, { alert: /PROTOCOL_VERSION/ });
  });
});

describe('outbound mTLS to a peer outside the mesh CA', () => {
  let pki: TestPki;
  let appB: TestApp;
  let a: RunningSidecar;
  let b: RunningSidecar;

  beforeAll(async () => {
    pki = await createPki();
    const otherCa = join(pki.dir, 'other-ca');
    await initCa({ out: otherCa });
    appB = await startApp('b');
    // b is a well-formed sidecar of another mesh: its certificate and CA bundle come from otherCa.
    b = await startSidecar(sidecarConfig(await pki.issue('b', { ca: otherCa }), { node: { id: 'b' }, inbound: { app: appB.url } }));
    a = await startSidecar(
      sidecarConfig(await pki.issue('a'), {
        node: { id: 'a' },
        clusters: [{ name: 'foreign', domains: ['foreign'], tls: 'mesh', endpoints: [{ address: b.inboundAddress }], retry: { attempts: 1, backoff: '1ms' } }],
      }),
    );
  });

  afterAll(async () => {
    await a?.sidecar.close();
    await b?.sidecar.close();
    await appB?.close();
  });

  it('answers 503 connect_failure and never reaches the peer app', async () => {
    const reply = await send(a.outbound, '/x', { host: 'foreign' });
    expect(reply.status).toBe(503);
    expect(reply.headers['x-ctxmesh-error']).toBe('connect_failure');
    expect(JSON.parse(reply.body).error).toBe('connect_failure');
    expect(appB.received).toHaveLength(0);
    const line = a.logs.access().find((l) => l.path === '/x');
    expect(line).toMatchObject({ status: 503, error: 'connect_failure', upstream: b.inboundAddress });
  });
});
