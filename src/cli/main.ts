#!/usr/bin/env node
// The `ctxmesh` command. Each verb lives in its own module and registers itself here.
import { Command } from 'commander';
import { registerCerts } from './certs.js';
import { registerDemo } from './demo.js';
import { registerSidecar } from './sidecar.js';
import { VERSION } from './version.js';

const program = new Command('ctxmesh')
  .description('A service-mesh sidecar with a local state agent for AI services: routing follows context.')
  .version(VERSION)
  .showHelpAfterError();

registerSidecar(program);
registerCerts(program);
registerDemo(program);

await program.parseAsync(process.argv);
