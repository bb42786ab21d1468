// `ctxmesh sidecar -c sidecar.yaml`: runs one sidecar until SIGTERM/SIGINT, then drains and exits 0.
import type { Command } from 'commander';
import { ConfigError, loadSidecarConfig } from '../config/load.js';
import { Sidecar } from '../sidecar.js';
import { IdentityError } from '../tls/identity.js';

/** Exit status for invalid configuration or identity material, as the contract says. */
export const EXIT_INVALID_CONFIG = 2;

export function registerSidecar(program: Command): void {
  program
    .command('sidecar')
    .description('Run a sidecar: outbound proxy, inbound mTLS listener and admin API.')
    .requiredOption('-c, --config <file>', 'sidecar config (YAML); CTXMESH_<PATH> environment variables override fields')
    .option('--validate', 'check the config and exit (0 valid, 2 invalid)')
    .addHelpText(
      'after',
      '\nExamples:\n  ctxmesh sidecar -c sidecar.yaml\n  CTXMESH_ADMIN_PORT=16000 ctxmesh sidecar -c sidecar.yaml\n  ctxmesh sidecar -c sidecar.yaml --validate',
    )
    .action(async (opts: { config: string; validate?: boolean }) => {
      let sidecar: Sidecar;
      try {
        const config = loadSidecarConfig(opts.config);
        if (opts.validate) {
          process.stdout.write(`${opts.config}: valid\n`);
          return;
        }
        sidecar = await Sidecar.start(config);
      } catch (err) {
        exitOnStartupError(err);
        return;
      }
      const stop = (signal: string): void => {
        sidecar.logger.info({ signal }, 'shutting down');
        sidecar.close().then(
          () => process.exit(0),
          (err: Error) => {
            sidecar.logger.error({ err: err.message }, 'shutdown failed');
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
}

export function exitOnStartupError(err: unknown): never {
  const invalid = err instanceof ConfigError || err instanceof IdentityError;
  process.stderr.write(`ctxmesh: ${(err as Error).message}\n`);
  process.exit(invalid ? EXIT_INVALID_CONFIG : 1);
}
