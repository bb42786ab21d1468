#!/usr/bin/env node
// Checkpoint benchmark, the in-process half (bench/checkpoint/run.sh drives it; see bench/README.md).
//
//   node --expose-gc bench/checkpoint/run.mjs offline --dir DIR --json OUT.json
//       Fills a MemoryL2 with --records × --value-bytes, then in one run, interleaved over --rounds:
//         full snapshot (writeSnapshot from a copy-on-write view, sync: true)  vs  dd of the same
//         size to the same directory (conv=fdatasync); an incremental after --changed-pct % of the
//         keys changed, its size against the full's; restore (rebuild(), in a fresh process) vs
//         dd of the snapshot file to /dev/null, cold cache (drop_caches, as root) and warm.
//   node bench/checkpoint/run.mjs preload --dir DATA_DIR --json OUT.json
//       Writes the same state as a full snapshot into a sidecar's data dir (node id "bench"), so
//       the sidecar recovers it at start instead of taking 1 GiB of PUTs.
//
// Values are JSON documents (a chat-turn shape) whose text fields are base64 of random bytes:
// realistic framing, incompressible payload (snapshots are written uncompressed by default).
import { spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = resolve(new URL('../..', import.meta.url).pathname);
const HERE = resolve(new URL('.', import.meta.url).pathname);
const dist = (p) => import(join(ROOT, 'dist/src/state', p));
const { MemoryL2 } = await dist('cache/memory-l2.js');
const { writeSnapshot } = await dist('checkpoint/snapshot-file.js');
const { rebuild } = await dist('checkpoint/rebuild.js');
const { snapshotId, snapshotPath, SNAPSHOT_DIR } = await dist('checkpoint/catalog.js');

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    dir: { type: 'string' },
    json: { type: 'string' },
    records: { type: 'string', default: String(256 * 1024) },
    'value-bytes': { type: 'string', default: '4096' },
    rounds: { type: 'string', default: '3' },
    'changed-pct': { type: 'string', default: '1' },
    'drop-caches': { type: 'string', default: 'auto' },
  },
});
const mode = positionals[0];
if (!values.dir || !values.json || !['offline', 'preload'].includes(mode)) {
  process.stderr.write('usage: run.mjs offline|preload --dir DIR --json OUT.json [--records N --value-bytes B --rounds R --changed-pct P]\n');
  process.exit(2);
}
const RECORDS = Number(values.records);
const VALUE_BYTES = Number(values['value-bytes']);
const ROUNDS = Number(values.rounds);
const CHANGED_PCT = Number(values['changed-pct']);
const NODE_TAG = 'bench';
const MB = 1e6;
const MiB = 1024 ** 2;
const log = (...a) => process.stderr.write(`  [checkpoint] ${a.join(' ')}\n`);

const canDrop = values['drop-caches'] === 'auto' ? process.getuid?.() === 0 : values['drop-caches'] === '1';
function dropCaches() {
  spawnSync('sync');
  if (!canDrop) return false;
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// The state

const baseWall = Date.now() - RECORDS - 60_000; // every version in the past, one ms apart
let lastWall = baseWall;
const keyOf = (i) => `${NODE_TAG}/session-${String(i).padStart(7, '0')}`;

/** A JSON document of exactly VALUE_BYTES bytes: framing plus base64 of random bytes. */
const random = Buffer.allocUnsafe(64 * MiB);
let randomAt = random.length;
function value(i, generation) {
  const head = `{"session":"${keyOf(i)}","generation":${generation},"turns":[{"role":"user","text":"`;
  const tail = '"}]}';
  const fill = VALUE_BYTES - head.length - tail.length;
  const rawBytes = Math.ceil((fill * 3) / 4) + 3;
  if (randomAt + rawBytes > random.length) {
    randomFillSync(random);
    randomAt = 0;
  }
  const out = Buffer.allocUnsafeSlow(VALUE_BYTES); // one allocation per value, as an HTTP body is
  out.write(head, 0, 'latin1');
  out.write(random.toString('base64', randomAt, randomAt + rawBytes).slice(0, fill), head.length, 'latin1');
  out.write(tail, VALUE_BYTES - tail.length, 'latin1');
  randomAt += rawBytes;
  return out;
}

function record(i, generation) {
  const wall = ++lastWall;
  return { key: keyOf(i), value: value(i, generation), contentType: 'application/json', version: `${wall}.0@${NODE_TAG}`, expiresAt: 0, retention: 'normal', updatedAt: wall };
}

function fill() {
  const t0 = performance.now();
  const l2 = new MemoryL2();
  for (let i = 0; i < RECORDS; i++) l2.apply(record(i, 0));
  log(`filled MemoryL2: ${RECORDS} records × ${VALUE_BYTES} B = ${((RECORDS * VALUE_BYTES) / MiB).toFixed(0)} MiB of values in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return l2;
}

function header(kind, extra = {}) {
  const createdAt = Date.now();
  return { id: snapshotId(createdAt, 0, kind), kind, createdAt, lsn: 0, frontier: { [NODE_TAG]: `${lastWall}.0` }, reason: 'bench', ...extra };
}

/** Wall time and this process's CPU time (user + system) of `work`. */
async function timed(work) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await work();
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6, result };
}

/** Takes a full snapshot the way CheckpointManager does: open a view, write it, close it. */
async function fullSnapshot(l2, path) {
  const view = l2.openView();
  const t = await timed(() => writeSnapshot(path, header('full'), l2.viewRecords(view), { compression: 'none', sync: true }));
  l2.closeView(view, true);
  return { seconds: t.seconds, cpuSeconds: t.cpuSeconds, bytes: t.result.bytes, records: t.result.records, id: t.result.header.id };
}

function dd(args) {
  const t0 = performance.now();
  const run = spawnSync('dd', args, { encoding: 'utf8' });
  const seconds = (performance.now() - t0) / 1000;
  if (run.status !== 0) throw new Error(`dd ${args.join(' ')}: ${run.stderr}`);
  const copied = /(\d+) bytes .* copied, ([\d.]+) s/.exec(run.stderr);
  return { bytes: Number(copied[1]), seconds: Number(copied[2]), wallSeconds: seconds, line: run.stderr.trim().split('\n').at(-1) };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// ---------------------------------------------------------------------------------------------

const dir = resolve(values.dir);
mkdirSync(dir, { recursive: true });

if (mode === 'preload') {
  const l2 = fill();
  mkdirSync(join(dir, SNAPSHOT_DIR), { recursive: true });
  const h = header('full');
  const view = l2.openView();
  const summary = await writeSnapshot(snapshotPath(dir, h.id), h, l2.viewRecords(view), { compression: 'none', sync: true });
  l2.closeView(view, true);
  writeFileSync(values.json, JSON.stringify({ records: summary.records, bytes: summary.bytes, valueBytes: VALUE_BYTES, keyPattern: keyOf(0) }));
  log(`preloaded ${summary.records} records (${(summary.bytes / MiB).toFixed(0)} MiB) as ${h.id}`);
  process.exit(0);
}

const out = {
  records: RECORDS,
  valueBytes: VALUE_BYTES,
  rounds: ROUNDS,
  dir,
  dropCaches: canDrop,
  write: [],
  restore: [],
};
const l2 = fill();
const ddFile = join(dir, 'dd.bin');
const ddCount = Math.round((RECORDS * VALUE_BYTES) / MiB);
const snapDir = join(dir, 'snap');
mkdirSync(join(snapDir, SNAPSHOT_DIR), { recursive: true });
let fullPath;
let full;

// Full snapshot vs dd write, interleaved; the order flips every round (ABBA) so neither always
// gets the disk just after the other's writeback.
for (let round = 0; round < ROUNDS; round++) {
  const row = { round };
  const doDd = () => {
    rmSync(ddFile, { force: true });
    row.dropped = dropCaches();
    row.dd = dd(['if=/dev/zero', `of=${ddFile}`, 'bs=1M', `count=${ddCount}`, 'conv=fdatasync']);
    rmSync(ddFile, { force: true });
    log(`round ${round + 1}: dd write ${(row.dd.bytes / row.dd.seconds / MB).toFixed(0)} MB/s (${row.dd.line})`);
  };
  const doSnap = async () => {
    for (const name of readdirSync(join(snapDir, SNAPSHOT_DIR))) rmSync(join(snapDir, SNAPSHOT_DIR, name));
    dropCaches();
    globalThis.gc?.();
    const h = header('full');
    fullPath = snapshotPath(snapDir, h.id);
    row.snapshot = await fullSnapshot(l2, fullPath);
    full = row.snapshot;
    log(`round ${round + 1}: full snapshot ${(row.snapshot.bytes / row.snapshot.seconds / MB).toFixed(0)} MB/s (${(row.snapshot.bytes / MiB).toFixed(0)} MiB in ${row.snapshot.seconds.toFixed(2)} s, CPU ${row.snapshot.cpuSeconds.toFixed(2)} s)`);
  };
  if (round % 2 === 0) {
    doDd();
    await doSnap();
  } else {
    await doSnap();
    doDd();
  }
  out.write.push(row);
}
// Only the last full snapshot is kept: it is the incremental's parent and what the restore reads.
const fullId = readdirSync(join(snapDir, SNAPSHOT_DIR))[0].replace(/\.snap$/, '');

// Incremental after CHANGED_PCT % of the keys changed: distinct keys, new values of the same size.
// The restore reads the full snapshot alone, so its check samples a key the incremental left alone.
const picked = new Set();
{
  const changed = Math.round((RECORDS * CHANGED_PCT) / 100);
  while (picked.size < changed) picked.add(Math.floor(Math.random() * RECORDS));
  for (const i of picked) l2.apply(record(i, 1));
  dropCaches();
  const view = l2.openView();
  const h = header('incremental', { parent: fullId });
  const t = await timed(() => writeSnapshot(snapshotPath(snapDir, h.id), h, l2.viewChanges(view, Date.now()), { compression: 'none', sync: true }));
  l2.closeView(view, true);
  out.incremental = { changedKeys: changed, records: t.result.records, bytes: t.result.bytes, seconds: t.seconds, fullBytes: full.bytes, ratio: t.result.bytes / full.bytes };
  rmSync(snapshotPath(snapDir, h.id)); // the restore below reads the full snapshot alone
  log(`incremental: ${t.result.records} records, ${(t.result.bytes / MiB).toFixed(1)} MiB = ${((100 * t.result.bytes) / full.bytes).toFixed(2)} % of the full`);
}

// Restore vs sequential read of the same file, cold (caches dropped before each) and warm.
const fileBytes = statSync(fullPath).size;
// Each restore runs in a process of its own (restore.mjs --once), as a sidecar restores at start:
// this one holds the 1 GiB it wrote, which a restore here would have to share the heap (and its
// GC) with.
const restoreOnce = async () => {
  let unchanged = Math.floor(RECORDS / 2);
  while (picked.has(unchanged)) unchanged++;
  const sample = keyOf(unchanged);
  const child = spawnSync(process.execPath, ['--expose-gc', join(HERE, 'restore.mjs'), '--dir', snapDir, '--once', '--sample', sample], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (child.status !== 0) throw new Error(`restore.mjs --once failed (${child.status}): ${child.stderr}`);
  const r = JSON.parse(child.stdout.trim().split('\n').pop());
  if (r.records !== RECORDS) throw new Error(`restore read ${r.records} records, expected ${RECORDS}`);
  const expected = createHash('sha256').update((await l2.get(sample)).value).digest('hex');
  if (r.sampleSha256 !== expected) throw new Error(`restore: ${sample} differs`);
  return { seconds: r.seconds, cpuSeconds: r.cpuSeconds, bytes: fileBytes, records: r.records };
};
// What a restore giving every value a fresh buffer of its own would cost at least (no file, no
// decoding, no map): on a VM, first-touching fresh memory is far slower than reading the page cache.
// The restore no longer does this (values are views into its read slabs); kept as a reference.
const allocFloor = () => {
  globalThis.gc?.();
  const source = Buffer.alloc(VALUE_BYTES, 0x61);
  const kept = new Array(RECORDS);
  const t0 = performance.now();
  for (let i = 0; i < RECORDS; i++) {
    const copy = Buffer.allocUnsafe(VALUE_BYTES);
    source.copy(copy);
    kept[i] = copy;
  }
  return { seconds: (performance.now() - t0) / 1000, bytes: RECORDS * VALUE_BYTES };
};
for (let round = 0; round < ROUNDS; round++) {
  const row = { round };
  row.allocFloor = allocFloor();
  row.dropped = dropCaches();
  row.ddCold = dd([`if=${fullPath}`, 'of=/dev/null', 'bs=1M']);
  dropCaches();
  row.restoreCold = await restoreOnce();
  row.ddWarm = dd([`if=${fullPath}`, 'of=/dev/null', 'bs=1M']);
  row.restoreWarm = await restoreOnce();
  out.restore.push(row);
  const mbs = (x) => (x.bytes / x.seconds / MB).toFixed(0);
  log(`round ${round + 1}: cold: dd read ${mbs(row.ddCold)} MB/s, restore ${mbs(row.restoreCold)} MB/s; warm: dd read ${mbs(row.ddWarm)} MB/s, restore ${mbs(row.restoreWarm)} MB/s; floor (fresh 4 KiB buffers, filled) ${mbs(row.allocFloor)} MB/s`);
}

const rate = (x) => x.bytes / x.seconds;
out.summary = {
  ddWrite: median(out.write.map((r) => rate(r.dd))),
  fullWrite: median(out.write.map((r) => rate(r.snapshot))),
  fullBytes: full.bytes,
  ddReadCold: median(out.restore.map((r) => rate(r.ddCold))),
  restoreCold: median(out.restore.map((r) => rate(r.restoreCold))),
  ddReadWarm: median(out.restore.map((r) => rate(r.ddWarm))),
  restoreWarm: median(out.restore.map((r) => rate(r.restoreWarm))),
  allocFloor: median(out.restore.map((r) => rate(r.allocFloor))),
};
writeFileSync(values.json, JSON.stringify(out, null, 1));
rmSync(snapDir, { recursive: true, force: true });
