#!/usr/bin/env node
// The state benchmark's report: medians over rounds, ratios against the issue's targets, Markdown.
//   node bench/state/report.mjs TMPDIR OUT_PREFIX   -> OUT_PREFIX.md, OUT_PREFIX.json, and stdout
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

const [tmp, outPrefix] = process.argv.slice(2);
const meta = JSON.parse(readFileSync(`${tmp}/meta.json`, 'utf8'));
const lines = readFileSync(`${tmp}/results.jsonl`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const profiles = existsSync(`${tmp}/profiles.md`) ? readFileSync(`${tmp}/profiles.md`, 'utf8').trim() : '';

const TARGET_L1_RATIO = 0.8; // API GET (L1) req/s ÷ bare node:http req/s
const TARGET_L2_P99_MS = 0.15; // API GET (L2) p99 − redis-benchmark GET p99
const TARGET_PUT_RATIO = 0.5; // API PUT req/s ÷ redis-benchmark SET req/s

const LABELS = {
  'node-bare': 'bare node:http server, same bytes and headers (L1 peer)',
  'api-l1': 'context API GET, L1-resident',
  'redis-get': '`redis-benchmark -t get` (L2 peer)',
  'floor-l2': 'floor: node:http + ioredis GET, no ctxmesh code',
  'api-l2': 'context API GET, served from L2 (L1 holds 1 KiB)',
  'redis-set': '`redis-benchmark -t set` (PUT peer)',
  'floor-put': 'floor: node:http + ioredis SET, no ctxmesh code',
  'api-put': 'context API PUT, write-through, WAL fsync none',
  'api-put-fsync': 'context API PUT, write-through, WAL fsync always (for information)',
};
const ORDER = Object.keys(LABELS);

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// One measurement → the figures the report compares.
function figures(r) {
  const cpuUs = (ticks, requests) => (requests > 0 ? (ticks / meta.clk_tck) * 1e6 / requests : NaN);
  if (r.tool === 'wrk') {
    const w = r.wrk;
    const errors = Object.values(w.errors).reduce((a, b) => a + b, 0);
    return {
      rps: w.requests / (w.duration_us / 1e6), p50: w.latency_us.p50 / 1000, p99: w.latency_us.p99 / 1000,
      errors, requests: w.requests, serverUs: cpuUs(r.server_ticks, w.requests), redisUs: cpuUs(r.redis_ticks, w.requests), noise: r.noise_pct,
    };
  }
  const b = r.rb;
  return { rps: b.rps, p50: b.p50_ms, p99: b.p99_ms, errors: 0, requests: b.requests, serverUs: cpuUs(r.server_ticks, b.requests), redisUs: NaN, noise: r.noise_pct };
}

const conns = meta.conns.split(/\s+/).filter(Boolean).map(Number);
const rows = {}; // rows[key][c] = { rounds: [...figures], median figures, failed notes }
for (const r of lines) {
  const row = ((rows[r.key] ??= {})[r.conns] ??= { rounds: [], failed: [] });
  if (r.status === 'ok') row.rounds.push({ round: r.round, attempts: r.attempts, ...figures(r) });
  else row.failed.push(`round ${r.round}: ${r.note}`);
}
for (const byC of Object.values(rows)) {
  for (const row of Object.values(byC)) {
    const pick = (f) => median(row.rounds.map((x) => x[f]));
    row.median = { rps: pick('rps'), p50: pick('p50'), p99: pick('p99'), serverUs: pick('serverUs'), redisUs: pick('redisUs'), noise: pick('noise') };
    row.errors = row.rounds.reduce((a, x) => a + x.errors, 0);
  }
}
const get = (key, c) => rows[key]?.[c]?.median;
const dms = (a, b) => (Number.isFinite(a - b) ? `${a - b >= 0 ? '+' : ''}${(a - b).toFixed(3)} ms` : '—');

const num = (x, d = 0) => (Number.isFinite(x) ? x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) : '—');
const ms = (x) => (Number.isFinite(x) ? x.toFixed(3) : '—');

const md = [];
md.push(`#### State agent: context API vs node:http and Redis — ${meta.rounds} interleaved rounds × ${meta.duration} s (after ${meta.warmup} s warm-up), medians`, '');
md.push(
  `Run ${new Date().toISOString().slice(0, 16)}Z; ${meta.ncpu} CPUs (${meta.cpu}), kernel ${meta.kernel}; node ${meta.node}, ` +
    `Redis ${meta.redis} (no persistence), wrk ${meta.wrk}; ctxmesh ${meta.cli} at git ${meta.git}${meta.dirty ? ' (src/ has uncommitted changes)' : ''}. ` +
    `Values ${meta.value_bytes} B, keep-alive. Pinning: load generator on cpu${meta.loadgen_cpu || '*'}, ` +
    `the server under test (sidecar / node:http) on cpu${meta.server_cpu || '*'}, Redis on cpu${meta.redis_cpu || '*'} behind it ` +
    `and on cpu${meta.redis_peer_cpu || '*'} while redis-benchmark measures it alone (so that, like the API, it is a core away from its load generator). wrk -t1 -cC; redis-benchmark -c C -d ${meta.value_bytes} (one key, no -r, no pipelining). ` +
    `PUT rows write one key, as redis-benchmark -t set does.`,
  '',
);
for (const c of conns) {
  md.push(`##### C = ${c}`, '');
  md.push('| scenario | req/s | req/s per round | p50 ms | p99 ms | errors | server CPU µs/req | Redis CPU µs/req | unattributed CPU % |');
  md.push('|---|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const key of ORDER) {
    const row = rows[key]?.[c];
    if (!row) continue;
    if (row.rounds.length === 0) {
      md.push(`| ${LABELS[key]} | not measured: ${row.failed.join('; ')} | | | | | | | |`);
      continue;
    }
    const m = row.median;
    const noisy = row.rounds.filter((x) => x.noise > 10).map((x) => x.noise);
    md.push(
      `| ${LABELS[key]} | ${num(m.rps)} | ${row.rounds.map((x) => num(x.rps)).join(' / ')} | ${ms(m.p50)} | ${ms(m.p99)} | ${row.errors} | ` +
        `${num(m.serverUs, 1)}${key.startsWith('redis-') ? ' (Redis)' : ''} | ${key.startsWith('redis-') ? '—' : num(m.redisUs, 1)} | ${num(m.noise)}${noisy.length ? ` ⚠ ${noisy.join(', ')}` : ''} |`,
    );
  }
  md.push('');
}

const targets = [];
const ratioRow = (what, a, b, target, extra = '') => {
  const r = a / b;
  const ok = r >= target;
  const miss = ok ? '' : ` — short by ${(target - r).toFixed(2)} (needs ${num(target * b)} req/s, +${num((100 * (target * b - a)) / a)} %)`;
  targets.push({ what, measured: r, target: `≥ ${target}×`, ok });
  return `| ${what} | ${Number.isFinite(r) ? r.toFixed(2) + '×' : '—'} (${num(a)} vs ${num(b)} req/s)${extra} | ≥ ${target}× | ${Number.isFinite(r) ? (ok ? 'PASS' : `**MISS**${miss}`) : 'not measured'} |`;
};
const p99Row = (what, api, peer, floor) => {
  const d = api - peer;
  const ok = d <= TARGET_L2_P99_MS;
  const fl = Number.isFinite(floor) ? `; floor (node:http + ioredis) ${floor - peer >= 0 ? '+' : ''}${(floor - peer).toFixed(3)} ms` : '';
  targets.push({ what, measured: d, target: `≤ ${TARGET_L2_P99_MS} ms`, ok });
  return `| ${what} | ${Number.isFinite(d) ? `${d >= 0 ? '+' : ''}${d.toFixed(3)} ms` : '—'} (${ms(api)} vs ${ms(peer)} ms${fl}) | ≤ +${TARGET_L2_P99_MS} ms | ${Number.isFinite(d) ? (ok ? 'PASS' : `**MISS** by ${(d - TARGET_L2_P99_MS).toFixed(3)} ms`) : 'not measured'} |`;
};
md.push('#### Targets', '');
md.push('| target | measured | target | result |', '|---|--:|--:|---|');
for (const c of conns) {
  const api = get('api-l1', c), bare = get('node-bare', c);
  md.push(ratioRow(`GET L1 ÷ bare node:http, req/s, C=${c}`, api?.rps, bare?.rps, TARGET_L1_RATIO));
}
for (const c of conns) {
  md.push(p99Row(`GET L2 p99 − redis-benchmark GET p99, C=${c}`, get('api-l2', c)?.p99, get('redis-get', c)?.p99, get('floor-l2', c)?.p99));
}
for (const c of conns) {
  const fs = get('api-put-fsync', c);
  const extra = fs ? `; fsync always: ${(fs.rps / get('redis-set', c)?.rps).toFixed(2)}×` : '';
  md.push(ratioRow(`PUT (write-through, fsync none) ÷ redis-benchmark SET, req/s, C=${c}`, get('api-put', c)?.rps, get('redis-set', c)?.rps, TARGET_PUT_RATIO, extra));
}
md.push('');

// Where the floor is: the same comparisons with the featureless peers.
md.push('#### Where the floor is', '');
md.push('| C | API GET L1 ÷ bare node:http | API GET L2 ÷ floor (node:http + ioredis) req/s | floor ÷ redis-benchmark GET req/s | bare node:http p99 − Redis GET p99 | floor p99 − Redis GET p99 | API L2 p99 − floor p99 | PUT floor (node:http + ioredis SET) ÷ redis-benchmark SET | API PUT ÷ PUT floor | CPU µs/req: bare / API L1 / GET floor / API L2 / PUT floor / API PUT |');
md.push('|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
for (const c of conns) {
  const b = get('node-bare', c), l1 = get('api-l1', c), f = get('floor-l2', c), l2 = get('api-l2', c), rg = get('redis-get', c), p = get('api-put', c);
  const fp = get('floor-put', c), rs = get('redis-set', c);
  const r = (x, y) => (Number.isFinite(x / y) ? (x / y).toFixed(2) + '×' : '—');
  md.push(
    `| ${c} | ${r(l1?.rps, b?.rps)} | ${r(l2?.rps, f?.rps)} | ${r(f?.rps, rg?.rps)} | ${dms(b?.p99, rg?.p99)} | ${dms(f?.p99, rg?.p99)} | ${dms(l2?.p99, f?.p99)} | ${r(fp?.rps, rs?.rps)} | ${r(p?.rps, fp?.rps)} | ` +
      `${[b, l1, f, l2, fp, p].map((x) => num(x?.serverUs, 1)).join(' / ')} |`,
  );
}
md.push('');
if (profiles) md.push('#### Profiles (`node --cpu-prof`, the sidecar alone on its core, self time)', '', profiles, '');

const text = md.join('\n') + '\n';
writeFileSync(`${outPrefix}.md`, text);
writeFileSync(`${outPrefix}.json`, JSON.stringify({ meta, rows, targets }, null, 2));
process.stdout.write(text);
