// Once before any test file: the tests that run the CLI as users do (child processes, the chart's
// rendered commands) run dist/, so build it when it is missing or older than the sources. Once,
// here, so that no file rebuilds dist/ under another file's running processes. `npm test` builds
// first (pretest), which makes this a no-op there.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ENTRY = resolve('dist/src/cli/main.js');
const SOURCES = ['src', 'xds'].map((dir) => resolve(dir));

function newestMtime(path: string): number {
  let newest = 0;
  for (const entry of readdirSync(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(child) : statSync(child).mtimeMs);
  }
  return newest;
}

export default function setup(): void {
  if (existsSync(ENTRY) && statSync(ENTRY).mtimeMs >= Math.max(...SOURCES.map(newestMtime))) return;
  const build = spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { encoding: 'utf8' });
  // tsc emits even when a file fails to typecheck; the run goes on and the typecheck fails elsewhere.
  if (!existsSync(ENTRY)) throw new Error(`the build did not produce ${ENTRY}:\n${build.stdout}${build.stderr}`);
}
