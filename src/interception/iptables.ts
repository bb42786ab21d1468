// Transparent interception, applied: runs iptables-save / iptables-restore (and the ip6tables
// pair for IPv6) in the current network namespace. Install is cleanup-then-restore, so installing
// twice leaves one copy of the rules; cleanup removes only CTXMESH_* chains and the jumps to them,
// and is a no-op when none exist. IPv4 is required; IPv6 is installed where the namespace has it
// and skipped, with the reason, where it does not (an IPv4-only pod has no IPv6 to intercept).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { FAMILY, buildCleanupScript, buildReplaceScript, type InterceptionOptions, type IpFamily } from './iptables-rules.js';

export type IptablesErrorCode =
  /** iptables-save / iptables-restore is not on PATH. */
  | 'not_installed'
  /** The caller lacks root / CAP_NET_ADMIN. */
  | 'not_permitted'
  /** iptables ran and refused the rules (e.g. a missing kernel module). */
  | 'failed';

export class IptablesError extends Error {
  override name = 'IptablesError';
  constructor(
    readonly code: IptablesErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface ApplyResult {
  family: IpFamily;
  /** Whether an earlier installation was removed first. */
  replaced: boolean;
  /** The script given to iptables-restore / ip6tables-restore. */
  script: string;
}

export interface CleanupResult {
  family: IpFamily;
  /** false when nothing of ctxmesh was installed. */
  removed: boolean;
}

/** A family that was left alone, and why. */
export interface SkippedFamily {
  family: IpFamily;
  reason: string;
}

/** Where the kernel's IPv6 state is read; a parameter so tests can point it elsewhere. */
export interface Ipv6Probe {
  /** Lists the namespace's IPv6 addresses; absent when the kernel has no IPv6 at all. */
  ifInet6: string;
  /** "1" when IPv6 is disabled on every interface of the namespace. */
  disableIpv6: string;
}
const PROC_IPV6: Ipv6Probe = { ifInet6: '/proc/net/if_inet6', disableIpv6: '/proc/sys/net/ipv6/conf/all/disable_ipv6' };

/** Why the current network namespace has no IPv6 to intercept, or undefined when it has. */
export function ipv6Unavailable(probe: Ipv6Probe = PROC_IPV6): string | undefined {
  if (!existsSync(probe.ifInet6)) return 'the kernel has no IPv6 support';
  try {
    if (readFileSync(probe.disableIpv6, 'utf8').trim() === '1') return 'IPv6 is disabled in this network namespace (net.ipv6.conf.all.disable_ipv6=1)';
  } catch {
    // Unreadable sysctl: if_inet6 exists, so IPv6 is there.
  }
  return undefined;
}

/**
 * Installs the rules of one family, replacing an earlier installation in the same transaction.
 * Throws IptablesError 'not_installed' when that family's tools are missing.
 */
export async function applyInterception(options: InterceptionOptions, family: IpFamily = 4): Promise<ApplyResult> {
  const table = await saveNatTable(family);
  const replaced = buildCleanupScript(table, family) !== undefined;
  const script = buildReplaceScript(table, options, family);
  await run(FAMILY[family].restore, ['--noflush'], script);
  return { family, replaced, script };
}

/** Removes one family's chains and jumps; `removed` is false when nothing was installed. */
export async function cleanupInterception(family: IpFamily = 4): Promise<CleanupResult> {
  const table = await saveNatTable(family);
  const script = buildCleanupScript(table, family);
  if (script === undefined) return { family, removed: false };
  await run(FAMILY[family].restore, ['--noflush'], script);
  return { family, removed: true };
}

/**
 * Whether IPv6 rules can be installed here: undefined when they can, else the reason to skip.
 * Missing IPv6 in the namespace, missing ip6tables tools and a kernel without the IPv6 nat table
 * all skip; anything else ip6tables reports is an error, so a broken install is not mistaken for
 * an IPv4-only pod.
 */
export async function ipv6Skip(probe: Ipv6Probe = PROC_IPV6): Promise<string | undefined> {
  const unavailable = ipv6Unavailable(probe);
  if (unavailable) return unavailable;
  try {
    await saveNatTable(6);
  } catch (err) {
    if (!(err instanceof IptablesError)) throw err;
    if (err.code === 'not_permitted') throw err;
    if (err.code === 'not_installed') return `${FAMILY[6].save} is not installed (Debian/Ubuntu: apt-get install iptables)`;
    if (/table does not exist|can't initialize|no such file or directory|protocol not supported|address family not supported/i.test(err.message)) {
      return `the kernel has no IPv6 nat table (${err.message})`;
    }
    throw err;
  }
  return undefined;
}

/** One family's nat table as iptables-save / ip6tables-save prints it. */
export function saveNatTable(family: IpFamily = 4): Promise<string> {
  return run(FAMILY[family].save, ['-t', 'nat']);
}

function run(command: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        reject(new IptablesError('not_installed', `${command} not found on PATH: install iptables (Debian/Ubuntu: apt-get install iptables, which also ships ip6tables)`));
      } else if (err.code === 'EACCES') {
        reject(new IptablesError('not_permitted', `${command}: permission denied running it`));
      } else reject(new IptablesError('failed', `${command}: ${err.message}`));
    });
    // A child that exits before reading its input makes the write fail with EPIPE; its exit
    // status and stderr carry the real story.
    child.stdin.on('error', () => {});
    child.on('close', (code) => {
      if (code === 0) return resolve(stdout);
      const detail = stderr.trim() || `exit status ${code}`;
      if (/permission denied|must be root|operation not permitted/i.test(detail)) {
        reject(new IptablesError('not_permitted', `${command}: not permitted (run as root or with CAP_NET_ADMIN in the pod's network namespace): ${detail}`));
      } else reject(new IptablesError('failed', `${command} failed: ${detail}`));
    });
    child.stdin.end(input ?? '');
  });
}
