// End to end: our control plane (xds/control-plane.ts) and sidecars following it. One service
// comes from the control plane's config; another is a sidecar that registers itself through its
// ADS node and becomes an endpoint the first sidecar reaches over mTLS.
import { describe, expect, it } from 'vitest';
import { ControlPlaneConfigSchema } from '../../src/config/schema.js';
import { ControlPlane } from '../../xds/control-plane.js';
import { closeAfterEach, createPki, send, sidecarConfig, startApp, startSidecar, until, type RunningSidecar } from '../helpers/mesh.js';
import { createLogger } from '../../src/telemetry/logger.js';

const closers = closeAfterEach();

async function appOf(outbound: string, host: string): Promise<string> {
  const reply = await send(outbound, '/', { host });
  if (reply.status !== 200) return `${reply.status} ${String(reply.headers['x-ctxmesh-error'] ?? '')}`;
  return (JSON.parse(reply.body) as { app: string }).app;
}

describe('sidecars following the ctxmesh control plane', () => {
  it('routes to a configured service, and to a sidecar that registered itself, over mTLS', async () => {
    const pki = await createPki();
    const web = await startApp('web');
    closers.push(() => web.close());
    const chat = await startApp('chat');
    closers.push(() => chat.close());

    const plane = await ControlPlane.start(
      ControlPlaneConfigSchema.parse({
        port: 0,
        address: '127.0.0.1',
        admin: { port: 0 },
        services: [
          { name: 'web', tls: 'none', endpoints: [{ address: web.address, zone: 'z1' }] },
          { name: 'chat', tls: 'mesh' },
        ],
        log: { level: 'warn' },
      }),
      { logger: createLogger({ level: 'silent' }) },
    );
    closers.push(() => plane.close());
    const xds = { server: `127.0.0.1:${plane.xdsPort}`, initialFetchTimeout: '3s', reconnect: { base: '50ms', max: '400ms' } };

    const start = async (id: string, cluster: string, app: string): Promise<RunningSidecar> => {
      const running = await startSidecar(
        sidecarConfig(await pki.issue(id), {
          node: { id, cluster, zone: 'z1' },
          inbound: { app },
          xds,
          context: { enabled: false },
          health: { enabled: false },
          log: { level: 'warn', accessLog: false },
        }),
      );
      closers.push(() => running.sidecar.close());
      return running;
    };
    const client = await start('node-a', 'client', 'http://127.0.0.1:9');
    expect(await appOf(client.outbound, 'web')).toBe('web');
    expect(await appOf(client.outbound, 'web.default.svc.cluster.local')).toBe('web');

    // node-b fronts `chat`: its ADS node registers it as chat's endpoint, which EDS brings to node-a.
    const server = await start('node-b', 'chat', chat.url);
    await until(async () => (await appOf(client.outbound, 'chat')) === 'chat', 10_000, 'node-a to reach chat through node-b');
    const received = chat.received.at(-1)!;
    expect(received.url).toBe('/');
    const clusters = JSON.parse((await send(client.admin, '/clusters')).body).clusters as Array<{ name: string; tls: string; endpoints: Array<{ address: string }> }>;
    expect(clusters.find((c) => c.name === 'chat')).toMatchObject({ tls: 'mesh', endpoints: [{ address: server.inboundAddress }] });

    // node-b learns itself, with its epoch, from the EDS of its own service.
    await until(() => server.sidecar.membership.get('node-b')?.address === server.inboundAddress, 5_000, 'node-b in its own EDS');
    const cpAdmin = `http://127.0.0.1:${plane.adminPort}`;
    const clients = JSON.parse((await send(cpAdmin, '/v1/clients')).body) as { clients: Array<{ nodeId: string; types: Array<{ ackedVersion: string | null }> }> };
    const nodeB = clients.clients.find((c) => c.nodeId === 'node-b')!;
    expect(nodeB.types.every((t) => t.ackedVersion !== null)).toBe(true);

    // A planned drain on the control plane: node-a stops sending new requests to node-b, and
    // node-b sees itself draining, with the epoch the control plane gave it.
    const drained = await send(cpAdmin, '/v1/endpoints/drain', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'chat', address: server.inboundAddress }),
    });
    expect(drained.status).toBe(200);
    const epoch = (JSON.parse(drained.body) as { endpoint: { epoch: number } }).endpoint.epoch;
    await until(async () => (await appOf(client.outbound, 'chat')) === '503 no_healthy_upstream', 5_000, 'node-a to stop using node-b');
    await until(() => server.sidecar.membership.self.state === 'draining', 5_000, 'node-b to see itself draining');
    expect(server.sidecar.membership.self.epoch).toBe(epoch);
  });
});
