// Transparent interception, the rules: what `ctxmesh iptables` installs in the pod's network
// namespace, as an iptables-restore script for the nat table. Pure (no I/O) so it can be unit
// tested and printed by --dry-run exactly as it would be applied.
//
// The layout follows istio-iptables:
//   OUTPUT     -p tcp → CTXMESH_OUTPUT   decides what the pod sends that the sidecar takes
//   PREROUTING -p tcp → CTXMESH_INBOUND  decides what arrives that the sidecar takes
//   CTXMESH_REDIRECT    → REDIRECT to the outbound port (15001)
//   CTXMESH_IN_REDIRECT → REDIRECT to the inbound port (15006)
// The sidecar's own traffic (its uid/gid) is never redirected outbound, or every connection it
// makes upstream would come straight back to it.
//
// IPv6 gets the same chains from ip6tables (as istio-iptables does for dual-stack pods): one rule
// set per family, differing only in the loopback address, the "everything" CIDR and which CIDRs
// of the include/exclude lists apply. Without them a dual-stack pod's IPv6 traffic would bypass
// the sidecar (and its mTLS) entirely.
import { isIPv4, isIPv6 } from 'node:net';

export const DEFAULT_OUTBOUND_PORT = 15_001;
export const DEFAULT_INBOUND_PORT = 15_006;
export const DEFAULT_ADMIN_PORT = 15_000;
export const DEFAULT_CONTEXT_PORT = 15_020;
/** The uid (and gid) the sidecar runs as, as Istio's 1337. */
export const DEFAULT_PROXY_UID = 1337;
export const DEFAULT_INCLUDE_OUTBOUND_CIDRS = ['0.0.0.0/0', '::/0'];

export type IpFamily = 4 | 6;
export const IP_FAMILIES: readonly IpFamily[] = [4, 6];

/** What differs between the iptables (4) and ip6tables (6) rule sets. */
export const FAMILY = {
  4: { loopback: '127.0.0.1/32', everything: '0.0.0.0/0', save: 'iptables-save', restore: 'iptables-restore' },
  6: { loopback: '::1/128', everything: '::/0', save: 'ip6tables-save', restore: 'ip6tables-restore' },
} as const satisfies Record<IpFamily, { loopback: string; everything: string; save: string; restore: string }>;

export const CHAIN_OUTPUT = 'CTXMESH_OUTPUT';
export const CHAIN_REDIRECT = 'CTXMESH_REDIRECT';
export const CHAIN_INBOUND = 'CTXMESH_INBOUND';
export const CHAIN_IN_REDIRECT = 'CTXMESH_IN_REDIRECT';
/** Every chain ctxmesh owns; cleanup removes exactly these and the jumps to them. */
export const CTXMESH_CHAINS = [CHAIN_OUTPUT, CHAIN_REDIRECT, CHAIN_INBOUND, CHAIN_IN_REDIRECT] as const;
/** The built-in nat chains ctxmesh jumps from, with the chain each jumps to. */
export const JUMPS = [
  { from: 'OUTPUT', to: CHAIN_OUTPUT },
  { from: 'PREROUTING', to: CHAIN_INBOUND },
] as const;

export interface InterceptionOptions {
  /** Sidecar's outbound (plain HTTP) port. Default 15001. */
  outboundPort: number;
  /** Sidecar's inbound (mTLS) port. Default 15006. */
  inboundPort: number;
  /** uid whose traffic is never redirected outbound: the sidecar's own. Default 1337. */
  proxyUid: number;
  /** gid likewise; default = proxyUid. */
  proxyGid: number;
  /** Destination ports the app may reach directly, bypassing the sidecar ("8000" or "8000:8010"). */
  excludeOutboundPorts: string[];
  /** Destination ports that arrive at the app directly, not through the inbound listener. */
  excludeInboundPorts: string[];
  /** Destinations (IPv4 or IPv6 CIDR; each goes to its family's rules) reached directly. */
  excludeOutboundCidrs: string[];
  /**
   * Destinations redirected to the sidecar (either family); everything else is reached directly.
   * A family with no CIDR here has no outbound redirect at all. Default 0.0.0.0/0 and ::/0.
   */
  includeOutboundCidrs: string[];
  /** Ports never intercepted inbound whatever the flags say: admin and context API. */
  adminPort: number;
  contextPort: number;
}

export class RulesError extends Error {
  override name = 'RulesError';
}

export function defaultOptions(overrides: Partial<InterceptionOptions> = {}): InterceptionOptions {
  const proxyUid = overrides.proxyUid ?? DEFAULT_PROXY_UID;
  return {
    outboundPort: DEFAULT_OUTBOUND_PORT,
    inboundPort: DEFAULT_INBOUND_PORT,
    proxyUid,
    proxyGid: proxyUid,
    excludeOutboundPorts: [],
    excludeInboundPorts: [],
    excludeOutboundCidrs: [],
    includeOutboundCidrs: [...DEFAULT_INCLUDE_OUTBOUND_CIDRS],
    adminPort: DEFAULT_ADMIN_PORT,
    contextPort: DEFAULT_CONTEXT_PORT,
    ...overrides,
  };
}

/** "15001" → 15001; throws a RulesError naming `what` for anything that is not a TCP port. */
export function parsePort(value: string | number, what: string): number {
  const text = String(value).trim();
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65_535)) throw new RulesError(`${what}: "${value}" is not a port (1-65535)`);
  return port;
}

/** "80,443, 8000:8010" → ["80", "443", "8000:8010"], validated; "" → []. */
export function parsePortList(value: string, what: string): string[] {
  return splitList(value).map((item) => {
    const range = item.split(':');
    if (range.length > 2) throw new RulesError(`${what}: "${item}" is not a port or a range lo:hi`);
    const [lo, hi] = range.map((p) => parsePort(p, what));
    if (hi !== undefined && hi < lo!) throw new RulesError(`${what}: range "${item}" is reversed`);
    return hi === undefined ? String(lo) : `${lo}:${hi}`;
  });
}

/**
 * "10.0.0.0/8,192.168.1.1,fd00::/8,::1" → ["10.0.0.0/8", "192.168.1.1/32", "fd00::/8", "::1/128"],
 * validated; "" → []; "*" → everything of both families.
 */
export function parseCidrList(value: string, what: string): string[] {
  return splitList(value).flatMap((item) => {
    if (item === '*') return [FAMILY[4].everything, FAMILY[6].everything];
    const [address = '', bits, extra] = item.split('/');
    const family = familyOfAddress(address);
    const max = family === 6 ? 128 : 32;
    const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
    if (extra !== undefined || family === undefined || !(prefix >= 0 && prefix <= max)) {
      throw new RulesError(`${what}: "${item}" is not an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8`);
    }
    return [`${address.toLowerCase()}/${prefix}`];
  });
}

function familyOfAddress(address: string): IpFamily | undefined {
  if (isIPv4(address)) return 4;
  if (isIPv6(address)) return 6;
  return undefined;
}

/** The family of a CIDR as parseCidrList returns it. */
export function cidrFamily(cidr: string): IpFamily {
  return cidr.includes(':') ? 6 : 4;
}

function splitList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/**
 * The rules of one family (iptables-restore lines for `*nat`, without the table header and
 * COMMIT): family 4 for iptables-restore, 6 for ip6tables-restore.
 */
export function buildRules(options: InterceptionOptions, family: IpFamily = 4): string[] {
  const o = options;
  const { loopback, everything } = FAMILY[family];
  const ofFamily = (cidrs: string[]): string[] => unique(cidrs).filter((c) => cidrFamily(c) === family);
  for (const [what, port] of [
    ['outbound port', o.outboundPort],
    ['inbound port', o.inboundPort],
  ] as const) {
    parsePort(port, what);
  }
  if (!Number.isInteger(o.proxyUid) || o.proxyUid < 0) throw new RulesError(`proxy uid: "${o.proxyUid}" is not a uid`);
  if (!Number.isInteger(o.proxyGid) || o.proxyGid < 0) throw new RulesError(`proxy gid: "${o.proxyGid}" is not a gid`);
  const uid = String(o.proxyUid);
  const gid = String(o.proxyGid);
  const lines: string[] = [];
  const add = (rule: string): void => void lines.push(rule);

  for (const chain of CTXMESH_CHAINS) add(`:${chain} - [0:0]`);

  // Inbound: everything arriving over TCP goes to the inbound listener, except the sidecar's
  // local-only ports (admin, context API) and what the user excludes. The inbound port itself
  // needs no exception: redirecting 15006 to 15006 changes nothing.
  const inboundExcluded = unique([String(o.adminPort), String(o.contextPort), ...o.excludeInboundPorts]);
  for (const port of inboundExcluded) add(`-A ${CHAIN_INBOUND} -p tcp --dport ${port} -j RETURN`);
  add(`-A ${CHAIN_INBOUND} -p tcp -j ${CHAIN_IN_REDIRECT}`);
  add(`-A ${CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports ${o.inboundPort}`);

  // Outbound, in order (first match wins):
  // 1. ports the user excludes are reached directly, whoever sends them;
  for (const port of unique(o.excludeOutboundPorts)) add(`-A ${CHAIN_OUTPUT} -p tcp --dport ${port} -j RETURN`);
  // 2. the sidecar talking over loopback to the pod's own IP (not 127.0.0.1) is a call into the
  //    pod's app: it goes through the inbound listener, as a call from a peer would;
  // 3. anyone else's loopback traffic (app → 127.0.0.1:15001, app → its own pod IP) is left
  //    alone: it is local already, and redirecting it would loop;
  // 4. the sidecar's own traffic is never redirected, or its upstream connections would come
  //    straight back to it. The same three rules by gid cover a proxy run under another uid.
  for (const [match, id] of [
    ['--uid-owner', uid],
    ['--gid-owner', gid],
  ] as const) {
    add(`-A ${CHAIN_OUTPUT} ! -d ${loopback} -o lo -m owner ${match} ${id} -j ${CHAIN_IN_REDIRECT}`);
    add(`-A ${CHAIN_OUTPUT} -o lo -m owner ! ${match} ${id} -j RETURN`);
    add(`-A ${CHAIN_OUTPUT} -m owner ${match} ${id} -j RETURN`);
  }
  // 5. localhost is never intercepted;
  add(`-A ${CHAIN_OUTPUT} -d ${loopback} -j RETURN`);
  // 6. excluded destinations are reached directly; 7. included ones go to the outbound listener.
  for (const cidr of ofFamily(o.excludeOutboundCidrs)) add(`-A ${CHAIN_OUTPUT} -d ${cidr} -j RETURN`);
  const include = ofFamily(o.includeOutboundCidrs);
  if (include.includes(everything)) add(`-A ${CHAIN_OUTPUT} -j ${CHAIN_REDIRECT}`);
  else for (const cidr of include) add(`-A ${CHAIN_OUTPUT} -d ${cidr} -j ${CHAIN_REDIRECT}`);
  add(`-A ${CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports ${o.outboundPort}`);

  // The jumps last: the chains are complete before any traffic enters them.
  for (const { from, to } of JUMPS) add(`-A ${from} -p tcp -j ${to}`);
  return lines;
}

/** The complete restore input of one family (apply with `iptables-restore --noflush`, or ip6tables-restore for 6). */
export function buildRestoreScript(options: InterceptionOptions, family: IpFamily = 4): string {
  return [`# ctxmesh iptables: apply with \`${FAMILY[family].restore} --noflush\``, '*nat', ...buildRules(options, family), 'COMMIT', ''].join('\n');
}

/**
 * The iptables-restore input that removes what ctxmesh installed, given the current nat table as
 * `iptables-save -t nat` prints it; undefined when nothing of ctxmesh is there. Removes every
 * jump to a CTXMESH_* chain (however many times it was added), then flushes and deletes the chains.
 */
export function buildCleanupScript(natTable: string, family: IpFamily = 4): string | undefined {
  const ours = new Set<string>(CTXMESH_CHAINS);
  const lines = natTable.split('\n').map((l) => l.trim());
  const present = lines.filter((l) => l.startsWith(':')).map((l) => l.slice(1).split(/\s+/)[0]!).filter((c) => ours.has(c));
  const jumps = existingJumps(natTable);
  if (present.length === 0 && jumps.length === 0) return undefined;
  return [
    `# ctxmesh iptables --cleanup: apply with \`${FAMILY[family].restore} --noflush\``,
    '*nat',
    ...jumps.map((rule) => rule.replace(/^-A /, '-D ')),
    ...present.map((c) => `-F ${c}`),
    ...present.map((c) => `-X ${c}`),
    'COMMIT',
    '',
  ].join('\n');
}

/**
 * The iptables-restore input that installs the rules over whatever ctxmesh installed before, in
 * one transaction: the old jumps are deleted, and declaring each chain again flushes it (with
 * --noflush only the declared chains are flushed), so there is never a moment without rules and
 * never a second copy.
 */
export function buildReplaceScript(natTable: string, options: InterceptionOptions, family: IpFamily = 4): string {
  const jumps = existingJumps(natTable).map((rule) => rule.replace(/^-A /, '-D '));
  return [`# ctxmesh iptables: apply with \`${FAMILY[family].restore} --noflush\``, '*nat', ...jumps, ...buildRules(options, family), 'COMMIT', ''].join('\n');
}

function existingJumps(natTable: string): string[] {
  const ours = new Set<string>(CTXMESH_CHAINS);
  return natTable
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => {
      const m = /^-A (\S+) .*-j (\S+)$/.exec(l);
      return m !== null && !ours.has(m[1]!) && ours.has(m[2]!);
    });
}

function unique(values: string[]): string[] {
  return [...new Set(values)];
}
