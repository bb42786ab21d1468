// Addresses in the config: every host:port field takes `[ipv6]:port` as well as `host:port`, in
// canonical text; an unbracketed IPv6 address, a zone id or a port past 65535 is refused with a
// message that says how to write it; inbound.advertise also takes a bare IP (the pod IP), which
// gets the inbound port; the control plane's endpoint addresses must be IPs.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { advertisedAddress, formatHostPort, parseHostPort } from '../../src/config/host-port.js';
import { ConfigError, loadSidecarConfig } from '../../src/config/load.js';
import { ControlPlaneConfigSchema, IpPortSchema, SidecarConfigSchema } from '../../src/config/schema.js';

const BASE = {
  node: { id: 'node-a' },
  identity: { cert: 'c.pem', key: 'k.pem', ca: 'ca.pem' },
  inbound: { app: 'http://127.0.0.1:8080' },
};

/** The config with `address` in every host:port field the sidecar has. */
function withEverywhere(address: string): object {
  return {
    ...BASE,
    inbound: { ...BASE.inbound, advertise: address },
    clusters: [{ name: 'chat', domains: ['chat'], endpoints: [{ address }] }],
    xds: { server: address },
    health: { reportTo: address },
    context: { replication: { peers: [{ id: 'node-b', address }] } },
  };
}

function addressesOf(config: ReturnType<typeof SidecarConfigSchema.parse>): string[] {
  return [
    config.inbound.advertise!,
    config.clusters[0]!.endpoints[0]!.address,
    config.xds!.server,
    config.health.reportTo!,
    config.context.replication.peers[0]!.address,
  ];
}

function issuePaths(input: object): string[] {
  const result = SidecarConfigSchema.safeParse(input);
  return result.success ? [] : result.error.issues.map((i) => i.path.join('.'));
}

describe('host:port fields', () => {
  it.each([
    ['10.0.0.7:15006', '10.0.0.7:15006'],
    ['chat-0.chat.default.svc:15006', 'chat-0.chat.default.svc:15006'],
    ['[::1]:15006', '[::1]:15006'],
    ['[fd00:10:244::5]:15006', '[fd00:10:244::5]:15006'],
    // Canonical text: lower case, zero runs compressed, so one endpoint is one string.
    ['[FD00:0010:0244:0000:0000:0000:0000:0005]:15006', '[fd00:10:244::5]:15006'],
    ['[::ffff:10.0.0.7]:65535', '[::ffff:a00:7]:65535'],
  ])('accept %s in every field as %s', (input, canonical) => {
    const config = SidecarConfigSchema.parse(withEverywhere(input));
    expect(addressesOf(config)).toEqual(Array(5).fill(canonical));
  });

  it.each([
    ['fd00::5:15006', /write an IPv6 address in brackets: \[fd00::5\]:15006/],
    ['[fd00::5]', /expected \[ipv6\]:port/],
    ['[fd00::5:15006', /expected \[ipv6\]:port/],
    ['[10.0.0.7]:15006', /in brackets is not an IPv6 address/],
    ['[fe80::1%eth0]:15006', /zone ids are not supported/],
    ['10.0.0.7:99999', /"99999" is not a port/],
    ['10.0.0.7', /expected host:port/],
    ['http://10.0.0.7:80', /expected host:port/],
    ['', /expected host:port/],
  ])('refuse %j in every field, saying how to write it', (input, message) => {
    // advertise takes a bare IP, so it is checked on its own below.
    const { inbound: _inbound, ...rest } = withEverywhere(input) as Record<string, unknown>;
    const result = SidecarConfigSchema.safeParse({ ...rest, inbound: BASE.inbound });
    expect(result.success).toBe(false);
    const issues = result.error!.issues;
    expect(issues.map((i) => i.path.join('.')).sort()).toEqual(['clusters.0.endpoints.0.address', 'context.replication.peers.0.address', 'health.reportTo', 'xds.server']);
    for (const issue of issues) expect(issue.message).toMatch(message);
  });
});

describe('inbound.advertise', () => {
  it.each([
    ['10.244.1.17', '10.244.1.17', '10.244.1.17:15006'],
    ['fd00:10:244:1::17', 'fd00:10:244:1::17', '[fd00:10:244:1::17]:15006'],
    ['FD00:10:244:1:0:0:0:17', 'fd00:10:244:1::17', '[fd00:10:244:1::17]:15006'],
    // An unbracketed IPv6 address is always a bare address: no port is read out of it.
    ['::1:80', '::1:80', '[::1:80]:15006'],
    ['10.0.0.7:25006', '10.0.0.7:25006', '10.0.0.7:25006'],
    ['[fd00::7]:25006', '[fd00::7]:25006', '[fd00::7]:25006'],
    ['chat-0.chat:25006', 'chat-0.chat:25006', 'chat-0.chat:25006'],
  ])('takes %s (parsed %s, advertised %s)', (input, parsed, advertised) => {
    const config = SidecarConfigSchema.parse({ ...BASE, inbound: { ...BASE.inbound, advertise: input } });
    expect(config.inbound.advertise).toBe(parsed);
    expect(advertisedAddress(config.inbound.advertise, config.inbound.port)).toBe(advertised);
  });

  it('gets the bound port when the configured one is 0, and defaults to 127.0.0.1', () => {
    expect(advertisedAddress('fd00::7', 41_234)).toBe('[fd00::7]:41234');
    expect(advertisedAddress(undefined, 41_234)).toBe('127.0.0.1:41234');
  });

  it.each(['no-port', 'chat-0.chat', 'fe80::1%eth0', '10.0.0.256', '[fd00::7]'])('refuses %j', (input) => {
    expect(issuePaths({ ...BASE, inbound: { ...BASE.inbound, advertise: input } })).toEqual(['inbound.advertise']);
  });
});

describe('environment overrides', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-addresses-'));
  const file = join(dir, 'sidecar.yaml');
  writeFileSync(file, 'node: { id: node-a }\nidentity: { cert: c.pem, key: k.pem, ca: ca.pem }\ninbound: { app: "http://127.0.0.1:8080" }\n');

  it('take the bare pod IP the injector passes, and bracketed addresses quoted or not', () => {
    const config = loadSidecarConfig(file, {
      CTXMESH_INBOUND_ADVERTISE: 'fd00:10:244::5',
      // Unquoted, `[` would start a YAML list: the loader falls back to the plain string.
      CTXMESH_XDS_SERVER: '[fd00:10:96::10]:15010',
      CTXMESH_HEALTH_REPORTTO: '"[fd00:10:96::10]:15014"',
    });
    expect(config.inbound.advertise).toBe('fd00:10:244::5');
    expect(config.xds?.server).toBe('[fd00:10:96::10]:15010');
    expect(config.health.reportTo).toBe('[fd00:10:96::10]:15014');
  });

  it('refuse an unbracketed IPv6 host:port as a ConfigError naming the field', () => {
    expect(() => loadSidecarConfig(file, { CTXMESH_XDS_SERVER: 'fd00:10:96::10:15010' })).toThrow(ConfigError);
    expect(() => loadSidecarConfig(file, { CTXMESH_XDS_SERVER: 'fd00:10:96::10:15010' })).toThrow(/xds\.server: .*in brackets/);
  });

  it('refuse an unquoted bracketed address in the YAML file with the line it is on', () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'node: { id: node-a }\nidentity: { cert: c.pem, key: k.pem, ca: ca.pem }\ninbound: { app: "http://127.0.0.1:8080" }\nxds:\n  server: [fd00::1]:15010\n');
    expect(() => loadSidecarConfig(bad, {})).toThrow(/invalid YAML .*line 5/);
  });
});

describe('control-plane endpoint addresses (IpPortSchema)', () => {
  it.each([
    ['10.0.0.7:15006', '10.0.0.7:15006'],
    ['[fd00::7]:15006', '[fd00::7]:15006'],
    ['[FD00:0::7]:15006', '[fd00::7]:15006'],
  ])('accept %s as %s', (input, canonical) => {
    expect(IpPortSchema.parse(input)).toBe(canonical);
  });

  it.each(['chat-0.chat:15006', 'fd00::7:15006', '[fd00::7]', '10.0.0.7', '[10.0.0.7]:15006', '10.0.0.7:70000'])('refuse %j', (input) => {
    expect(IpPortSchema.safeParse(input).success).toBe(false);
  });

  it('count one endpoint written two ways as a duplicate', () => {
    const result = ControlPlaneConfigSchema.safeParse({ services: [{ name: 'chat', endpoints: [{ address: '[fd00::7]:15006' }, { address: '[FD00:0:0::7]:15006' }] }] });
    expect(result.success).toBe(false);
    expect(result.error!.issues[0]!.message).toBe('duplicate endpoint [fd00::7]:15006');
  });
});

describe('parseHostPort and formatHostPort', () => {
  it('split a bracketed address into the bare host and the port, and put the brackets back', () => {
    expect(parseHostPort('[fd00::7]:15006')).toEqual({ host: 'fd00::7', port: 15_006 });
    expect(parseHostPort('10.0.0.7:0')).toEqual({ host: '10.0.0.7', port: 0 });
    expect(parseHostPort('chat:15006', { ipOnly: true })).toMatch(/not an IP address/);
    expect(formatHostPort('fd00::7', 15_006)).toBe('[fd00::7]:15006');
    expect(formatHostPort('10.0.0.7', 15_006)).toBe('10.0.0.7:15006');
    expect(formatHostPort('chat', 15_006)).toBe('chat:15006');
  });
});
