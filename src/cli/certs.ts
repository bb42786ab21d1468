// `ctxmesh certs init|issue`: the dev CA on the command line. Exit status 1 means the work failed
// (CA missing, CA key already present), 2 means the command line was wrong, as elsewhere in ctxmesh.
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import type { Command } from 'commander';
import { parseDuration } from '../config/units.js';
import {
  CA_CERT_FILE,
  CA_KEY_FILE,
  CaError,
  DEFAULT_TRUST_DOMAIN,
  LEAF_CA_FILE,
  LEAF_CERT_FILE,
  LEAF_KEY_FILE,
  initCa,
  issueCert,
} from '../tls/ca.js';

const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
const DEFAULT_CA_TTL = '87600h';
const DEFAULT_LEAF_TTL = '24h';

class UsageError extends Error {}

export function registerCerts(program: Command): void {
  const certs = program
    .command('certs')
    .description('development CA: create a mesh CA and issue SPIFFE certificates for sidecars')
    .configureOutput({
      outputError: (message, write) => write(`ctxmesh certs: ${message.replace(/^error: /, '')}`),
    });

  certs
    .command('init')
    .description(`create a self-signed mesh CA: writes DIR/${CA_CERT_FILE} and DIR/${CA_KEY_FILE} (mode 0600)`)
    .requiredOption('--out <dir>', 'directory to write the CA into')
    .option('--trust-domain <domain>', 'SPIFFE trust domain of the mesh', DEFAULT_TRUST_DOMAIN)
    .option('--ttl <duration>', 'CA validity, e.g. 87600h', DEFAULT_CA_TTL)
    .option('--common-name <cn>', 'subject CN of the CA certificate')
    .option('--force', 'replace an existing CA key (every certificate it issued stops verifying)', false)
    .action(async (options: { out: string; trustDomain: string; ttl: string; commonName?: string; force: boolean }) => {
      await runReporting(async () => {
        const ttlMs = durationArgument('--ttl', options.ttl);
        const ca = await initCa({
          out: options.out,
          trustDomain: options.trustDomain,
          ttlMs,
          commonName: options.commonName,
          force: options.force,
        });
        const caCert = new X509Certificate(ca.caCert);
        print([
          `wrote ${path.join(options.out, CA_CERT_FILE)}`,
          `wrote ${path.join(options.out, CA_KEY_FILE)} (mode 0600; keep it out of version control)`,
          `trust domain: ${ca.trustDomain}`,
          `expires: ${new Date(caCert.validTo).toISOString()}`,
        ]);
      });
    });

  certs
    .command('issue')
    .description(
      `issue a sidecar certificate from a CA: writes DIR/${LEAF_CERT_FILE}, DIR/${LEAF_KEY_FILE} (mode 0600), DIR/${LEAF_CA_FILE}; ` +
        'issuing into the directory a running sidecar uses rotates its identity in place',
    )
    .requiredOption('--ca <dir>', `directory holding ${CA_CERT_FILE} and ${CA_KEY_FILE} (from \`certs init\`)`)
    .requiredOption('--name <name>', 'service-account name; default identity spiffe://<trust-domain>/ns/default/sa/<name>')
    .requiredOption('--out <dir>', 'directory to write the certificate into')
    .option('--spiffe <uri>', 'full SPIFFE ID instead of the default')
    .option('--ttl <duration>', 'validity, e.g. 24h', DEFAULT_LEAF_TTL)
    .option('--dns <names>', 'extra DNS SANs, comma-separated (repeatable)', collectList)
    .option('--ip <addresses>', 'extra IP SANs, comma-separated (repeatable)', collectList)
    .action(
      async (options: { ca: string; name: string; out: string; spiffe?: string; ttl: string; dns?: string[]; ip?: string[] }) => {
        await runReporting(async () => {
          const ttlMs = durationArgument('--ttl', options.ttl);
          const issued = await issueCert({
            ca: options.ca,
            name: options.name,
            out: options.out,
            spiffe: options.spiffe,
            ttlMs,
            dnsNames: options.dns ?? [],
            ipAddresses: options.ip ?? [],
          });
          const leaf = new X509Certificate(issued.certPem);
          print([
            `wrote ${path.join(options.out, LEAF_CERT_FILE)}`,
            `wrote ${path.join(options.out, LEAF_KEY_FILE)} (mode 0600)`,
            `wrote ${path.join(options.out, LEAF_CA_FILE)}`,
            `spiffe id: ${issued.spiffeId}`,
            `expires: ${new Date(leaf.validTo).toISOString()}`,
          ]);
        });
      },
    );
}

async function runReporting(work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (err) {
    const usage = err instanceof UsageError || (err instanceof CaError && err.code === 'invalid_request');
    process.stderr.write(`ctxmesh certs: ${(err as Error).message}\n`);
    process.exitCode = usage ? EXIT_USAGE : EXIT_FAILURE;
  }
}

function durationArgument(flag: string, value: string): number {
  try {
    // A bare number is milliseconds, as in the YAML config.
    return /^\d+$/.test(value.trim()) ? Number(value) : parseDuration(value);
  } catch (err) {
    throw new UsageError(`${flag}: ${(err as Error).message}`);
  }
}

function collectList(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), ...value.split(',').map((item) => item.trim()).filter((item) => item !== '')];
}

function print(lines: string[]): void {
  process.stdout.write(`${lines.join('\n')}\n`);
}
