#!/usr/bin/env node
// Summarise a V8 .cpuprofile (node --cpu-prof) as Markdown: where the time went by owner (ctxmesh,
// node internals, each package, GC, idle) and the top frames by self time.
//   node bench/state/profile-top.mjs --label "api-l2, GET, c=32" [--top 15] file.cpuprofile
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    label: { type: 'string', default: '' },
    top: { type: 'string', default: '15' },
    // The window to count, from the profile's start: skips start-up and warm-up, and shutdown.
    'skip-ms': { type: 'string', default: '0' },
    'span-ms': { type: 'string', default: 'Infinity' },
  },
});
if (positionals.length !== 1) throw new Error('usage: profile-top.mjs [--label L] [--top N] file.cpuprofile');
const profile = JSON.parse(readFileSync(positionals[0], 'utf8'));

// Self time per node: each sample is charged the time delta that follows it.
const fromUs = Number(values['skip-ms']) * 1000;
const toUs = fromUs + Number(values['span-ms']) * 1000;
const selfUs = new Map();
let at = 0; // µs since the profile's start
for (let i = 0; i < profile.samples.length; i++) {
  at += profile.timeDeltas[i];
  if (at < fromUs || at > toUs) continue;
  const id = profile.samples[i];
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
}

function owner(url, name) {
  if (name === '(idle)') return 'idle';
  if (name === '(garbage collector)') return 'GC';
  if (name === '(program)') return 'V8/native (program)';
  if (/\/dist\/src\//.test(url)) return 'ctxmesh (dist/src)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1];
  if (url.startsWith('node:') || url === '') return 'node internals / native';
  return url;
}
function where(url, line) {
  const short = url.replace(/^file:\/\/.*?\/(dist\/src\/|node_modules\/)/, '$1');
  return short ? `${short}:${line + 1}` : '(native)';
}

const frames = new Map();
const owners = new Map();
let total = 0;
for (const node of profile.nodes) {
  const us = selfUs.get(node.id) ?? 0;
  if (us === 0) continue;
  const { functionName, url, lineNumber } = node.callFrame;
  const name = functionName || '(anonymous)';
  const id = `${name}\t${where(url, lineNumber)}`;
  frames.set(id, (frames.get(id) ?? 0) + us);
  const o = owner(url, name);
  owners.set(o, (owners.get(o) ?? 0) + us);
  total += us;
}
const busy = total - (owners.get('idle') ?? 0);
const pct = (us) => ((100 * us) / busy).toFixed(1);

const out = [];
out.push(`##### ${values.label}`, '');
out.push(`${(busy / 1e6).toFixed(2)} s of CPU sampled over the measured ${((Math.min(toUs, at) - fromUs) / 1e6).toFixed(1)} s (idle excluded; percentages are of the busy time).`, '');
out.push('| owner | self % |', '|---|--:|');
for (const [o, us] of [...owners].filter(([o]) => o !== 'idle').sort((a, b) => b[1] - a[1]).slice(0, 8)) {
  out.push(`| ${o} | ${pct(us)} |`);
}
out.push('', `| top frames by self time | where | self % |`, '|---|---|--:|');
for (const [id, us] of [...frames].filter(([id]) => !id.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) {
  const [name, at] = id.split('\t');
  out.push(`| \`${name}\` | ${at} | ${pct(us)} |`);
}
out.push('');
process.stdout.write(out.join('\n') + '\n');
