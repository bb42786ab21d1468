import { createRequire } from 'node:module';

// package.json sits two levels above dist/src/cli at run time and above src/cli in the source.
const require = createRequire(import.meta.url);
function readVersion(): string {
  for (const path of ['../../../package.json', '../../package.json']) {
    try {
      return (require(path) as { version: string }).version;
    } catch {
      // try the next layout
    }
  }
  return '0.0.0';
}

export const VERSION = readVersion();
