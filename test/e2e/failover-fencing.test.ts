// Ownership fencing and the restart regression, end to end with real processes: a control plane
// and three chat sidecars (registered through their ADS node, probing each other every 200ms,
// reporting to the control plane, replicating context RF=3 strong).
//   - restart: a SIGKILLed, declared and restarted sidecar is healthy again and stays so — its
//     peers' reports about its previous run do not declare it a second time;
//   - fencing: a sidecar SIGSTOPped long enough to be declared failed, then SIGCONTed, does not
//     acknowledge writes (its peers refuse its stale epoch, it answers 503 `fenced`) until the
//     control plane re-admits it with a new epoch; then it takes writes again; no acknowledged
//     write is lost;
//   - cache warming: after a failover, the keys a sidecar becomes primary for are in its L1, even
//     ones evicted from it before;
//   - planned drain: `POST /drain` on a sidecar under write load tells the control plane
//     (DRAINING), hands every key it holds to the next owners, and only then stops; no
//     acknowledged write is lost and the keys are on the new owners before it leaves.
// Replication factor 2 over three sidecars, so that a failover or a drain moves keys somewhere new.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import HashRing from 'hashring';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPki, startApp, until, type IdentityFiles, type TestApp } from '../helpers/mesh.js';
import { freePort } from '../helpers/redis.js';

const CLI = resolve('dist/src/cli/main.js');
const BUILD_TIMEOUT_MS = 180_000;
const READY_TIMEOUT_MS = 20_000;
/** Generous bounds for conditions polled on a shared 2-core machine; none is a timing claim. */
const DECLARE_TIMEOUT_MS = 20_000;
const CHAT_IDS = ['chat-a', 'chat-b', 'chat-c'] as const;

interface ChatNode {
  id: string;
  configFile: string;
  admin: number;
  inbound: number;
  context: number;
  address: string;
  app: TestApp;
  child: ChildProcess | undefined;
  exited: Promise<void> | undefined;
  output: string;
}

interface Write {
  key: string;
  value: string;
  via: string;
  startedAt: number;
  endedAt: number;
  status: number;
  code?: string;
}

interface FenceView {
  fenced: boolean;
  selfEpoch: number;
  requiredEpoch: number | null;
  refused: number;
}

const work = mkdtempSync(join(tmpdir(), 'ctxmesh-fencing-'));
const agent = new Agent({ connections: 16, keepAliveTimeout: 10_000 });

async function getJson<T>(url: string): Promise<T> {
  const res = await request(url, { dispatcher: agent, headersTimeout: 3_000, bodyTimeout: 3_000 });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`GET ${url}: ${res.statusCode} ${text}`);
  return JSON.parse(text) as T;
}

function spawnProc(proc: { configFile: string; child: ChildProcess | undefined; exited: Promise<void> | undefined; output: string }, command: string): void {
  proc.output = '';
  const child = spawn(process.execPath, [CLI, command, '-c', proc.configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const keep = (chunk: Buffer): void => {
    proc.output = (proc.output + chunk.toString()).slice(-20_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  proc.child = child;
  proc.exited = new Promise((done) => child.once('exit', () => done()));
}

async function startProc(proc: { configFile: string; admin: number; child: ChildProcess | undefined; exited: Promise<void> | undefined; output: string }, command: string): Promise<void> {
  spawnProc(proc, command);
  const exited = proc.exited!.then(() => {
    throw new Error(`${proc.configFile} exited before it was ready:\n${proc.output}`);
  });
  const ready = async (): Promise<boolean> =>
    request(`http://127.0.0.1:${proc.admin}/ready`, { dispatcher: agent, headersTimeout: 1_000 }).then(
      async (r) => (await r.body.text(), r.statusCode === 200),
      () => false,
    );
  await Promise.race([until(ready, READY_TIMEOUT_MS, `${proc.configFile} to be ready`), exited]);
  exited.catch(() => undefined);
}

async function put(node: ChatNode, key: string, value: string): Promise<Write> {
  const write: Write = { key, value, via: node.id, startedAt: Date.now(), endedAt: 0, status: 0 };
  try {
    const res = await request(`http://127.0.0.1:${node.context}/v1/contexts/${key}`, {
      dispatcher: agent,
      method: 'PUT',
      body: value,
      headers: { 'content-type': 'text/plain', 'ctxmesh-consistency': 'strong' },
      headersTimeout: 8_000,
      bodyTimeout: 8_000,
    });
    await res.body.text();
    write.status = res.statusCode;
    const code = res.headers['x-ctxmesh-error'];
    if (typeof code === 'string') write.code = code;
  } catch (err) {
    write.code = (err as Error).message;
  }
  write.endedAt = Date.now();
  return write;
}

describe('fencing and re-admission across a control plane and sidecar processes', () => {
  const controlPlane = { configFile: '', admin: 0, child: undefined as ChildProcess | undefined, exited: undefined as Promise<void> | undefined, output: '' };
  const chats: ChatNode[] = [];
  const byId = (id: string): ChatNode => chats.find((c) => c.id === id)!;
  const cpApi = (): string => `http://127.0.0.1:${controlPlane.admin}`;
  const registryEndpoint = async (node: ChatNode): Promise<{ health: string; epoch: number } | undefined> =>
    (await getJson<{ services: Array<{ name: string; endpoints: Array<{ address: string; health: string; epoch: number }> }> }>(`${cpApi()}/v1/registry`)).services
      .find((s) => s.name === 'chat')
      ?.endpoints.find((e) => e.address === node.address);
  const failovers = async (node: ChatNode, kind: string): Promise<Array<{ at: string; epoch: number }>> =>
    (await getJson<{ failovers: Array<{ kind: string; nodeId?: string; at: string; epoch: number }> }>(`${cpApi()}/v1/failovers`)).failovers.filter(
      (f) => f.kind === kind && f.nodeId === node.id,
    );
  const fence = async (node: ChatNode): Promise<FenceView> => (await getJson<{ fencing: FenceView }>(`http://127.0.0.1:${node.admin}/clusters`)).fencing;
  const meshSettled = async (): Promise<boolean> => {
    for (const node of chats) if ((await registryEndpoint(node))?.health !== 'HEALTHY') return false;
    for (const node of chats) {
      const view = await getJson<{ members: Array<{ id: string; state: string }> }>(`http://127.0.0.1:${node.admin}/members`).catch(() => undefined);
      if (!view || CHAT_IDS.some((id) => view.members.find((m) => m.id === id)?.state !== 'alive')) return false;
      if ((await fence(node).catch(() => ({ fenced: true }))).fenced) return false;
    }
    return true;
  };
  const diagnostics = (): string => [controlPlane, ...chats].map((p) => `--- ${p.configFile}\n${p.output.slice(-3_000)}`).join('\n');
  const settle = (what: string) =>
    until(meshSettled, 30_000, what).catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });

  beforeAll(async () => {
    if (!existsSync(CLI)) spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'ignore', timeout: BUILD_TIMEOUT_MS });
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build with npx tsc -p tsconfig.json`);
    const pki = await createPki();
    const identities = new Map<string, IdentityFiles>();
    for (const id of CHAT_IDS) identities.set(id, await pki.issue(id));

    const xdsPort = await freePort();
    controlPlane.admin = await freePort();
    controlPlane.configFile = join(work, 'control-plane.yaml');
    writeFileSync(
      controlPlane.configFile,
      JSON.stringify({
        port: xdsPort,
        address: '127.0.0.1',
        admin: { port: controlPlane.admin },
        registration: { ttl: '60s' },
        health: { suspicionWindow: '3s' },
        services: [{ name: 'chat', lb: 'ring_hash', hashHeader: 'x-ctx-key', tls: 'mesh' }],
        log: { level: 'warn' },
      }),
    );
    await startProc(controlPlane, 'control-plane');
    const xds = { server: `127.0.0.1:${xdsPort}`, initialFetchTimeout: '5s', reconnect: { base: '50ms', max: '500ms' } };
    for (const id of CHAT_IDS) {
      const app = await startApp(id);
      const inbound = await freePort();
      chats.push({ id, configFile: join(work, `${id}.yaml`), admin: await freePort(), inbound, context: await freePort(), address: `127.0.0.1:${inbound}`, app, child: undefined, exited: undefined, output: '' });
    }
    for (const node of chats) {
      writeFileSync(
        node.configFile,
        JSON.stringify({
          node: { id: node.id, cluster: 'chat', zone: 'z1' },
          identity: identities.get(node.id),
          inbound: { port: node.inbound, address: '127.0.0.1', app: node.app.url, allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
          outbound: { port: 0 },
          admin: { port: node.admin },
          xds,
          health: {
            // Slower than failover.test.ts's: these tests assert the *absence* of declarations,
            // which a loaded 2-core machine missing 150ms probe deadlines would fake.
            interval: '300ms',
            probeTimeout: '300ms',
            suspicionTimeout: '1500ms',
            suspicionMinTimeout: '800ms',
            flapBackoff: { base: '500ms', max: '5s' },
            reportTo: `127.0.0.1:${controlPlane.admin}`,
            reportInterval: '200ms',
          },
          context: {
            port: node.context,
            l2: { backend: 'memory' },
            wal: { fsync: 'always' },
            checkpoint: { dir: join(work, `${node.id}-data`) },
            // Small, so that other keys can evict the ones a failover moves here (cache warming).
            l1: { maxBytes: '256KiB' },
            replication: {
              factor: 2,
              consistency: 'strong',
              peers: chats.filter((p) => p !== node).map((p) => ({ id: p.id, address: p.address })),
              peerTimeout: '1s',
              writeTimeout: '2s',
              hints: { interval: '100ms' },
            },
          },
          log: { level: 'warn', accessLog: false },
        }),
      );
    }
    await Promise.all(chats.map((node) => startProc(node, 'sidecar')));
    await settle('every chat sidecar healthy everywhere');
  }, 120_000);

  afterAll(async () => {
    for (const proc of [...chats, controlPlane]) {
      const child = proc.child;
      if (child && child.signalCode === null && child.exitCode === null) {
        child.kill('SIGCONT');
        child.kill('SIGKILL');
        await proc.exited;
      }
    }
    await Promise.all(chats.map((c) => c.app.close()));
  });

  it('a restarted sidecar is healthy again and is not declared failed a second time (regression)', async () => {
    const victim = byId('chat-a');
    victim.child!.kill('SIGKILL');
    await victim.exited;
    victim.child = undefined;
    await until(async () => (await failovers(victim, 'declared')).length >= 1, DECLARE_TIMEOUT_MS, 'chat-a declared').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    const declaredBefore = (await failovers(victim, 'declared')).length;
    await startProc(victim, 'sidecar');
    await settle('chat-a back everywhere');
    // The peers held it down and kept their evidence against its previous run for a while: more
    // than the control plane's suspicion window (3s) of reports at 200ms, none of which may count.
    const watchUntil = Date.now() + 5_000;
    while (Date.now() < watchUntil) {
      expect((await registryEndpoint(victim))?.health).toBe('HEALTHY');
      await new Promise((r) => setTimeout(r, 250));
    }
    expect((await failovers(victim, 'declared')).length).toBe(declaredBefore);
  }, 90_000);

  it('SIGSTOP until declared, SIGCONT: writes refused (503 fenced) until re-admitted with a new epoch, then taken; no acknowledged write lost', async () => {
    const victim = byId('chat-b');
    const survivors = chats.filter((c) => c !== victim);
    const writes: Write[] = [];
    let n = 0;
    // Writes through the survivors all along.
    let running = true;
    const background = (async () => {
      while (running) {
        const node = survivors[n % survivors.length]!;
        writes.push(await put(node, `fence/bg-${n}`, `bg-${n}-${node.id}`));
        n++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const epochBefore = (await registryEndpoint(victim))!.epoch;
    const declaredBefore = (await failovers(victim, 'declared')).length;
    victim.child!.kill('SIGSTOP');
    await until(async () => (await failovers(victim, 'declared')).length > declaredBefore, DECLARE_TIMEOUT_MS, 'chat-b declared').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    const declaredEpoch = (await registryEndpoint(victim))!.epoch;
    expect(declaredEpoch).toBeGreaterThan(epochBefore);

    victim.child!.kill('SIGCONT');
    const resumedAt = Date.now();
    // Writes through the resumed sidecar, back to back, until it takes them again.
    const viaVictim: Write[] = [];
    for (let i = 0; ; i++) {
      const write = await put(victim, `fence/resumed-${i}`, `resumed-${i}`);
      viaVictim.push(write);
      writes.push(write);
      if (write.status === 204 && viaVictim.filter((w) => w.status === 204).length >= 3) break;
      if (Date.now() - resumedAt > 45_000) throw new Error(`chat-b never took writes again: ${JSON.stringify(viaVictim.slice(-5))}\n${diagnostics()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    running = false;
    await background;

    // Refused, and with the distinct code, before it was re-admitted.
    const fencedRefusals = viaVictim.filter((w) => w.code === 'fenced');
    expect(fencedRefusals.length).toBeGreaterThan(0);
    expect(fencedRefusals.every((w) => w.status === 503)).toBe(true);
    const recovered = (await failovers(victim, 'recovered')).filter((f) => f.epoch > declaredEpoch);
    expect(recovered.length).toBeGreaterThanOrEqual(1);
    const readmittedAt = Date.parse(recovered[0]!.at);
    // Nothing acknowledged through it before the control plane re-admitted it.
    expect(viaVictim.filter((w) => w.status === 204 && w.endedAt < readmittedAt)).toEqual([]);
    // Its peers refused its stale epoch (the peer transport fenced it), and it is not fenced any more.
    const refusedByPeers = (await Promise.all(survivors.map(fence))).reduce((sum, f) => sum + f.refused, 0);
    const own = await fence(victim);
    expect(own.fenced).toBe(false);
    expect(own.selfEpoch).toBeGreaterThan(declaredEpoch);
    console.log(`fencing: ${viaVictim.length} writes via chat-b after SIGCONT, ${fencedRefusals.length} refused fenced, peers refused ${refusedByPeers} stale calls; re-admitted ${readmittedAt - resumedAt}ms after SIGCONT`);

    // Every acknowledged write, through anyone, is readable from every sidecar (strong reads).
    await settle('chat-b back everywhere');
    const acked = writes.filter((w) => w.status === 204);
    expect(acked.filter((w) => w.via === victim.id).length).toBeGreaterThanOrEqual(3);
    const missing: string[] = [];
    for (const write of acked) {
      for (const node of chats) {
        const res = await request(`http://127.0.0.1:${node.context}/v1/contexts/${write.key}`, { dispatcher: agent, headers: { 'ctxmesh-consistency': 'strong' }, headersTimeout: 8_000 });
        const body = await res.body.text();
        if (res.statusCode !== 200 || body !== write.value) missing.push(`${write.key} at ${node.id}: ${res.statusCode} ${body.slice(0, 60)} (wanted ${write.value})`);
      }
    }
    expect(missing).toEqual([]);
  }, 150_000);

  it('lease: SIGSTOP longer than the lease but shorter than a declaration, SIGCONT: the very first write is refused 503 fenced, then taken once renewed', async () => {
    type LeaseView = FenceView & { lease: { required: boolean; ms: number; refusedWrites: number; renewals: number } };
    const victim = byId('chat-b');
    await settle('the mesh settled before the pause');
    // The test config's shortest suspicion window (suspicionMinTimeout 800ms) is the default lease.
    expect(((await fence(victim)) as LeaseView).lease).toMatchObject({ required: true, ms: 800 });
    expect((await put(victim, 'lease/before', 'before')).status).toBe(204);
    // A trial in which the control plane declared the victim anyway (a loaded machine can stretch
    // the pause past the ~1.1s a declaration takes) tests the epochs, not the lease: it still must
    // refuse the first write, and the lease gets another trial.
    let leaseTrial: { first: Write; key: string } | undefined;
    const declaredTrials: string[] = [];
    for (let trial = 0; trial < 3 && !leaseTrial; trial++) {
      const key = `lease/first-${trial}`;
      const declaredBefore = (await failovers(victim, 'declared')).length;
      const refusedBefore = ((await fence(victim)) as LeaseView).lease.refusedWrites;
      victim.child!.kill('SIGSTOP');
      // Past the lease (800ms; it was last renewed from a round sent before the stop, so it has
      // certainly run out), short of the least a declaration takes (a missed 300ms probe plus the
      // 800ms suspicion window).
      await new Promise((r) => setTimeout(r, 850));
      // The write is queued in the stopped sidecar's socket before it resumes, so that it is read
      // before any round of pings it starts on waking can renew the lease.
      const pending = put(victim, key, 'first');
      await new Promise((r) => setTimeout(r, 50));
      victim.child!.kill('SIGCONT');
      const first = await pending;
      expect(first, JSON.stringify(first)).toMatchObject({ status: 503, code: 'fenced' });
      const refusedByLease = ((await fence(victim)) as LeaseView).lease.refusedWrites - refusedBefore;
      const declared = (await failovers(victim, 'declared')).length - declaredBefore;
      if (declared === 0) {
        // Not declared: the lease alone refused it (its own count), not the epochs.
        expect(refusedByLease).toBeGreaterThanOrEqual(1);
        leaseTrial = { first, key };
      } else {
        declaredTrials.push(`trial ${trial}: declared ${declared}x, lease refusals ${refusedByLease}`);
        await settle('chat-b re-admitted after a trial the control plane declared');
      }
    }
    expect(leaseTrial, declaredTrials.join('; ')).toBeDefined();
    let taken: Write | undefined;
    for (const until_ = Date.now() + 20_000; Date.now() < until_; ) {
      const write = await put(victim, 'lease/after', 'after');
      if (write.status === 204) {
        taken = write;
        break;
      }
      expect(write.code).toBe('fenced');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(taken?.status).toBe(204);
    expect(((await fence(victim)) as LeaseView).lease.refusedWrites).toBeGreaterThanOrEqual(1);
    // The refused write was refused before it was applied: no replica has it.
    const read = await request(`http://127.0.0.1:${byId('chat-a').context}/v1/contexts/${leaseTrial!.key}`, { dispatcher: agent, headers: { 'ctxmesh-consistency': 'strong' } });
    await read.body.text();
    expect(read.statusCode).toBe(404);
    console.log(`lease: first write after a 0.9s pause refused by the lease${declaredTrials.length ? ` (after ${declaredTrials.join('; ')})` : ''}`);
    await settle('chat-b settled after the pause');
  }, 120_000);

  const held = async (node: ChatNode, prefix: string): Promise<Array<{ key: string; l1: boolean }>> =>
    (await getJson<{ keys: Array<{ key: string; l1: boolean }> }>(`http://127.0.0.1:${node.admin}/members/held?prefix=${encodeURIComponent(prefix)}&limit=10000`)).keys;
  const metric = async (node: ChatNode, name: string): Promise<number> => {
    const res = await request(`http://127.0.0.1:${node.admin}/metrics`, { dispatcher: agent });
    const text = await res.body.text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line ? Number(line.split(' ')[1]) : 0;
  };
  const eventualPut = async (node: ChatNode, key: string, value: string): Promise<number> => {
    const res = await request(`http://127.0.0.1:${node.context}/v1/contexts/${key}`, {
      dispatcher: agent,
      method: 'PUT',
      body: value,
      headers: { 'content-type': 'text/plain', 'ctxmesh-consistency': 'eventual' },
      headersTimeout: 8_000,
    });
    await res.body.text();
    return res.statusCode;
  };

  it('after a failover, the keys the new primary took over are in its L1 (warmed), though other writes had evicted them', async () => {
    const [a, c] = [byId('chat-a'), byId('chat-c')];
    const before = new HashRing(['chat-a', 'chat-b', 'chat-c']);
    const after = new HashRing(['chat-b', 'chat-c']);
    const place = (ring: HashRing, key: string): string[] => ring.range(key, 2, true) as string[];
    // Keys chat-a is primary for and chat-c holds as replica, which chat-c takes over when chat-a fails.
    const moved: string[] = [];
    for (let i = 0; moved.length < 12; i++) {
      const key = `warm/moved-${i}`;
      if (place(before, key).join() === 'chat-a,chat-c' && place(after, key)[0] === 'chat-c') moved.push(key);
    }
    // Keys chat-c is primary for before and after: written after the moved ones, they fill chat-c's
    // small L1 and evict them; a failover does not make chat-c newly responsible for these.
    const fillers: string[] = [];
    for (let i = 0; fillers.length < 150; i++) {
      const key = `warm/filler-${i}`;
      if (place(before, key)[0] === 'chat-c' && place(after, key)[0] === 'chat-c') fillers.push(key);
    }
    const value = (key: string) => `${key}:${'x'.repeat(4_096)}`;
    for (const key of moved) expect((await put(c, key, value(key))).status, key).toBe(204);
    for (const key of fillers) expect(await eventualPut(c, key, value(key)), key).toBe(204);
    const warmedBefore = await metric(c, 'ctxmesh_ownership_warmed_keys_total');

    const declaredBefore = (await failovers(a, 'declared')).length;
    a.child!.kill('SIGKILL');
    await a.exited;
    a.child = undefined;
    await until(async () => (await failovers(a, 'declared')).length > declaredBefore, DECLARE_TIMEOUT_MS, 'chat-a declared').catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    // chat-c's ring leaves chat-a out once the push arrives; its warming then loads what moved.
    await until(async () => (await metric(c, 'ctxmesh_ownership_warmed_keys_total')) >= warmedBefore + moved.length, DECLARE_TIMEOUT_MS, 'chat-c to warm the moved keys');
    const rows = await held(c, 'warm/moved-');
    expect(rows.map((r) => r.key).sort()).toEqual([...moved].sort());
    expect(rows.filter((r) => !r.l1)).toEqual([]);
    // And it serves them, with their values.
    for (const key of moved.slice(0, 3)) {
      const res = await request(`http://127.0.0.1:${c.context}/v1/contexts/${key}`, { dispatcher: agent, headers: { 'ctxmesh-consistency': 'eventual' } });
      expect(await res.body.text()).toBe(value(key));
    }
    await startProc(a, 'sidecar');
    await settle('chat-a back everywhere');
  }, 120_000);

  it('POST /drain under write load: the control plane marks it DRAINING, its keys reach their new owners before it leaves, no acknowledged write lost', async () => {
    const leaving = byId('chat-c');
    const staying = chats.filter((c) => c !== leaving);
    const writes: Write[] = [];
    // Keys through the leaving sidecar too, before the drain: some live only on it and one other.
    for (let i = 0; i < 40; i++) writes.push(await put(leaving, `drain/pre-${i}`, `pre-${i}`));
    expect(writes.every((w) => w.status === 204)).toBe(true);
    let running = true;
    let n = 0;
    const load = Promise.all(
      staying.map(async (node) => {
        while (running) {
          const i = n++;
          writes.push(await put(node, `drain/load-${i}`, `load-${i}-${node.id}`));
          await new Promise((r) => setTimeout(r, 10));
        }
      }),
    );
    await until(() => writes.length >= 80, 20_000, 'write load to run');
    const res = await request(`http://127.0.0.1:${leaving.admin}/drain`, { method: 'POST', dispatcher: agent });
    await res.body.text();
    expect(res.statusCode).toBe(202);
    type Handover = { state: string; strays: number; pushed: number; dropped: number; announced: string | null };
    let handover: Handover | undefined;
    await until(
      async () => {
        handover = (await getJson<{ handover: Handover }>(`http://127.0.0.1:${leaving.admin}/clusters`)).handover;
        return handover.state === 'done' || handover.state === 'timed_out';
      },
      30_000,
      'the handover to finish',
    );
    // More load after it handed over, through the sidecars that stay.
    const handedAt = writes.length;
    await until(() => writes.length >= handedAt + 40, 20_000, 'write load after the handover');
    running = false;
    await load;

    // On failure, what it still held (with stray flags) and its log say why.
    const why = handover?.state === 'done' ? '' : `still held: ${JSON.stringify(await held(leaving, 'drain/').catch((err: Error) => err.message))}\n${leaving.output.slice(-4_000)}`;
    expect(handover, why).toMatchObject({ state: 'done', strays: 0, announced: 'control_plane' });
    expect(handover!.pushed).toBeGreaterThan(0);
    expect((await registryEndpoint(leaving))?.health).toBe('DRAINING');
    expect((await failovers(leaving, 'drain')).length).toBe(1);
    // A planned drain is not a failure.
    expect((await failovers(leaving, 'declared')).length).toBe(0);

    // Before it leaves: every acknowledged key is held by both sidecars that stay (the new replica
    // set of every key, RF=2 over two), and the leaving one dropped what it handed over.
    const acked = writes.filter((w) => w.status === 204);
    expect(acked.length).toBeGreaterThanOrEqual(120);
    for (const node of staying) {
      const keys = new Set((await held(node, 'drain/')).map((r) => r.key));
      expect(acked.filter((w) => !keys.has(w.key)).map((w) => `${w.key} missing at ${node.id}`)).toEqual([]);
    }
    expect(await held(leaving, 'drain/')).toEqual([]);

    // It leaves; every acknowledged write is readable from the sidecars that stay.
    leaving.child!.kill('SIGKILL');
    await leaving.exited;
    leaving.child = undefined;
    const missing: string[] = [];
    for (const write of acked) {
      for (const node of staying) {
        const r = await request(`http://127.0.0.1:${node.context}/v1/contexts/${write.key}`, { dispatcher: agent, headers: { 'ctxmesh-consistency': 'strong' }, headersTimeout: 8_000 });
        const body = await r.body.text();
        if (r.statusCode !== 200 || body !== write.value) missing.push(`${write.key} at ${node.id}: ${r.statusCode} ${body.slice(0, 60)}`);
      }
    }
    expect(missing).toEqual([]);
  }, 150_000);

  it('an operator’s drain through the control plane: the sidecar sees itself DRAINING in EDS and hands its keys over on its own', async () => {
    const leaving = byId('chat-c');
    const staying = chats.filter((c) => c !== leaving);
    // chat-c comes back (a new incarnation clears its DRAINING) and takes part again. If the test
    // before failed ahead of its SIGKILL, the drained process still holds chat-c's ports: end it.
    if (leaving.child && leaving.child.exitCode === null && leaving.child.signalCode === null) {
      leaving.child.kill('SIGKILL');
      await leaving.exited;
    }
    await startProc(leaving, 'sidecar');
    await settle('chat-c back everywhere');
    const writes: Write[] = [];
    for (let i = 0; i < 60; i++) writes.push(await put(chats[i % 3]!, `opdrain/k-${i}`, `v-${i}`));
    expect(writes.every((w) => w.status === 204)).toBe(true);
    await until(async () => (await held(leaving, 'opdrain/')).length > 0, 20_000, 'chat-c to hold some keys');

    const res = await request(`${cpApi()}/v1/endpoints/drain`, {
      method: 'POST',
      dispatcher: agent,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'chat', address: leaving.address, reason: 'rollout' }),
    });
    await res.body.text();
    expect(res.statusCode).toBe(200);
    // Nobody told the sidecar but EDS: it leaves its own ring and hands everything over.
    await until(async () => (await held(leaving, 'opdrain/')).length === 0, 30_000, 'chat-c to hand every key over').catch(async (err: Error) => {
      throw new Error(`${err.message}: still ${(await held(leaving, 'opdrain/')).length}\n${diagnostics()}`);
    });
    for (const node of staying) {
      const keys = new Set((await held(node, 'opdrain/')).map((r) => r.key));
      expect(writes.filter((w) => !keys.has(w.key)).map((w) => `${w.key} missing at ${node.id}`)).toEqual([]);
    }
    // It still answers writes meanwhile, coordinating them to the new owners.
    const during = await put(leaving, 'opdrain/late', 'late');
    expect(during.status).toBe(204);
    for (const node of staying) expect((await held(node, 'opdrain/late')).map((r) => r.key)).toEqual(['opdrain/late']);
  }, 120_000);
});

describe('the membership lease without peers', () => {
  const solo: ChatNode = { id: 'solo', configFile: join(work, 'solo.yaml'), admin: 0, inbound: 0, context: 0, address: '', app: undefined as unknown as TestApp, child: undefined, exited: undefined, output: '' };

  beforeAll(async () => {
    if (!existsSync(CLI)) spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'ignore', timeout: BUILD_TIMEOUT_MS });
    const pki = await createPki();
    solo.app = await startApp('solo');
    [solo.admin, solo.inbound, solo.context] = [await freePort(), await freePort(), await freePort()];
    writeFileSync(
      solo.configFile,
      JSON.stringify({
        node: { id: 'solo', cluster: 'solo', zone: 'z1' },
        identity: await pki.issue('solo'),
        inbound: { port: solo.inbound, address: '127.0.0.1', app: solo.app.url, allow: ['spiffe://ctxmesh.local/ns/default/sa/*'] },
        outbound: { port: 0 },
        admin: { port: solo.admin },
        // The same short windows as the mesh above (a lease would be 800ms), but nobody to hold it against.
        health: { enabled: true, interval: '300ms', probeTimeout: '300ms', suspicionTimeout: '1500ms', suspicionMinTimeout: '800ms' },
        context: { port: solo.context, l2: { backend: 'memory' }, checkpoint: { dir: join(work, 'solo-data') } },
        log: { level: 'warn', accessLog: false },
      }),
    );
    await startProc(solo, 'sidecar');
  }, 60_000);

  afterAll(async () => {
    const child = solo.child;
    if (child && child.signalCode === null && child.exitCode === null) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await solo.exited;
    }
    await solo.app?.close();
  });

  it('a single sidecar (no peers, no replication) is never fenced, not even right after a pause longer than a lease', async () => {
    expect((await put(solo, 'solo/before', 'v')).status).toBe(204);
    solo.child!.kill('SIGSTOP');
    await new Promise((r) => setTimeout(r, 1_600));
    solo.child!.kill('SIGCONT');
    const first = await put(solo, 'solo/first', 'v');
    expect(first, JSON.stringify(first)).toMatchObject({ status: 204 });
    const view = await getJson<{ fencing: { fenced: boolean; lease: { required: boolean; refusedWrites: number } } }>(`http://127.0.0.1:${solo.admin}/clusters`);
    expect(view.fencing).toMatchObject({ fenced: false, lease: { required: false, refusedWrites: 0 } });
  }, 30_000);
});

// Shared by both describes: closed once both are done.
afterAll(async () => {
  await agent.close();
  rmSync(work, { recursive: true, force: true });
});
