// `ctxmesh demo` (what `npm start` runs): a local mesh (control plane + sidecars) on the embedded defaults.
import type { Command } from 'commander';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('Run a local demo mesh: a control plane, 3 sample AI services behind 3 sidecars and a gateway sidecar, over mTLS; one sidecar is killed and fails over.')
    .option('--port <port>', "gateway outbound port (0 = any free port)", '0')
    .option('--keep-running', 'keep the mesh up after the scripted run until Ctrl-C (default when attached to a terminal)')
    .option('--exit', 'stop after the scripted run (default when not attached to a terminal)')
    .action(async (opts: { port: string; keepRunning?: boolean; exit?: boolean }) => {
      const { runDemo } = await import('../demo/run.js');
      const keepRunning = opts.exit ? false : (opts.keepRunning ?? Boolean(process.stdout.isTTY));
      await runDemo({ keepRunning, port: Number(opts.port) });
    });
}
