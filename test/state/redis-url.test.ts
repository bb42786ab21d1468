import { describe, expect, it } from 'vitest';
import { clusterNodes, connectionOptions, parseRedisUrl, redact } from '../../src/state/cache/redis-url.js';

describe('parseRedisUrl', () => {
  it('reads a standalone url with credentials and a database', () => {
    expect(parseRedisUrl('redis://app:s%40cret@cache.internal:6380/2')).toEqual({
      mode: 'standalone',
      tls: false,
      host: 'cache.internal',
      port: 6380,
      db: 2,
      username: 'app',
      password: 's@cret',
    });
  });

  it('defaults the port and database, and takes a password-only userinfo', () => {
    expect(parseRedisUrl('redis://:pw@localhost')).toEqual({ mode: 'standalone', tls: false, host: 'localhost', port: 6379, db: 0, password: 'pw' });
    expect(parseRedisUrl('redis://pw@localhost/')).toMatchObject({ password: 'pw', db: 0 });
  });

  it('turns rediss:// into TLS options', () => {
    const parsed = parseRedisUrl('rediss://[::1]:6390');
    expect(parsed).toEqual({ mode: 'standalone', tls: true, host: '::1', port: 6390, db: 0 });
    if (parsed.mode !== 'standalone') throw new Error('unreachable');
    expect(connectionOptions(parsed)).toEqual({ host: '::1', port: 6390, db: 0, tls: {} });
  });

  it('reads a sentinel url into sentinels and a master name', () => {
    const parsed = parseRedisUrl('redis+sentinel://:pw@s1:26379,s2:26380,s3/mymaster/3');
    expect(parsed).toEqual({
      mode: 'sentinel',
      tls: false,
      sentinels: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 26380 },
        { host: 's3', port: 26379 },
      ],
      masterName: 'mymaster',
      db: 3,
      password: 'pw',
    });
    if (parsed.mode !== 'sentinel') throw new Error('unreachable');
    expect(connectionOptions(parsed)).toMatchObject({ name: 'mymaster', db: 3, password: 'pw', sentinels: [{ host: 's1', port: 26379 }, {}, {}] });
    expect(connectionOptions(parseRedisUrl('rediss+sentinel://s1/m') as never)).toMatchObject({ tls: {}, enableTLSForSentinelMode: true });
  });

  it('reads a cluster url into nodes', () => {
    const parsed = parseRedisUrl('rediss+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001');
    expect(parsed).toEqual({ mode: 'cluster', tls: true, nodes: [{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 7001 }], password: 'pw' });
    if (parsed.mode !== 'cluster') throw new Error('unreachable');
    expect(clusterNodes(parsed)).toEqual([{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 7001 }]);
  });

  it.each([
    ['http://localhost:6379', /expected redis:\/\//],
    ['redis://', /no host/],
    ['redis://a:1,b:2', /names 2 hosts; use redis\+sentinel/],
    ['redis://localhost:0', /no valid port/],
    ['redis://localhost:70000', /no valid port/],
    ['redis://localhost:x', /is not host:port/],
    ['redis://localhost/db1', /database "db1" is not a number/],
    ['redis://localhost/1/2', /only hold a database number/],
    ['redis://localhost?tls=true', /query strings/],
    ['redis+sentinel://s1:26379', /needs the master name/],
    ['redis+sentinel://s1/m/0/extra', /master name and a database number/],
    ['redis+cluster://a:1,b:2/0', /cluster url has no path/],
    ['redis://:%zz@localhost', /bad percent-encoding/],
  ])('refuses %s clearly', (url, message) => {
    expect(() => parseRedisUrl(url)).toThrow(message);
  });

  it('never puts the password in an error message', () => {
    expect(() => parseRedisUrl('redis://user:hunter2@localhost/x')).toThrow(/redis:\/\/user:\*\*\*@localhost\/x/);
    expect(redact('redis+cluster://:hunter2@a:1,b:2')).toBe('redis+cluster://:***@a:1,b:2');
    expect(redact('redis://localhost')).toBe('redis://localhost');
  });
});
