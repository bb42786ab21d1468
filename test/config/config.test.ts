// Configuration at the boundary: the documented sidecar config is accepted as written, units
// parse, every mistake is a ConfigError naming its field path, environment overrides apply, and
// the CLI turns a bad config into exit status 2.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadSidecarConfig } from '../../src/config/load.js';
import { SidecarConfigSchema } from '../../src/config/schema.js';
import { parseDuration, parseSize } from '../../src/config/units.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(ROOT, 'dist/src/cli/main.js');

// The minimal sidecar config from the design notes' contract, verbatim: it must be accepted as written.
const DESIGN_CONFIG = `node: { id: node-a, cluster: chat, zone: z1 }
identity: { cert: certs/node-a/cert.pem, key: certs/node-a/key.pem, ca: certs/node-a/ca.pem }
inbound:  { port: 15006, app: http://127.0.0.1:8080, allow: ["spiffe://ctxmesh.local/ns/default/sa/*"] }
outbound: { port: 15001 }
admin:    { port: 15000 }
clusters:
  - name: chat
    domains: ["chat", "chat.default.svc"]    # Host header values routed to this cluster
    lb: least_request                        # round_robin | least_request | ring_hash
    hashHeader: x-ctx-key                    # used by ring_hash
    tls: mesh                                # mesh (mTLS to a peer sidecar) | none (plain HTTP)
    endpoints: [{ address: 127.0.0.1:25006, priority: 0 }]   # priority 1 = backup
    circuitBreaker: { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3 }
    outlierDetection: { consecutive5xx: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50 }
    retry: { attempts: 2, perTryTimeout: 1s, budgetPercent: 20 }
    timeout: 15s
xds: { server: 127.0.0.1:15010 }            # optional; static clusters are used without it
context:
  port: 15020
  l1: { maxBytes: 256MiB }
  l2: { backend: memory }                    # or { backend: redis, url: redis://127.0.0.1:6379 }
  writeMode: write-through                   # or write-behind
  replication:
    factor: 3
    consistency: session                     # default level; per request via ctxmesh-consistency
    peers: [{ id: node-b, address: 127.0.0.1:25006 }, { id: node-c, address: 127.0.0.1:35006 }]
  wal: { fsync: always }                     # always | batch | none
  checkpoint: { dir: ./data/node-a, interval: 60s }
`;

const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-config-'));
let files = 0;

function writeConfig(text: string): string {
  const file = join(dir, `config-${files++}.yaml`);
  writeFileSync(file, text);
  return file;
}

/** The design config with one textual edit; the edit must apply, or the test would prove nothing. */
function designWith(search: string, replacement: string): string {
  expect(DESIGN_CONFIG).toContain(search);
  return DESIGN_CONFIG.replace(search, replacement);
}

/** Loads `text` expecting a ConfigError, and returns its message. */
function configError(text: string, env: NodeJS.ProcessEnv = {}): string {
  const file = writeConfig(text);
  let caught: unknown;
  try {
    loadSidecarConfig(file, env);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ConfigError);
  return (caught as ConfigError).message;
}

describe('the documented sidecar config', () => {
  it('is accepted as written, with every value parsed into its unit', () => {
    const config = loadSidecarConfig(writeConfig(DESIGN_CONFIG), {});
    expect(config.node).toEqual({ id: 'node-a', cluster: 'chat', zone: 'z1' });
    expect(config.identity).toEqual({ cert: 'certs/node-a/cert.pem', key: 'certs/node-a/key.pem', ca: 'certs/node-a/ca.pem' });
    expect(config.inbound).toMatchObject({ port: 15006, app: 'http://127.0.0.1:8080', allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] });
    expect(config.outbound.port).toBe(15001);
    expect(config.admin.port).toBe(15000);
    expect(config.clusters).toHaveLength(1);
    const chat = config.clusters[0]!;
    expect(chat).toMatchObject({ name: 'chat', domains: ['chat', 'chat.default.svc'], lb: 'least_request', hashHeader: 'x-ctx-key', tls: 'mesh', timeout: 15_000 });
    expect(chat.endpoints).toEqual([{ address: '127.0.0.1:25006', priority: 0, zone: '' }]);
    expect(chat.circuitBreaker).toMatchObject({ maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3 });
    expect(chat.outlierDetection).toMatchObject({ consecutive5xx: 5, interval: 1_000, baseEjectionTime: 30_000, maxEjectionPercent: 50 });
    expect(chat.retry).toMatchObject({ attempts: 2, perTryTimeout: 1_000, budgetPercent: 20 });
    expect(config.xds).toEqual({ server: '127.0.0.1:15010', initialFetchTimeout: 5_000, reconnect: { base: 200, max: 10_000 } });
    expect(config.context).toMatchObject({
      port: 15020,
      l1: { maxBytes: 256 * 1024 * 1024 },
      l2: { backend: 'memory' },
      writeMode: 'write-through',
      replication: {
        factor: 3,
        consistency: 'session',
        peers: [{ id: 'node-b', address: '127.0.0.1:25006' }, { id: 'node-c', address: '127.0.0.1:35006' }],
      },
      wal: { fsync: 'always' },
      checkpoint: { dir: './data/node-a', interval: 60_000 },
    });
  });

  it('fills the documented defaults for what it leaves out', () => {
    const config = loadSidecarConfig(writeConfig(DESIGN_CONFIG), {});
    expect(config.limits).toEqual({ maxHeaderBytes: 16 * 1024, maxBodyBytes: 64 * 1024 ** 2, headersTimeout: 10_000, idleTimeout: 60_000 });
    expect(config.drainTimeout).toBe(15_000);
    expect(config.outbound.address).toBe('127.0.0.1');
    expect(config.clusters[0]!.connectTimeout).toBe(5_000);
  });
});

describe('durations and sizes', () => {
  it.each([
    ['250ms', 250],
    ['5s', 5_000],
    ['1.5s', 1_500],
    ['2m', 120_000],
    ['1h', 3_600_000],
    [' 15s ', 15_000],
    [42, 42],
  ] as const)('duration %j is %d ms', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  it.each([
    ['512B', 512],
    ['64KiB', 65_536],
    ['256MiB', 268_435_456],
    ['1GiB', 1024 ** 3],
    ['1KB', 1_000],
    ['2mb', 2_000_000],
    [4096, 4096],
  ] as const)('size %j is %d bytes', (input, bytes) => {
    expect(parseSize(input)).toBe(bytes);
  });

  it.each(['5 parsecs', '5', '', 's', '-1s', '1d', '5sec'])('duration %j is refused', (input) => {
    expect(() => parseDuration(input)).toThrow(/invalid duration/);
  });

  it.each(['64 potatoes', '64', 'KiB', '-1KiB', '1TiB'])('size %j is refused', (input) => {
    expect(() => parseSize(input)).toThrow(/invalid size/);
  });

  it('applies to config fields', () => {
    const config = SidecarConfigSchema.parse({
      node: { id: 'n' },
      identity: { cert: 'c', key: 'k', ca: 'a' },
      inbound: { app: 'http://127.0.0.1:1' },
      limits: { maxHeaderBytes: '8KiB', maxBodyBytes: '256MiB', headersTimeout: '250ms', idleTimeout: '2m' },
      drainTimeout: '5s',
    });
    expect(config.limits).toEqual({ maxHeaderBytes: 8192, maxBodyBytes: 268_435_456, headersTimeout: 250, idleTimeout: 120_000 });
    expect(config.drainTimeout).toBe(5_000);
  });
});

describe('bad configs are ConfigErrors that name the field path', () => {
  it('an invalid enum: clusters[0].lb', () => {
    const message = configError(designWith('lb: least_request', 'lb: random'));
    expect(message).toContain('clusters[0].lb');
  });

  it('a port out of range: inbound.port', () => {
    const message = configError(designWith('port: 15006', 'port: 70000'));
    expect(message).toContain('inbound.port');
    expect(message).not.toContain('outbound.port');
  });

  it('an unknown key, named with where it is', () => {
    const message = configError(designWith('outbound: { port: 15001 }', 'outbound: { port: 15001, colour: blue }'));
    expect(message).toContain('outbound');
    expect(message).toContain('colour');
  });

  it('an unknown top-level key', () => {
    const message = configError(`${DESIGN_CONFIG}nope: 1\n`);
    expect(message).toContain('nope');
  });

  it('a bad duration: clusters[0].timeout', () => {
    const message = configError(designWith('timeout: 15s', 'timeout: 5 parsecs'));
    expect(message).toContain('clusters[0].timeout');
    expect(message).toContain('5 parsecs');
  });

  it('a negative duration', () => {
    expect(configError(designWith('timeout: 15s', 'timeout: -5'))).toContain('clusters[0].timeout');
  });

  it('a bad size: context.l1.maxBytes', () => {
    const message = configError(designWith('maxBytes: 256MiB', 'maxBytes: 256 potatoes'));
    expect(message).toContain('context.l1.maxBytes');
  });

  it('a bad endpoint address: clusters[0].endpoints[0].address', () => {
    expect(configError(designWith('address: 127.0.0.1:25006, priority: 0', 'address: nowhere, priority: 0'))).toContain(
      'clusters[0].endpoints[0].address',
    );
  });

  it('a missing required section: node', () => {
    const message = configError(DESIGN_CONFIG.replace(/^node: .*\n/, ''));
    expect(message).toMatch(/\bnode\b/);
  });

  it('every problem at once, each with its path', () => {
    const message = configError(designWith('lb: least_request', 'lb: random').replace('port: 15006', 'port: 70000'));
    expect(message).toContain('clusters[0].lb');
    expect(message).toContain('inbound.port');
  });

  it('invalid YAML, and a missing file', () => {
    expect(configError('node: { id: [unclosed\n')).toMatch(/invalid YAML/);
    let caught: unknown;
    try {
      loadSidecarConfig(join(dir, 'does-not-exist.yaml'), {});
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as Error).message).toContain('does-not-exist.yaml');
  });
});

describe('environment overrides', () => {
  let file: string;
  beforeAll(() => {
    file = writeConfig(DESIGN_CONFIG);
  });

  it('CTXMESH_ADMIN_PORT=16000 sets admin.port, as a number', () => {
    expect(loadSidecarConfig(file, { CTXMESH_ADMIN_PORT: '16000' }).admin.port).toBe(16_000);
  });

  it('CTXMESH_CLUSTERS_0_TIMEOUT=2s sets clusters[0].timeout, parsed', () => {
    const config = loadSidecarConfig(file, { CTXMESH_CLUSTERS_0_TIMEOUT: '2s' });
    expect(config.clusters[0]!.timeout).toBe(2_000);
    expect(config.clusters[0]!.name).toBe('chat');
  });

  it('matches camelCase keys case-insensitively and reads lists', () => {
    const config = loadSidecarConfig(file, {
      CTXMESH_CLUSTERS_0_HASHHEADER: 'x-session',
      CTXMESH_INBOUND_ALLOW: '[spiffe://ctxmesh.local/ns/a/sa/b, spiffe://ctxmesh.local/ns/c/*]',
    });
    expect(config.clusters[0]!.hashHeader).toBe('x-session');
    expect(config.inbound.allow).toEqual(['spiffe://ctxmesh.local/ns/a/sa/b', 'spiffe://ctxmesh.local/ns/c/*']);
  });

  it('ignores variables outside the prefix', () => {
    expect(loadSidecarConfig(file, { PATH: '/usr/bin', ADMIN_PORT: '1', CTXMESHADMIN_PORT: '2' }).admin.port).toBe(15_000);
  });

  it('an unknown CTXMESH_ variable is a ConfigError naming it', () => {
    expect(() => loadSidecarConfig(file, { CTXMESH_NOPE: '1' })).toThrow(ConfigError);
    expect(() => loadSidecarConfig(file, { CTXMESH_NOPE: '1' })).toThrow(/CTXMESH_NOPE/);
  });

  it('a bad value from the environment names the field', () => {
    expect(() => loadSidecarConfig(file, { CTXMESH_INBOUND_PORT: 'abc' })).toThrow(/inbound\.port/);
    expect(() => loadSidecarConfig(file, { CTXMESH_CLUSTERS_0_TIMEOUT: '5 parsecs' })).toThrow(/clusters\[0\]\.timeout/);
  });
});

describe('the CLI', () => {
  /** The environment minus any CTXMESH_ override the developer's shell might carry. */
  const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('CTXMESH_')));

  beforeAll(() => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'ignore', timeout: 120_000 });
  });

  function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [CLI, ...args], { cwd: dir, env: { ...cleanEnv, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`ctxmesh ${args.join(' ')} did not exit: ${stdout}${stderr}`));
      }, 15_000);
      child.on('close', (status) => {
        clearTimeout(timer);
        resolve({ status, stdout, stderr });
      });
    });
  }

  it('sidecar -c bad.yaml exits 2 and names the field path on stderr', async () => {
    const bad = writeConfig(designWith('lb: least_request', 'lb: random'));
    const [plain, validating] = await Promise.all([run(['sidecar', '-c', bad]), run(['sidecar', '-c', bad, '--validate'])]);
    for (const result of [plain, validating]) {
      expect(result.status).toBe(2);
      expect(result.stderr).toContain('clusters[0].lb');
    }
  });

  it('--validate exits 0 on a good file, and 2 when the environment spoils it', async () => {
    const good = writeConfig(DESIGN_CONFIG);
    const [ok, spoiled] = await Promise.all([
      run(['sidecar', '-c', good, '--validate']),
      run(['sidecar', '-c', good, '--validate'], { CTXMESH_NOPE: '1' }),
    ]);
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain('valid');
    expect(spoiled.status).toBe(2);
    expect(spoiled.stderr).toContain('CTXMESH_NOPE');
  });

  it('exits 2 on a missing config file and on unreadable identity files', async () => {
    const [missing, noCerts] = await Promise.all([
      run(['sidecar', '-c', join(dir, 'missing.yaml')]),
      // Valid config whose certificate files do not exist (relative to the temp cwd).
      run(['sidecar', '-c', writeConfig(DESIGN_CONFIG)]),
    ]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('missing.yaml');
    expect(noCerts.status).toBe(2);
    expect(noCerts.stderr).toContain('certs/node-a/cert.pem');
  });

  it.each([
    [[], 'Usage: ctxmesh [options] [command]'],
    [['sidecar'], 'Usage: ctxmesh sidecar [options]'],
    [['certs'], 'Usage: ctxmesh certs [options] [command]'],
    [['certs', 'init'], 'Usage: ctxmesh certs init [options]'],
    [['certs', 'issue'], 'Usage: ctxmesh certs issue [options]'],
    [['demo'], 'Usage: ctxmesh demo [options]'],
  ])('ctxmesh %j --help exits 0 and prints usage', async (verb, usage) => {
    const result = await run([...verb, '--help']);
    expect(result.status).toBe(0);
    expect(result.stdout).toContain(usage);
    expect(result.stderr).toBe('');
  });
});
