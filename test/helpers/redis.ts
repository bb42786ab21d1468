// Real redis-server processes on private ports for the L2 tests: a single server, a master with one
// sentinel, or a three-master Cluster. Nothing persists (`--save ''`, no AOF) and every process is
// handed to the caller's closers (`closeAfterEach()` from mesh.ts, or an array drained in
// afterAll), with a SIGKILL at process exit as the last resort.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** ms a server may take to answer PING after spawn. */
const START_TIMEOUT_MS = 10_000;
/** ms a Cluster may take to report cluster_state:ok after creation. */
const CLUSTER_OK_TIMEOUT_MS = 20_000;
/** ms SIGTERM may take before SIGKILL. */
const STOP_TIMEOUT_MS = 5_000;
/** Redis Cluster's bus listens on the data port + 10000. */
const CLUSTER_BUS_OFFSET = 10_000;

export type Closers = Array<() => Promise<void>>;

export interface RedisServer {
  url: string;
  port: number;
  dir: string;
  /** SIGTERM, waiting for exit. */
  stop(): Promise<void>;
  /** SIGKILL, waiting for exit: a crash. */
  kill(): Promise<void>;
  /** Starts it again on the same port with the same directory. */
  restart(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

function requireRedis(): void {
  const onPath = (process.env.PATH ?? '').split(':').some((dir) => dir !== '' && existsSync(join(dir, 'redis-server')));
  if (!onPath) {
    throw new Error("redis-server is not on PATH: install Debian's redis-server package (npm test does so when run as root)");
  }
}

/**
 * Ports handed to processes that bind them later. They come from below the kernel's ephemeral
 * range (32768–60999 here), which the kernel's pick for port 0 would come from: there, any
 * outgoing connection of any test may take the port between the check and the bind. Plain ports
 * come from [16000, 22000); a pair for `bus` from [12000, 16000), so its bus (+10000) lands in
 * [22000, 26000); each vitest worker takes its own slice of both.
 */
const PLAIN_PORTS = { from: 16_000, to: 22_000 };
const BUS_PAIR_PORTS = { from: 12_000, to: 16_000 };
const WORKER_SLICES = 4;
const handedOut = new Set<number>();

/** A port nobody listens on now, not handed out before by this process; with `bus`, port + 10000 is free too. */
export async function freePort(bus = false): Promise<number> {
  const range = bus ? BUS_PAIR_PORTS : PLAIN_PORTS;
  const slice = Math.floor((range.to - range.from) / WORKER_SLICES);
  const from = range.from + (Number(process.env.VITEST_POOL_ID ?? 0) % WORKER_SLICES) * slice;
  for (let attempt = 0; attempt < 1_000; attempt++) {
    const port = from + Math.floor(Math.random() * slice);
    if (handedOut.has(port)) continue;
    try {
      await listenAndClose(port);
      if (bus) await listenAndClose(port + CLUSTER_BUS_OFFSET);
    } catch {
      continue; // taken (or its bus port is): pick another
    }
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port in [${from}, ${from + slice})`);
}

function listenAndClose(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const chosen = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(chosen));
    });
  });
}

interface Spawned {
  child: ChildProcess;
  exited: Promise<void>;
  /** The last few KB the process printed, for start-up failures. */
  output(): string;
}

function spawnServer(args: string[], port: number): Spawned {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let output = '';
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString()).slice(-4_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      running.delete(child);
      resolve();
    });
  });
  return { child, exited, output: () => `redis-server on ${port}: ${output}` };
}

/** Resolves once the server answers PING (sentinels do too); rejects if the process exits first. */
async function waitForPing(spawned: Spawned, port: number): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let exited = false;
  void spawned.exited.then(() => {
    exited = true;
  });
  while (Date.now() < deadline) {
    if (exited) throw new Error(`redis-server exited before answering: ${spawned.output()}`);
    if (await ping(port)) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`redis-server on ${port} did not answer PING within ${START_TIMEOUT_MS}ms`);
}

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    socket.setTimeout(500);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => {
      reply += d.toString();
      if (reply.includes('\r\n')) {
        socket.destroy();
        resolve(reply.startsWith('+PONG'));
      }
    });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

async function signal(spawned: Spawned, sig: NodeJS.Signals): Promise<void> {
  if (spawned.child.exitCode !== null || spawned.child.signalCode !== null) return;
  spawned.child.kill(sig);
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([spawned.exited, new Promise((resolve) => (timer = setTimeout(resolve, STOP_TIMEOUT_MS)))]);
  clearTimeout(timer);
  if (spawned.child.exitCode === null && spawned.child.signalCode === null) {
    spawned.child.kill('SIGKILL');
    await spawned.exited;
  }
}

interface ServerSpec {
  port: number;
  dir: string;
  args: string[];
}

/** A process that can be stopped, killed and started again with the same arguments. */
function managed(spec: ServerSpec): { start(): Promise<void>; stop(): Promise<void>; kill(): Promise<void> } {
  let current: Spawned | undefined;
  return {
    async start() {
      current = spawnServer(spec.args, spec.port);
      await waitForPing(current, spec.port);
    },
    async stop() {
      if (current) await signal(current, 'SIGTERM');
    },
    async kill() {
      if (current) await signal(current, 'SIGKILL');
    },
  };
}

function baseArgs(port: number, dir: string): string[] {
  return ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--protected-mode', 'no'];
}

export interface StartRedisOptions {
  /** Extra redis-server arguments, e.g. ['--requirepass', 'secret']. */
  args?: string[];
}

/** One redis-server on a free port; registered in `closers`. */
export async function startRedis(closers: Closers, options: StartRedisOptions = {}): Promise<RedisServer> {
  requireRedis();
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-redis-'));
  const proc = managed({ port, dir, args: [...baseArgs(port, dir), ...(options.args ?? [])] });
  await proc.start();
  closers.push(async () => {
    await proc.kill();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    stop: proc.stop,
    kill: proc.kill,
    async restart() {
      await proc.stop();
      await proc.start();
    },
  };
}

export interface RedisSentinel {
  /** redis+sentinel://127.0.0.1:<sentinel port>/<master name> */
  url: string;
  masterName: string;
  master: RedisServer;
  sentinelPort: number;
  stop(): Promise<void>;
}

/** A master and one sentinel watching it with quorum 1. */
export async function startRedisSentinel(closers: Closers, masterName = 'ctxmesh'): Promise<RedisSentinel> {
  const master = await startRedis(closers);
  const sentinelPort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-sentinel-'));
  // Sentinel rewrites its config file, so it lives in the private dir.
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(
    conf,
    [
      `port ${sentinelPort}`,
      'bind 127.0.0.1',
      'protected-mode no',
      `dir ${dir}`,
      `sentinel monitor ${masterName} 127.0.0.1 ${master.port} 1`,
      `sentinel down-after-milliseconds ${masterName} 5000`,
      '',
    ].join('\n'),
  );
  const proc = managed({ port: sentinelPort, dir, args: [conf, '--sentinel'] });
  await proc.start();
  closers.push(async () => {
    await proc.kill();
    rmSync(dir, { recursive: true, force: true });
  });
  return { url: `redis+sentinel://127.0.0.1:${sentinelPort}/${masterName}`, masterName, master, sentinelPort, stop: proc.stop };
}

export interface RedisCluster {
  /** redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3 */
  url: string;
  nodes: RedisServer[];
}

/** Three masters, no replicas, all 16384 slots assigned; resolves once cluster_state is ok everywhere. */
export async function startRedisCluster(closers: Closers, masters = 3): Promise<RedisCluster> {
  requireRedis();
  const nodes: RedisServer[] = [];
  for (let i = 0; i < masters; i++) {
    const port = await freePort(true);
    const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-cluster-'));
    const proc = managed({
      port,
      dir,
      args: [...baseArgs(port, dir), '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000'],
    });
    await proc.start();
    closers.push(async () => {
      await proc.kill();
      rmSync(dir, { recursive: true, force: true });
    });
    nodes.push({
      url: `redis://127.0.0.1:${port}`,
      port,
      dir,
      stop: proc.stop,
      kill: proc.kill,
      async restart() {
        await proc.stop();
        await proc.start();
      },
    });
  }
  const addresses = nodes.map((n) => `127.0.0.1:${n.port}`);
  await run('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'], { timeout: CLUSTER_OK_TIMEOUT_MS });
  const deadline = Date.now() + CLUSTER_OK_TIMEOUT_MS;
  for (const node of nodes) {
    for (;;) {
      const { stdout } = await run('redis-cli', ['-p', String(node.port), 'cluster', 'info']);
      if (stdout.includes('cluster_state:ok')) break;
      if (Date.now() > deadline) throw new Error(`cluster node ${node.port} not ok within ${CLUSTER_OK_TIMEOUT_MS}ms:\n${stdout}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return { url: `redis+cluster://${addresses.join(',')}`, nodes };
}
