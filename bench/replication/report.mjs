#!/usr/bin/env node
// The replication benchmark's report: medians over rounds, ratios against issue 4's targets, as a
// Markdown block ready to paste into bench/RESULTS.md.
//   node bench/replication/report.mjs TMPDIR OUT_PREFIX   -> OUT_PREFIX.md, OUT_PREFIX.json, and stdout
// TMPDIR holds meta.json (run.sh), writes.json (writes.mjs), ae.json (anti-entropy.mjs) and
// profiles.md; a part that did not run is left out.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

const [tmp, outPrefix] = process.argv.slice(2);
if (!tmp || !outPrefix) throw new Error('usage: report.mjs TMPDIR OUT_PREFIX');
const read = (name) => (existsSync(`${tmp}/${name}`) ? JSON.parse(readFileSync(`${tmp}/${name}`, 'utf8')) : undefined);
const meta = read('meta.json') ?? {};
const writes = read('writes.json');
const ae = read('ae.json');
const profiles = existsSync(`${tmp}/profiles.md`) ? readFileSync(`${tmp}/profiles.md`, 'utf8').trim() : '';

const TARGET_STRONG_RATIO = 0.5; // strong max writes/s ÷ unreplicated max writes/s
const TARGET_P99_MS = 2; // p99 at the fixed rate (1000 writes/s)
const MODES = ['single', 'eventual', 'session', 'strong', 'strong-tokenless'];
const LABEL = { single: 'unreplicated (one sidecar, replication off)', eventual: 'RF=3 eventual', session: 'RF=3 session', strong: 'RF=3 strong', 'strong-tokenless': 'RF=3 strong, clients without session tokens' };

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const num = (x, digits = 0) => (Number.isFinite(x) ? x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : '—');
const msf = (x) => (Number.isFinite(x) ? (x < 10 ? x.toFixed(2) : x.toFixed(1)) : '—');
const ratio = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '—');
// Other work on the machine (busy time charged to none of ours) past this skews a measurement: ⚠.
const NOISE_PCT = 10;
const flag = (pct) => (Number.isFinite(pct) ? `${num(pct)}${pct > NOISE_PCT ? ' ⚠' : ''}` : '—');
const verdict = (ok) => (ok === undefined ? '*pending*' : ok ? 'yes' : '**no**');

const out = [];
const date = (meta.started ?? new Date().toISOString()).slice(0, 10);
out.push(`## Replication benchmark — ${date}`, '');
out.push('```bash', meta.command ?? 'bash bench/replication/run.sh', '```', '');
out.push(
  `Machine: ${meta.ncpu ?? '?'} vCPUs (${meta.cpu ?? '?'}), kernel ${meta.kernel ?? '?'}; Node ${meta.node ?? '?'}. ctxmesh at commit \`${meta.git ?? '?'}\`${meta.dirty ? ' with uncommitted changes in src/' : ''} (\`${meta.cli ?? 'dist/src/cli/main.js'}\`). ` +
    `Started ${meta.started ?? '?'}. Everything on 127.0.0.1; the load generator pinned to cpu${meta.loadgen_cpu || ' (unpinned)'}, ${
      meta.repl_cpus
        ? `the sidecars A / B / C to cpu ${meta.repl_cpus.trim().split(/\s+/).join(' / ')} (the unreplicated sidecar is A's setup: the same core)`
        : `every sidecar to cpu${meta.server_cpu || ' (unpinned)'}`
    }.`,
  '',
);

const summary = { targets: [] };
const target = (name, measured, ok, note = '') => {
  summary.targets.push({ name, measured, ok });
  return `| ${name} | ${measured} | ${verdict(ok)} | ${note} |`;
};
const targetRows = [];
const detail = [];

if (writes) {
  const c = writes.config;
  const closed = (mode, conns) => writes.results.filter((r) => r.mode === mode && r.kind === 'closed' && r.conns === conns);
  const open = (mode) => writes.results.filter((r) => r.mode === mode && r.kind === 'open');
  const modes = MODES.filter((m) => c.modes.includes(m));
  const fig = {};
  for (const mode of modes) {
    const byC = {};
    for (const conns of c.conns) {
      const rs = closed(mode, conns);
      byC[conns] = {
        writesPerS: median(rs.map((r) => r.writesPerS)),
        rounds: rs.map((r) => r.writesPerS),
        p50: median(rs.map((r) => r.latency.p50)),
        p99: median(rs.map((r) => r.latency.p99)),
        errors: rs.reduce((a, r) => a + r.errors, 0),
        cpuUs: (rs[0]?.cpuUsPerWrite ?? []).map((_, i) => median(rs.map((r) => r.cpuUsPerWrite[i]))),
        cpuPct: (rs[0]?.cpuPctOfCore ?? []).map((_, i) => median(rs.map((r) => r.cpuPctOfCore[i]))),
        genUs: median(rs.map((r) => r.generatorUsPerWrite)),
        other: Math.max(...rs.map((r) => r.otherWorkPctOfCore ?? NaN)),
      };
    }
    const best = c.conns.reduce((a, k) => (!(byC[a]?.writesPerS >= byC[k]?.writesPerS) ? k : a), c.conns[0]);
    const os = open(mode);
    const pick = (f) => median(os.map(f));
    fig[mode] = {
      byC,
      best,
      max: byC[best]?.writesPerS,
      open: os.length
        ? {
            achieved: pick((r) => r.writesPerS),
            ok: os.reduce((a, r) => a + r.ok, 0),
            errors: os.reduce((a, r) => a + r.errors, 0),
            p50: pick((r) => r.latency.p50),
            p99: pick((r) => r.latency.p99),
            p999: pick((r) => r.latency.p999),
            max: pick((r) => r.latency.max),
            sendP99: pick((r) => r.fromSend.p99),
            lateP99: pick((r) => r.generatorLateness.p99),
            cpuUs: os[0].cpuUsPerWrite.map((_, i) => median(os.map((r) => r.cpuUsPerWrite[i]))),
            rss: os[0].rssMiB.map((_, i) => Math.max(...os.map((r) => r.rssMiB[i]))),
            other: Math.max(...os.map((r) => r.otherWorkPctOfCore ?? NaN)),
          }
        : undefined,
      counters: writes.results.filter((r) => r.mode === mode && r.kind === 'counters').map((r) => r.replicatedWrites),
    };
  }
  summary.writes = fig;
  const single = fig.single;

  for (const mode of ['strong', 'strong-tokenless', 'session', 'eventual'].filter((m) => fig[m])) {
    const f = fig[mode];
    const r = single ? f.max / single.max : NaN;
    const perCore = single ? single.byC[single.best].cpuUs[0] / f.byC[f.best].cpuUs[0] : NaN;
    targetRows.push(
      target(
        `${mode} writes/s ≥ ${TARGET_STRONG_RATIO}× unreplicated${mode.startsWith('strong') ? '' : ' (the strong target, for information)'}`,
        `${ratio(r)} (${num(f.max)} at c=${f.best} vs ${num(single?.max)} at c=${single?.best})`,
        single ? r >= TARGET_STRONG_RATIO : undefined,
        `coordinator CPU per write ${num(f.byC[f.best].cpuUs[0])} µs vs ${num(single?.byC[single.best].cpuUs[0])} µs: ${ratio(perCore)} if each sidecar had its own core`,
      ),
    );
    if (f.open) {
      targetRows.push(
        target(
          `${mode} p99 ≤ ${TARGET_P99_MS} ms at ${c.rate} writes/s${mode.startsWith('strong') ? '' : ' (for information)'}`,
          `${msf(f.open.p99)} ms (p50 ${msf(f.open.p50)} ms; achieved ${num(f.open.achieved)}/s, ${f.open.errors} errors)`,
          f.open.p99 <= TARGET_P99_MS && f.open.errors === 0,
          single?.open ? `unreplicated: p99 ${msf(single.open.p99)} ms, p50 ${msf(single.open.p50)} ms` : '',
        ),
      );
    }
  }

  const roundsNote = c.rounds > 1 ? `${c.rounds} rounds (fresh sidecars each, order alternated), medians` : '1 round';
  detail.push(
    `#### Closed loop: PUT of ${c.valueBytes} B JSON values, undici Pool (connections = workers), ${c.durationS} s measured after ${c.warmupS} s warm-up per point, ${roundsNote}`,
    '',
    `Keys round-robin over ${num(c.keys)} per mode; WAL fsync \`${c.fsync}\`, memory L2, write-through, for every sidecar. RF=3 rows: load through sidecar A (the coordinator); CPU columns are A / B / C.`,
    '',
    `| mode | c | writes/s | rounds | p50 ms | p99 ms | errors | sidecar CPU µs/write | sidecar % of a core | generator µs/write | other work % of a core | ÷ unreplicated |`,
    '|---|--:|--:|---|--:|--:|--:|---|---|--:|--:|--:|',
  );
  for (const mode of modes) {
    for (const conns of c.conns) {
      const x = fig[mode].byC[conns];
      const base = single?.byC[conns]?.writesPerS;
      detail.push(
        `| ${LABEL[mode]} | ${conns} | ${num(x.writesPerS)} | ${x.rounds.map((v) => num(v)).join(', ')} | ${msf(x.p50)} | ${msf(x.p99)} | ${x.errors} | ${x.cpuUs.map((v) => num(v)).join(' / ')} | ${x.cpuPct.map((v) => num(v)).join(' / ')} | ${num(x.genUs)} | ${flag(x.other)} | ${mode === 'single' ? '' : ratio(x.writesPerS / base)} |`,
      );
    }
  }
  detail.push('', `#### Open loop: ${c.rate} writes/s for ${c.rateDurationS} s (after ${c.warmupS} s), up to ${c.rateConns} connections, latency from the scheduled send time`, '');
  detail.push('| mode | achieved/s | ok | errors | p50 ms | p99 ms | p99.9 ms | max ms | p99 from send ms | generator late p99 ms | sidecar CPU µs/write | RSS MiB | other work % of a core |', '|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|--:|');
  for (const mode of modes) {
    const o = fig[mode].open;
    if (!o) continue;
    detail.push(`| ${LABEL[mode]} | ${num(o.achieved)} | ${num(o.ok)} | ${o.errors} | ${msf(o.p50)} | ${msf(o.p99)} | ${msf(o.p999)} | ${msf(o.max)} | ${msf(o.sendP99)} | ${msf(o.lateP99)} | ${o.cpuUs.map((v) => num(v)).join(' / ')} | ${o.rss.map((v) => num(v)).join(' / ')} | ${flag(o.other)} |`);
  }
  detail.push('', `*Other work* = busy CPU time of the machine charged to none of the sidecars and the generator (% of one core, the worst round); ⚠ past ${NOISE_PCT} %: run again on a quiet machine.`);
  const counters = modes.filter((m) => m !== 'single').map((m) => `${m}: ${fig[m].counters.map((k) => Object.entries(k).map(([n, v]) => `${n} ${num(v)}`).join(', ') || 'none').join('; ')}`);
  if (counters.length) detail.push('', `Coordinator's \`ctxmesh_replication_writes_total\` over each mode's runs — ${counters.join(' · ')}.`);
  detail.push('');
}

if (ae) {
  const s = ae.summary;
  targetRows.push(
    target(
      `anti-entropy repairs ${s.divergedPct ?? 1} % of ${num(s.keys)} keys in one round`,
      `${num(s.median.aeMs)} ms, ${num(s.median.aeBytes / 1024)} KiB (naive full transfer: ${num(s.median.naiveMs)} ms, ${num(s.median.naiveBytes / 1024)} KiB)`,
      s.allRepaired,
      `naive ÷ anti-entropy: time ${ratio(s.ratio.time)}, bytes ${ratio(s.ratio.bytes)}`,
    ),
  );
  detail.push(
    `#### Anti-entropy: ${num(s.keys)} keys × ${s.valueBytes} B on two replicas (RF=2, two sidecars in one process, real mTLS), ${num(s.diverged)} keys (${s.divergedPct ?? 1} %) newer on one; ${s.rounds} rounds, medians`,
    '',
    '| round | anti-entropy ms | KiB | messages | keys repaired | naive ms | KiB | messages | keys repaired |',
    '|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
  );
  for (const r of ae.results) {
    detail.push(`| ${r.round} | ${num(r.ae.ms)} | ${num(r.ae.bytes / 1024)} | ${r.ae.messages} | ${num(r.ae.repairedHere + r.ae.repairedThere)} | ${num(r.naive.ms)} | ${num(r.naive.bytes / 1024)} | ${r.naive.messages} | ${num(r.naive.repaired ?? NaN)} |`);
  }
  detail.push('', `Median: anti-entropy ${num(s.median.aeMs)} ms / ${num(s.median.aeBytes / 1024)} KiB; naive ${num(s.median.naiveMs)} ms / ${num(s.median.naiveBytes / 1024)} KiB; naive ÷ anti-entropy: time ${ratio(s.ratio.time)}, bytes ${ratio(s.ratio.bytes)}.`, '');
}

out.push('### Targets', '', '| target | measured | met? | beside it |', '|---|---|---|---|', ...targetRows, '');
out.push(...detail);
if (profiles) {
  out.push(
    `#### Profiles (\`node --cpu-prof\`, self time over the measured seconds)`,
    '',
    `${meta.repl_cpus ? 'Sidecars share cores (with each other or the generator)' : 'The three sidecars share one core'}: the profiler samples by wall time, so a sample charges the time its thread waited for the core (or for its own thread-pool threads, pinned beside it) to the frame it was in (native writes above all); shares are of sampled time, not CPU, and the CPU µs per write above is the firm split between sidecars.`,
    '',
    profiles,
    '',
  );
}

const md = out.join('\n');
writeFileSync(`${outPrefix}.md`, md + '\n');
writeFileSync(`${outPrefix}.json`, JSON.stringify({ meta, summary, writes, ae }, null, 2));
process.stdout.write(md + '\n');
