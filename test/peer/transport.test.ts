// The peer transport with real sidecars and real mTLS: a call between two sidecars over the
// inbound listener, callers that are not sidecar identities refused with 403 before any handler or
// the app, a peer that is down or silent failing fast with a clear MeshError, and an oversized
// body refused.
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { MeshError } from '../../src/errors/table.js';
import { PeerClient } from '../../src/peer/client.js';
import { MeshIdentity } from '../../src/tls/identity.js';
import { closeAfterEach, createPki, deadAddress, sidecarConfig, startApp, startSidecar, type ConfigInput, type IdentityFiles, type TestPki } from '../helpers/mesh.js';
import https from 'node:https';

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
});
