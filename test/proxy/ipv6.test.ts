// IPv6 end to end, on the loopback [::1] only: a control plane listening on [::1], a sidecar that
// advertises the bare address `::1` (what the injector passes from status.podIP) and registers as
// `[::1]:<port>`, another sidecar following the control plane at `[::1]:<xds port>` and reaching
// the first over mTLS, through both a static and an EDS endpoint, and a peer call between them.
// The endpoint the control plane renders carries the bare address in its socket_address.
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import * as grpcXds from '@grpc/grpc-js-xds';
import { describe, expect, it } from 'vitest';
import { ControlPlaneConfigSchema, SidecarConfigSchema } from '../../src/config/schema.js';
import { healthReportTarget } from '../../src/membership/health-reporter.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { ControlPlane } from '../../xds/control-plane.js';
import { loadXdsProtos, TYPE_URL } from '../../xds/protos.js';
import { buildServiceResources, MESH_CERTIFICATE_PROVIDER } from '../../xds/resources.js';
import { decodeResource, type EndpointGroup } from '../../src/xds-client/translate.js';
import { closeAfterEach, createPki, send, sidecarConfig, startSidecar, until, type RunningSidecar } from '../helpers/mesh.js';

const closers = closeAfterEach();

/** Why IPv6 loopback cannot be used here, or undefined when it can. */
async function ipv6Unavailable(): Promise<string | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve(`cannot listen on [::1] (${err.code ?? err.message}): the kernel or this namespace has no IPv6`));
    server.listen(0, '::1', () => server.close(() => resolve(undefined)));
  });
}
const skipReason = await ipv6Unavailable();
if (skipReason) console.warn(`[ipv6 tests] skipped: ${skipReason}`);

/** An app on [::1] that names itself and says which address the request came from. */
async function startV6App(name: string): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ app: name, remote: req.socket.remoteAddress, spiffe: req.headers['x-forwarded-client-cert'] ?? null }));
  });
  await new Promise<void>((resolve) => server.listen(0, '::1', resolve));
  return {
    url: `http://[::1]:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

async function appOf(outbound: string, host: string): Promise<string> {
  const reply = await send(outbound, '/', { host });
  if (reply.status !== 200) return `${reply.status} ${String(reply.headers['x-ctxmesh-error'] ?? '')}`;
  return (JSON.parse(reply.body) as { app: string }).app;
}

describe.skipIf(skipReason !== undefined)('IPv6 sidecars on [::1]', () => {
  it('register as [::1]:port, follow a control plane at [::1], and reach each other over mTLS', async () => {
    const pki = await createPki();
    const chat = await startV6App('chat');
    closers.push(() => chat.close());

    const plane = await ControlPlane.start(
      ControlPlaneConfigSchema.parse({ port: 0, address: '::1', admin: { port: 0, address: '::1' }, services: [{ name: 'chat', tls: 'mesh' }], log: { level: 'warn' } }),
      { logger: createLogger({ level: 'silent' }) },
    );
    closers.push(() => plane.close());
    const xds = { server: `[::1]:${plane.xdsPort}`, initialFetchTimeout: '3s', reconnect: { base: '50ms', max: '400ms' } };

    const start = async (id: string, cluster: string, overrides: Record<string, unknown>): Promise<RunningSidecar> => {
      const running = await startSidecar(
        sidecarConfig(await pki.issue(id), {
          node: { id, cluster },
          xds,
          outbound: { port: 0, address: '::1' },
          context: { enabled: false },
          health: { enabled: false },
          log: { level: 'warn', accessLog: false },
          ...overrides,
        }),
      );
      closers.push(() => running.sidecar.close());
      return running;
    };

    // node-b fronts chat: inbound on [::1], advertising the bare address as the injector does.
    const server = await start('node-b', 'chat', { inbound: { address: '::1', advertise: '::1', app: chat.url } });
    const serverAddress = `[::1]:${server.sidecar.ports.inbound}`;
    expect(server.sidecar.membership.self.address).toBe(serverAddress);

    // node-a: one static cluster at the bracketed address, and chat from the control plane's EDS.
    const client = await start('node-a', 'client', {
      inbound: { address: '::1', advertise: '::1', app: 'http://[::1]:9' },
      clusters: [{ name: 'chat-static', domains: ['chat-static'], tls: 'mesh', endpoints: [{ address: serverAddress }] }],
    });
    const outbound = `http://[::1]:${client.sidecar.ports.outbound}`;
    expect(await appOf(outbound, 'chat-static')).toBe('chat');
    await until(async () => (await appOf(outbound, 'chat')) === 'chat', 10_000, 'node-a to reach chat through node-b over EDS');

    // The app saw the request arrive over IPv6 from its sidecar.
    const reply = JSON.parse((await send(outbound, '/', { host: 'chat' })).body) as { remote: string };
    expect(reply.remote).toBe('::1');

    // The control plane lists node-b at its bracketed address, and node-a's cluster holds it so.
    const cpAdmin = `http://[::1]:${plane.adminPort}`;
    const registry = JSON.parse((await send(cpAdmin, '/v1/registry')).body) as { services: Array<{ name: string; endpoints: Array<{ address: string; nodeId?: string }> }> };
    expect(registry.services.find((s) => s.name === 'chat')?.endpoints).toEqual([expect.objectContaining({ address: serverAddress, nodeId: 'node-b' })]);
    const clusters = JSON.parse((await send(client.admin, '/clusters')).body).clusters as Array<{ name: string; endpoints: Array<{ address: string }> }>;
    expect(clusters.find((c) => c.name === 'chat')?.endpoints.map((e) => e.address)).toEqual([serverAddress]);
    // node-b finds itself in its own service's EDS under the same address.
    await until(() => server.sidecar.membership.get('node-b')?.epoch !== undefined && server.sidecar.membership.get('node-b')?.address === serverAddress, 5_000, 'node-b in its own EDS');

    // A sidecar-to-sidecar call to the bracketed member address, over the inbound mTLS listener.
    server.sidecar.peers.add('whoami', (_body, caller) => ({ body: { caller: caller.spiffeId } }));
    const answer = await client.sidecar.peerClient.call(serverAddress, 'whoami', {});
    expect(answer.status).toBe(200);
    expect(answer.json<{ caller: string }>().caller).toMatch(/^spiffe:\/\/ctxmesh\.local\/.*node-a$/);

    // A drain names the endpoint as registered, brackets and all; node-a then stops using it.
    const drained = await send(cpAdmin, '/v1/endpoints/drain', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'chat', address: serverAddress }),
    });
    expect(drained.status, drained.body).toBe(200);
    await until(async () => (await appOf(outbound, 'chat')) === '503 no_healthy_upstream', 5_000, 'node-a to stop using the drained node-b');
  }, 30_000);

  it('names the dead peer with brackets when a [::1] connection is refused', async () => {
    const pki = await createPki();
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '::1', resolve));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const running = await startSidecar(sidecarConfig(await pki.issue('node-a'), { context: { enabled: false }, health: { enabled: false }, log: { level: 'silent', accessLog: false } }));
    closers.push(() => running.sidecar.close());
    await expect(running.sidecar.peerClient.call(`[::1]:${deadPort}`, 'whoami', {})).rejects.toThrow(new RegExp(`peer \\[::1\\]:${deadPort} is unreachable`));
    // An unbracketed IPv6 address is refused before any dial, saying how to write it.
    await expect(running.sidecar.peerClient.call(`::1:${deadPort}`, 'whoami', {})).rejects.toThrow(/in brackets: \[::1\]/);
  });
});

describe('IPv6 endpoints in the control plane resources', () => {
  const require = createRequire(import.meta.url);
  const EndpointResourceType = require('@grpc/grpc-js-xds/build/src/xds-resource-type/endpoint-resource-type.js').EndpointResourceType;
  grpcXds.register();

  it('renders [::1]:port as socket_address ::1, which gRPC accepts and the sidecar reads back', () => {
    const [service] = ControlPlaneConfigSchema.parse({
      services: [{ name: 'chat', endpoints: [{ address: '[::1]:15006', zone: 'z1' }, { address: '[FD00:0::7]:15006' }, { address: '10.0.0.7:15006' }] }],
    }).services;
    const { endpoints, ...definition } = service!;
    const resources = buildServiceResources({ ...definition, endpoints: endpoints.map((e, i) => ({ ...e, health: 'HEALTHY', epoch: i, nodeId: `node-${i}` })) });
    const cla = resources.clusterLoadAssignment as { endpoints: Array<{ lb_endpoints: Array<{ endpoint: { address: { socket_address: object } } }> }> };
    const sockets = cla.endpoints.flatMap((l) => l.lb_endpoints.map((e) => e.endpoint.address.socket_address));
    expect(sockets).toEqual(
      expect.arrayContaining([
        { address: '::1', port_value: 15006 },
        { address: 'fd00::7', port_value: 15006 },
        { address: '10.0.0.7', port_value: 15006 },
      ]),
    );
    expect(sockets).toHaveLength(3);

    // gRPC's own EDS validation, as when the resource arrives over ADS.
    const any = loadXdsProtos().encodeResource(TYPE_URL.clusterLoadAssignment, cla);
    const decoded = EndpointResourceType.get().decode({ server: {}, bootstrap: { certificateProviders: { [MESH_CERTIFICATE_PROVIDER]: {} } } }, any);
    expect(decoded.error).toBeUndefined();

    // The sidecar's translation puts the brackets back, and the result is a valid cluster endpoint.
    const translated = decodeResource('clusterLoadAssignment', loadXdsProtos().decodeResource(any));
    if (!translated.valid) throw new Error(translated.errors.join('; '));
    const addresses = (translated.result as EndpointGroup).endpoints.map((e) => e.address).sort();
    expect(addresses).toEqual(['10.0.0.7:15006', '[::1]:15006', '[fd00::7]:15006']);
    for (const address of addresses) expect(SidecarConfigSchema.shape.clusters.parse([{ name: 'chat', domains: ['chat'], endpoints: [{ address }] }])).toHaveLength(1);
  });

  it('sends health reports to the control plane admin port beside a bracketed xds.server', () => {
    const base = { node: { id: 'a' }, identity: { cert: 'c', key: 'k', ca: 'a' }, inbound: { app: 'http://[::1]:8080' } };
    expect(healthReportTarget(SidecarConfigSchema.parse({ ...base, xds: { server: '[fd00::10]:15010' } }))).toBe('[fd00::10]:15014');
    expect(healthReportTarget(SidecarConfigSchema.parse({ ...base, xds: { server: 'cp.mesh.svc:15010' } }))).toBe('cp.mesh.svc:15014');
  });
});
