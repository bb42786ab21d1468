#!/usr/bin/env node
// The fan-out benchmark's report: per server and variant p50/p99/max, the ratio to the bare grpc-js
// floor, the target, Markdown.   node bench/xds/report.mjs <meta.json> <results.jsonl> OUT_PREFIX
import { readFileSync, writeFileSync } from 'node:fs';

const [metaFile, resultsFile, outPrefix] = process.argv.slice(2);
const meta = JSON.parse(readFileSync(metaFile, 'utf8'));
const results = readFileSync(resultsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

const TARGET_P99_MS = 200;
const TARGET_STREAMS = 1000;
const ms = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} ms` : '—');
const find = (server, variant) => results.find((r) => r.server === server && r.variant === variant);

const md = [];
md.push(`#### xDS push fan-out: ${meta.streams} ADS streams, one endpoint changed, until every stream has ACKed — ${meta.trials} trials`, '');
md.push(
  `Command \`${meta.command}\`, run ${meta.date}; ${meta.cpus} CPUs (${meta.cpu}), ${meta.mem_gib} GiB, ${meta.os}, kernel ${meta.kernel}; ` +
    `node ${meta.node}; ctxmesh at git ${meta.git}${meta.dirty ? ' (working tree has uncommitted changes)' : ''}. ` +
    `Machine busy before the run: ${meta.busy_pct}% of all cores. The control plane and the load process (all streams over ${Math.ceil(meta.streams / 100)} gRPC channel(s)) ` +
    `share the machine; a stream counts as done when it has decoded the push carrying the new address and written its ACK. One unmeasured warm-up change precedes the trials.`,
  '',
);
md.push('| server | variant | p50 | p99 | max | p99 ÷ floor p99 |', '|---|---|--:|--:|--:|--:|');
for (const variant of [...new Set(results.map((r) => r.variant))]) {
  const ours = find('ctxmesh', variant);
  const floor = find('floor', variant);
  if (ours) md.push(`| ctxmesh control plane | ${variant} | ${ms(ours.p50_ms)} | ${ms(ours.p99_ms)} | ${ms(ours.max_ms)} | ${floor ? `${(ours.p99_ms / floor.p99_ms).toFixed(2)}×` : '—'} |`);
  if (floor) md.push(`| floor: bare grpc-js, one pre-encoded message written to every stream | ${variant} | ${ms(floor.p50_ms)} | ${ms(floor.p99_ms)} | ${ms(floor.max_ms)} | 1× |`);
}
md.push('', 'Targets:', '');
for (const r of results.filter((x) => x.server === 'ctxmesh')) {
  const verdict = r.p99_ms <= TARGET_P99_MS ? 'PASS' : '**MISS**';
  md.push(`- ${r.variant}: p99 ≤ ${TARGET_P99_MS} ms at ${TARGET_STREAMS} streams: ${ms(r.p99_ms)} at ${r.streams} streams — ${r.streams >= TARGET_STREAMS ? verdict : `${verdict} at this size only (run with ${TARGET_STREAMS} streams for the target)`}`);
}
if (meta.trials < 20) md.push(`- ⚠ ${meta.trials} trials only (the issue asks for 20): a smoke run, not a measurement`);
md.push('');
const text = md.join('\n');
writeFileSync(`${outPrefix}.md`, text);
writeFileSync(`${outPrefix}.json`, JSON.stringify({ meta, results }, null, 1));
process.stdout.write(text);
