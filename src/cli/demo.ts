import type { Command } from 'commander';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('Run a local demo mesh: 3 sample services behind 3 sidecars over mTLS.')
    .action(async () => {
      const { runDemo } = await import('../demo/run.js');
      await runDemo();
    });
}
