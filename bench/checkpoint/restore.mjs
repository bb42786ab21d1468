#!/usr/bin/env node
// Restore alone, for profiling and quick before/after checks (the full benchmark is run.sh).
//
//   node bench/checkpoint/run.mjs preload --dir DIR --json /dev/null --records 65536   # once: the snapshot
//   node --expose-gc bench/checkpoint/restore.mjs --dir DIR [--rounds 3] [--target frontier|memory|none]
//       [--cold]    drop the page cache before each read (root only)
//   node --expose-gc bench/checkpoint/restore.mjs --dir DIR --once [--sample KEY]
//       one restore, no dd, no cache drop (the caller's: run.mjs), printed as one JSON line with
//       the SHA-256 of KEY's restored value: run.mjs measures restores this way, in a process of
//       their own as at a sidecar's start, not in one that already holds the state it wrote.
//
// Per round, in this order: `dd if=SNAPSHOT of=/dev/null bs=1M` (the sequential read of the same
// file), then rebuild() of the newest chain into a fresh target:
//   frontier  FrontierTrackingL2, as the sidecar's start-up restores (the default)
//   memory    a plain MemoryL2
//   none      the records are counted and dropped: the read-back and decode alone
// and prints MB/s of snapshot bytes for each, and the restore's ratio to dd's.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = resolve(new URL('../..', import.meta.url).pathname);
const dist = (p) => import(join(ROOT, 'dist/src/state', p));
const { MemoryL2 } = await dist('cache/memory-l2.js');
const { FrontierTrackingL2 } = await dist('checkpoint/frontier.js');
const { rebuild } = await dist('checkpoint/rebuild.js');
const { SNAPSHOT_DIR } = await dist('checkpoint/catalog.js');

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    target: { type: 'string', default: 'frontier' },
    cold: { type: 'boolean', default: false },
    once: { type: 'boolean', default: false },
    sample: { type: 'string' },
  },
});
if (!values.dir || !['frontier', 'memory', 'none'].includes(values.target)) {
  process.stderr.write('usage: restore.mjs --dir DIR [--rounds N] [--target frontier|memory|none] [--cold]\n');
  process.exit(2);
}
const dir = resolve(values.dir);
const snaps = readdirSync(join(dir, SNAPSHOT_DIR)).filter((n) => n.endsWith('.snap'));
if (snaps.length !== 1) throw new Error(`expected one snapshot in ${join(dir, SNAPSHOT_DIR)}, found ${snaps.length}`);
const file = join(dir, SNAPSHOT_DIR, snaps[0]);
const bytes = statSync(file).size;
const MB = 1e6;

function dropCaches() {
  spawnSync('sync');
  if (values.cold) writeFileSync('/proc/sys/vm/drop_caches', '3');
}

function dd() {
  const run = spawnSync('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`dd: ${run.stderr}`);
  const copied = /(\d+) bytes .* copied, ([\d.]+) s/.exec(run.stderr);
  return Number(copied[1]) / Number(copied[2]);
}

async function restore() {
  let target;
  let count = 0;
  if (values.target === 'none') target = { reset: () => (count = 0), apply: () => count++ };
  else {
    const l2 = values.target === 'memory' ? new MemoryL2() : new FrontierTrackingL2();
    // As the sidecar's start-up (state/agent.ts): the chain in bulk, the WAL record by record.
    target = { reset: () => l2.clear(), apply: (r) => l2.apply(r), l2 };
    if (l2.loadSnapshot) target.loadSnapshot = (batch) => l2.loadSnapshot(batch); // absent before this change
  }
  globalThis.gc?.();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const report = await rebuild({ dir, replay: async () => ({ records: 0, firstLsn: 0, lastLsn: 0 }) }, { kind: 'latest' }, target);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  if (report.chain.length !== 1) throw new Error(`restore loaded no chain: ${JSON.stringify(report.skipped)}`);
  const held = target.l2?.size ?? count;
  if (held !== report.snapshotRecords) throw new Error(`restore read ${report.snapshotRecords} records, the target holds ${held}`);
  return { rate: bytes / seconds, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6, records: report.snapshotRecords, target };
}

if (values.once) {
  const r = await restore();
  const sampled = values.sample === undefined ? undefined : await r.target.l2?.get(values.sample);
  const sampleSha256 = sampled?.value ? createHash('sha256').update(sampled.value).digest('hex') : null;
  process.stdout.write(`${JSON.stringify({ seconds: r.seconds, cpuSeconds: r.cpuSeconds, bytes, records: r.records, sampleSha256 })}\n`);
  process.exit(0);
}

process.stderr.write(`restore of ${file} (${(bytes / 2 ** 20).toFixed(0)} MiB), target ${values.target}, ${values.cold ? 'cold' : 'warm'} cache\n`);
for (let round = 0; round < Number(values.rounds); round++) {
  dropCaches();
  const ddRate = dd();
  dropCaches();
  const r = await restore();
  process.stdout.write(
    `round ${round + 1}: dd read ${(ddRate / MB).toFixed(0)} MB/s; restore ${(r.rate / MB).toFixed(0)} MB/s (${r.records} records in ${r.seconds.toFixed(3)} s, CPU ${r.cpuSeconds.toFixed(2)} s) = ${(r.rate / ddRate).toFixed(3)}× dd\n`,
  );
  r.target = undefined; // the restored state is garbage before the next round
}
