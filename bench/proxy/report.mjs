#!/usr/bin/env node
// Turns the raw records of one bench/proxy/run.sh into the report it prints (Markdown, so that it
// can be pasted into bench/RESULTS.md as it is) and a JSON summary.
//
//   node bench/proxy/report.mjs TMPDIR OUTPREFIX [--pending "why ctxmesh was not measured"]
//
// Reads TMPDIR/meta.json, TMPDIR/results.jsonl (one line per wrk scenario), TMPDIR/fixed-*.json;
// writes OUTPREFIX.md and OUTPREFIX.json and prints the Markdown.
import fs from 'node:fs';

const [dir, outPrefix, ...rest] = process.argv.slice(2);
const pendingWhy = rest[0] === '--pending' ? rest[1] : '';
const readJson = (f) => (fs.existsSync(f) && fs.statSync(f).size > 0 ? JSON.parse(fs.readFileSync(f, 'utf8')) : null);
const meta = { ...readJson(`${dir}/meta.json`), ...(readJson(`${dir}/meta-ctxmesh.json`) ?? {}) };
const rows = fs
  .readFileSync(`${dir}/results.jsonl`, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l));

// Targets (from the project brief).
const TARGET = { vsNginx: 0.6, vsNaive: 2, addedP99Ms: 1, rssMiB: 60 };

const mib = (kb) => kb / 1024;
const f0 = (x) => (x == null || !Number.isFinite(x) ? '—' : Math.round(x).toLocaleString('en-US'));
const f1 = (x) => (x == null || !Number.isFinite(x) ? '—' : x.toFixed(1));
const f2 = (x) => (x == null || !Number.isFinite(x) ? '—' : x.toFixed(2));
const ms = (us) => (us == null ? '—' : (us / 1000).toFixed(2));

const tickUs = 1e6 / (meta.clk_tck || 100);
const median = (xs) => {
  const a = [...xs].sort((x, y) => x - y);
  const n = a.length;
  return n === 0 ? NaN : n % 2 ? a[(n - 1) / 2] : (a[n / 2 - 1] + a[n / 2]) / 2;
};

// One wrk round -> its figures.
function measure(r) {
  const w = r.wrk;
  const ticks = r.groups.reduce((s, g) => s + g.ticks, 0);
  return {
    round: r.round,
    requests: w.requests,
    attempts: r.attempts,
    otherPct: r.noise_pct,
    noisy: r.noise_pct > (meta.noise_pct_limit ?? 10),
    wrkUsPerReq: ((r.gen_cpu_ms ?? 0) * 1000) / Math.max(1, w.requests),
    rps: w.requests / (w.duration_us / 1e6),
    p50_us: w.latency_us.p50,
    p99_us: w.latency_us.p99,
    errors: Object.values(w.errors).reduce((s, x) => s + x, 0),
    cpuUsPerReq: (ticks * tickUs) / Math.max(1, w.requests),
    cpuPct: (100 * ticks * tickUs * 1000) / r.wall_ns,
    rss: r.groups.map((g) => ({ name: g.name, mib: mib(g.rss_kb), hwmMiB: mib(g.hwm_kb), procs: g.procs })),
    cores: Object.fromEntries(r.cores.map((c) => [c.cpu, c.total ? (100 * c.busy) / c.total : 0])),
  };
}

// Rounds of one scenario -> the medians (RSS: the largest of the rounds; errors: the sum).
const byKey = {};
for (const r of rows) {
  const e = (byKey[r.key] ??= { key: r.key, label: r.label, ok: [], failed: [] });
  if (r.status === 'ok') e.ok.push(measure(r));
  else e.failed.push(r);
}
for (const e of Object.values(byKey)) {
  if (e.ok.length === 0) {
    e.status = e.failed[0].status;
    e.note = e.failed[0].note;
    continue;
  }
  e.status = 'ok';
  const med = (f) => median(e.ok.map(f));
  const coreNames = Object.keys(e.ok[0].cores);
  e.m = {
    rounds: e.ok.length,
    failedRounds: e.failed.length,
    failedNote: e.failed[0]?.note,
    rps: med((m) => m.rps),
    rpsMin: Math.min(...e.ok.map((m) => m.rps)),
    rpsMax: Math.max(...e.ok.map((m) => m.rps)),
    perRoundRps: e.ok.map((m) => Math.round(m.rps)),
    p50_us: med((m) => m.p50_us),
    p99_us: med((m) => m.p99_us),
    errors: e.ok.reduce((s, m) => s + m.errors, 0),
    cpuUsPerReq: med((m) => m.cpuUsPerReq),
    cpuPct: med((m) => m.cpuPct),
    wrkUsPerReq: med((m) => m.wrkUsPerReq),
    otherPct: med((m) => m.otherPct),
    noisyRounds: e.ok.filter((m) => m.noisy).map((m) => m.otherPct),
    rss: e.ok[0].rss.map((g, i) => ({
      name: g.name,
      mib: Math.max(...e.ok.map((m) => m.rss[i].mib)),
      hwmMiB: Math.max(...e.ok.map((m) => m.rss[i].hwmMiB)),
    })),
    cores: Object.fromEntries(coreNames.map((c) => [c, med((m) => m.cores[c])])),
  };
}

const order = ['direct', 'ctxmesh', 'ctxmesh-log', 'ctxmesh-mtls', 'nginx', 'haproxy', 'naive', 'floor', 'node-origin'];
const proxyCpu = meta.proxy_cpu !== '' ? `cpu${meta.proxy_cpu}` : null;
const genCpu = meta.loadgen_cpu !== '' ? `cpu${meta.loadgen_cpu}` : null;

const out = [];
const p = (s = '') => out.push(s);

p(`### Throughput: wrk, 1 thread, ${meta.connections} connections, keep-alive, ${meta.body_bytes} B responses; ${meta.rounds ?? 1} interleaved rounds × ${meta.duration_s} s (each after ${meta.warmup_s} s warm-up), medians`);
p();
p(
  `Run ${meta.date}; ${meta.host_cpus} CPUs (${meta.cpu_model}), ${meta.os}, kernel ${meta.kernel}; node ${meta.node}, nginx ${meta.nginx}, haproxy ${meta.haproxy}, wrk ${meta.wrk}; ctxmesh git ${meta.git}${meta.ctxmesh_tree_dirty ? ' + uncommitted changes in src/' : ''}${meta.ctxmesh_built ? `, built ${meta.ctxmesh_built}` : ''}. ` +
    (proxyCpu
      ? `Pinning: wrk and the origin on cpu${meta.loadgen_cpu}, the proxy process(es) on cpu${meta.proxy_cpu}.`
      : 'No CPU pinning.'),
);
p();
p('| scenario | req/s | req/s per round | p50 ms | p99 ms | errors | proxy CPU µs/req | proxy CPU % of a core | ≈ req/s per proxy core (10⁶ ÷ µs/req) | proxy RSS MiB (end of run) | ' +
  `${genCpu ?? 'cpu0'} busy % | ${proxyCpu ?? 'cpu1'} busy % | unattributed CPU % |`);
p('|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
for (const key of order) {
  const r = byKey[key];
  if (!r) continue;
  if (!r.m) {
    p(`| ${r.label} | ${r.status}: ${r.note} | | | | | | | | | | | |`);
    continue;
  }
  const m = r.m;
  const who = key === 'direct' ? ' (origin)' : '';
  const flag = m.noisyRounds.length ? ` ⚠ (${m.noisyRounds.length} round(s) at ${m.noisyRounds.map((x) => f0(x)).join(', ')})` : '';
  const rss = m.rss.map((g) => (m.rss.length > 1 ? `${g.name.replace('sidecar-', '')} ${f1(g.mib)}` : f1(g.mib))).join(' + ');
  const c0 = m.cores[genCpu ?? 'cpu0'];
  const c1 = m.cores[proxyCpu ?? 'cpu1'];
  p(
    `| ${r.label}${m.failedRounds ? ` (${m.failedRounds} round(s) failed: ${m.failedNote})` : ''} | ${f0(m.rps)} | ${m.perRoundRps.map((x) => f0(x)).join(' / ')} | ${ms(m.p50_us)} | ${ms(m.p99_us)} | ${m.errors} | ${f1(m.cpuUsPerReq)}${who} | ${f0(m.cpuPct)}${who} | ${key === 'direct' ? '—' : f0(1e6 / m.cpuUsPerReq)} | ${rss}${who} | ${f0(c0)} | ${f0(c1)} | ${f0(m.otherPct)}${flag} |`,
  );
}
p();

const d = byKey.direct?.m;
if (d) {
  p(`Load side: wrk costs ≈ ${f1(d.wrkUsPerReq)} µs/req and the origin ${f1(d.cpuUsPerReq)} µs/req` +
    (genCpu ? `, both on ${genCpu}; so ${genCpu} caps every scenario near the direct row's req/s.` : '.') +
    ' Where the proxy core is not the saturated one, the req/s is a floor for that proxy and the CPU µs/req column is the fairer comparison.' +
    ' "Unattributed CPU" is busy time (% of one core) charged to none of wrk, the origin and the proxy: other processes on the machine.' +
    ` A round with more than ${meta.noise_pct_limit ?? 10} % is measured again (up to twice); ⚠ marks rounds still taken beside other work (the column shows the median, the ⚠ those rounds' values).`);
  p();
}

// Saturation: which core ran out.
const sat = [];
for (const key of order) {
  const r = byKey[key];
  if (!r?.m) continue;
  const busy = Object.entries(r.m.cores)
    .filter(([, v]) => v >= 95)
    .map(([c]) => (c === proxyCpu ? `${c} (proxy)` : c === genCpu ? `${c} (wrk + origin)` : c));
  sat.push(`${key}: ${busy.length ? busy.join(', ') : 'no core ≥ 95 % busy'}`);
}
if (sat.length) {
  p(`Saturated cores (≥ 95 % busy during the measured run) — ${sat.join('; ')}.`);
  p();
}

// Errors, if any: say what kind.
for (const key of order) {
  const r = byKey[key];
  if (!r?.m || r.m.errors === 0) continue;
  const kinds = {};
  for (const row of rows.filter((x) => x.key === key && x.status === 'ok')) {
    for (const [k, v] of Object.entries(row.wrk.errors)) kinds[k] = (kinds[k] ?? 0) + v;
  }
  p(`Errors in ${key} (all rounds, wrk's counts): ${Object.entries(kinds).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ')} (status = non-2xx/3xx responses).`);
  p();
}

// Ratios.
const ratio = (a, b, f) => (byKey[a]?.m && byKey[b]?.m ? f(byKey[a].m, byKey[b].m) : null);
const rpsRatio = (a, b) => ratio(a, b, (x, y) => x.rps / y.rps);
const effRatio = (a, b) => ratio(a, b, (x, y) => y.cpuUsPerReq / x.cpuUsPerReq);
const ctxPending = !byKey.ctxmesh?.m;
p('### Ratios (ctxmesh plain hop vs peers)');
p();
p('| ratio | req/s ratio | CPU-efficiency ratio (peer µs/req ÷ ctxmesh µs/req) |');
p('|---|--:|--:|');
for (const [peer, name] of [['nginx', 'nginx'], ['naive', 'naive Node proxy'], ['haproxy', 'haproxy']]) {
  p(`| ctxmesh plain hop / ${name} | ${ctxPending ? 'pending' : f2(rpsRatio('ctxmesh', peer))} | ${ctxPending ? 'pending' : f2(effRatio('ctxmesh', peer))} |`);
}
if (byKey['ctxmesh-log']?.m) {
  for (const [peer, name] of [['nginx', 'nginx'], ['naive', 'naive Node proxy'], ['haproxy', 'haproxy']]) {
    p(`| ctxmesh plain hop, access log on / ${name} | ${f2(rpsRatio('ctxmesh-log', peer))} | ${f2(effRatio('ctxmesh-log', peer))} |`);
  }
}
p();

// Fixed rate.
const wanted = (k) => !meta.only || meta.only.split(/\s+/).includes(k);
const fdRaw = readJson(`${dir}/fixed-direct.json`);
const fmRaw = readJson(`${dir}/fixed-mtls.json`);
const fixedPlainRaw = readJson(`${dir}/fixed-plain.json`);
const fixedFloorRaw = readJson(`${dir}/fixed-floor.json`);
const fd = fdRaw?.gen;
const fm = fmRaw?.gen;
const sidecarRss = fmRaw
  ? fmRaw.groups.map((g) => ({ name: g.name, mib: mib(g.rss_kb), hwmMiB: mib(g.hwm_kb), idleMiB: fmRaw.idle_rss_kb?.[g.name] != null ? mib(fmRaw.idle_rss_kb[g.name]) : null }))
  : [];
let addedP50 = null;
let hopPlain = null;
let hopFloor = null;
let addedP99 = null;
let addedSchedP99 = null;
if (wanted('fixed-rate')) {
p(`### Fixed rate: ${meta.rate} req/s, open loop, ${meta.rate_duration_s} s after ${meta.warmup_s} s warm-up (bench/proxy/fixed-rate.mjs)`);
p();
p('Latency = the generator\'s send → last body byte, as the client sees it. From schedule = scheduled send time → last byte (wrk2-style coordinated-omission correction), which also counts the generator\'s own lateness: on this VM a sleeping thread takes 0.1–2 ms to wake, so that figure is mostly the generator\'s noise. The generator is open loop either way: a slow response never delays the next send.');
p();
p('| path | achieved req/s | ok | errors | p50 ms | p99 ms | p99.9 ms | max ms | from schedule p50 / p99 ms | generator lateness p50 / p99 ms | unattributed CPU % |');
p('|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
const fixedRow = (name, raw) => {
  const f = raw?.gen;
  if (!f) return p(`| ${name} | ${ctxPending && name.includes('mTLS') ? `pending: ${pendingWhy}` : 'not measured'} | | | | | | | | | |`);
  const e = Object.values(f.errors).reduce((s, x) => s + x, 0);
  const flag = raw.noise_pct > (meta.noise_pct_limit ?? 10) ? ' ⚠' : '';
  p(
    `| ${name} | ${f0(f.achievedRate)} | ${f.ok} | ${e} | ${ms(f.service_us.p50)} | ${ms(f.service_us.p99)} | ${ms(f.service_us.p999)} | ${ms(f.service_us.max)} | ${ms(f.latency_us.p50)} / ${ms(f.latency_us.p99)} | ${ms(f.lateness_us.p50)} / ${ms(f.lateness_us.p99)} | ${f0(raw.noise_pct)}${flag} |`,
  );
};
fixedRow('direct to the origin', fdRaw);
fixedRow('sidecar A → mTLS → sidecar B → origin', fmRaw);
fixedRow('one ctxmesh sidecar (plain hop) → origin', fixedPlainRaw);
fixedRow('floor proxy (node:http + undici, no features) → origin', fixedFloorRaw);
if (fd && fm) {
  addedP50 = (fm.service_us.p50 - fd.service_us.p50) / 1000;
  addedP99 = (fm.service_us.p99 - fd.service_us.p99) / 1000;
  const schedP50 = (fm.latency_us.p50 - fd.latency_us.p50) / 1000;
  addedSchedP99 = (fm.latency_us.p99 - fd.latency_us.p99) / 1000;
  const sgn = (x) => (x >= 0 ? `+${x.toFixed(2)}` : x.toFixed(2));
  p();
  p(`Added by the mTLS sidecar pair at ${meta.rate} req/s: **p50 ${sgn(addedP50)} ms, p99 ${sgn(addedP99)} ms** (from schedule: p50 ${sgn(schedP50)} ms, p99 ${sgn(addedSchedP99)} ms).`);
}
const addedByHop = (raw) => (raw?.gen && fd ? (raw.gen.service_us.p99 - fd.service_us.p99) / 1000 : null);
hopPlain = addedByHop(fixedPlainRaw);
hopFloor = addedByHop(fixedFloorRaw);
if (hopPlain != null && hopFloor != null) {
  p();
  p(`One hop at ${meta.rate} req/s adds p99 **${hopPlain >= 0 ? '+' : ''}${hopPlain.toFixed(2)} ms** through a ctxmesh sidecar and **${hopFloor >= 0 ? '+' : ''}${hopFloor.toFixed(2)} ms** through the featureless node:http + undici floor proxy: the tail a Node event loop adds per hop on this machine, before any ctxmesh code runs.`);
}
if (sidecarRss.length) {
  p();
  p(`Sidecar RSS at ${meta.rate} req/s (end of the run): ${sidecarRss.map((g) => `${g.name} ${f1(g.mib)} MiB (peak ${f1(g.hwmMiB)}${g.idleMiB != null ? `; ${f1(g.idleMiB)} MiB idle, before the run` : ''})`).join(', ')}.`);
}
p();
}

// The floor: what Node's HTTP stack costs per request before ctxmesh does anything.
const us = (k) => byKey[k]?.m?.cpuUsPerReq;
if (us('floor') && us('node-origin') && us('nginx') && us('ctxmesh')) {
  p('### Where the floor is (CPU per request on the proxy core)');
  p();
  p('| what | CPU µs/req | best ratio to nginx it allows |');
  p('|---|--:|--:|');
  p(`| nginx 1 worker, proxying | ${f1(us('nginx'))} | 1.00 |`);
  p(`| bare node:http server answering 1 KiB (the server half of any Node proxy, alone) | ${f1(us('node-origin'))} | ${f2(us('nginx') / us('node-origin'))} |`);
  p(`| floor proxy: node:http server + undici Pool, no features | ${f1(us('floor'))} | ${f2(us('nginx') / us('floor'))} |`);
  p(`| ctxmesh plain hop | ${f1(us('ctxmesh'))} | ${f2(us('nginx') / us('ctxmesh'))} |`);
  p();
  p(`ctxmesh's routing, limits, breaker, outlier detection, retries, timeouts, metrics and request ids cost ${f1(us('ctxmesh') - us('floor'))} µs/req above the floor. A proxy needs a server half and a client half; the server half alone costs ${f1(us('node-origin'))} µs/req in node:http, ${f2(us('node-origin') / us('nginx'))}× what nginx spends on a whole proxied request.`);
  const rssFloor = byKey.floor.m.rss[0]?.mib;
  if (rssFloor != null) p(`RSS at saturation: floor proxy ${f1(rssFloor)} MiB, bare node:http server ${f1(byKey['node-origin'].m.rss[0]?.mib)} MiB, ctxmesh ${f1(byKey.ctxmesh.m.rss[0]?.mib)} MiB.`);
  p();
}

// Targets.
p('### Targets');
p();
p('| target | measured | met? |');
p('|---|--:|---|');
const yes = (ok) => (ok == null ? 'pending' : ok ? 'yes' : '**no**');
const vN = rpsRatio('ctxmesh', 'nginx');
const vV = rpsRatio('ctxmesh', 'naive');
p(`| ctxmesh plain hop ≥ ${TARGET.vsNginx}× nginx (req/s) | ${vN == null ? 'pending' : `${f2(vN)}×`} | ${yes(vN == null ? null : vN >= TARGET.vsNginx)} |`);
p(`| ctxmesh plain hop ≥ ${TARGET.vsNaive}× naive Node proxy (req/s) | ${vV == null ? 'pending' : `${f2(vV)}×`} | ${yes(vV == null ? null : vV >= TARGET.vsNaive)} |`);
p(`| mTLS pair adds ≤ ${TARGET.addedP99Ms} ms p99 at ${meta.rate} req/s | ${addedP99 == null ? 'pending' : `${addedP99 >= 0 ? '+' : ''}${addedP99.toFixed(2)} ms (from schedule ${addedSchedP99 >= 0 ? '+' : ''}${addedSchedP99.toFixed(2)} ms)`} | ${yes(addedP99 == null ? null : addedP99 <= TARGET.addedP99Ms)} |`);
const rssList = [];
if (byKey.ctxmesh?.m) rssList.push(['plain hop, saturated', byKey.ctxmesh.m.rss[0].mib]);
if (byKey['ctxmesh-log']?.m) rssList.push(['plain hop + access log, saturated', byKey['ctxmesh-log'].m.rss[0].mib]);
if (byKey['ctxmesh-mtls']?.m) for (const g of byKey['ctxmesh-mtls'].m.rss) rssList.push([`${g.name}, mTLS saturated`, g.mib]);
for (const g of sidecarRss) rssList.push([`${g.name} at ${meta.rate} req/s`, g.mib]);
if (rssList.length) {
  const worst = Math.max(...rssList.map(([, v]) => v));
  p(`| sidecar RSS ≤ ${TARGET.rssMiB} MiB (every sidecar measured) | max ${f1(worst)} MiB (${rssList.map(([n, v]) => `${n} ${f1(v)}`).join('; ')}) | ${yes(worst <= TARGET.rssMiB)} |`);
} else {
  p(`| sidecar RSS ≤ ${TARGET.rssMiB} MiB | pending | pending |`);
}
p();
if (pendingWhy) {
  p(`ctxmesh rows pending: ${pendingWhy}.`);
  p();
}

const md = out.join('\n');
process.stdout.write(md + '\n');
fs.writeFileSync(`${outPrefix}.md`, md + '\n');
fs.writeFileSync(
  `${outPrefix}.json`,
  JSON.stringify(
    {
      meta,
      scenarios: Object.fromEntries(Object.entries(byKey).map(([k, r]) => [k, r.m ? { label: r.label, ...r.m, perRound: r.ok } : { label: r.label, status: r.status, note: r.note }])),
      ratios: {
        ctxmesh_over_nginx: vN,
        ctxmesh_over_naive: vV,
        ctxmesh_over_haproxy: rpsRatio('ctxmesh', 'haproxy'),
        ctxmesh_log_over_nginx: rpsRatio('ctxmesh-log', 'nginx'),
        ctxmesh_log_over_naive: rpsRatio('ctxmesh-log', 'naive'),
        ctxmesh_log_over_haproxy: rpsRatio('ctxmesh-log', 'haproxy'),
      },
      fixedRate: { direct: fdRaw, mtls: fmRaw, plain: fixedPlainRaw, floor: fixedFloorRaw, addedP99ByHopMs: { ctxmesh: hopPlain, floor: hopFloor }, sidecarRss, addedP50Ms: addedP50, addedP99Ms: addedP99, addedP99FromScheduleMs: addedSchedP99 },
    },
    null,
    2,
  ) + '\n',
);
