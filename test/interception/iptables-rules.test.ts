// The interception rules, as generated (pure) and as the CLI prints and applies them. Applying
// happens inside a throwaway network namespace, never in the host's own nat table.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
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

describe('flag parsing', () => {
  it('accepts ports, ranges and CIDRs and normalises a bare address to /32', () => {
    expect(parsePortList(' 80, 443 ,8000:8010', 'x')).toEqual(['80', '443', '8000:8010']);
    expect(parsePortList('', 'x')).toEqual([]);
    expect(parseCidrList('10.0.0.0/8,192.168.1.1', 'x')).toEqual(['10.0.0.0/8', '192.168.1.1/32']);
  });

  it('rejects what iptables would reject, naming the flag', () => {
    expect(() => parsePortList('0', '--exclude-outbound-ports')).toThrow(/--exclude-outbound-ports: "0"/);
    expect(() => parsePortList('80:70', 'p')).toThrow(RulesError);
    expect(() => parsePortList('http', 'p')).toThrow(RulesError);
    expect(() => parseCidrList('10.0.0.0/33', 'c')).toThrow(RulesError);
    expect(() => parseCidrList('10.0.0/8', 'c')).toThrow(RulesError);
    expect(() => parseCidrList('::1/128', 'c')).toThrow(/IPv4/);
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

  it('--dry-run prints exactly the generated restore script, with the flags applied', () => {
    const args = ['--proxy-uid', '2001', '--exclude-outbound-ports', '5432,6379', '--exclude-inbound-ports', '9090', '--exclude-outbound-cidrs', '169.254.169.254/32'];
    const r = cli(['iptables', '--dry-run', ...args]);
    expect(r.code, r.stderr).toBe(0);
    const expected = buildRestoreScript(
      defaultOptions({ proxyUid: 2001, excludeOutboundPorts: ['5432', '6379'], excludeInboundPorts: ['9090'], excludeOutboundCidrs: ['169.254.169.254/32'] }),
    );
    expect(r.stdout).toBe(expected);
    expect(r.stdout).toMatch(/^\*nat$/m);
    expect(r.stdout).toContain('-A CTXMESH_OUTPUT -m owner --uid-owner 2001 -j RETURN');
    expect(r.stdout).toContain('-A CTXMESH_OUTPUT -p tcp --dport 6379 -j RETURN');
    expect(r.stdout.trimEnd().endsWith('COMMIT')).toBe(true);
  });

  it('--dry-run --cleanup prints the removal of the jumps and the four chains', () => {
    const r = cli(['iptables', '--dry-run', '--cleanup']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines).toContain('-D OUTPUT -p tcp -j CTXMESH_OUTPUT');
    expect(lines).toContain('-D PREROUTING -p tcp -j CTXMESH_INBOUND');
    for (const c of CTXMESH_CHAINS) expect(lines).toContain(`-X ${c}`);
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
    expect(r.stdout).toMatch(/Examples:[\s\S]*ctxmesh iptables --cleanup/);
  });

  it('says clearly that iptables is missing when it is not on PATH', () => {
    // An empty PATH is a machine without iptables; node itself is run by absolute path.
    const r = cli(['iptables'], { PATH: mkdtempSync(join(tmpdir(), 'ctxmesh-nopath-')) });
    expect(r.code).toBe(EXIT_FAILURE);
    expect(r.stderr).toMatch(/iptables-save not found on PATH: install iptables/);
  });
});

// Applying for real, in a namespace of its own.
const root = process.getuid?.() === 0;
const haveIptables = spawnSync('iptables-save', ['--version']).status === 0;
const ns = `ctxm-u-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
const nsReady = root && haveIptables && spawnSync('ip', ['netns', 'add', ns]).status === 0;
if (!nsReady) console.warn(`SKIP applying rules: needs root, iptables and \`ip netns add\` (root=${root}, iptables=${haveIptables})`);

describe.skipIf(!nsReady)('ctxmesh iptables in a network namespace', () => {
  const natTable = (): string => execFileSync('ip', ['netns', 'exec', ns, 'iptables-save', '-t', 'nat'], { encoding: 'utf8' });
  const inNs = (args: string[]): ReturnType<typeof cli> => cli(args, process.env, ['ip', 'netns', 'exec', ns]);

  beforeAll(() => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
  });
  afterAll(() => {
    spawnSync('ip', ['netns', 'del', ns]);
  });

  it('installs once however often it runs, and cleanup is idempotent', () => {
    expect(inNs(['iptables']).code).toBe(0);
    const r = inNs(['iptables', '--exclude-inbound-ports', '9090']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/replaced/);
    const table = natTable();
    expect(table.match(/^-A OUTPUT -p tcp -j CTXMESH_OUTPUT$/gm)).toHaveLength(1);
    expect(table.match(/^-A PREROUTING -p tcp -j CTXMESH_INBOUND$/gm)).toHaveLength(1);
    // The second install's rules replaced the first's: 9090 is there, once.
    expect(table.match(/--dport 9090 -j RETURN/g)).toHaveLength(1);
    expect(table).toMatch(/-A CTXMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN/);

    const first = inNs(['iptables', '--cleanup']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/removed/);
    expect(natTable()).not.toMatch(/CTXMESH/);
    const second = inNs(['iptables', '--cleanup']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/nothing to remove/);
  });

  it('says clearly when it is not permitted (not root)', () => {
    // uid 65534 (nobody) inside the namespace: iptables refuses it.
    const r = cli(['iptables'], process.env, ['ip', 'netns', 'exec', ns, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']);
    expect(r.code).toBe(EXIT_FAILURE);
    expect(r.stderr).toMatch(/not permitted \(run as root or with CAP_NET_ADMIN/);
    expect(natTable()).not.toMatch(/CTXMESH/);
  });
});
