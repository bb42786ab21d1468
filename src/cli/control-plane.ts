// `ctxmesh control-plane -c control-plane.yaml`: runs the xDS control plane until SIGTERM/SIGINT,
// then ends its ADS streams (sidecars keep their last good config and reconnect) and exits 0.
import type { Command } from 'commander';
import { parseWithSchema, readYamlFile } from '../config/load.js';
import { type ControlPlaneConfig, ControlPlaneConfigSchema } from '../config/schema.js';
import { flushLogger } from '../telemetry/logger.js';
import type { ControlPlane } from '../../xds/control-plane.js';
import { exitOnStartupError } from './sidecar.js';

export function loadControlPlaneConfig(file: string): ControlPlaneConfig {
  return parseWithSchema(ControlPlaneConfigSchema, readYamlFile(file), file);
}

export function registerControlPlane(program: Command): void {
  program
    .command('control-plane')
    .description('Run the xDS control plane: ADS on 15010, admin/API on 127.0.0.1:15014.')
    .requiredOption('-c, --config <file>', 'control-plane config (YAML)')
    .option('--validate', 'check the config and exit (0 valid, 2 invalid)')
    .addHelpText('after', '\nExamples:\n  ctxmesh control-plane -c control-plane.yaml\n  ctxmesh control-plane -c control-plane.yaml --validate')
    .action(async (opts: { config: string; validate?: boolean }) => {
      let plane: ControlPlane;
      try {
        const config = loadControlPlaneConfig(opts.config);
        if (opts.validate) {
          process.stdout.write(`${opts.config}: valid\n`);
          return;
        }
        // Loaded here so the other verbs do not pay for gRPC and the xDS protos at startup.
        const { ControlPlane } = await import('../../xds/control-plane.js');
        plane = await ControlPlane.start(config);
      } catch (err) {
        exitOnStartupError(err);
        return;
      }
      const stop = (signal: string): void => {
        plane.logger.info({ signal }, 'shutting down');
        plane.close().then(
          () => {
            flushLogger(plane.logger);
            process.exit(0);
          },
          (err: Error) => {
            plane.logger.error({ err: err.message }, 'shutdown failed');
            flushLogger(plane.logger);
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
}
