import { describe, expect, it } from 'vitest';
import { SidecarConfigSchema } from '../../src/config/schema.js';

const base = {
  node: { id: 'n' },
  identity: { cert: 'c', key: 'k', ca: 'a' },
  inbound: { app: 'http://127.0.0.1:8080' },
};

describe('xds and inbound.advertise config', () => {
  it('defaults the initial fetch timeout and the reconnect back-off as documented', () => {
    const config = SidecarConfigSchema.parse({ ...base, xds: { server: '127.0.0.1:15010' } });
    expect(config.xds).toEqual({ server: '127.0.0.1:15010', initialFetchTimeout: 5_000, reconnect: { base: 200, max: 10_000 } });
    expect(config.inbound.advertise).toBeUndefined();
  });

  it('reads durations and the advertised address', () => {
    const config = SidecarConfigSchema.parse({
      ...base,
      inbound: { ...base.inbound, advertise: '10.0.0.7:15006' },
      xds: { server: 'cp:15010', initialFetchTimeout: '1s', reconnect: { base: '50ms', max: '2s' } },
    });
    expect(config.xds).toMatchObject({ initialFetchTimeout: 1_000, reconnect: { base: 50, max: 2_000 } });
    expect(config.inbound.advertise).toBe('10.0.0.7:15006');
  });

  it('names the field of a bad value', () => {
    const bad = (input: object) => {
      const result = SidecarConfigSchema.safeParse({ ...base, ...input });
      return result.success ? [] : result.error.issues.map((i) => i.path.join('.'));
    };
    expect(bad({ xds: { server: '127.0.0.1:15010', reconnect: { base: 'soon' } } })).toEqual(['xds.reconnect.base']);
    expect(bad({ xds: { server: '127.0.0.1:15010', initalFetchTimeout: '1s' } })).toEqual(['xds']);
    expect(bad({ inbound: { ...base.inbound, advertise: 'no-port' } })).toEqual(['inbound.advertise']);
  });
});
