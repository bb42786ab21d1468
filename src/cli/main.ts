#!/usr/bin/env -S node --initial-old-space-size=128 --v8-pool-size=1
// The `ctxmesh` command. Each verb lives in its own module and registers itself here. The node
// flags of the first line are NODE_FLAGS (node-flags.ts), which says why.
import { Command } from 'commander';
import { registerCerts } from './certs.js';
import { registerCheckpoint } from './checkpoint.js';
import { registerControlPlane } from './control-plane.js';
import { registerDemo } from './demo.js';
import { registerInject } from './inject.js';
import { registerIptables } from './iptables.js';
import { registerSidecar } from './sidecar.js';
import { VERSION } from './version.js';

const EXIT_USAGE = 2;

const program = new Command('ctxmesh')
  .description('A service-mesh sidecar with a local state agent for AI services: routing follows context.')
  .version(VERSION)
  .showHelpAfterError()
  // Commander exits 1 on a bad command line; ctxmesh keeps 1 for failures and uses 2 for usage
  // errors, as for invalid config. Set before the verbs are added, which inherit it.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE));

registerSidecar(program);
registerControlPlane(program);
registerCerts(program);
registerCheckpoint(program);
registerDemo(program);
registerIptables(program);
registerInject(program);

await program.parseAsync(process.argv);
