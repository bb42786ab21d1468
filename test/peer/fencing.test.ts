// Fencing on the real peer transport (two sidecars, mTLS): every peer call carries the sender's node
// id and epoch; the receiver refuses a stale one with 409 stale_epoch before the handler runs; the
// refused sender is fenced (its replicated writes would answer 503 fenced) until its own EDS view
// reaches the epoch asked for, or the refusing peer takes its calls again. Probes are never fenced.
// The epochs come in through `fencing.observe`, which is what the xDS membership sync calls with
// the EDS of the sidecar's own service.
import { beforeAll, describe, expect, it } from 'vitest';
import { MeshError } from '../../src/errors/table.js';
import type { Member } from '../../src/membership/membership.js';
import { Fencing, fencedWrites } from '../../src/peer/fencing.js';
import type { ContextStore } from '../../src/state/store.js';
import { closeAfterEach, createPki, sidecarConfig, startApp, startSidecar, type IdentityFiles, type TestPki } from '../helpers/mesh.js';

const member = (id: string, epoch: number, state: Member['state'] = 'alive'): Member => ({ id, address: `127.0.0.1:1${epoch}`, state, epoch });

describe('fencing on the peer transport', () => {
  const closers = closeAfterEach();
  let pki: TestPki;
  let aFiles: IdentityFiles;
  let bFiles: IdentityFiles;

  beforeAll(async () => {
    pki = await createPki();
    [aFiles, bFiles] = await Promise.all([pki.issue('fence-a'), pki.issue('fence-b')]);
  });

  async function sidecar(id: string, files: IdentityFiles) {
    const app = await startApp(`${id}-app`);
    closers.push(() => app.close());
    const running = await startSidecar(sidecarConfig(files, { node: { id }, inbound: { app: app.url }, context: { enabled: false }, log: { level: 'warn', accessLog: false } }));
    closers.push(() => running.sidecar.close());
    return running;
  }

  it('refuses a sender whose epoch is stale or that EDS declared failed; the sender is fenced until its epoch catches up', async () => {
    const a = await sidecar('a', aFiles);
    const b = await sidecar('b', bFiles);
    let applied = 0;
    a.sidecar.peers.add('apply', () => {
      applied++;
      return { body: { ok: true } };
    });
    // Both know each other at epoch 3.
    a.sidecar.fencing.observe([member('a', 3), member('b', 3)]);
    b.sidecar.fencing.observe([member('a', 3), member('b', 3)]);
    expect((await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {})).status).toBe(200);

    // The control plane declares b failed (epoch 4): a learns it, b (paused) does not yet.
    a.sidecar.fencing.observe([member('a', 3), member('b', 4, 'dead')]);
    const refused = await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {});
    expect(refused.status).toBe(409);
    expect(refused.error).toBe('stale_epoch');
    expect(refused.json<{ fence: object }>().fence).toEqual({ node: 'b', epoch: 3, knownEpoch: 4, knownState: 'dead' });
    expect(applied).toBe(1);
    expect(b.sidecar.fencing.status()).toMatchObject({ fenced: true, selfEpoch: 3, requiredEpoch: 5 });
    expect(a.sidecar.fencing.status().refused).toBe(1);
    // Its writes are refused while fenced.
    const writes = fencedWrites({ put: async () => 'stored' } as unknown as ContextStore, b.sidecar.fencing);
    await expect(writes.put('k', {} as never, {} as never, {} as never)).rejects.toMatchObject({ code: 'fenced', status: 503 });
    // Probes still go through: that is how it proves it is alive.
    const ping = await b.sidecar.peerClient.call(a.inboundAddress, 'ping', { from: 'b', incarnation: 1, target: 'nobody', timeoutMs: 500 });
    expect(ping.error).not.toBe('stale_epoch');

    // Re-admitted (epoch 5): b learns it from its own EDS; it is unfenced and its calls go through.
    b.sidecar.fencing.observe([member('a', 3), member('b', 5)]);
    expect(b.sidecar.fencing.status()).toMatchObject({ fenced: false, selfEpoch: 5 });
    expect(await writes.put('k', {} as never, {} as never, {} as never)).toBe('stored');
    a.sidecar.fencing.observe([member('a', 3), member('b', 5)]);
    expect((await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {})).status).toBe(200);
    expect(applied).toBe(2);
  });

  it('refuses a node EDS no longer lists (removed) at its last epoch, and fences a sidecar EDS shows as failed', async () => {
    const a = await sidecar('a', aFiles);
    const b = await sidecar('b', bFiles);
    a.sidecar.peers.add('apply', () => ({ body: { ok: true } }));
    a.sidecar.fencing.observe([member('a', 1), member('b', 2)]);
    b.sidecar.fencing.observe([member('a', 1), member('b', 2)]);
    a.sidecar.fencing.observe([member('a', 1)]);
    const refused = await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {});
    expect(refused.json<{ fence: object }>().fence).toEqual({ node: 'b', epoch: 2, knownEpoch: 2, knownState: 'removed' });
    expect(b.sidecar.fencing.status()).toMatchObject({ fenced: true, requiredEpoch: 3 });
    // A stale sender stays refused while the receiver holds a newer epoch for it…
    a.sidecar.fencing.observe([member('a', 1), member('b', 3)]);
    expect((await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {})).status).toBe(409);
    // …and once the refusing peer takes its calls again (here: a control plane restarted with the
    // in-memory store numbers epochs afresh, below what b holds), b is no longer fenced.
    a.sidecar.fencing.observe([member('a', 0), member('b', 0)]);
    expect((await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {})).status).toBe(200);
    expect(b.sidecar.fencing.status().fenced).toBe(false);

    // EDS says b is failed: fenced without any peer refusing, until EDS says otherwise.
    b.sidecar.fencing.observe([member('a', 1), member('b', 4, 'dead')]);
    expect(b.sidecar.fencing.writeRefusal()).toBeInstanceOf(MeshError);
    b.sidecar.fencing.observe([member('a', 1), member('b', 5)]);
    expect(b.sidecar.fencing.writeRefusal()).toBeUndefined();
  });

  it('serves calls without fencing headers or from nodes EDS never named (static peers, tools)', async () => {
    const a = await sidecar('a', aFiles);
    const b = await sidecar('b', bFiles);
    a.sidecar.peers.add('apply', () => ({ body: { ok: true } }));
    // No xDS view at all: nothing is fenced.
    expect((await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {})).status).toBe(200);
    a.sidecar.fencing.observe([member('a', 1), member('c', 7, 'dead')]);
    expect((await b.sidecar.peerClient.call(a.inboundAddress, 'apply', {})).status).toBe(200);
  });
});
