// The interception rules, as generated (pure) and as the CLI prints and applies them, for IPv4
// (iptables) and IPv6 (ip6tables). Applying happens inside throwaway network namespaces, never in
// the host's own nat tables.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CTXMESH_CHAINS,
  RulesError,
  buildCleanupScript,
  buildReplaceScript,
  buildRestoreScript,
  buildRules,
  defaultOptions,
  parseCidrList,
  parsePortList,
} from '../../src/interception/iptables-rules.js';
import { ipv6Unavailable } from '../../src/interception/iptables.js';

const CLI = 'dist/src/cli/main.js';
const EXIT_USAGE = 2;
const EXIT_FAILURE = 1;

function cli(args: string[], env: NodeJS.ProcessEnv = process.env, wrap: string[] = []): { code: number | null; stdout: string; stderr: string } {
  const [command, ...rest] = wrap.length > 0 ? [...wrap, process.execPath, CLI, ...args] : [process.execPath, CLI, ...args];
  const r = spawnSync(command!, rest, { env, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Rules of one chain, in order. */
function chain(rules: string[], name: string): string[] {
  return rules.filter((r) => r.startsWith(`-A ${name} `));
}

describe('buildRules', () => {
  const rules = buildRules(defaultOptions());

  it('declares the four ctxmesh chains and jumps to them from OUTPUT and PREROUTING, TCP only', () => {
    for (const c of CTXMESH_CHAINS) expect(rules).toContain(`:${c} - [0:0]`);
    expect(rules).toContain('-A OUTPUT -p tcp -j CTXMESH_OUTPUT');
    expect(rules).toContain('-A PREROUTING -p tcp -j CTXMESH_INBOUND');
    // The jumps come last so that no packet enters a half-built chain.
    expect(rules.slice(-2).every((r) => / -j CTXMESH_(OUTPUT|INBOUND)$/.test(r))).toBe(true);
    // Nothing else of the built-in chains is touched.
    expect(rules.filter((r) => /^-A (OUTPUT|PREROUTING|INPUT|POSTROUTING) /.test(r))).toHaveLength(2);
  });

  it('redirects to the default ports 15001 (outbound) and 15006 (inbound)', () => {
    expect(chain(rules, 'CTXMESH_REDIRECT')).toEqual(['-A CTXMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001']);
    expect(chain(rules, 'CTXMESH_IN_REDIRECT')).toEqual(['-A CTXMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006']);
  });

  it("returns the proxy uid's traffic before anything can redirect it", () => {
    const out = chain(rules, 'CTXMESH_OUTPUT');
    const uidReturn = out.indexOf('-A CTXMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN');
    const redirect = out.indexOf('-A CTXMESH_OUTPUT -j CTXMESH_REDIRECT');
    expect(uidReturn).toBeGreaterThanOrEqual(0);
    expect(redirect).toBe(out.length - 1);
    expect(uidReturn).toBeLessThan(redirect);
    expect(out).toContain('-A CTXMESH_OUTPUT -m owner --gid-owner 1337 -j RETURN');
  });

  it('leaves loopback alone except the proxy calling its own pod IP, which goes inbound', () => {
    const out = chain(rules, 'CTXMESH_OUTPUT');
    expect(out).toContain('-A CTXMESH_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j CTXMESH_IN_REDIRECT');
    expect(out).toContain('-A CTXMESH_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN');
    expect(out).toContain('-A CTXMESH_OUTPUT -d 127.0.0.1/32 -j RETURN');
    // The pod-IP rule must precede the general uid RETURN, or it would never match.
    expect(out.findIndex((r) => r.includes('-j CTXMESH_IN_REDIRECT'))).toBeLessThan(out.indexOf('-A CTXMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN'));
  });

  it('uses the given proxy uid and gid, ports and nothing of the defaults', () => {
    const custom = buildRules(defaultOptions({ proxyUid: 2000, proxyGid: 3000, outboundPort: 16001, inboundPort: 16006 }));
    expect(custom).toContain('-A CTXMESH_OUTPUT -m owner --uid-owner 2000 -j RETURN');
    expect(custom).toContain('-A CTXMESH_OUTPUT -m owner --gid-owner 3000 -j RETURN');
    expect(custom.join('\n')).not.toMatch(/1337|15001|15006/);
    expect(custom).toContain('-A CTXMESH_REDIRECT -p tcp -j REDIRECT --to-ports 16001');
    expect(custom).toContain('-A CTXMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006');
  });

  it('always excludes the admin (15000) and context (15020) ports inbound, plus the given ones, before the redirect', () => {
    const inbound = chain(buildRules(defaultOptions({ excludeInboundPorts: ['9090', '8000:8010', '15000'] })), 'CTXMESH_INBOUND');
    expect(inbound).toEqual([
      '-A CTXMESH_INBOUND -p tcp --dport 15000 -j RETURN',
      '-A CTXMESH_INBOUND -p tcp --dport 15020 -j RETURN',
      '-A CTXMESH_INBOUND -p tcp --dport 9090 -j RETURN',
      '-A CTXMESH_INBOUND -p tcp --dport 8000:8010 -j RETURN',
      '-A CTXMESH_INBOUND -p tcp -j CTXMESH_IN_REDIRECT',
    ]);
  });

  it('excludes outbound ports and CIDRs before the redirect', () => {
    const out = chain(buildRules(defaultOptions({ excludeOutboundPorts: ['5432'], excludeOutboundCidrs: ['169.254.169.254/32'] })), 'CTXMESH_OUTPUT');
    expect(out[0]).toBe('-A CTXMESH_OUTPUT -p tcp --dport 5432 -j RETURN');
    const cidr = out.indexOf('-A CTXMESH_OUTPUT -d 169.254.169.254/32 -j RETURN');
    expect(cidr).toBeGreaterThan(0);
    expect(cidr).toBeLessThan(out.indexOf('-A CTXMESH_OUTPUT -j CTXMESH_REDIRECT'));
  });

  it('redirects only the included CIDRs when they are not 0.0.0.0/0', () => {
    const out = chain(buildRules(defaultOptions({ includeOutboundCidrs: ['10.0.0.0/8', '192.168.0.0/16'] })), 'CTXMESH_OUTPUT');
    expect(out).toContain('-A CTXMESH_OUTPUT -d 10.0.0.0/8 -j CTXMESH_REDIRECT');
    expect(out).toContain('-A CTXMESH_OUTPUT -d 192.168.0.0/16 -j CTXMESH_REDIRECT');
    expect(out).not.toContain('-A CTXMESH_OUTPUT -j CTXMESH_REDIRECT');
  });
});

describe('buildRules for IPv6 (ip6tables)', () => {
  const v4 = buildRules(defaultOptions(), 4);
  const v6 = buildRules(defaultOptions(), 6);

  it('is the IPv4 rule set with ::1 for loopback, same chains, jumps, ports and owner rules', () => {
    expect(v6).toEqual(v4.map((r) => r.replaceAll('127.0.0.1/32', '::1/128')));
    expect(v6).toContain('-A CTXMESH_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j CTXMESH_IN_REDIRECT');
    expect(v6).toContain('-A CTXMESH_OUTPUT -d ::1/128 -j RETURN');
    expect(v6.join('\n')).not.toMatch(/127\.0\.0\.1|0\.0\.0\.0/);
    // Everything IPv6 is redirected by default (::/0 is among the default includes).
    expect(v6).toContain('-A CTXMESH_OUTPUT -j CTXMESH_REDIRECT');
  });

  it('routes each excluded and included CIDR to its own family', () => {
    const options = defaultOptions({
      excludeOutboundCidrs: ['169.254.169.254/32', 'fd00:ec2::254/128'],
      includeOutboundCidrs: ['10.0.0.0/8', 'fd00::/8'],
    });
    const out4 = chain(buildRules(options, 4), 'CTXMESH_OUTPUT');
    const out6 = chain(buildRules(options, 6), 'CTXMESH_OUTPUT');
    expect(out4).toContain('-A CTXMESH_OUTPUT -d 169.254.169.254/32 -j RETURN');
    expect(out4).toContain('-A CTXMESH_OUTPUT -d 10.0.0.0/8 -j CTXMESH_REDIRECT');
    expect(out4.join('\n')).not.toMatch(/fd00/);
    expect(out6).toContain('-A CTXMESH_OUTPUT -d fd00:ec2::254/128 -j RETURN');
    expect(out6).toContain('-A CTXMESH_OUTPUT -d fd00::/8 -j CTXMESH_REDIRECT');
    expect(out6.join('\n')).not.toMatch(/169\.254|10\.0\.0\.0/);
    // The exclusion precedes the redirect in both.
    expect(out6.indexOf('-A CTXMESH_OUTPUT -d fd00:ec2::254/128 -j RETURN')).toBeLessThan(out6.indexOf('-A CTXMESH_OUTPUT -d fd00::/8 -j CTXMESH_REDIRECT'));
  });

  it('has no outbound redirect for a family with no included CIDR, but keeps its inbound rules', () => {
    const out6 = buildRules(defaultOptions({ includeOutboundCidrs: ['10.0.0.0/8'] }), 6);
    expect(out6.filter((r) => r.endsWith('-j CTXMESH_REDIRECT'))).toEqual([]);
    expect(out6).toContain('-A CTXMESH_INBOUND -p tcp -j CTXMESH_IN_REDIRECT');
  });

  it('names ip6tables-restore in the IPv6 scripts', () => {
    expect(buildRestoreScript(defaultOptions(), 6)).toMatch(/^# ctxmesh iptables: apply with `ip6tables-restore --noflush`\n\*nat\n/);
    expect(buildCleanupScript(buildRestoreScript(defaultOptions(), 6), 6)).toMatch(/ip6tables-restore/);
  });
});

describe('flag parsing', () => {
  it('accepts ports, ranges and CIDRs of both families and normalises a bare address to /32 or /128', () => {
    expect(parsePortList(' 80, 443 ,8000:8010', 'x')).toEqual(['80', '443', '8000:8010']);
    expect(parsePortList('', 'x')).toEqual([]);
    expect(parseCidrList('10.0.0.0/8,192.168.1.1', 'x')).toEqual(['10.0.0.0/8', '192.168.1.1/32']);
    expect(parseCidrList('fd00::/8, ::1,FD00:CA::2/64', 'x')).toEqual(['fd00::/8', '::1/128', 'fd00:ca::2/64']);
    expect(parseCidrList('*', 'x')).toEqual(['0.0.0.0/0', '::/0']);
  });

  it('rejects what iptables would reject, naming the flag', () => {
    expect(() => parsePortList('0', '--exclude-outbound-ports')).toThrow(/--exclude-outbound-ports: "0"/);
    expect(() => parsePortList('80:70', 'p')).toThrow(RulesError);
    expect(() => parsePortList('http', 'p')).toThrow(RulesError);
    expect(() => parseCidrList('10.0.0.0/33', 'c')).toThrow(RulesError);
    expect(() => parseCidrList('10.0.0/8', 'c')).toThrow(RulesError);
    expect(() => parseCidrList('fd00::/129', 'c')).toThrow(/"fd00::\/129" is not an IPv4 or IPv6 CIDR/);
    expect(() => parseCidrList('fd00:::1/64', 'c')).toThrow(RulesError);
    expect(() => parseCidrList('::ffff:10.0.0.1/200', 'c')).toThrow(RulesError);
  });
});

describe('cleanup and replace scripts', () => {
  // A nat table as iptables-save prints it, with ctxmesh installed twice over by an older,
  // careless install (two OUTPUT jumps) and a foreign rule that must survive.
  const installed = [
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    ':CTXMESH_INBOUND - [0:0]',
    ':CTXMESH_IN_REDIRECT - [0:0]',
    ':CTXMESH_OUTPUT - [0:0]',
    ':CTXMESH_REDIRECT - [0:0]',
    ':OTHER - [0:0]',
    '-A PREROUTING -p tcp -j CTXMESH_INBOUND',
    '-A OUTPUT -p tcp -j CTXMESH_OUTPUT',
    '-A OUTPUT -p tcp -j CTXMESH_OUTPUT',
    '-A OUTPUT -p udp -j OTHER',
    '-A CTXMESH_OUTPUT -j CTXMESH_REDIRECT',
    'COMMIT',
  ].join('\n');

  it('removes every jump and all four chains, and nothing else', () => {
    const script = buildCleanupScript(installed)!;
    const lines = script.split('\n');
    expect(lines.filter((l) => l === '-D OUTPUT -p tcp -j CTXMESH_OUTPUT')).toHaveLength(2);
    expect(lines).toContain('-D PREROUTING -p tcp -j CTXMESH_INBOUND');
    for (const c of CTXMESH_CHAINS) expect(lines).toContain(`-X ${c}`);
    expect(script).not.toMatch(/OTHER|-D CTXMESH_/);
    // Chains are flushed before any is deleted: a chain still referenced cannot be deleted.
    expect(lines.findLastIndex((l) => l.startsWith('-F'))).toBeLessThan(lines.findIndex((l) => l.startsWith('-X')));
  });

  it('has nothing to do when ctxmesh is not installed', () => {
    expect(buildCleanupScript('*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -j OTHER\nCOMMIT\n')).toBeUndefined();
  });

  it('replaces in one transaction: old jumps deleted before the new ones are added', () => {
    const lines = buildReplaceScript(installed, defaultOptions()).split('\n');
    const firstAdd = lines.indexOf('-A OUTPUT -p tcp -j CTXMESH_OUTPUT');
    expect(lines.lastIndexOf('-D OUTPUT -p tcp -j CTXMESH_OUTPUT')).toBeLessThan(firstAdd);
    expect(lines.filter((l) => l === '-A OUTPUT -p tcp -j CTXMESH_OUTPUT')).toHaveLength(1);
    expect(lines.at(-2)).toBe('COMMIT');
  });
});

describe('ctxmesh iptables (CLI)', () => {
  beforeAll(() => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
  });

  it('--dry-run prints exactly the generated restore scripts, IPv4 then IPv6, with the flags applied', () => {
    const args = ['--proxy-uid', '2001', '--exclude-outbound-ports', '5432,6379', '--exclude-inbound-ports', '9090', '--exclude-outbound-cidrs', '169.254.169.254/32,fd00:ec2::254'];
    const r = cli(['iptables', '--dry-run', ...args]);
    expect(r.code, r.stderr).toBe(0);
    const options = defaultOptions({
      proxyUid: 2001,
      excludeOutboundPorts: ['5432', '6379'],
      excludeInboundPorts: ['9090'],
      excludeOutboundCidrs: ['169.254.169.254/32', 'fd00:ec2::254/128'],
    });
    expect(r.stdout).toBe(buildRestoreScript(options, 4) + buildRestoreScript(options, 6));
    expect(r.stdout.match(/^\*nat$/gm)).toHaveLength(2);
    expect(r.stdout).toContain('-A CTXMESH_OUTPUT -d fd00:ec2::254/128 -j RETURN');
    // --no-ipv6: the IPv4 script alone, fit to pipe into iptables-restore.
    const v4only = cli(['iptables', '--dry-run', '--no-ipv6', ...args]);
    expect(v4only.code, v4only.stderr).toBe(0);
    expect(v4only.stdout).toBe(buildRestoreScript(options, 4));
    expect(r.stdout).toMatch(/^\*nat$/m);
    expect(r.stdout).toContain('-A CTXMESH_OUTPUT -m owner --uid-owner 2001 -j RETURN');
    expect(r.stdout).toContain('-A CTXMESH_OUTPUT -p tcp --dport 6379 -j RETURN');
    expect(r.stdout.trimEnd().endsWith('COMMIT')).toBe(true);
  });

  it('--dry-run --cleanup prints the removal of the jumps and the four chains, for both families', () => {
    const r = cli(['iptables', '--dry-run', '--cleanup']);
    expect(r.code, r.stderr).toBe(0);
    const [v4, v6] = r.stdout.split(/(?=^# ctxmesh iptables --cleanup)/m);
    expect(v4).toMatch(/`iptables-restore --noflush`/);
    expect(v6).toMatch(/`ip6tables-restore --noflush`/);
    for (const script of [v4!, v6!]) {
      const lines = script.split('\n');
      expect(lines).toContain('-D OUTPUT -p tcp -j CTXMESH_OUTPUT');
      expect(lines).toContain('-D PREROUTING -p tcp -j CTXMESH_INBOUND');
      for (const c of CTXMESH_CHAINS) expect(lines).toContain(`-X ${c}`);
    }
    expect(r.stdout).not.toMatch(/^-A /m);
  });

  it('rejects a bad flag with exit status 2 and the flag named, before touching anything', () => {
    const r = cli(['iptables', '--dry-run', '--exclude-outbound-cidrs', '10.0.0.0/40']);
    expect(r.code).toBe(EXIT_USAGE);
    expect(r.stderr).toMatch(/--exclude-outbound-cidrs: "10.0.0.0\/40"/);
  });

  it('--help explains the verb with examples', () => {
    const r = cli(['iptables', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/--exclude-outbound-cidrs/);
    expect(r.stdout).toMatch(/--no-ipv6/);
    expect(r.stdout).toMatch(/ip6tables/);
    expect(r.stdout).toMatch(/Examples:[\s\S]*ctxmesh iptables --cleanup/);
  });

  it('says clearly that iptables is missing when it is not on PATH', () => {
    // An empty PATH is a machine without iptables; node itself is run by absolute path.
    const r = cli(['iptables'], { PATH: mkdtempSync(join(tmpdir(), 'ctxmesh-nopath-')) });
    expect(r.code).toBe(EXIT_FAILURE);
    expect(r.stderr).toMatch(/iptables-save not found on PATH: install iptables/);
  });
});

describe('ipv6Unavailable', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-ipv6-probe-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const ifInet6 = join(dir, 'if_inet6');
  const disableIpv6 = join(dir, 'disable_ipv6');

  it('says why when the kernel has no IPv6 or the namespace disables it, and nothing when it has IPv6', () => {
    expect(ipv6Unavailable({ ifInet6, disableIpv6 })).toMatch(/kernel has no IPv6 support/);
    writeFileSync(ifInet6, '00000000000000000000000000000001 01 80 10 80       lo\n');
    writeFileSync(disableIpv6, '1\n');
    expect(ipv6Unavailable({ ifInet6, disableIpv6 })).toMatch(/disable_ipv6=1/);
    writeFileSync(disableIpv6, '0\n');
    expect(ipv6Unavailable({ ifInet6, disableIpv6 })).toBeUndefined();
  });
});

// Applying for real, in namespaces of their own.
const root = process.getuid?.() === 0;
const haveIptables = spawnSync('iptables-save', ['--version']).status === 0;
const haveIp6tables = spawnSync('ip6tables-save', ['--version']).status === 0;
const nsName = (tag: string): string => `ctxm-${tag}-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
const ns = nsName('u');
const nsReady = root && haveIptables && spawnSync('ip', ['netns', 'add', ns]).status === 0;
if (!nsReady) console.warn(`SKIP applying rules: needs root, iptables and \`ip netns add\` (root=${root}, iptables=${haveIptables})`);
/** Why IPv6 rules cannot be checked in the namespace, or undefined when they can. */
const ipv6SkipReason = !nsReady
  ? 'no namespace'
  : !haveIp6tables
    ? 'ip6tables is not installed'
    : spawnSync('ip', ['netns', 'exec', ns, 'ip6tables-save', '-t', 'nat']).status !== 0
      ? 'ip6tables has no nat table in this kernel'
      : spawnSync('ip', ['netns', 'exec', ns, 'cat', '/proc/net/if_inet6']).status !== 0
        ? 'the kernel has no IPv6'
        : undefined;
if (nsReady && ipv6SkipReason) console.warn(`SKIP IPv6 rule checks: ${ipv6SkipReason}`);
const extraNamespaces: string[] = [];
const tempDirs: string[] = [];

describe.skipIf(!nsReady)('ctxmesh iptables in a network namespace', () => {
  const natTable = (family: 4 | 6 = 4, inNamespace = ns): string =>
    execFileSync('ip', ['netns', 'exec', inNamespace, family === 6 ? 'ip6tables-save' : 'iptables-save', '-t', 'nat'], { encoding: 'utf8' });
  const inNs = (args: string[], inNamespace = ns, prefix: string[] = []): ReturnType<typeof cli> =>
    cli(args, process.env, ['ip', 'netns', 'exec', inNamespace, ...prefix]);

  beforeAll(() => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
  });
  afterAll(() => {
    for (const name of [ns, ...extraNamespaces]) spawnSync('ip', ['netns', 'del', name]);
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  });

  it('installs once however often it runs, and cleanup is idempotent', () => {
    expect(inNs(['iptables']).code).toBe(0);
    const r = inNs(['iptables', '--exclude-inbound-ports', '9090']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/replaced IPv4/);
    const table = natTable();
    expect(table.match(/^-A OUTPUT -p tcp -j CTXMESH_OUTPUT$/gm)).toHaveLength(1);
    expect(table.match(/^-A PREROUTING -p tcp -j CTXMESH_INBOUND$/gm)).toHaveLength(1);
    // The second install's rules replaced the first's: 9090 is there, once.
    expect(table.match(/--dport 9090 -j RETURN/g)).toHaveLength(1);
    expect(table).toMatch(/-A CTXMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN/);

    const first = inNs(['iptables', '--cleanup']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/removed the IPv4/);
    expect(natTable()).not.toMatch(/CTXMESH/);
    const second = inNs(['iptables', '--cleanup']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/no IPv4 interception rules installed; nothing to remove/);
  });

  it.skipIf(ipv6SkipReason !== undefined)('installs the IPv6 rules with ip6tables beside the IPv4 ones, once, and removes both', () => {
    const args = ['iptables', '--exclude-outbound-cidrs', '169.254.169.254/32,fd00:ec2::254/128'];
    for (let i = 0; i < 2; i++) {
      const r = inNs(args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(i === 0 ? /installed IPv6 interception rules/ : /replaced IPv6 interception rules/);
    }
    const v4 = natTable(4);
    const v6 = natTable(6);
    expect(v6.match(/^-A OUTPUT -p tcp -j CTXMESH_OUTPUT$/gm)).toHaveLength(1);
    expect(v6.match(/^-A PREROUTING -p tcp -j CTXMESH_INBOUND$/gm)).toHaveLength(1);
    expect(v6).toMatch(/^-A CTXMESH_OUTPUT -d fd00:ec2::254\/128 -j RETURN$/m);
    expect(v6).toMatch(/^-A CTXMESH_OUTPUT -d ::1\/128 -j RETURN$/m);
    expect(v6).toMatch(/^-A CTXMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001$/m);
    expect(v6).not.toMatch(/169\.254/);
    expect(v4).toMatch(/^-A CTXMESH_OUTPUT -d 169\.254\.169\.254\/32 -j RETURN$/m);
    expect(v4).not.toMatch(/fd00/);

    const cleaned = inNs(['iptables', '--cleanup']);
    expect(cleaned.code, cleaned.stderr).toBe(0);
    expect(cleaned.stdout).toMatch(/removed the IPv4[\s\S]*removed the IPv6/);
    expect(natTable(4)).not.toMatch(/CTXMESH/);
    expect(natTable(6)).not.toMatch(/CTXMESH/);
    const again = inNs(['iptables', '--cleanup']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/no IPv6 interception rules installed; nothing to remove/);

    // --no-ipv6 leaves ip6tables alone.
    const v4only = inNs(['iptables', '--no-ipv6']);
    expect(v4only.code, v4only.stderr).toBe(0);
    expect(v4only.stdout).toMatch(/IPv6 skipped: disabled by --no-ipv6/);
    expect(natTable(6)).not.toMatch(/CTXMESH/);
    expect(inNs(['iptables', '--cleanup']).code).toBe(0);
  });

  it('skips IPv6, saying why, in a namespace where IPv6 is disabled, and still installs IPv4', () => {
    const noV6 = nsName('n6');
    execFileSync('ip', ['netns', 'add', noV6]);
    extraNamespaces.push(noV6);
    execFileSync('ip', ['netns', 'exec', noV6, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1']);
    const r = inNs(['iptables'], noV6);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/installed IPv4 interception rules/);
    expect(r.stdout).toMatch(/IPv6 skipped: IPv6 is disabled in this network namespace/);
    expect(natTable(4, noV6)).toMatch(/CTXMESH_OUTPUT/);
    if (haveIp6tables) expect(natTable(6, noV6)).not.toMatch(/CTXMESH/);
    const cleaned = inNs(['iptables', '--cleanup'], noV6);
    expect(cleaned.code, cleaned.stderr).toBe(0);
    expect(cleaned.stdout).toMatch(/IPv6 skipped/);
    expect(natTable(4, noV6)).not.toMatch(/CTXMESH/);
  });

  it('skips IPv6, saying why, where ip6tables is not installed, and still installs IPv4', () => {
    // A PATH holding only the IPv4 tools: a pod image with iptables but no ip6tables.
    const bin = mkdtempSync(join(tmpdir(), 'ctxmesh-v4tools-'));
    tempDirs.push(bin);
    for (const tool of ['iptables-save', 'iptables-restore']) {
      const real = execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim();
      symlinkSync(real, join(bin, tool));
    }
    const r = inNs(['iptables'], ns, ['env', `PATH=${bin}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/installed IPv4 interception rules/);
    expect(r.stdout).toMatch(/IPv6 skipped: ip6tables-save is not installed/);
    if (haveIp6tables) expect(natTable(6)).not.toMatch(/CTXMESH/);
    expect(inNs(['iptables', '--cleanup'], ns, ['env', `PATH=${bin}`]).code).toBe(0);
    expect(natTable(4)).not.toMatch(/CTXMESH/);
  });

  it('says clearly when it is not permitted (not root)', () => {
    // uid 65534 (nobody) inside the namespace: iptables refuses it.
    const r = cli(['iptables'], process.env, ['ip', 'netns', 'exec', ns, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']);
    expect(r.code).toBe(EXIT_FAILURE);
    expect(r.stderr).toMatch(/not permitted \(run as root or with CAP_NET_ADMIN/);
    expect(natTable()).not.toMatch(/CTXMESH/);
  });
});
