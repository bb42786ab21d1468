// The node flags a ctxmesh CLI runs with as a program: those of its shebang (the build's
// src/cli/node-flags.ts), so that a benchmark's sidecars run as deployed, and an older build as it
// was shipped (none when its shebang has none).
//
//   import { cliNodeFlags } from '../cli-node-flags.mjs'   cliNodeFlags(cliPath) -> ['--flag', ...]
//   node bench/cli-node-flags.mjs CLI                        prints them, space-separated (run.sh)
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export function cliNodeFlags(cli) {
  const shebang = readFileSync(cli, 'utf8').split('\n', 1)[0];
  const flags = /^#!\/usr\/bin\/env -S node((?: \S+)*)$/.exec(shebang)?.[1] ?? '';
  return flags.split(' ').filter(Boolean);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) console.log(cliNodeFlags(process.argv[2]).join(' '));
