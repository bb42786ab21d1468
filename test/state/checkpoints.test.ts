// Checkpoints of a real sidecar: crash recovery with SIGKILL during writes and during snapshots,
// damaged files, point-in-time and partial restore, erase, retention chains, and a real disk-full.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainOf, readCatalog } from '../../src/state/checkpoint/catalog.js';
import { restoreOffline, verifyOffline } from '../../src/state/checkpoint/offline.js';
import { closeAfterEach, createPki, sidecarConfig, startSidecar, until, type ConfigInput, type IdentityFiles } from '../helpers/mesh.js';
import { freePort } from '../helpers/redis.js';

const CLI = join(import.meta.dirname, '../../dist/src/cli/main.js');

async function put(api: string, key: string, value: string): Promise<number> {
  const res = await request(`${api}/v1/contexts/${key}`, { method: 'PUT', body: value, headers: { 'content-type': 'text/plain' } });
  await res.body.dump();
  return res.statusCode;
}

async function get(api: string, key: string): Promise<{ status: number; body: string }> {
  const res = await request(`${api}/v1/contexts/${key}`);
  return { status: res.statusCode, body: await res.body.text() };
}

describe('checkpoints and recovery', () => {
  const closers = closeAfterEach();
  const dirs: string[] = [];
  let identity: IdentityFiles;

  beforeAll(async () => {
    identity = await (await createPki()).issue('ckpt');
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
  });
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  function tempDir(): string {
    const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-ckpt-'));
    dirs.push(dir);
    return dir;
  }

  async function inProcess(dir: string, context: ConfigInput = {}) {
    const running = await startSidecar(sidecarConfig(identity, { node: { id: 'node-a' }, context: { port: 0, checkpoint: { dir }, ...context } }));
    closers.push(() => running.sidecar.close());
    return { ...running, api: `http://127.0.0.1:${running.sidecar.ports.context}` };
  }

  /** The sidecar as its own process, so it can be SIGKILLed. */
  async function child(dir: string, context: ConfigInput = {}) {
    const [contextPort, adminPort] = [await freePort(), await freePort()];
    const config = join(dir, 'sidecar.json');
    writeFileSync(
      config,
      JSON.stringify({
        node: { id: 'node-a' },
        identity,
        inbound: { port: 0, address: '127.0.0.1', app: 'http://127.0.0.1:9' },
        outbound: { port: 0 },
        admin: { port: adminPort },
        log: { level: 'warn' },
        context: { port: contextPort, wal: { fsync: 'always' }, checkpoint: { dir: join(dir, 'data') }, ...context },
      }),
    );
    const proc: ChildProcess = spawn(process.execPath, [CLI, 'sidecar', '-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    closers.push(async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    });
    const api = `http://127.0.0.1:${contextPort}`;
    const admin = `http://127.0.0.1:${adminPort}`;
    await until(async () => (await request(`${admin}/ready`).then((r) => r.statusCode).catch(() => 0)) === 200, 10_000, 'the child sidecar');
    return { proc, api, admin, kill: () => new Promise<void>((resolve) => (proc.once('exit', () => resolve()), proc.kill('SIGKILL'))) };
  }

  it('SIGKILL during writes and snapshots: every acknowledged write is there after the restart', async () => {
    const dir = tempDir();
    const first = await child(dir, { checkpoint: { dir: join(dir, 'data'), fullEvery: 3 } });
    const acked = new Map<string, string>();
    let stop = false;
    const writers = [0, 1].map(async (w) => {
      for (let i = 0; !stop; i++) {
        const key = `t${w}/k${i % 300}`;
        const value = `${w}-${i}`;
        if ((await put(first.api, key, value).catch(() => 0)) === 204) acked.set(key, value);
      }
    });
    let snapshots = 0;
    const snapshotter = (async () => {
      while (!stop) {
        const res = await request(`${first.admin}/checkpoints`, { method: 'POST' }).catch(() => undefined);
        if (res) {
          await res.body.dump();
          if (res.statusCode === 201) snapshots++;
        }
      }
    })();
    await until(() => snapshots >= 4 && acked.size >= 400, 20_000, 'writes and snapshots under way');
    await first.kill(); // in the middle of both
    stop = true;
    await Promise.all([...writers, snapshotter]);

    const second = await child(dir, { checkpoint: { dir: join(dir, 'data'), fullEvery: 3 } });
    const missing: string[] = [];
    for (const [key, value] of acked) {
      const reply = await get(second.api, key);
      // A write in flight at the kill may have landed without its ack reaching us: newer is fine,
      // older or absent is a lost acknowledged write.
      const [w, i] = reply.body.split('-').map(Number);
      const [aw, ai] = value.split('-').map(Number);
      if (reply.status !== 200 || w !== aw || i! < ai!) missing.push(`${key}: acked ${value}, got ${reply.status} ${reply.body}`);
    }
    expect(missing).toEqual([]);
  }, 60_000);

  it('a damaged newest snapshot falls back to the previous chain, and a torn WAL tail is cut: nothing invented, nothing acknowledged lost', async () => {
    const dir = tempDir();
    let a = await inProcess(dir, { checkpoint: { dir, fullEvery: 1 } });
    await put(a.api, 'acme/s1', 'one');
    await a.sidecar.state!.createCheckpoint();
    await put(a.api, 'acme/s1', 'two');
    await put(a.api, 'acme/s2', 'x');
    const newest = await a.sidecar.state!.createCheckpoint();
    await put(a.api, 'acme/s3', 'after');
    await a.sidecar.close();

    // Flip a byte in the middle of the newest snapshot; cut the WAL's last record short.
    const bytes = readFileSync(newest.path);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x40;
    writeFileSync(newest.path, bytes);
    const walDir = join(dir, 'wal');
    const lastSegment = join(walDir, readdirSync(walDir).sort().at(-1)!);
    truncateSync(lastSegment, statSync(lastSegment).size - 3);

    a = await inProcess(dir, { checkpoint: { dir, fullEvery: 1 } });
    expect(a.logs.lines.some((l) => l.msg === 'checkpoint chain unreadable; falling back to an older one')).toBe(true);
    expect(a.logs.lines.some((l) => String(l.msg).includes('torn or corrupt'))).toBe(true);
    // From the older snapshot plus the WAL: everything up to the torn record.
    expect(await get(a.api, 'acme/s1')).toEqual({ status: 200, body: 'two' });
    expect(await get(a.api, 'acme/s2')).toEqual({ status: 200, body: 'x' });
    expect((await get(a.api, 'acme/s3')).status).toBe(404);
  });

  it('restores to a point in time, to a checkpoint with roll-forward, and one tenant alone — exactly', async () => {
    const dir = tempDir();
    const a = await inProcess(dir, { checkpoint: { dir, fullEvery: 2 } });
    const tick = () => new Promise((resolve) => setTimeout(resolve, 5));
    await put(a.api, 'acme/s1', 'a1');
    await put(a.api, 'other/s1', 'o1');
    const first = await a.sidecar.state!.createCheckpoint();
    await tick();
    await put(a.api, 'acme/s1', 'a2');
    await put(a.api, 'acme/s2', 'b2');
    await tick();
    const t2 = Date.now();
    await tick();
    await put(a.api, 'acme/s1', 'a3');
    await put(a.api, 'other/s1', 'o3');
    await a.sidecar.state!.createCheckpoint();
    await put(a.api, 'acme/s3', 'c4');
    await a.sidecar.close();

    const read = async (keys: string[]) => {
      const b = await inProcess(dir, { checkpoint: { dir, fullEvery: 2 } });
      const out = await Promise.all(keys.map(async (k) => ((r) => (r.status === 200 ? r.body : null))(await get(b.api, k))));
      await b.sidecar.close();
      return out;
    };
    const keys = ['acme/s1', 'acme/s2', 'acme/s3', 'other/s1'];
    expect(await read(keys)).toEqual(['a3', 'b2', 'c4', 'o3']);
    await tick();
    const latest = Date.now();

    await restoreOffline({ dir, to: String(t2) });
    expect(await read(keys)).toEqual(['a2', 'b2', null, 'o1']);

    await restoreOffline({ dir, to: first.header.id });
    expect(await read(keys)).toEqual(['a1', null, null, 'o1']);

    await restoreOffline({ dir, to: first.header.id, rollForwardUntil: t2 });
    expect(await read(keys)).toEqual(['a2', 'b2', null, 'o1']);

    // Restores are part of the history: "now" is the last restore. The state from before them is
    // one more restore away; then only acme/ back to t2.
    await restoreOffline({ dir, to: String(Date.now()) });
    expect(await read(keys)).toEqual(['a2', 'b2', null, 'o1']);
    await restoreOffline({ dir, to: String(latest) });
    expect(await read(keys)).toEqual(['a3', 'b2', 'c4', 'o3']);
    await restoreOffline({ dir, to: String(t2), keyPrefix: 'acme/' });
    expect(await read(keys)).toEqual(['a2', 'b2', null, 'o3']);
    expect((await verifyOffline({ dir })).ok).toBe(true);
  });

  it('erases one session online from the live tiers, every snapshot and the WAL; verify proves it', async () => {
    const dir = tempDir();
    const a = await inProcess(dir, { checkpoint: { dir, fullEvery: 2 } });
    await put(a.api, 'acme/alice', 'secret-1');
    await put(a.api, 'acme/alice/notes', 'secret-2');
    await put(a.api, 'acme/bob', 'keep');
    await a.sidecar.state!.createCheckpoint();
    await put(a.api, 'acme/alice', 'secret-3');
    await a.sidecar.state!.createCheckpoint();
    await put(a.api, 'acme/alice', 'secret-4');

    const erase = await request(`${a.admin}/checkpoints/erase?key=acme/alice`, { method: 'POST' });
    const report = (await erase.body.json()) as { snapshotRecordsRemoved: number; walRecordsRedacted: number; liveRemoved: number };
    expect(report).toMatchObject({ liveRemoved: 2, snapshotRecordsRemoved: 3, walRecordsRedacted: 4 });
    expect((await get(a.api, 'acme/alice')).status).toBe(404);
    expect((await get(a.api, 'acme/alice/notes')).status).toBe(404);
    expect(await get(a.api, 'acme/bob')).toEqual({ status: 200, body: 'keep' });

    const verify = await request(`${a.admin}/checkpoints/verify?key=acme/alice`, { method: 'POST' });
    expect(verify.statusCode).toBe(200);
    expect(((await verify.body.json()) as { key: object }).key).toMatchObject({ snapshotRecords: 0, walRecords: 0 });
    // Not a byte of the values is left anywhere on disk.
    const grep = spawnSync('grep', ['-r', '-l', 'secret-', dir], { encoding: 'utf8' });
    expect(grep.stdout).toBe('');
    const audit = readFileSync(join(dir, 'audit.log'), 'utf8');
    expect(audit).toMatch(/"action":"erase"/);
    expect(audit).not.toContain('acme/alice');

    await a.sidecar.close();
    const b = await inProcess(dir);
    expect((await get(b.api, 'acme/alice')).status).toBe(404);
    expect(await get(b.api, 'acme/bob')).toEqual({ status: 200, body: 'keep' });
  });

  it('retention keeps at most `count` snapshots and every chain they need; the WAL still recovers', async () => {
    const dir = tempDir();
    const a = await inProcess(dir, { checkpoint: { dir, fullEvery: 3, retention: { count: 2 } } });
    for (let i = 0; i < 8; i++) {
      await put(a.api, `acme/k${i}`, `v${i}`);
      await a.sidecar.state!.createCheckpoint();
    }
    await put(a.api, 'acme/last', 'after');
    const { entries } = await readCatalog(dir);
    // The two newest, plus whatever they build on.
    const newest = entries.slice(-2);
    for (const entry of newest) expect(chainOf(entries, entry)).toBeDefined();
    const needed = new Set(newest.flatMap((e) => chainOf(entries, e)!.map((c) => c.header.id)));
    expect(entries.map((e) => e.header.id).sort()).toEqual([...needed].sort());
    expect(entries.length).toBeLessThan(8);
    await a.sidecar.close();
    const b = await inProcess(dir);
    for (let i = 0; i < 8; i++) expect((await get(b.api, `acme/k${i}`)).body).toBe(`v${i}`);
    expect((await get(b.api, 'acme/last')).body).toBe('after');
  });

  describe.skipIf(process.getuid?.() !== 0)('disk full (a real 4 MiB tmpfs)', () => {
    it('a snapshot that runs out of space fails cleanly; the previous one stays usable', async () => {
      const dir = tempDir();
      const mount = join(dir, 'small');
      mkdirSync(mount);
      if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mount]).status !== 0) return;
      closers.push(async () => void spawnSync('umount', ['-l', mount]));
      const a = await inProcess(mount, { checkpoint: { dir: mount, fullEvery: 1 }, wal: { fsync: 'none', segmentBytes: '256KiB' } });
      const value = 'x'.repeat(16 * 1024);
      for (let i = 0; i < 60; i++) expect(await put(a.api, `acme/k${i}`, value)).toBe(204); // ~1 MiB
      const good = await a.sidecar.state!.createCheckpoint();
      // Another ~1.5 MiB of contexts: the WAL still fits, a second full snapshot does not.
      for (let i = 60; i < 150; i++) if ((await put(a.api, `acme/k${i}`, value)) !== 204) break;
      await expect(a.sidecar.state!.createCheckpoint()).rejects.toThrow(/ENOSPC|no space/i);
      const { entries } = await readCatalog(mount);
      expect(entries.map((e) => e.header.id)).toEqual([good.header.id]);
      expect(readdirSync(join(mount, 'snapshots')).filter((n) => n.endsWith('.tmp'))).toEqual([]);
      expect((await verifyOffline({ dir: mount })).snapshots.every((s) => s.ok)).toBe(true);
      await a.sidecar.close();
      // Make room, restart: the previous snapshot and the WAL bring everything back.
      const copy = tempDir();
      for (const sub of ['snapshots', 'wal']) {
        mkdirSync(join(copy, sub));
        for (const name of readdirSync(join(mount, sub))) copyFileSync(join(mount, sub, name), join(copy, sub, name));
      }
      const b = await inProcess(copy);
      expect((await get(b.api, 'acme/k0')).body).toBe(value);
      expect((await get(b.api, 'acme/k59')).status).toBe(200);
    });
  });
});
