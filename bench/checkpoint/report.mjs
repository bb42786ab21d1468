#!/usr/bin/env node
// The checkpoint benchmark's Markdown report, from the raw JSON files run.sh leaves in its temp dir.
//
//   node bench/checkpoint/report.mjs TMPDIR
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const read = (name) => {
  try {
    return JSON.parse(readFileSync(join(dir, name), 'utf8'));
  } catch {
    return undefined;
  }
};
const meta = read('meta.json') ?? {};
const offline = read('offline.json');
const pause = read('pause.json');
const sidecar = read('sidecar.json');
const preload = read('preload.json');

const MB = 1e6;
const MiB = 1024 ** 2;
const mbs = (bytesPerSecond) => `${(bytesPerSecond / MB).toFixed(0)} MB/s`;
const rate = (x) => x.bytes / x.seconds;
const fx = (x, d = 2) => `${x.toFixed(d)}×`;
const ms = (x) => (x === null || x === undefined ? '—' : x.toFixed(2));
const verdict = (ok) => (ok ? 'PASS' : '**MISS**');
const lines = [];
const p = (s = '') => lines.push(s);
const targets = [];

p(`## Checkpoint benchmark — ${meta.date ?? '?'}`);
p();
p(`Command: \`${meta.command ?? 'bash bench/checkpoint/run.sh'}\`. Machine: ${meta.cpus} vCPUs (${meta.cpu}), ${meta.mem_gib} GiB, ${meta.os}, kernel ${meta.kernel}; Node ${meta.node}, ${meta.dd}; ctxmesh ${meta.git}.`);
p(`Disk: ${meta.dir} on ${meta.device} (${meta.fs}); the snapshots and dd's file in the same directory. Page cache ${offline?.dropCaches ? 'dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every write phase and before every cold read' : '**not** dropped (not root): only the warm-cache figures are like for like'}.`);

if (offline) {
  const s = offline.summary;
  const state = offline.records * offline.valueBytes;
  p();
  p(`State: ${offline.records.toLocaleString('en')} contexts × ${offline.valueBytes} B values (${(state / MiB).toFixed(0)} MiB of values; JSON documents whose text is base64 of random bytes, so incompressible), keys \`bench/session-NNNNNNN\`, in a MemoryL2. Snapshots uncompressed, unencrypted (the defaults), \`sync: true\` (fsync of file and directory, as the manager writes them). ${offline.rounds} interleaved rounds; medians.`);
  p();
  p('### Full snapshot vs dd write (same directory, same size)');
  p();
  p('| round | dd write (conv=fdatasync) | full snapshot (writeSnapshot, fsync) | ratio | snapshot CPU (s) / wall (s) |');
  p('|--:|--:|--:|--:|--:|');
  for (const r of offline.write) {
    p(`| ${r.round + 1} | ${mbs(rate(r.dd))} (${(r.dd.bytes / MiB).toFixed(0)} MiB in ${r.dd.seconds.toFixed(2)} s) | ${mbs(rate(r.snapshot))} (${(r.snapshot.bytes / MiB).toFixed(0)} MiB in ${r.snapshot.seconds.toFixed(2)} s) | ${fx(rate(r.snapshot) / rate(r.dd))} | ${r.snapshot.cpuSeconds.toFixed(2)} / ${r.snapshot.seconds.toFixed(2)} |`);
  }
  const writeRatio = s.fullWrite / s.ddWrite;
  p(`| **median** | **${mbs(s.ddWrite)}** | **${mbs(s.fullWrite)}** | **${fx(writeRatio)}** | |`);
  p();
  p(`Snapshot throughput counts the file's bytes (${(s.fullBytes / MiB).toFixed(1)} MiB: values plus keys, envelopes and frames, ${(((s.fullBytes - state) / state) * 100).toFixed(1)} % over the values).`);
  targets.push(['full snapshot ≥ 0.5× dd write throughput', `${fx(writeRatio)} (${mbs(s.fullWrite)} vs ${mbs(s.ddWrite)})`, writeRatio >= 0.5]);

  const inc = offline.incremental;
  p();
  p('### Incremental after 1 % of the keys changed');
  p();
  p(`${inc.changedKeys.toLocaleString('en')} distinct keys rewritten (same value size), then an incremental from a new view: ${inc.records.toLocaleString('en')} records, ${(inc.bytes / MiB).toFixed(2)} MiB in ${inc.seconds.toFixed(2)} s = **${(inc.ratio * 100).toFixed(2)} %** of the full snapshot (${(inc.fullBytes / MiB).toFixed(1)} MiB).`);
  targets.push(['incremental after 1 % changed ≤ 3 % of the full', `${(inc.ratio * 100).toFixed(2)} %`, inc.ratio <= 0.03]);

  p();
  p('### Restore vs dd read of the snapshot file');
  p();
  p('Restore = `rebuild()` (catalog, `readSnapshotBatches`, the blocks adopted by a fresh FrontierTrackingL2 as they were read, records indexed, not copied), in a process of its own (`restore.mjs --once`) as a sidecar restores at start; checked: every record present, the SHA-256 of a sample value identical. Cold = page cache dropped before each; warm = the file just read.');
  p();
  p('| round | dd read cold | restore cold | ratio | dd read warm | restore warm | ratio | restore CPU / wall (cold) |');
  p('|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const r of offline.restore) {
    p(`| ${r.round + 1} | ${mbs(rate(r.ddCold))} | ${mbs(rate(r.restoreCold))} (${r.restoreCold.seconds.toFixed(2)} s) | ${fx(rate(r.restoreCold) / rate(r.ddCold))} | ${mbs(rate(r.ddWarm))} | ${mbs(rate(r.restoreWarm))} (${r.restoreWarm.seconds.toFixed(2)} s) | ${fx(rate(r.restoreWarm) / rate(r.ddWarm))} | ${r.restoreCold.cpuSeconds.toFixed(2)} / ${r.restoreCold.seconds.toFixed(2)} s |`);
  }
  const coldRatio = s.restoreCold / s.ddReadCold;
  const warmRatio = s.restoreWarm / s.ddReadWarm;
  p(`| **median** | **${mbs(s.ddReadCold)}** | **${mbs(s.restoreCold)}** | **${fx(coldRatio)}** | **${mbs(s.ddReadWarm)}** | **${mbs(s.restoreWarm)}** | **${fx(warmRatio)}** | |`);
  p();
  p(`**Reference** in the same rounds: allocating ${offline.records.toLocaleString('en')} fresh ${offline.valueBytes} B buffers and filling them (no file, no decoding, no map) runs at **${mbs(s.allocFloor)}** (rounds: ${offline.restore.map((r) => mbs(rate(r.allocFloor))).join(', ')}): ${fx(s.allocFloor / s.ddReadCold)} of the cold sequential read, ${fx(s.allocFloor / s.ddReadWarm)} of the warm one — what a restore giving each value a buffer of its own would cost at least. The restore does not: it reads ${(offline.records * offline.valueBytes / MiB).toFixed(0)} MiB into fresh 8 MiB slabs (dd reuses one 1 MiB buffer) and the embedded L2 keeps the records where they were read (src/state/cache/record-arena.ts). Restore runs at ${fx(s.restoreCold / s.allocFloor)} of that reference cold, ${fx(s.restoreWarm / s.allocFloor)} warm.`);
  if (offline.dropCaches) targets.push(['restore ≥ 0.5× sequential read (cold cache)', `${fx(coldRatio)} (${mbs(s.restoreCold)} vs ${mbs(s.ddReadCold)})`, coldRatio >= 0.5]);
  targets.push(['restore ≥ 0.5× sequential read (warm cache)', `${fx(warmRatio)} (${mbs(s.restoreWarm)} vs ${mbs(s.ddReadWarm)})`, warmRatio >= 0.5]);
}

if (pause) {
  p();
  p(`### Write pause: PUTs at ${pause.rate}/s while a sidecar takes a full snapshot`);
  p();
  const state = preload ? `${preload.records.toLocaleString('en')} contexts, ${(preload.bytes / MiB).toFixed(0)} MiB snapshot` : '?';
  p(`A real sidecar (\`node ${meta.sidecar_node_flags ? `${meta.sidecar_node_flags} ` : ''}dist/src/cli/main.js sidecar\`, \`context.l2: memory\`, write-through, \`wal.fsync: ${meta.wal_fsync}\`, every checkpoint full) recovered its state at start from a full snapshot written into its data dir (${state}; \`ctxmesh_restore_seconds\` ${sidecar?.restore_seconds?.toFixed(2) ?? '?'} s). An open-loop generator (bench/checkpoint/put-rate.mjs, pinned to cpu${meta.loadgen_cpu}; the sidecar on cpu${meta.server_cpu}) PUTs ${pause.valueBytes} B values to random existing keys at ${pause.rate}/s; after a quiet period it calls \`POST /checkpoints\` on the admin port. Latency = send → response end, per request; a request belongs to the window its send time falls in. From schedule = from its scheduled send time (counts the generator's own lateness).`);
  p();
  p('| window | seconds | PUTs ok | errors | p50 ms | p99 ms | p99.9 ms | max ms | from schedule p99 / max ms |');
  p('|---|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const [name, w] of [['quiet (before the snapshot)', pause.quiet], ['**during the full snapshot**', pause.during], ['after it', pause.after]]) {
    p(`| ${name} | ${w.seconds.toFixed(1)} | ${w.ok} | ${w.errors + w.pending} | ${ms(w.latency.p50)} | ${ms(w.latency.p99)} | ${ms(w.latency.p999)} | ${ms(w.latency.max)} | ${ms(w.fromSchedule.p99)} / ${ms(w.fromSchedule.max)} |`);
  }
  const c = pause.checkpoint;
  p();
  p(`The checkpoint: HTTP ${c.status}, ${c.seconds.toFixed(2)} s, ${c.summary?.records?.toLocaleString?.('en') ?? '?'} records, ${c.summary?.bytes ? (c.summary.bytes / MiB).toFixed(0) : '?'} MiB. Slowest PUTs during it (s after the POST: ms): ${pause.slowest.map((x) => `${x.atSeconds}: ${x.ms}`).join(', ')}.${pause.slowestAfter ? ` Before it: ${pause.slowestQuiet.map((x) => `${x.atSeconds}: ${x.ms}`).join(', ')}; after it: ${pause.slowestAfter.map((x) => `${x.atSeconds}: ${x.ms}`).join(', ')}.` : ''}`);
  if (sidecar) {
    const pauseMs = (sidecar.pause_sum / Math.max(1, sidecar.pause_count)) * 1000;
    p(`Sidecar's own figures: \`ctxmesh_checkpoint_pause_seconds\` (writes held while the view opens) ${pauseMs.toFixed(3)} ms over ${sidecar.pause_count} checkpoint(s); \`ctxmesh_checkpoint_duration_seconds\` ${sidecar.duration_sum?.toFixed(2)} s; RSS ${(sidecar.rss_kib.before / 1024).toFixed(0)} MiB before, ${(sidecar.rss_kib.after / 1024).toFixed(0)} MiB after, peak ${(sidecar.rss_kib.peak / 1024).toFixed(0)} MiB.`);
  }
  const d = pause.during;
  const ok = d.latency.p99 !== null && d.latency.p99 <= 10 && d.errors + d.pending === 0;
  targets.push([`PUT p99 ≤ 10 ms during a full snapshot at ${pause.rate} writes/s`, `p99 ${ms(d.latency.p99)} ms, max ${ms(d.latency.max)} ms (quiet: p99 ${ms(pause.quiet.latency.p99)} ms); pause metric ${sidecar ? ((sidecar.pause_sum / Math.max(1, sidecar.pause_count)) * 1000).toFixed(3) : '?'} ms`, ok]);
}

p();
p('### Targets');
p();
p('| target | measured | met? |');
p('|---|---|---|');
for (const [t, m, ok] of targets) p(`| ${t} | ${m} | ${verdict(ok)} |`);
process.stdout.write(`${lines.join('\n')}\n`);
