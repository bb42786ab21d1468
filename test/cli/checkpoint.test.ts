// `ctxmesh checkpoint` as users run it: the built CLI as a child process, offline on data
// directories a real sidecar wrote, and online through the admin port of a sidecar started by the
// CLI itself. Each offline case works on its own copy of one prepared directory.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatProgress, progressBar, REDRAW_INTERVAL_MS } from '../../src/cli/progress.js';
import { closeAfterEach, createPki, deadAddress, send, sidecarConfig, startSidecar, until, type IdentityFiles } from '../helpers/mesh.js';

const CLI = resolve('dist/src/cli/main.js');
const BUILT = resolve('dist/src/cli/checkpoint.js');
const BUILD_TIMEOUT_MS = 120_000;
const CLI_TIMEOUT_MS = 15_000;
const SIDECAR_READY_TIMEOUT_MS = 10_000;

/** Temp directories this file made, removed at the end. */
const made: string[] = [];
function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI to completion; stdin is not a terminal, so erase needs --yes. */
function cli(...args: string[]): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ctxmesh ${args.join(' ')}: no exit after ${CLI_TIMEOUT_MS} ms\n${stdout}${stderr}`));
    }, CLI_TIMEOUT_MS);
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs);
  }
  return newest;
}

beforeAll(() => {
  if (existsSync(BUILT) && statSync(BUILT).mtimeMs >= newestMtime(resolve('src'))) return;
  // tsc emits even when files that are not this command's fail to typecheck; what matters is the output.
  const build = spawnSync('npm', ['run', 'build'], { encoding: 'utf8', timeout: BUILD_TIMEOUT_MS });
  if (!existsSync(BUILT)) throw new Error(`npm run build did not produce ${BUILT}:\n${build.stdout}${build.stderr}`);
}, BUILD_TIMEOUT_MS);

async function putContext(contextPort: number, key: string, value: unknown): Promise<void> {
  const res = await request(`http://127.0.0.1:${contextPort}/v1/contexts/${key}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(value),
  });
  const body = await res.body.text();
  if (res.statusCode >= 300) throw new Error(`PUT ${key}: ${res.statusCode} ${body}`);
}

async function getContext(contextPort: number, key: string): Promise<unknown> {
  const reply = await send(`http://127.0.0.1:${contextPort}`, `/v1/contexts/${key}`);
  return reply.status === 200 ? (JSON.parse(reply.body) as unknown) : reply.status;
}

describe('ctxmesh checkpoint, offline on a data directory', () => {
  const closers = closeAfterEach();
  let identity: IdentityFiles;
  /** Written by a real sidecar: two checkpoints, then writes only in the WAL. */
  let prepared: string;
  let first: string;
  let second: string;

  /** A private copy of the prepared directory. */
  function copy(): string {
    const dir = tempDir('ctxmesh-cli-cp-');
    cpSync(prepared, dir, { recursive: true });
    return dir;
  }

  async function readBack(dir: string, keys: string[]): Promise<unknown[]> {
    const { sidecar } = await startSidecar(sidecarConfig(identity, { context: { port: 0, checkpoint: { dir } } }));
    closers.push(() => sidecar.close());
    return Promise.all(keys.map((key) => getContext(sidecar.ports.context, key)));
  }

  beforeAll(async () => {
    identity = await (await createPki()).issue('checkpoint-cli');
    prepared = tempDir('ctxmesh-cli-prepared-');
    const { sidecar } = await startSidecar(sidecarConfig(identity, { context: { port: 0, checkpoint: { dir: prepared } } }));
    try {
      const port = sidecar.ports.context;
      await putContext(port, 'acme/s1', { turn: 1 });
      await putContext(port, 'globex/s1', { turn: 1 });
      first = (await sidecar.state!.createCheckpoint()).header.id;
      await putContext(port, 'acme/s1', { turn: 2 });
      await putContext(port, 'globex/s1', { turn: 2 });
      second = (await sidecar.state!.createCheckpoint()).header.id;
      await putContext(port, 'acme/s1', { turn: 3 });
      await putContext(port, 'globex/s1', { turn: 3 });
    } finally {
      await sidecar.close();
    }
  });

  it('lists the checkpoints as a table and as JSON', async () => {
    const dir = copy();
    const table = await cli('checkpoint', 'list', '--dir', dir);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^ID\s+KIND\s+PARENT\s+CREATED\s+LSN\s+REASON\s+FLAGS/);
    expect(table.stdout).toContain(first);
    expect(table.stdout).toContain(second);
    expect(table.stdout).toMatch(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/);

    const json = await cli('checkpoint', 'list', '--dir', dir, '--json');
    expect(json.code, json.stderr).toBe(0);
    const { checkpoints } = JSON.parse(json.stdout) as { checkpoints: Array<{ id: string; kind: string }> };
    expect(checkpoints.map((c) => c.id)).toEqual([first, second]);
    expect(checkpoints[0]!.kind).toBe('full');
  });

  it('verifies a sound directory with exit 0 and no progress noise off a terminal', async () => {
    const result = await cli('checkpoint', 'verify', '--dir', copy());
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^ok: 2 snapshots .* read through without a problem/);
    expect(result.stderr).toBe('');
  });

  it('names each problem and exits 1 when a snapshot is damaged', async () => {
    const dir = copy();
    const file = join(dir, 'snapshots', `${second}.snap`);
    const bytes = readFileSync(file);
    bytes[bytes.length - 10]! ^= 0xff;
    writeFileSync(file, bytes);
    const result = await cli('checkpoint', 'verify', '--dir', dir);
    expect(result.code, result.stdout + result.stderr).toBe(1);
    expect(result.stdout).toMatch(/problem.* found in/);
    expect(result.stdout).toContain(`snapshot ${second}:`);
  });

  it('restores a checkpoint by id: the next start serves its state', async () => {
    const dir = copy();
    const result = await cli('checkpoint', 'restore', '--dir', dir, '--to', first);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(new RegExp(`restored 2 contexts as of checkpoint ${first}, from chain ${first}`));
    expect(result.stdout).toMatch(/new checkpoint \S+-full/);
    expect(result.stdout).toMatch(/the next start loads/);
    expect(await readBack(dir, ['acme/s1', 'globex/s1'])).toEqual([{ turn: 1 }, { turn: 1 }]);
  });

  it('restores one tenant with --key-prefix; the others keep their latest state', async () => {
    const dir = copy();
    const result = await cli('checkpoint', 'restore', '--dir', dir, '--to', first, '--key-prefix', 'acme/');
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/restored 1 context under acme\//);
    expect(await readBack(dir, ['acme/s1', 'globex/s1'])).toEqual([{ turn: 1 }, { turn: 3 }]);
  });

  it('restores to a point in time given in epoch ms', async () => {
    const dir = copy();
    const list = JSON.parse((await cli('checkpoint', 'list', '--dir', dir, '--json')).stdout) as { checkpoints: Array<{ id: string; createdAt: number }> };
    const at = list.checkpoints.find((c) => c.id === second)!.createdAt;
    const result = await cli('checkpoint', 'restore', '--dir', dir, '--to', String(at));
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(new Date(at).toISOString());
    expect(await readBack(dir, ['acme/s1'])).toEqual([{ turn: 2 }]);
  });

  it('erases a key everywhere, writes an audit record, and verify --key proves it', async () => {
    const dir = copy();
    const erase = await cli('checkpoint', 'erase', '--dir', dir, '--key', 'acme/s1', '--yes');
    expect(erase.code, erase.stderr).toBe(0);
    expect(erase.stdout).toMatch(/erased acme\/s1/);
    expect(erase.stdout).toMatch(/[1-9]\d* snapshot records? removed/);
    expect(erase.stdout).toMatch(/[1-9]\d* WAL records? redacted/);
    expect(erase.stdout).toMatch(/audit record was written/);
    expect(erase.stdout).toContain('checkpoint verify --dir');

    const audit = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n');
    expect(audit).toHaveLength(1);
    expect(JSON.parse(audit[0]!)).toMatchObject({ action: 'erase', keySha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(audit[0]).not.toContain('acme/s1');

    const check = await cli('checkpoint', 'verify', '--dir', dir, '--key', 'acme/s1');
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/key acme\/s1: no records left \(0 in snapshots, 0 in the WAL\)/);
    const json = JSON.parse((await cli('checkpoint', 'verify', '--dir', dir, '--key', 'acme/s1', '--json')).stdout) as {
      key: { snapshotRecords: number; walRecords: number };
    };
    expect(json.key).toMatchObject({ snapshotRecords: 0, walRecords: 0 });
    expect(await readBack(dir, ['acme/s1', 'globex/s1'])).toEqual([404, { turn: 3 }]);
  });

  it('verify --key on a key still present exits 1 and says where it is', async () => {
    const result = await cli('checkpoint', 'verify', '--dir', copy(), '--key', 'globex/s1');
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/key globex\/s1: still held by [1-9]\d* snapshot records? \(in .*\) and [1-9]\d* WAL records?/);
  });

  it('takes a checkpoint offline', async () => {
    const dir = copy();
    const result = await cli('checkpoint', 'create', '--dir', dir);
    expect(result.code, result.stderr).toBe(0);
    const id = /created checkpoint (\S+)/.exec(result.stdout)?.[1];
    expect(id).toMatch(/-full$/);
    expect((await cli('checkpoint', 'list', '--dir', dir)).stdout).toContain(id);
  });

  it('fails with exit 1 and a clear message on an unknown checkpoint id', async () => {
    const result = await cli('checkpoint', 'restore', '--dir', copy(), '--to', 'no-such-checkpoint');
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/--to no-such-checkpoint: neither a checkpoint id .* nor a time/);
  });

  it('exits 2 on a wrong command line', async () => {
    const dir = copy();
    const noKey = await cli('checkpoint', 'erase', '--dir', dir, '--yes');
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toMatch(/--key/);
    const noYes = await cli('checkpoint', 'erase', '--dir', dir, '--key', 'acme/s1');
    expect(noYes.code).toBe(2);
    expect(noYes.stderr).toMatch(/--yes/);
    const noTarget = await cli('checkpoint', 'list');
    expect(noTarget.code).toBe(2);
    expect(noTarget.stderr).toMatch(/-c sidecar.yaml.*--dir/);
    const missingDir = await cli('checkpoint', 'list', '--dir', join(dir, 'missing'));
    expect(missingDir.code).toBe(2);
    const badTime = await cli('checkpoint', 'restore', '--dir', dir, '--to', first, '--roll-forward-until', 'soon');
    expect(badTime.code).toBe(2);
    expect(badTime.stderr).toMatch(/--roll-forward-until soon: not a time/);
  });

  it('shows examples in --help of the verb and of each subcommand', async () => {
    for (const args of [[], ['create'], ['list'], ['verify'], ['restore'], ['erase']]) {
      const result = await cli('checkpoint', ...args, '--help');
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/Examples:\n {2}ctxmesh checkpoint/);
    }
  });
});

describe('ctxmesh checkpoint -c sidecar.yaml', () => {
  let work: string;
  let configFile: string;
  let child: ChildProcess | undefined;

  beforeAll(async () => {
    const pki = await createPki();
    const identity = await pki.issue('checkpoint-online');
    work = tempDir('ctxmesh-cli-online-');
    const adminPort = Number((await deadAddress()).split(':')[1]);
    configFile = join(work, 'sidecar.yaml');
    // JSON is YAML.
    writeFileSync(
      configFile,
      JSON.stringify({
        node: { id: 'cli-online' },
        identity,
        inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9', allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
        outbound: { port: 0 },
        admin: { port: adminPort },
        context: { port: 0, checkpoint: { dir: join(work, 'data') } },
        log: { level: 'warn' },
      }),
    );
    child = spawn(process.execPath, [CLI, 'sidecar', '-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<never>((_, reject) => child!.once('exit', (code) => reject(new Error(`sidecar exited (${code}) before ready:\n${stderr}`))));
    const healthy = until(
      async () => (await send(`http://127.0.0.1:${adminPort}`, '/healthz').catch(() => undefined))?.status === 200,
      SIDECAR_READY_TIMEOUT_MS,
      'the child sidecar to answer /healthz',
    );
    await Promise.race([healthy, exited]);
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exit = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      await exit;
    }
  });

  it('creates, lists and verifies through the admin port; refuses to restore while it runs', async () => {
    const created = await cli('checkpoint', 'create', '-c', configFile, '--reason', 'cli-test');
    expect(created.code, created.stderr).toBe(0);
    const id = /created checkpoint (\S+)/.exec(created.stdout)?.[1];
    expect(id).toBeDefined();

    const list = await cli('checkpoint', 'list', '-c', configFile);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`${id}\\s+full\\s+-\\s+\\S+Z\\s+\\d+\\s+cli-test`));

    const verify = await cli('checkpoint', 'verify', '-c', configFile, '--json');
    expect(verify.code, verify.stderr).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true });

    const restore = await cli('checkpoint', 'restore', '-c', configFile, '--to', id!);
    expect(restore.code).toBe(1);
    expect(restore.stderr).toMatch(/is running .*stop it first/);

    // Once stopped, the admin port is gone: online work says so and points at --offline.
    const exit = new Promise((r) => child!.once('exit', r));
    child!.kill('SIGTERM');
    await exit;
    const stopped = await cli('checkpoint', 'list', '-c', configFile);
    expect(stopped.code).toBe(1);
    expect(stopped.stderr).toMatch(/does not answer.*--offline/);
    const offline = await cli('checkpoint', 'list', '-c', configFile, '--offline');
    expect(offline.code, offline.stderr).toBe(0);
    expect(offline.stdout).toContain(id);
    const restored = await cli('checkpoint', 'restore', '-c', configFile, '--to', id!);
    expect(restored.code, restored.stderr).toBe(0);
  }, 60_000);

  it('exits 2 on an invalid config', async () => {
    const bad = join(work, 'bad.yaml');
    writeFileSync(bad, 'node: { id: x }\nadmin: { port: not-a-port }\n');
    const result = await cli('checkpoint', 'list', '-c', bad);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/admin\.port/);
  });
});

describe('progress bar', () => {
  function fakeStream(isTTY: boolean) {
    const writes: string[] = [];
    return { writes, stream: { isTTY, columns: 120, write: (text: string) => writes.push(text) } };
  }

  it('is silent off a terminal', () => {
    const { writes, stream } = fakeStream(false);
    const bar = progressBar('restore', { stream });
    bar.update('snapshot', 1, 10);
    bar.end();
    expect(writes).toEqual([]);
  });

  it('redraws at most every REDRAW_INTERVAL_MS, at once on a new phase, and clears the line at the end', () => {
    const { writes, stream } = fakeStream(true);
    let now = 0;
    const bar = progressBar('restore', { stream, now: () => now, units: { verify: 'snapshots' } });
    bar.update('snapshot', 1, 10);
    now += REDRAW_INTERVAL_MS / 2;
    bar.update('snapshot', 2, 10);
    expect(writes).toHaveLength(1);
    now += REDRAW_INTERVAL_MS / 2;
    bar.update('snapshot', 7, 10);
    bar.update('verify', 1, 3);
    bar.end();
    expect(writes).toHaveLength(4);
    expect(writes[1]).toContain('restore  snapshot  ██████████████░░░░░░   70%  7 records');
    expect(writes[2]).toContain('1 snapshots');
    expect(writes[3]).toBe('\r\x1b[2K');
  });

  it('counts without a percentage when the total is unknown', () => {
    expect(formatProgress('restore', 'wal', 123_456, undefined, 'records')).toBe('restore  wal  123,456 records');
  });
});
