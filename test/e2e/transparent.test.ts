// Transparent interception end to end, with real network namespaces, iptables and the CLI.
//
//   ns A (client pod)                                   ns B (server pod)
//   app client (root) ── 10.231.N.2:80 ──┐              sidecar inbound 0.0.0.0:15006
//        iptables REDIRECT → 127.0.0.1:15001             └─▶ app 127.0.0.1:8080
//   sidecar (uid 1337) ── mTLS ─────────────── veth ──▶ 10.231.N.2:15006
//
// Nothing listens on B's port 80: a reply to a call to 10.231.N.2:80 can only come through A's
// sidecar. And A's sidecar reaches B only because its own uid is excluded; otherwise its upstream
// connection would be redirected back to its own outbound port.
//
// Where the kernel allows, the veth pair also carries ULA IPv6 addresses (fd00:ca:N::1 and ::2)
// and the same checks run over IPv6, through the ip6tables rules `ctxmesh iptables` installs
// beside the IPv4 ones. A's sidecar then listens on [::] (dual-stack: ip6tables REDIRECTs
// locally sent IPv6 to ::1) and B's inbound likewise. A resolves `chat-b6` to B's IPv6 address
// through /etc/netns/<A>/hosts, which `ip netns exec` mounts over /etc/hosts.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPki, until, type IdentityFiles } from '../helpers/mesh.js';

const CLI = resolve('dist/src/cli/main.js');
const PROXY_UID = 1337;
const APP_PORT = 8080;
/** The port the client dials in B, where nothing listens. */
const INTERCEPTED_PORT = 80;
const INBOUND_PORT = 15_006;
const READY_TIMEOUT_MS = 10_000;
const CLIENT_TIMEOUT_MS = 5_000;
const LOG_TIMEOUT_MS = 3_000;
const CLIENT_NAME = 'client-a';

const suffix = `${process.pid.toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const NS_A = `ctxm-a-${suffix}`;
const NS_B = `ctxm-b-${suffix}`;
const VETH_A = `cxa${suffix}`.slice(0, 15);
const VETH_B = `cxb${suffix}`.slice(0, 15);
const subnet = 1 + Math.floor(Math.random() * 254);
const IP_A = `10.231.${subnet}.1`;
const IP_B = `10.231.${subnet}.2`;
const IP6_A = `fd00:ca:${subnet.toString(16)}::1`;
const IP6_B = `fd00:ca:${subnet.toString(16)}::2`;
/** B's IPv6 address as A's sidecar knows it (the sidecar config takes host:port, not [v6]:port). */
const HOST6_B = 'chat-b6';
const NETNS_ETC = '/etc/netns';
const NETNS_ETC_A = `${NETNS_ETC}/${NS_A}`;

/** Why the suite cannot run here, or undefined when it can. Creates namespace A as the probe. */
function unavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root';
  if (spawnSync('iptables-save', ['--version']).status !== 0) return 'iptables is not installed';
  if (spawnSync('setpriv', ['--version']).status !== 0) return 'setpriv is not installed';
  const add = spawnSync('ip', ['netns', 'add', NS_A], { encoding: 'utf8' });
  if (add.status !== 0) return `\`ip netns add\` failed: ${(add.stderr || add.error?.message || '').trim()}`;
  return undefined;
}
const skipReason = unavailable();
if (skipReason) console.warn(`SKIP transparent interception e2e: ${skipReason}`);

/** Why the IPv6 checks cannot run here, or undefined when they can. Probes inside namespace A. */
function ipv6Unavailable(): string | undefined {
  if (skipReason) return skipReason;
  if (spawnSync('ip6tables-save', ['--version']).status !== 0) return 'ip6tables is not installed';
  const inA = (...args: string[]) => spawnSync('ip', ['netns', 'exec', NS_A, ...args], { encoding: 'utf8' });
  if (inA('cat', '/proc/net/if_inet6').status !== 0) return 'the kernel has no IPv6';
  if (inA('cat', '/proc/sys/net/ipv6/conf/all/disable_ipv6').stdout.trim() !== '0') return 'IPv6 is disabled in new network namespaces';
  const nat = inA('ip6tables-save', '-t', 'nat');
  if (nat.status !== 0) return `ip6tables has no nat table here: ${nat.stderr.trim()}`;
  const probe = spawnSync('ip', ['-n', NS_A, 'addr', 'add', `${IP6_A}/128`, 'dev', 'lo', 'nodad'], { encoding: 'utf8' });
  if (probe.status !== 0) return `cannot add an IPv6 address in a namespace: ${probe.stderr.trim()}`;
  spawnSync('ip', ['-n', NS_A, 'addr', 'del', `${IP6_A}/128`, 'dev', 'lo']);
  return undefined;
}
const ipv6SkipReason = ipv6Unavailable();
const ipv6 = ipv6SkipReason === undefined;
if (!skipReason && !ipv6) console.warn(`SKIP the IPv6 checks of the transparent interception e2e: ${ipv6SkipReason}`);
/** Whether this run created /etc/netns (removed again when empty). */
let createdNetnsEtc = false;

const children: ChildProcess[] = [];
const dirs: string[] = [];

function sh(...args: string[]): string {
  return execFileSync(args[0]!, args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

interface Started {
  child: ChildProcess;
  output: () => string;
}

/** Spawns `command` and resolves once its output contains `ready`; rejects if it exits first. */
function start(command: string[], ready: string): Promise<Started> {
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${command.join(' ')}: not ready after ${READY_TIMEOUT_MS} ms:\n${out}`)), READY_TIMEOUT_MS);
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      if (out.includes(ready)) {
        clearTimeout(timer);
        resolvePromise({ child, output: () => out });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${command.join(' ')} exited (${code ?? signal}) before ready:\n${out}`));
    });
  });
}

// The app in B: echoes what it received, headers included, as JSON.
const APP_SCRIPT = `
const http = require('node:http');
http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ app: 'chat-b', url: req.url, headers: req.headers }));
}).listen(${APP_PORT}, '127.0.0.1', () => console.log('app listening'));
`;

// The app client in A (root, so not excluded): a plain HTTP call to B's IP (IPv4 or IPv6) on port
// 80 with the Host of the mesh service. Prints { status, body } or { error: code }.
const CLIENT_SCRIPT = `
const http = require('node:http');
const req = http.request({ host: process.argv[1], port: ${INTERCEPTED_PORT}, path: '/hello', headers: { host: process.argv[2] }, timeout: ${CLIENT_TIMEOUT_MS} }, (res) => {
  let body = '';
  res.on('data', (c) => (body += c));
  res.on('end', () => console.log(JSON.stringify({ status: res.statusCode, body })));
});
req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
req.on('error', (err) => console.log(JSON.stringify({ error: err.code || err.message })));
req.end();
`;

interface ClientResult {
  status?: number;
  body?: string;
  error?: string;
}

function callFromA(host = 'chat.default.svc', address = IP_B): ClientResult {
  const out = sh('ip', 'netns', 'exec', NS_A, process.execPath, '-e', CLIENT_SCRIPT, address, host);
  return JSON.parse(out.trim()) as ClientResult;
}

function iptablesIn(ns: string, ...args: string[]): { code: number | null; out: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, CLI, 'iptables', ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
}
const iptablesInA = (...args: string[]): ReturnType<typeof iptablesIn> => iptablesIn(NS_A, ...args);

/** Copies an identity into a directory owned by `uid`, readable by it alone. */
function copyIdentity(identity: IdentityFiles, dir: string, uid: number): IdentityFiles {
  mkdirSync(dir, { recursive: true });
  const copy = { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem'), ca: join(dir, 'ca.pem') };
  for (const k of ['cert', 'key', 'ca'] as const) {
    copyFileSync(identity[k], copy[k]);
    chownSync(copy[k], uid, uid);
    chmodSync(copy[k], 0o600);
  }
  chownSync(dir, uid, uid);
  chmodSync(dir, 0o700);
  return copy;
}

function sidecarYaml(id: string, identity: IdentityFiles, dataDir: string, clusters: object[]): string {
  // JSON is YAML; the loader validates it as it would a hand-written file. With IPv6, both
  // listeners bind [::], which takes IPv4 too.
  return JSON.stringify({
    node: { id },
    identity,
    inbound: { port: INBOUND_PORT, address: ipv6 ? '::' : '0.0.0.0', app: `http://127.0.0.1:${APP_PORT}`, allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
    outbound: { port: 15_001, ...(ipv6 ? { address: '::' } : {}) },
    admin: { port: 15_000 },
    context: { checkpoint: { dir: dataDir } },
    log: { level: 'info', accessLog: true },
    clusters,
  });
}

describe.skipIf(skipReason !== undefined)('transparent interception (iptables, network namespaces)', () => {
  let sidecarA: Started;

  beforeAll(async () => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
    // Namespace A exists already (the probe); B and the veth pair between them.
    sh('ip', 'netns', 'add', NS_B);
    sh('ip', 'link', 'add', VETH_A, 'netns', NS_A, 'type', 'veth', 'peer', 'name', VETH_B, 'netns', NS_B);
    for (const [ns, veth, ip] of [
      [NS_A, VETH_A, IP_A],
      [NS_B, VETH_B, IP_B],
    ] as const) {
      sh('ip', '-n', ns, 'addr', 'add', `${ip}/30`, 'dev', veth);
      sh('ip', '-n', ns, 'link', 'set', veth, 'up');
      sh('ip', '-n', ns, 'link', 'set', 'lo', 'up');
    }
    if (ipv6) {
      // nodad: the addresses are usable at once, without duplicate address detection's delay.
      sh('ip', '-n', NS_A, 'addr', 'add', `${IP6_A}/64`, 'dev', VETH_A, 'nodad');
      sh('ip', '-n', NS_B, 'addr', 'add', `${IP6_B}/64`, 'dev', VETH_B, 'nodad');
      if (!existsSync(NETNS_ETC)) {
        mkdirSync(NETNS_ETC);
        createdNetnsEtc = true;
      }
      mkdirSync(NETNS_ETC_A);
      writeFileSync(join(NETNS_ETC_A, 'hosts'), `127.0.0.1 localhost\n::1 localhost\n${IP6_B} ${HOST6_B}\n`);
    }

    const pki = await createPki();
    dirs.push(pki.dir);
    const work = mkdtempSync(join(tmpdir(), 'ctxmesh-transparent-'));
    dirs.push(work);
    // mkdtemp makes it 0700; the proxy uid must be able to traverse it to reach its own dir.
    chmodSync(work, 0o711);
    // A's sidecar runs as the proxy uid, which must be able to read its identity and config.
    const dirA = join(work, 'a');
    const identityA = copyIdentity(await pki.issue(CLIENT_NAME), dirA, PROXY_UID);
    const configA = join(dirA, 'sidecar.yaml');
    writeFileSync(
      configA,
      sidecarYaml('node-a', identityA, join(dirA, 'data'), [
        // No retries: a failed try must show as a failure, not be papered over.
        { name: 'chat', domains: ['chat.default.svc', 'chat'], tls: 'mesh', endpoints: [{ address: `${IP_B}:${INBOUND_PORT}` }], retry: { attempts: 0 } },
        // As Istio addresses pods: the app's own port, which B's inbound rules must redirect to
        // B's sidecar (the app itself listens on 127.0.0.1 only, unreachable from A).
        { name: 'chat-app-port', domains: ['chat-app-port'], tls: 'mesh', endpoints: [{ address: `${IP_B}:${APP_PORT}` }], retry: { attempts: 0 } },
        // The same over IPv6: B's app port at B's IPv6 address, redirected by B's ip6tables rules.
        ...(ipv6
          ? [{ name: 'chat6-app-port', domains: ['chat6-app-port'], tls: 'mesh', endpoints: [{ address: `${HOST6_B}:${APP_PORT}` }], retry: { attempts: 0 } }]
          : []),
      ]),
    );
    chownSync(configA, PROXY_UID, PROXY_UID);
    const configB = join(work, 'sidecar-b.yaml');
    writeFileSync(configB, sidecarYaml('chat-b', await pki.issue('chat-b'), join(work, 'b-data'), []));

    await start(['ip', 'netns', 'exec', NS_B, process.execPath, '-e', APP_SCRIPT], 'app listening');
    await start(['ip', 'netns', 'exec', NS_B, process.execPath, CLI, 'sidecar', '-c', configB], 'sidecar ready');
    sidecarA = await start(
      ['ip', 'netns', 'exec', NS_A, 'setpriv', `--reuid=${PROXY_UID}`, `--regid=${PROXY_UID}`, '--clear-groups', process.execPath, CLI, 'sidecar', '-c', configA],
      'sidecar ready',
    );
  }, 30_000);

  afterAll(() => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    // Deleting the namespaces deletes the veth pair and A's rules with them.
    for (const ns of [NS_A, NS_B]) spawnSync('ip', ['netns', 'del', ns]);
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    rmSync(NETNS_ETC_A, { recursive: true, force: true });
    if (createdNetnsEtc && readdirSync(NETNS_ETC).length === 0) rmSync(NETNS_ETC, { recursive: true, force: true });
  });

  it('without interception, nothing answers on the peer IP port 80', () => {
    // The control: the success below is the rules' doing, not something listening on B:80.
    expect(callFromA()).toEqual({ error: 'ECONNREFUSED' });
    if (ipv6) expect(callFromA('chat.default.svc', IP6_B)).toEqual({ error: 'ECONNREFUSED' });
  });

  it("redirects the app's call through A's sidecar, over mTLS, to B's app", async () => {
    const applied = iptablesInA('--proxy-uid', String(PROXY_UID));
    expect(applied.code, applied.out).toBe(0);
    expect(applied.out).toMatch(ipv6 ? /installed IPv6 interception rules/ : /IPv6 skipped|installed IPv6/);

    const reply = callFromA();
    expect(reply.status, JSON.stringify(reply)).toBe(200);
    const echoed = JSON.parse(reply.body!) as { app: string; url: string; headers: Record<string, string> };
    expect(echoed.app).toBe('chat-b');
    expect(echoed.url).toBe('/hello');
    // Set by B's sidecar from the client certificate it verified: the call came over mTLS from A.
    expect(echoed.headers['x-ctxmesh-peer-identity']).toBe(`spiffe://ctxmesh.local/ns/default/sa/${CLIENT_NAME}`);

    // A's sidecar saw it on its outbound listener and routed it by Host to B's inbound. The
    // client ran synchronously, so A's log lines are read only once the event loop turns again.
    const access = (): Array<Record<string, unknown>> =>
      sidecarA
        .output()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.kind === 'access');
    await until(() => access().length > 0, LOG_TIMEOUT_MS, "A's access log line").catch(() => {});
    expect(access()).toContainEqual(
      expect.objectContaining({ direction: 'outbound', authority: 'chat.default.svc', path: '/hello', status: 200, upstream: `${IP_B}:${INBOUND_PORT}` }),
    );
  });

  it.skipIf(!ipv6)("redirects the app's IPv6 call through A's sidecar (ip6tables), over mTLS, to B's app", () => {
    // A's rules from the previous test, installed by the same command for both families.
    expect(sh('ip', 'netns', 'exec', NS_A, 'ip6tables-save', '-t', 'nat')).toMatch(/^-A OUTPUT -p tcp -j CTXMESH_OUTPUT$/m);
    const reply = callFromA('chat.default.svc', IP6_B);
    expect(reply.status, JSON.stringify(reply)).toBe(200);
    const echoed = JSON.parse(reply.body!) as { app: string; url: string; headers: Record<string, string> };
    expect(echoed.app).toBe('chat-b');
    expect(echoed.url).toBe('/hello');
    expect(echoed.headers['x-ctxmesh-peer-identity']).toBe(`spiffe://ctxmesh.local/ns/default/sa/${CLIENT_NAME}`);
  });

  it("redirects what arrives at B's app port to B's inbound listener once B has the rules too", () => {
    // Before: A's sidecar dials B:8080, where nothing listens on B's veth address.
    const before = callFromA('chat-app-port');
    expect(before.status, JSON.stringify(before)).toBe(503);
    expect(before.body).toMatch(/connect_failure/);

    const before6 = ipv6 ? callFromA('chat6-app-port') : undefined;
    if (before6) {
      expect(before6.status, JSON.stringify(before6)).toBe(503);
      expect(before6.body).toMatch(/connect_failure/);
    }

    const applied = iptablesIn(NS_B);
    expect(applied.code, applied.out).toBe(0);
    if (ipv6) {
      // Over IPv6: A's sidecar dials [B]:8080, which B's ip6tables rules send to B's inbound.
      const after6 = callFromA('chat6-app-port');
      expect(after6.status, JSON.stringify(after6)).toBe(200);
      const echoed6 = JSON.parse(after6.body!) as { app: string; headers: Record<string, string> };
      expect(echoed6.app).toBe('chat-b');
      expect(echoed6.headers['x-ctxmesh-peer-identity']).toBe(`spiffe://ctxmesh.local/ns/default/sa/${CLIENT_NAME}`);
    }
    const after = callFromA('chat-app-port');
    expect(after.status, JSON.stringify(after)).toBe(200);
    const echoed = JSON.parse(after.body!) as { app: string; headers: Record<string, string> };
    expect(echoed.app).toBe('chat-b');
    // It went through B's sidecar (which verified A's certificate), not around it.
    expect(echoed.headers['x-ctxmesh-peer-identity']).toBe(`spiffe://ctxmesh.local/ns/default/sa/${CLIENT_NAME}`);

    // Removed again, or B's rules would send the next test's port-80 probe to B's sidecar. (Not
    // probed with a call: connections A's sidecar already pooled keep their NAT mapping.)
    const cleaned = iptablesIn(NS_B, '--cleanup');
    expect(cleaned.code, cleaned.out).toBe(0);
    expect(sh('ip', 'netns', 'exec', NS_B, 'iptables-save', '-t', 'nat')).not.toMatch(/CTXMESH/);
    if (ipv6) expect(sh('ip', 'netns', 'exec', NS_B, 'ip6tables-save', '-t', 'nat')).not.toMatch(/CTXMESH/);
  });

  it('after --cleanup the call is no longer intercepted (refused: nothing listens on port 80)', () => {
    const cleaned = iptablesInA('--cleanup');
    expect(cleaned.code, cleaned.out).toBe(0);
    expect(sh('ip', 'netns', 'exec', NS_A, 'iptables-save', '-t', 'nat')).not.toMatch(/CTXMESH/);
    expect(callFromA()).toEqual({ error: 'ECONNREFUSED' });
    if (ipv6) {
      expect(sh('ip', 'netns', 'exec', NS_A, 'ip6tables-save', '-t', 'nat')).not.toMatch(/CTXMESH/);
      expect(callFromA('chat.default.svc', IP6_B)).toEqual({ error: 'ECONNREFUSED' });
    }
  });
});

// When the suite is skipped after the probe created namespace A (it is not, today), drop it.
if (skipReason !== undefined) spawnSync('ip', ['netns', 'del', NS_A]);
