// `ctxmesh iptables`: the init container's job, as istio-iptables. Installs (or with --cleanup
// removes) the nat rules that send the pod's TCP traffic through the sidecar, with iptables for
// IPv4 and ip6tables for IPv6. Exit status 1 means iptables failed (missing, not permitted,
// refused), 2 means the command line was wrong. IPv6 is skipped, saying why, where the pod has
// none (or no ip6tables); IPv4 never is.
import type { Command } from 'commander';
import {
  DEFAULT_INBOUND_PORT,
  DEFAULT_OUTBOUND_PORT,
  DEFAULT_PROXY_UID,
  IP_FAMILIES,
  RulesError,
  buildCleanupScript,
  buildRestoreScript,
  defaultOptions,
  parseCidrList,
  parsePort,
  parsePortList,
  type InterceptionOptions,
  type IpFamily,
} from '../interception/iptables-rules.js';
import { IptablesError, applyInterception, cleanupInterception, ipv6Skip } from '../interception/iptables.js';

const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

interface IptablesFlags {
  outboundPort: string;
  inboundPort: string;
  proxyUid: string;
  proxyGid?: string;
  excludeOutboundPorts?: string;
  excludeInboundPorts?: string;
  excludeOutboundCidrs?: string;
  includeOutboundCidrs: string;
  dryRun?: boolean;
  cleanup?: boolean;
  /** false with --no-ipv6. */
  ipv6: boolean;
}

const FAMILY_NAME: Record<IpFamily, string> = { 4: 'IPv4', 6: 'IPv6' };

const EXAMPLES = `
Traffic from every process except the proxy uid is redirected: outbound TCP to the outbound port,
inbound TCP to the inbound port (the admin 15000 and context 15020 ports are never intercepted).
Rules live in the nat chains CTXMESH_OUTPUT, CTXMESH_REDIRECT, CTXMESH_INBOUND and
CTXMESH_IN_REDIRECT, jumped to from OUTPUT and PREROUTING. Installing again replaces them.
Needs root (CAP_NET_ADMIN) in the pod's network namespace and the iptables package.

IPv4 rules go to iptables, the same rules for IPv6 to ip6tables; --exclude-outbound-cidrs and
--include-outbound-cidrs take both families and each CIDR goes to its own family's rules (a
family without an included CIDR has no outbound redirect). IPv6 is skipped, with a line saying
why, when the pod has no IPv6 or no ip6tables; --no-ipv6 skips it always. --dry-run prints the
iptables-restore input, then the ip6tables-restore input.

Examples:
  ctxmesh iptables                                   # install with the defaults (15001, 15006, uid 1337)
  ctxmesh iptables --dry-run                         # print the iptables-restore input, change nothing
  ctxmesh iptables --proxy-uid 1337 --exclude-outbound-ports 5432,6379 \\
                   --exclude-outbound-cidrs 169.254.169.254/32
  ctxmesh iptables --include-outbound-cidrs 10.0.0.0/8 --exclude-inbound-ports 9090
  ctxmesh iptables --cleanup                         # remove the chains and jumps (no-op if absent)
  ctxmesh iptables --exclude-outbound-cidrs 169.254.169.254/32,fd00:ec2::254/128
  ctxmesh iptables --dry-run --no-ipv6 | iptables-restore --noflush   # by hand, IPv4 only
`;

export function registerIptables(program: Command): void {
  program
    .command('iptables')
    .description("Install the nat rules that redirect the pod's TCP traffic through the sidecar (the init container's job).")
    .option('--outbound-port <port>', "sidecar's outbound listener", String(DEFAULT_OUTBOUND_PORT))
    .option('--inbound-port <port>', "sidecar's inbound (mTLS) listener", String(DEFAULT_INBOUND_PORT))
    .option('--proxy-uid <uid>', "uid the sidecar runs as; its own traffic is never redirected", String(DEFAULT_PROXY_UID))
    .option('--proxy-gid <gid>', 'gid the sidecar runs as (default: the proxy uid)')
    .option('--exclude-outbound-ports <ports>', 'comma-separated destination ports (or lo:hi ranges) reached directly')
    .option('--exclude-inbound-ports <ports>', 'comma-separated ports delivered to the app directly (15000 and 15020 always are)')
    .option('--exclude-outbound-cidrs <cidrs>', 'comma-separated IPv4/IPv6 CIDRs reached directly')
    .option('--include-outbound-cidrs <cidrs>', 'comma-separated IPv4/IPv6 CIDRs redirected to the sidecar ("*": all)', '0.0.0.0/0,::/0')
    .option('--no-ipv6', 'leave IPv6 (ip6tables) alone')
    .option('--dry-run', 'print the rules (iptables-restore input) instead of applying them')
    .option('--cleanup', 'remove the CTXMESH_* chains and the jumps to them')
    .addHelpText('after', EXAMPLES)
    .action(async (flags: IptablesFlags) => {
      let options: InterceptionOptions;
      const families: IpFamily[] = flags.ipv6 ? [...IP_FAMILIES] : [4];
      const scripts = new Map<IpFamily, string>();
      try {
        options = toOptions(flags);
        // Generating the rules validates them, so a bad flag fails before anything is touched.
        for (const family of families) scripts.set(family, buildRestoreScript(options, family));
      } catch (err) {
        if (!(err instanceof RulesError)) throw err;
        process.stderr.write(`ctxmesh iptables: ${err.message}\n`);
        process.exit(EXIT_USAGE);
      }
      if (flags.dryRun) {
        // With --cleanup: what cleanup runs against one installation of these rules; the real run
        // reads the table first and also removes any duplicate jumps an older install left.
        for (const family of families) {
          const script = scripts.get(family)!;
          process.stdout.write(flags.cleanup ? buildCleanupScript(script, family)! : script);
        }
        return;
      }
      try {
        // IPv6 is probed first, so a broken ip6tables fails the run before IPv4 is touched.
        const skipIpv6 = flags.ipv6 ? await ipv6Skip() : 'disabled by --no-ipv6';
        for (const family of IP_FAMILIES) {
          if (family === 6 && skipIpv6 !== undefined) {
            process.stdout.write(`ctxmesh iptables: IPv6 skipped: ${skipIpv6}\n`);
            continue;
          }
          const name = FAMILY_NAME[family];
          if (flags.cleanup) {
            const { removed } = await cleanupInterception(family);
            process.stdout.write(
              removed ? `ctxmesh iptables: removed the ${name} interception rules\n` : `ctxmesh iptables: no ${name} interception rules installed; nothing to remove\n`,
            );
          } else {
            const { replaced } = await applyInterception(options, family);
            process.stdout.write(
              `ctxmesh iptables: ${replaced ? 'replaced' : 'installed'} ${name} interception rules: outbound → ${options.outboundPort}, inbound → ${options.inboundPort}, uid ${options.proxyUid} excluded\n`,
            );
          }
        }
      } catch (err) {
        if (!(err instanceof IptablesError)) throw err;
        process.stderr.write(`ctxmesh iptables: ${err.message}\n`);
        process.exit(EXIT_FAILURE);
      }
    });
}

function toOptions(flags: IptablesFlags): InterceptionOptions {
  const proxyUid = parseId(flags.proxyUid, '--proxy-uid');
  const include = parseCidrList(flags.includeOutboundCidrs, '--include-outbound-cidrs');
  if (include.length === 0) throw new RulesError('--include-outbound-cidrs: empty (use "*" for everything)');
  return defaultOptions({
    outboundPort: parsePort(flags.outboundPort, '--outbound-port'),
    inboundPort: parsePort(flags.inboundPort, '--inbound-port'),
    proxyUid,
    proxyGid: flags.proxyGid === undefined ? proxyUid : parseId(flags.proxyGid, '--proxy-gid'),
    excludeOutboundPorts: parsePortList(flags.excludeOutboundPorts ?? '', '--exclude-outbound-ports'),
    excludeInboundPorts: parsePortList(flags.excludeInboundPorts ?? '', '--exclude-inbound-ports'),
    excludeOutboundCidrs: parseCidrList(flags.excludeOutboundCidrs ?? '', '--exclude-outbound-cidrs'),
    includeOutboundCidrs: include,
  });
}

function parseId(value: string, what: string): number {
  if (!/^\d{1,10}$/.test(value.trim())) throw new RulesError(`${what}: "${value}" is not a numeric id`);
  return Number(value);
}
