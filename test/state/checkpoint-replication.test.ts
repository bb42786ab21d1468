// Checkpoints in a replicated cluster (three in-process sidecars over real mTLS): a snapshot records
// its version-clock frontier (newest write per origin node) and shows it in `checkpoint list`, the
// admin API and verify; a node restored to an older checkpoint catches up from its peers at start
// (anti-entropy with every peer), answering the later writes again, while its older records never
// replace newer ones on the peers (a later update and a later delete both survive the restore).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { registerCheckpoint } from '../../src/cli/checkpoint.js';
import { readCatalog } from '../../src/state/checkpoint/catalog.js';
import { frontierOf } from '../../src/state/checkpoint/frontier.js';
import { listOffline, restoreOffline, verifyOffline } from '../../src/state/checkpoint/offline.js';
import { RESTORE_MARKER_FILE } from '../../src/state/checkpoint/restore-catch-up.js';
import { readSnapshot, type SnapshotHeader } from '../../src/state/checkpoint/snapshot-file.js';
import type { ContextRecord } from '../../src/state/record.js';
import { until } from '../helpers/mesh.js';
import { call, clusterPerTest, type Node } from './replication/cluster.js';

const EARLY_KEYS = 40;

/** The value this node's own replica holds (eventual reads ask the local replica first; RF=3 of 3). */
async function localValue(node: Node, key: string): Promise<string | undefined> {
  const record = await node.running!.sidecar.state!.antiEntropy!.replica.read(key);
  if (!record) return undefined;
  return record.tombstone ? '<deleted>' : record.value.toString();
}

async function adminJson(node: Node, method: 'GET' | 'POST', path: string): Promise<{ status: number; body: any }> {
  const res = await request(`http://127.0.0.1:${node.running!.sidecar.ports.admin}${path}`, { method });
  return { status: res.statusCode, body: await res.body.json() };
}

/** Runs `ctxmesh checkpoint …` in this process and returns what it printed. */
async function cli(...args: string[]): Promise<{ out: string; exitCode: number }> {
  const program = new Command().exitOverride();
  registerCheckpoint(program);
  let out = '';
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array) => ((out += chunk.toString()), true)) as typeof process.stdout.write;
  const before = process.exitCode;
  process.exitCode = 0;
  try {
    await program.parseAsync(['checkpoint', ...args], { from: 'user' });
    return { out, exitCode: Number(process.exitCode ?? 0) };
  } finally {
    process.stdout.write = write;
    process.exitCode = before;
  }
}

async function recordsOf(path: string): Promise<ContextRecord[]> {
  const records: ContextRecord[] = [];
  for await (const batch of readSnapshot(path, {})) records.push(...batch);
  return records;
}

describe('checkpoints with replication: frontier and catch-up after a restore', () => {
  const launch = clusterPerTest();

  it('a node restored to a checkpoint gets the later writes back from its peers, and older versions never win', async () => {
    // Periodic rounds off: what repairs A after the restore is its start-up catch-up (or a peer
    // noticing it came back), not a timer.
    const cluster = await launch(['node-a', 'node-b', 'node-c'], { antiEntropy: { interval: '1h' } });
    const [a, b, c] = cluster.nodes as [Node, Node, Node];

    // Before the checkpoint: writes coordinated by A and by B, on every replica.
    for (let i = 0; i < EARLY_KEYS; i++) {
      const via = i % 2 === 0 ? a : b;
      expect((await call(via.api(), 'PUT', `acme/k${i}`, { body: `early-${i}`, consistency: 'strong' })).status).toBe(204);
    }
    for (const node of [a, b, c]) await until(async () => (await localValue(node, `acme/k${EARLY_KEYS - 1}`)) === `early-${EARLY_KEYS - 1}`, 10_000, `${node.id} to hold the early writes`);
    for (const node of [a, b, c]) for (let i = 0; i < EARLY_KEYS; i++) await until(async () => (await localValue(node, `acme/k${i}`)) === `early-${i}`, 10_000, `${node.id} acme/k${i}`);

    // The checkpoint, through the admin API: its header carries the frontier and the WAL position.
    const created = await adminJson(a, 'POST', '/checkpoints?reason=before-incident');
    expect(created.status).toBe(201);
    const header = created.body.header as SnapshotHeader;
    expect(Object.keys(header.frontier).sort()).toEqual(['node-a', 'node-b']);
    expect(header.lsn).toBeGreaterThan(0);
    // Exactly the newest version per origin among the records it holds (no writes ran meanwhile).
    const [entry] = (await readCatalog(a.dir)).entries.filter((e) => e.header.id === header.id);
    expect(frontierOf(await recordsOf(entry!.path))).toEqual(header.frontier);
    const listed = await adminJson(a, 'GET', '/checkpoints');
    expect(listed.body.checkpoints.find((h: SnapshotHeader) => h.id === header.id).frontier).toEqual(header.frontier);

    // After the checkpoint: an update (via B), a new key (via C), a delete (via A), on every replica.
    expect((await call(b.api(), 'PUT', 'acme/k1', { body: 'later-update', consistency: 'strong' })).status).toBe(204);
    expect((await call(c.api(), 'PUT', 'acme/new', { body: 'later-create', consistency: 'strong' })).status).toBe(204);
    expect((await call(a.api(), 'DELETE', 'acme/k2', { consistency: 'strong' })).status).toBe(204);
    for (const node of [a, b, c]) {
      await until(
        async () => (await localValue(node, 'acme/k1')) === 'later-update' && (await localValue(node, 'acme/new')) === 'later-create' && (await localValue(node, 'acme/k2')) === '<deleted>',
        10_000,
        `${node.id} to hold the later writes`,
      );
    }

    // A stops and is restored, offline, to the checkpoint: the later writes are gone from its disk.
    await cluster.stop('node-a');
    const restored = await restoreOffline({ dir: a.dir, to: header.id });
    expect(restored.restored).toBe(EARLY_KEYS);
    expect(existsSync(join(a.dir, RESTORE_MARKER_FILE))).toBe(true);
    const restoreHeader = (await listOffline(a.dir)).checkpoints.find((h) => h.id === restored.id)!;
    expect(restoreHeader.frontier).toEqual(header.frontier); // the checkpoint's state, nothing later
    const printed = await cli('list', '--dir', a.dir);
    expect(printed.exitCode).toBe(0);
    expect(printed.out).toMatch(/FRONTIER/);
    const frontierText = Object.entries(header.frontier).map(([node, t]) => `${node}=${t}`).join(',');
    expect(printed.out.split('\n').find((line) => line.startsWith(restored.id))).toContain(frontierText);
    const verified = await cli('verify', '--dir', a.dir);
    expect(verified.exitCode).toBe(0);
    expect(verified.out).toContain(`newest checkpoint ${restored.id}: WAL LSN ${restoreHeader.lsn}, frontier ${frontierText}`);
    expect((await verifyOffline({ dir: a.dir })).snapshots.at(-1)).toMatchObject({ id: restored.id, lsn: restoreHeader.lsn, frontier: header.frontier });

    // A starts from the restored state and runs a round with every peer.
    await cluster.start('node-a');
    const catchUp = a.running!.sidecar.state!.restoreCatchUp;
    expect(catchUp).toBeDefined();
    const report = await catchUp!.done;
    expect(report.complete).toBe(true);
    expect(report.marker.checkpoint).toBe(restored.id);
    expect(report.rounds.map((r) => r.peer).sort()).toEqual(['node-b', 'node-c']);
    for (const round of report.rounds) expect(['in_sync', 'repaired']).toContain(round.result);
    expect(existsSync(join(a.dir, RESTORE_MARKER_FILE))).toBe(false);

    // A answers the later writes again, from its own replica.
    await until(async () => (await localValue(a, 'acme/k1')) === 'later-update', 10_000, 'A to have the later update back');
    expect(await localValue(a, 'acme/new')).toBe('later-create');
    expect(await localValue(a, 'acme/k2')).toBe('<deleted>');
    // The restored, older records did not replace newer ones anywhere: no resurrection of k2, no rollback of k1.
    for (const node of [b, c]) {
      expect(await localValue(node, 'acme/k1')).toBe('later-update');
      expect(await localValue(node, 'acme/k2')).toBe('<deleted>');
      expect(await localValue(node, 'acme/new')).toBe('later-create');
    }
    // And through the context API (an eventual read asks this sidecar's replica first).
    expect((await call(a.api(), 'GET', 'acme/k1', { consistency: 'eventual' })).body).toBe('later-update');
    expect((await call(a.api(), 'GET', 'acme/new', { consistency: 'eventual' })).body).toBe('later-create');
    expect((await call(a.api(), 'GET', 'acme/k2', { consistency: 'eventual' })).status).toBe(404);
    expect((await call(a.api(), 'GET', `acme/k${EARLY_KEYS - 1}`, { consistency: 'eventual' })).body).toBe(`early-${EARLY_KEYS - 1}`);
    for (const node of [b, c]) expect((await call(node.api(), 'GET', 'acme/k2', { consistency: 'eventual' })).status).toBe(404);
  }, 90_000);

  it('without replication a restore loads as before and its marker is cleared at start', async () => {
    const cluster = await launch(['node-solo'], {});
    const [solo] = cluster.nodes as [Node];
    // One node, no peers: the state agent runs without a replicator.
    expect(solo.running!.sidecar.state!.replicator).toBeUndefined();
    expect((await call(solo.api(), 'PUT', 't/s1', { body: 'one' })).status).toBe(204);
    const created = await adminJson(solo, 'POST', '/checkpoints');
    expect(Object.keys(created.body.header.frontier)).toEqual(['node-solo']);
    expect((await call(solo.api(), 'PUT', 't/s1', { body: 'two' })).status).toBe(204);
    await cluster.stop('node-solo');
    await restoreOffline({ dir: solo.dir, to: created.body.header.id });
    await cluster.start('node-solo');
    expect(solo.running!.sidecar.state!.restoreCatchUp).toBeUndefined();
    expect(existsSync(join(solo.dir, RESTORE_MARKER_FILE))).toBe(false);
    expect((await call(solo.api(), 'GET', 't/s1')).body).toBe('one');
  }, 30_000);
});
