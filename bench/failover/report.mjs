#!/usr/bin/env node
// The failover benchmark's report: percentiles over trials beside the references the issue names,
// the target, Markdown.   node bench/failover/report.mjs <meta.json> <results.json> OUT_PREFIX
//   -> OUT_PREFIX.md, OUT_PREFIX.json, and the Markdown on stdout
import { readFileSync, writeFileSync } from 'node:fs';

const [metaFile, resultsFile, outPrefix] = process.argv.slice(2);
const meta = JSON.parse(readFileSync(metaFile, 'utf8'));
const results = JSON.parse(readFileSync(resultsFile, 'utf8'));
const { trials } = results;

const TARGET_P99_MS = 500;
/** Redis Sentinel's default `down-after-milliseconds`: time before it even considers a master down (SDOWN). */
const SENTINEL_DOWN_AFTER_MS = 30_000;
/** Envoy's default outlier detection `interval`: ejections are decided at most this often. */
const ENVOY_OUTLIER_INTERVAL_MS = 10_000;

/** Nearest-rank percentile: with 20 trials p99 is the largest value. */
const pct = (xs, p) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
};
const ms = (x) => (Number.isFinite(x) ? `${Math.round(x)} ms` : '—');
const stats = (field) => {
  const xs = trials.map((t) => t[field]);
  return { p50: pct(xs, 50), p99: pct(xs, 99), max: pct(xs, 100) };
};
const rows = {
  lastFailureMs: ['kill → last failed request (by send time)', stats('lastFailureMs')],
  lastDeadEndpointTryMs: ['kill → last request that tried the dead endpoint (retries included)', stats('lastDeadEndpointTryMs')],
  declaredMs: ['kill → control plane declares it (quorum of reports)', stats('declaredMs')],
  pushedMs: [`kill → EDS without it at the client sidecar (polled every ${results.pollMs} ms)`, stats('pushedMs')],
};
const failover = rows.lastFailureMs[1];
const hidden = rows.lastDeadEndpointTryMs[1];
const totalFailed = trials.reduce((a, t) => a + t.failed, 0);
const totalRequests = trials.reduce((a, t) => a + t.requests, 0);

const md = [];
md.push(`#### Failover: SIGKILL of a sidecar under steady load — ${trials.length} trials`, '');
md.push(
  `Command \`${meta.command}\`, run ${meta.date}; ${meta.cpus} CPUs (${meta.cpu}), ${meta.mem_gib} GiB, ${meta.os}, kernel ${meta.kernel}; ` +
    `node ${meta.node}; ctxmesh at git ${meta.git}${meta.dirty ? ' (working tree has uncommitted changes)' : ''}. ` +
    `Machine busy before the run: ${meta.busy_pct}% of all cores (other work skews the figures).`,
  '',
  `Mesh: a control plane, ${results.sidecars} chat sidecars (each fronting an app; probes every ${results.health.interval}, probe timeout ${results.health.probeTimeout}, ` +
    `suspicion ${results.health.suspicionTimeout} (min ${results.health.suspicionMinTimeout}), reports every ${results.health.reportInterval}), ` +
    `a client sidecar routing \`chat\` by ring_hash on x-ctx-key from xDS (retry ${results.service.retry.attempts}× , per try ${results.service.retry.perTryTimeout}, connect timeout ${results.service.connectTimeout}). ` +
    `Load: ${results.rate} req/s open loop through the client sidecar, ${results.warmMs} ms before each kill and until ${results.tailMs} ms after the EDS update; the killed sidecar is restarted and healthy everywhere before the next trial.`,
  '',
);
md.push('| from the kill to … | p50 | p99 | max |', '|---|--:|--:|--:|');
for (const [label, s] of Object.values(rows)) md.push(`| ${label} | ${ms(s.p50)} | ${ms(s.p99)} | ${ms(s.max)} |`);
md.push('', `Failed requests: ${totalFailed} of ${totalRequests} sent around the kills${totalFailed ? ` (${[...new Set(trials.flatMap((t) => t.errors))].join(', ')})` : ''}; a trial with none counts 0 ms.`, '');
md.push('| reference (defaults) | time | ctxmesh p99, last failed / last try at the dead endpoint | ratio |', '|---|--:|--:|--:|');
const ratio = (ref, x) => (x > 0 ? `${(ref / x).toFixed(0)}× shorter` : 'no failure at all');
md.push(`| Redis Sentinel \`down-after-milliseconds\` (detection only) | ${ms(SENTINEL_DOWN_AFTER_MS)} | ${ms(failover.p99)} / ${ms(hidden.p99)} | ${ratio(SENTINEL_DOWN_AFTER_MS, hidden.p99)} |`);
md.push(`| Envoy outlier detection \`interval\` | ${ms(ENVOY_OUTLIER_INTERVAL_MS)} | ${ms(failover.p99)} / ${ms(hidden.p99)} | ${ratio(ENVOY_OUTLIER_INTERVAL_MS, hidden.p99)} |`);
md.push('');
const verdict = (x) => (Number.isFinite(x) ? (x <= TARGET_P99_MS ? 'PASS' : '**MISS**') : 'pending');
md.push('Targets:', '');
md.push(`- failover p99 (kill → last failed request) ≤ ${TARGET_P99_MS} ms: ${ms(failover.p99)} — ${verdict(failover.p99)}`);
md.push(`- for information, the same bound on the last try at the dead endpoint (what retries hid): ${ms(hidden.p99)} — ${verdict(hidden.p99)}`);
if (trials.length < 20) md.push(`- ⚠ ${trials.length} trials only (the issue asks for 20): a smoke run, not a measurement`);
md.push('', '<details><summary>Per trial</summary>', '', '| # | killed | requests | failed | last failed | tried dead | last try at dead | declared | EDS at client |', '|--:|---|--:|--:|--:|--:|--:|--:|--:|');
for (const t of trials) {
  md.push(`| ${t.trial + 1} | ${t.victim} | ${t.requests} | ${t.failed} | ${ms(t.lastFailureMs)} | ${t.deadEndpointTries} | ${ms(t.lastDeadEndpointTryMs)} | ${ms(t.declaredMs)} | ${ms(t.pushedMs)} |`);
}
md.push('', '</details>', '');

const text = md.join('\n');
writeFileSync(`${outPrefix}.md`, text);
writeFileSync(`${outPrefix}.json`, JSON.stringify({ meta, results, summary: Object.fromEntries(Object.entries(rows).map(([k, [, s]]) => [k, s])) }, null, 1));
process.stdout.write(text);
