// The peer transport with real sidecars and real mTLS: a call between two sidecars over the
// inbound listener, callers that are not sidecar identities refused with 403 before any handler or
// the app, a peer that is down or silent failing fast with a clear MeshError, and an oversized
// body refused. Between sidecars the calls ride framed connections (ALPN ctxmesh-peer/1):
// multiplexed and answered out of order, a lost connection failing what waited on it, an
// oversized answer failing its call alone; a peer that offers only HTTP is called over HTTP.
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { beforeAll, describe, expect, it } from 'vitest';
import { MeshError } from '../../src/errors/table.js';
import { PeerClient } from '../../src/peer/client.js';
import { MeshIdentity } from '../../src/tls/identity.js';
import { closeAfterEach, createPki, deadAddress, sidecarConfig, startApp, startSidecar, until, type ConfigInput, type IdentityFiles, type TestPki } from '../helpers/mesh.js';
import https from 'node:https';
import { FrameReader, PEER_ALPN, encodeCall } from '../../src/peer/frames.js';

describe('peer transport', () => {
  const closers = closeAfterEach();
  let pki: TestPki;
  let aFiles: IdentityFiles;
  let bFiles: IdentityFiles;

  beforeAll(async () => {
    pki = await createPki();
    [aFiles, bFiles] = await Promise.all([pki.issue('peer-a'), pki.issue('peer-b')]);
  });

  async function sidecar(id: string, files: IdentityFiles, overrides: ConfigInput = {}) {
    const app = await startApp(`${id}-app`);
    closers.push(() => app.close());
    const { inbound = {}, context = {}, ...rest } = overrides as { inbound?: ConfigInput; context?: ConfigInput };
    const running = await startSidecar(sidecarConfig(files, { node: { id }, inbound: { app: app.url, ...inbound }, context: { enabled: false, ...context }, ...rest }));
    closers.push(() => running.sidecar.close());
    return { ...running, app };
  }

  function client(files: IdentityFiles, options: ConstructorParameters<typeof PeerClient>[1] = {}): PeerClient {
    const identity = MeshIdentity.load(files);
    const peerClient = new PeerClient(identity, options);
    closers.push(async () => {
      await peerClient.close();
      identity.close();
    });
    return peerClient;
  }

  it('carries a call from one sidecar to another’s handler, with the caller’s verified identity, over kept-alive connections', async () => {
    const a = await sidecar('a', aFiles);
    const b = await sidecar('b', bFiles);
    const callers: string[] = [];
    a.sidecar.peers.add('echo', (body, caller) => {
      callers.push(caller.spiffeId);
      return { body: { got: JSON.parse(body.toString()) as unknown, node: 'a' } };
    });
    a.sidecar.peers.add('bytes', (body) => ({ status: 201, body: Buffer.concat([body, Buffer.from('!')]) }));

    for (let i = 0; i < 5; i++) {
      const response = await b.sidecar.peerClient.call(a.inboundAddress, 'echo', { i });
      expect(response.status).toBe(200);
      expect(response.json()).toEqual({ got: { i }, node: 'a' });
    }
    const binary = await b.sidecar.peerClient.call(a.inboundAddress, 'bytes', Buffer.from([1, 2, 3]));
    expect([binary.status, [...binary.body]]).toEqual([201, [1, 2, 3, 33]]);
    expect(new Set(callers)).toEqual(new Set(['spiffe://ctxmesh.local/ns/default/sa/peer-b']));
    // Peer traffic never reaches the app.
    expect(a.app.received).toEqual([]);

    // Unknown handler: a clear 404 from the peer, still not the app.
    const unknown = await b.sidecar.peerClient.call(a.inboundAddress, 'nope', {});
    expect([unknown.status, unknown.error]).toEqual([404, 'not_found']);
    expect(() => PeerClient.ok(unknown, a.inboundAddress, 'nope')).toThrow(/refused nope \(404: no peer handler "nope"/);
    expect(a.app.received).toEqual([]);
  });

  it('refuses callers outside context.replication.allow with 403 before any handler or the app', async () => {
    const a = await sidecar('a', aFiles, { context: { enabled: false, replication: { allow: ['spiffe://ctxmesh.local/ns/default/sa/peer-b'] } } });
    let calls = 0;
    a.sidecar.peers.add('echo', () => ({ body: { ok: true }, status: 200 + 0 * calls++ }));

    const intruder = client(await pki.issue('intruder'));
    const refused = await intruder.call(a.inboundAddress, 'echo', { hi: 1 });
    expect([refused.status, refused.error]).toEqual([403, 'forbidden']);
    expect(refused.json<{ message: string }>().message).toMatch(/intruder is not a sidecar identity/);

    const allowed = await client(bFiles).call(a.inboundAddress, 'echo', {});
    expect(allowed.status).toBe(200);
    expect(calls).toBe(1);
    expect(a.app.received).toEqual([]);
  });

  it('refuses, by default, identities of another trust domain, even when inbound.allow admits them to the app', async () => {
    const a = await sidecar('a', aFiles, { inbound: { allow: ['*'] } });
    a.sidecar.peers.add('echo', () => ({ body: {} }));
    const foreign = await pki.issue('foreign', { spiffe: 'spiffe://other.example/ns/default/sa/foreign' });
    const call = (path: string) =>
      new Promise<{ status: number; error: unknown }>((resolve, reject) => {
        const req = https.request(
          {
            host: '127.0.0.1',
            port: Number(a.inboundAddress.split(':')[1]),
            path,
            method: 'POST',
            cert: readFileSync(foreign.cert),
            key: readFileSync(foreign.key),
            ca: readFileSync(foreign.ca),
            checkServerIdentity: () => undefined,
          },
          (res) => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode!, error: res.headers['x-ctxmesh-error'] }));
          },
        );
        req.on('error', reject);
        req.end('{}');
      });
    expect(await call('/.ctxmesh/peer/echo')).toEqual({ status: 403, error: 'forbidden' });
    // The same caller reaches the app on any other path: only peer paths are closed to it.
    expect(await call('/hello')).toEqual({ status: 200, error: undefined });
    expect(a.app.received.map((r) => r.url)).toEqual(['/hello']);
  });

  it('fails fast and clearly when the peer is down, and with upstream_timeout when it does not answer', async () => {
    const b = await sidecar('b', bFiles);
    const dead = await deadAddress();
    const down = await b.sidecar.peerClient.call(dead, 'echo', {}).catch((err: unknown) => err);
    expect(down).toBeInstanceOf(MeshError);
    expect((down as MeshError).code).toBe('connect_failure');
    expect((down as MeshError).message).toContain(dead);

    const a = await sidecar('a', aFiles);
    a.sidecar.peers.add('silent', () => new Promise(() => undefined));
    const silent = await b.sidecar.peerClient.call(a.inboundAddress, 'silent', {}, { timeoutMs: 200 }).catch((err: unknown) => err);
    expect(silent).toBeInstanceOf(MeshError);
    expect([(silent as MeshError).code, (silent as MeshError).message]).toEqual(['upstream_timeout', `peer ${a.inboundAddress} did not answer silent within 200 ms`]);
  });

  it('refuses a body over context.replication.maxMessageBytes with 413 before the handler runs', async () => {
    const a = await sidecar('a', aFiles, { context: { enabled: false, replication: { maxMessageBytes: '1KiB' } } });
    let calls = 0;
    a.sidecar.peers.add('sink', (body) => {
      calls++;
      return { body: { bytes: body.length } };
    });
    const b = await sidecar('b', bFiles);
    const big = await b.sidecar.peerClient.call(a.inboundAddress, 'sink', Buffer.alloc(4096));
    expect([big.status, big.error]).toEqual([413, 'payload_too_large']);
    expect(calls).toBe(0);
    const small = await b.sidecar.peerClient.call(a.inboundAddress, 'sink', Buffer.alloc(1000));
    expect([small.status, small.json()]).toEqual([200, { bytes: 1000 }]);
  });

  it('multiplexes calls on one framed connection and takes each answer as it comes, out of order', async () => {
    const a = await sidecar('a', aFiles);
    const b = await sidecar('b', bFiles);
    a.sidecar.peers.add('slow-echo', async (body) => {
      const { i } = JSON.parse(body.toString()) as { i: number };
      await new Promise((resolve) => setTimeout(resolve, i % 2 === 0 ? 150 : 1));
      return { body: { i } };
    });
    const order: number[] = [];
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        b.sidecar.peerClient.call(a.inboundAddress, 'slow-echo', { i }).then((r) => {
          order.push(i);
          return r.json<{ i: number }>().i;
        }),
      ),
    );
    expect(answers).toEqual(Array.from({ length: 40 }, (_, i) => i));
    // Every fast (odd) call was answered before the first slow one: no call waited behind another.
    expect(order.slice(0, 20).every((i) => i % 2 === 1)).toBe(true);
    // Offered both, the inbound listener chooses the framed protocol.
    const socket = tls.connect({ host: '127.0.0.1', port: Number(a.inboundAddress.split(':')[1]), cert: readFileSync(bFiles.cert), key: readFileSync(bFiles.key), ca: readFileSync(bFiles.ca), ALPNProtocols: [PEER_ALPN, 'http/1.1'], checkServerIdentity: () => undefined });
    await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    expect(socket.alpnProtocol).toBe(PEER_ALPN);
    socket.destroy();
  });

  it('fails the calls waiting on a connection that is lost (upstream_reset), and the next call dials again', async () => {
    const server = await meshTlsServer(bFiles, [PEER_ALPN], (socket, connection) => {
      // The first connection is cut once a call arrives; later ones answer every call with 204.
      socket.on('data', (chunk: Buffer) => {
        if (connection === 0) return socket.destroy();
        socket.write(Buffer.concat([frameHead(chunk.readUInt32BE(4), 204), Buffer.from([0])]));
      });
    });
    const peerClient = client(aFiles);
    const lost = await peerClient.call(server.address, 'anything', {}).catch((err: unknown) => err);
    expect([(lost as MeshError).code, (lost as MeshError).message]).toEqual(['upstream_reset', `peer ${server.address} (anything): the connection was lost before the answer`]);
    const again = await peerClient.call(server.address, 'anything', {});
    expect(again.status).toBe(204);
    expect(server.connections()).toBe(2);
  });

  it('fails a call whose answer is over maxResponseBytes, without dropping the connection', async () => {
    const a = await sidecar('a', aFiles);
    a.sidecar.peers.add('sized', (body) => ({ body: Buffer.alloc(Number(body.toString())) }));
    const peerClient = client(bFiles, { maxResponseBytes: 1_000 });
    const big = await peerClient.call(a.inboundAddress, 'sized', Buffer.from('5000')).catch((err: unknown) => err);
    expect([(big as MeshError).code, (big as MeshError).message]).toEqual(['payload_too_large', `peer ${a.inboundAddress} answered sized with more than 1000 bytes`]);
    const small = await peerClient.call(a.inboundAddress, 'sized', Buffer.from('900'));
    expect([small.status, small.body.length]).toEqual([200, 900]);
  });

  it('closes a framed connection that carries bytes that are not frames, and goes on serving the others', async () => {
    const a = await sidecar('a', aFiles);
    a.sidecar.peers.add('echo', (body) => ({ body }));
    const socket = tls.connect({ host: '127.0.0.1', port: Number(a.inboundAddress.split(':')[1]), cert: readFileSync(bFiles.cert), key: readFileSync(bFiles.key), ca: readFileSync(bFiles.ca), ALPNProtocols: [PEER_ALPN], checkServerIdentity: () => undefined });
    await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    const closed = new Promise((resolve) => socket.once('close', resolve));
    socket.on('error', () => undefined);
    // A frame of kind 9: no call, no reply.
    socket.write(Buffer.from([0, 0, 0, 6, 0, 0, 0, 1, 9, 0]));
    await closed;
    const b = await sidecar('b', bFiles);
    const fine = await b.sidecar.peerClient.call(a.inboundAddress, 'echo', Buffer.from('still here'));
    expect(fine.body.toString()).toBe('still here');
  });

  it('stops reading calls from a caller that leaves its replies unread, and serves them all once it reads', async () => {
    const a = await sidecar('a', aFiles);
    let served = 0;
    const reply = Buffer.alloc(256 * 1024, 7);
    a.sidecar.peers.add('big', () => (served++, { body: reply }));
    const socket = tls.connect({ host: '127.0.0.1', port: Number(a.inboundAddress.split(':')[1]), cert: readFileSync(bFiles.cert), key: readFileSync(bFiles.key), ca: readFileSync(bFiles.ca), ALPNProtocols: [PEER_ALPN], checkServerIdentity: () => undefined });
    await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    closers.push(async () => void socket.destroy());
    socket.pause();
    const calls = 400;
    socket.write(Buffer.concat(Array.from({ length: calls }, (_, id) => Buffer.concat(encodeCall(id, 'big', {}, Buffer.alloc(0))))));
    // 400 replies of 256 KiB are 100 MiB; at most 128 calls run at once, and what loopback and TLS
    // buffer between the two holds a few dozen replies.
    await until(() => served > 0, 5_000, 'the first calls served');
    await new Promise((resolve) => setTimeout(resolve, 500));
    const whileUnread = served;
    expect(whileUnread).toBeLessThan(calls / 2);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(served).toBe(whileUnread);
    const answered = new Set<number>();
    const reader = new FrameReader({ maxFrameBytes: 1 << 20, onFrame: (f) => (f.kind === 'reply' && f.status === 200 && f.body.length === reply.length ? answered.add(f.id) : undefined), onOversized: () => undefined });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.resume();
    await until(() => answered.size === calls, 20_000, 'every call answered once its replies are read');
    expect(served).toBe(calls);
  });

  it('calls a peer that offers only HTTP/1.1 (no framed calls) over HTTP', async () => {
    const server = https.createServer(
      { cert: readFileSync(aFiles.cert), key: readFileSync(aFiles.key), ca: readFileSync(aFiles.ca), requestCert: true, ALPNProtocols: ['http/1.1'] },
      (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ path: req.url, got: JSON.parse(Buffer.concat(chunks).toString()) as unknown }));
        });
      },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    const peerClient = client(bFiles);
    for (let i = 0; i < 3; i++) expect((await peerClient.call(address, 'echo', { i })).json()).toEqual({ path: '/.ctxmesh/peer/echo', got: { i } });
    server.closeAllConnections();
  });

  /** A TLS server with a mesh identity offering `alpn`; `onSocket` gets each connection and its index. */
  async function meshTlsServer(files: IdentityFiles, alpn: string[], onSocket: (socket: tls.TLSSocket, connection: number) => void) {
    let connections = 0;
    const sockets = new Set<tls.TLSSocket>();
    const server = tls.createServer({ cert: readFileSync(files.cert), key: readFileSync(files.key), ca: readFileSync(files.ca), requestCert: true, ALPNProtocols: alpn }, (socket) => {
      sockets.add(socket);
      onSocket(socket, connections++);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closers.push(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });
    return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, connections: () => connections };
  }
});

/** A reply frame's head with no error code and an empty body (frames.ts): length, id, kind 2, status. */
function frameHead(id: number, status: number): Buffer {
  const head = Buffer.alloc(11);
  head.writeUInt32BE(8, 0);
  head.writeUInt32BE(id, 4);
  head[8] = 2;
  head.writeUInt16BE(status, 9);
  return head;
}
