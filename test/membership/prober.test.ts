// The failure detector's protocol logic: real HealthProbers, real member sets and real message
// parsing, over an in-memory transport whose links can be cut (the fault switch), on a
// scheduler the test drives — so timing rules are checked exactly, without sleeping.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { HealthSchema } from '../../src/config/schema.js';
import { MutableMembership, type MemberState } from '../../src/membership/membership.js';
import {
  AckSchema,
  IndirectAckSchema,
  PingReqSchema,
  PingSchema,
  type ProbeTransport,
} from '../../src/membership/probe-messages.js';
import { HealthProber, type ProbeResult, type Scheduler } from '../../src/membership/prober.js';
import { flapHoldDownMs, suspicionTimeoutMs } from '../../src/membership/suspicion.js';

/** Virtual time: timers fire in order as `advance` moves the clock; promise chains settle between them. */
class ManualScheduler implements Scheduler {
  private time = 0;
  private sequence = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.sequence;
    this.timers.set(id, { at: this.time + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    for (;;) {
      await settle();
      let nextId: number | undefined;
      let next: { at: number; fn: () => void } | undefined;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (!next || timer.at < next.at || (timer.at === next.at && id < nextId!))) {
          next = timer;
          nextId = id;
        }
      }
      if (!next) break;
      this.timers.delete(nextId!);
      this.time = next.at;
      next.fn();
    }
    this.time = end;
    await settle();
  }

  /** Advances in small steps until `predicate` holds; fails after `limitMs` of virtual time. */
  async until(predicate: () => boolean, limitMs: number, what: string): Promise<number> {
    const start = this.time;
    while (!predicate()) {
      if (this.time - start > limitMs) throw new Error(`virtual timeout waiting for ${what}`);
      await this.advance(5);
    }
    return this.time;
  }
}

function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A seeded PRNG, so a failing run can be replayed. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

interface TestNode {
  id: string;
  address: string;
  prober: HealthProber;
  membership: MutableMembership;
  /** Makes this node's deep check hang, as a stuck state agent would. */
  contextStuck: boolean;
  probes: Array<{ target: string; result: ProbeResult; at: number }>;
  transitions: Array<{ member: string; from: MemberState; to: MemberState; at: number }>;
}

/** Members wired by an in-memory network; `cut(a, b)` drops everything a sends to b. */
class TestMesh {
  readonly scheduler = new ManualScheduler();
  readonly nodes = new Map<string, TestNode>();
  private readonly cuts = new Set<string>();
  private readonly callsCut = new Set<string>();

  constructor(ids: string[], overrides: Record<string, unknown> = {}) {
    const config = HealthSchema.parse({
      interval: '100ms',
      probeTimeout: '40ms',
      suspicionTimeout: '1s',
      suspicionMinTimeout: '300ms',
      flapBackoff: { base: '500ms', max: '8s' },
      ...overrides,
    });
    const random = seeded(42);
    const logger = pino({ level: 'silent' });
    for (const id of ids) {
      const address = `${id}.test:1`;
      const membership = new MutableMembership(
        { id, address, state: 'alive', epoch: 0 },
        ids.filter((other) => other !== id).map((other) => ({ id: other, address: `${other}.test:1`, state: 'alive' as const, epoch: 0 })),
      );
      const node = { id, address, membership, contextStuck: false, probes: [], transitions: [] } as unknown as TestNode;
      node.prober = new HealthProber({
        membership,
        transport: this.transport(id),
        config,
        deepCheck: () => (node.contextStuck ? new Promise<void>(() => {}) : Promise.resolve()),
        logger,
        scheduler: this.scheduler,
        random,
      });
      node.prober.on('probe', (target, result) => node.probes.push({ target, result, at: this.scheduler.now() }));
      node.prober.on('state', (member, from, to) => node.transitions.push({ member: member.id, from, to, at: this.scheduler.now() }));
      this.nodes.set(id, node);
    }
  }

  node(id: string): TestNode {
    return this.nodes.get(id)!;
  }

  start(): void {
    for (const node of this.nodes.values()) node.prober.start();
  }

  close(): void {
    for (const node of this.nodes.values()) node.prober.close();
  }

  cut(from: string, to: string): void {
    this.cuts.add(`${from}>${to}`);
  }

  /** Cuts every link into and out of `id`. */
  isolate(id: string): void {
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.cut(id, other);
      this.cut(other, id);
    }
  }

  /** Drops every call `id` makes, while its answers to others' calls still flow (its outbound side is broken). */
  cutCallsFrom(id: string): void {
    this.callsCut.add(id);
  }

  heal(): void {
    this.cuts.clear();
    this.callsCut.clear();
  }

  /** How `observer` sees `subject` in its member set. */
  stateIn(observer: string, subject: string): MemberState | undefined {
    return this.node(observer).membership.get(subject)?.state;
  }

  /** Every message goes through JSON and the wire schemas, as it would over HTTP. */
  private transport(from: string): ProbeTransport {
    return {
      ping: (address, message, _timeoutMs) =>
        this.deliver(from, address, (node) => node.prober.handlePing(PingSchema.parse(wire(message)))).then((a) => AckSchema.parse(wire(a))),
      pingReq: (address, message, _timeoutMs) =>
        this.deliver(from, address, (node) => node.prober.handlePingReq(PingReqSchema.parse(wire(message)))).then((a) =>
          IndirectAckSchema.parse(wire(a)),
        ),
    };
  }

  private deliver<T>(from: string, address: string, handle: (node: TestNode) => Promise<T>): Promise<T> {
    const to = [...this.nodes.values()].find((n) => n.address === address);
    // A dropped message never answers; the prober's own timeout decides.
    if (!to || this.cuts.has(`${from}>${to.id}`) || this.callsCut.has(from)) return new Promise<T>(() => {});
    return Promise.resolve()
      .then(() => handle(to))
      .then((answer) => (this.cuts.has(`${to.id}>${from}`) ? new Promise<T>(() => {}) : answer));
  }
}

function wire(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value));
}

describe('suspicion and hold-down arithmetic', () => {
  it('shrinks the suspicion window with confirmations, never below the floor', () => {
    expect(suspicionTimeoutMs(0, 3, 1_000, 9_000)).toBe(9_000);
    const one = suspicionTimeoutMs(1, 3, 1_000, 9_000);
    const two = suspicionTimeoutMs(2, 3, 1_000, 9_000);
    expect(one).toBeLessThan(9_000);
    expect(two).toBeLessThan(one);
    expect(suspicionTimeoutMs(3, 3, 1_000, 9_000)).toBe(1_000);
    expect(suspicionTimeoutMs(10, 3, 1_000, 9_000)).toBe(1_000);
    expect(suspicionTimeoutMs(5, 0, 1_000, 9_000)).toBe(9_000);
  });

  it('doubles the flap hold-down per return, up to the maximum', () => {
    expect([1, 2, 3, 4, 5].map((n) => flapHoldDownMs(n, 500, 4_000))).toEqual([500, 1_000, 2_000, 4_000, 4_000]);
    expect(flapHoldDownMs(100, 500, 4_000)).toBe(4_000);
  });
});

describe('HealthProber over an in-memory network', () => {
  it('keeps members that answer direct pings alive, with no suspicion', async () => {
    const mesh = new TestMesh(['a', 'b', 'c']);
    mesh.start();
    await mesh.scheduler.advance(3_000);
    for (const node of mesh.nodes.values()) {
      expect(node.probes.length).toBeGreaterThan(20);
      expect(node.probes.every((p) => p.result === 'ack')).toBe(true);
      expect(node.transitions).toEqual([]);
      expect(node.prober.localHealth).toBe(0);
    }
    expect(mesh.node('a').probes.filter((p) => p.target === 'b').length).toBeGreaterThan(8);
    expect(mesh.node('a').probes.filter((p) => p.target === 'c').length).toBeGreaterThan(8);
    mesh.close();
  });

  it('does not suspect a member that misses the direct ping but answers through another member', async () => {
    const mesh = new TestMesh(['a', 'b', 'c']);
    mesh.cut('a', 'c');
    mesh.cut('c', 'a');
    mesh.start();
    await mesh.scheduler.advance(4_000);
    const aToC = mesh.node('a').probes.filter((p) => p.target === 'c');
    expect(aToC.length).toBeGreaterThan(10);
    expect(aToC.every((p) => p.result === 'indirect_ack')).toBe(true);
    for (const node of mesh.nodes.values()) expect(node.transitions).toEqual([]);
    expect(mesh.stateIn('a', 'c')).toBe('alive');
    expect(mesh.node('a').prober.isUnreachable('c.test:1')).toBe(false);
    mesh.close();
  });

  it('suspects a member nobody reaches, then declares it dead, faster when others confirm', async () => {
    const mesh = new TestMesh(['a', 'b', 'c']);
    mesh.start();
    await mesh.scheduler.advance(500);
    mesh.isolate('c');
    const cutAt = mesh.scheduler.now();
    await mesh.scheduler.until(() => mesh.stateIn('a', 'c') === 'dead' && mesh.stateIn('b', 'c') === 'dead', 5_000, 'c dead at a and b');
    for (const observer of ['a', 'b']) {
      const seen = mesh.node(observer).transitions.filter((t) => t.member === 'c');
      expect(seen.map((t) => t.to)).toEqual(['suspect', 'dead']);
      const [suspected, dead] = seen;
      expect(suspected!.at).toBeGreaterThan(cutAt);
      // b's independent suspicion reached a (and a's reached b): the window shrank below its 1s maximum.
      expect(dead!.at - suspected!.at).toBeGreaterThanOrEqual(300);
      expect(dead!.at - suspected!.at).toBeLessThan(1_000);
      expect(mesh.node(observer).prober.isUnreachable('c.test:1')).toBe(true);
    }
    // A probe that failed outright counts as failed, never as an ack.
    expect(mesh.node('a').probes.some((p) => p.target === 'c' && p.result === 'failed')).toBe(true);
    mesh.close();
  });

  it('waits the whole window when no other member can confirm', async () => {
    const mesh = new TestMesh(['a', 'b']);
    mesh.start();
    await mesh.scheduler.advance(300);
    mesh.isolate('b');
    await mesh.scheduler.until(() => mesh.stateIn('a', 'b') === 'dead', 5_000, 'b dead at a');
    const [suspected, dead] = mesh.node('a').transitions.filter((t) => t.member === 'b');
    expect(suspected!.to).toBe('suspect');
    expect(dead!.at - suspected!.at).toBe(1_000);
    mesh.close();
  });

  it('acts on and reports only first-hand evidence: a suspicion heard by gossip excludes nothing', async () => {
    const mesh = new TestMesh(['a', 'b', 'c'], { indirectProbes: 0 });
    mesh.start();
    await mesh.scheduler.advance(300);
    // Only a's link to c is broken: a suspects c, b hears of it but reaches c itself.
    mesh.cut('a', 'c');
    let heardByB = false;
    let excludedByB = false;
    await mesh.scheduler.until(
      () => {
        const row = mesh.node('b').prober.describe().find((m) => m.id === 'c')!;
        if (row.status === 'suspect') heardByB = true;
        if (row.witnessed || mesh.node('b').prober.isUnreachable('c.test:1')) excludedByB = true;
        return mesh.node('a').prober.describe().find((m) => m.id === 'c')!.witnessed;
      },
      2_000,
      'a to witness c failing',
    );
    await mesh.scheduler.until(() => {
      const row = mesh.node('b').prober.describe().find((m) => m.id === 'c')!;
      if (row.status === 'suspect') heardByB = true;
      if (row.witnessed || mesh.node('b').prober.isUnreachable('c.test:1')) excludedByB = true;
      return heardByB;
    }, 2_000, 'b to hear the suspicion');
    await mesh.scheduler.advance(1_000);
    expect(mesh.node('a').prober.isUnreachable('c.test:1')).toBe(true);
    expect(excludedByB).toBe(false);
    expect(mesh.stateIn('b', 'c')).toBe('alive');
    mesh.close();
  });

  it('a suspected member refutes with a higher incarnation and stays in', async () => {
    const mesh = new TestMesh(['a', 'b', 'c']);
    mesh.start();
    await mesh.scheduler.advance(500);
    // c's answers are lost for a while: everyone suspects it, but it is not dead.
    mesh.cut('c', 'a');
    mesh.cut('c', 'b');
    await mesh.scheduler.until(() => mesh.stateIn('a', 'c') === 'suspect' || mesh.stateIn('b', 'c') === 'suspect', 2_000, 'c suspected');
    mesh.heal();
    await mesh.scheduler.until(() => mesh.stateIn('a', 'c') === 'alive' && mesh.stateIn('b', 'c') === 'alive', 2_000, 'c refuted');
    expect(mesh.node('c').prober.incarnation).toBeGreaterThan(0);
    for (const observer of ['a', 'b']) {
      expect(mesh.node(observer).transitions.some((t) => t.member === 'c' && t.to === 'dead')).toBe(false);
    }
    expect(mesh.node('a').prober.describe().find((m) => m.id === 'c')!.incarnation).toBe(mesh.node('c').prober.incarnation);
    mesh.close();
  });

  it('a prober that misses acks itself slows down instead of racing to accuse', async () => {
    const mesh = new TestMesh(['a', 'b', 'c', 'd']);
    mesh.start();
    await mesh.scheduler.advance(500);
    // a's own calls go nowhere: its probes and ping-reqs all go unanswered, not even nacked.
    mesh.cutCallsFrom('a');
    const from = mesh.scheduler.now();
    await mesh.scheduler.advance(4_000);
    const sentBy = (id: string): number => mesh.node(id).probes.filter((p) => p.at > from).length;
    expect(mesh.node('a').prober.localHealth).toBeGreaterThanOrEqual(3);
    expect(sentBy('a') * 3).toBeLessThan(sentBy('b'));
    expect(mesh.node('b').prober.localHealth).toBe(0);
    // The others still hear a, and refute what a's failed probes made it suspect of them.
    for (const id of ['b', 'c', 'd']) expect(mesh.stateIn(id, 'a')).toBe('alive');
    expect(mesh.node('b').prober.incarnation).toBeGreaterThan(0);
    mesh.heal();
    await mesh.scheduler.until(() => mesh.node('a').prober.localHealth === 0, 30_000, 'a healthy again');
    await mesh.scheduler.until(() => ['b', 'c', 'd'].every((id) => mesh.stateIn('a', id) === 'alive'), 10_000, 'a sees everyone alive');
    mesh.close();
  });

  it('holds a flapping member out for longer each time it comes back', async () => {
    const mesh = new TestMesh(['a', 'b', 'c']);
    mesh.start();
    await mesh.scheduler.advance(300);
    const holds: number[] = [];
    for (let round = 0; round < 3; round++) {
      mesh.isolate('c');
      await mesh.scheduler.until(() => mesh.node('a').prober.describe().find((m) => m.id === 'c')!.status === 'dead', 5_000, 'c dead');
      mesh.heal();
      const back = await mesh.scheduler.until(() => mesh.node('a').prober.describe().find((m) => m.id === 'c')!.status === 'alive', 5_000, 'c refuted');
      // Back in the protocol, still out of traffic and out of the member set until the hold-down ends.
      expect(mesh.stateIn('a', 'c')).toBe('dead');
      expect(mesh.node('a').prober.isUnreachable('c.test:1')).toBe(true);
      const admitted = await mesh.scheduler.until(() => mesh.stateIn('a', 'c') === 'alive', 20_000, 'c admitted');
      holds.push(admitted - back);
    }
    expect(holds[0]).toBeGreaterThanOrEqual(490);
    expect(holds[0]).toBeLessThanOrEqual(510);
    expect(holds[1]).toBeGreaterThanOrEqual(990);
    expect(holds[2]).toBeGreaterThanOrEqual(1_990);
    expect(mesh.node('a').prober.describe().find((m) => m.id === 'c')!.revivals).toBe(3);
    mesh.close();
  });

  it('a member held down but answering is no longer first-hand evidence: it is not reported as failed', async () => {
    const mesh = new TestMesh(['a', 'b', 'c'], { flapBackoff: { base: '3s', max: '8s' } });
    mesh.start();
    await mesh.scheduler.advance(300);
    mesh.isolate('c');
    await mesh.scheduler.until(() => mesh.node('a').prober.describe().find((m) => m.id === 'c')!.status === 'dead', 5_000, 'c dead');
    expect(mesh.node('a').prober.describe().find((m) => m.id === 'c')!.witnessed).toBe(true);
    mesh.heal();
    const healedAt = mesh.scheduler.now();
    // a probes c again during the hold-down and gets acks.
    await mesh.scheduler.until(
      () => mesh.node('a').probes.some((p) => p.target === 'c' && p.at > healedAt && p.result === 'ack'),
      5_000,
      'a to get an ack from c',
    );
    const row = mesh.node('a').prober.describe().find((m) => m.id === 'c')!;
    // Still held out of traffic, but not reported (the reporter sends only witnessed failures).
    expect(row.state).toBe('dead');
    expect(row.hold_down_remaining_ms).toBeGreaterThan(0);
    expect(row.witnessed).toBe(false);
    mesh.close();
  });

  it('a member restarted with a higher starting incarnation is believed on its first message', async () => {
    const mesh = new TestMesh(['a', 'b', 'c']);
    mesh.start();
    await mesh.scheduler.advance(300);
    mesh.isolate('c');
    await mesh.scheduler.until(() => mesh.node('a').prober.describe().find((m) => m.id === 'c')!.status === 'dead', 5_000, 'c dead');
    const before = mesh.node('a').prober.describe().find((m) => m.id === 'c')!.incarnation;
    // "Restart" c: a fresh prober starting at a (start-time) incarnation above anything of the old run.
    const c = mesh.node('c');
    c.prober.close();
    const restarted = new HealthProber({
      membership: c.membership,
      transport: { ping: () => new Promise(() => {}), pingReq: () => new Promise(() => {}) },
      config: HealthSchema.parse({ interval: '100ms', probeTimeout: '40ms' }),
      logger: pino({ level: 'silent' }),
      scheduler: mesh.scheduler,
      incarnation: 1_000_000,
    });
    c.prober = restarted;
    mesh.heal();
    // a's next ping reaches the new run; its ack carries the new incarnation and refutes at once.
    await mesh.scheduler.until(() => mesh.node('a').prober.describe().find((m) => m.id === 'c')!.status === 'alive', 5_000, 'c refuted by its restart');
    const row = mesh.node('a').prober.describe().find((m) => m.id === 'c')!;
    expect(before).toBeLessThan(1_000_000);
    expect(row.incarnation).toBe(1_000_000);
    expect(row.witnessed).toBe(false);
    expect(restarted.incarnation).toBe(1_000_000);
    restarted.close();
    mesh.close();
  });

  it('fails the deep check of a member whose context path is stuck, and readmits it once it works', async () => {
    const mesh = new TestMesh(['a', 'b', 'c'], { deepCheckEvery: 3 });
    mesh.start();
    await mesh.scheduler.advance(500);
    mesh.node('c').contextStuck = true;
    await mesh.scheduler.until(() => mesh.stateIn('a', 'c') === 'dead' && mesh.stateIn('b', 'c') === 'dead', 10_000, 'c dead');
    expect(mesh.node('a').probes.some((p) => p.target === 'c' && p.result === 'deep_failed')).toBe(true);
    // Plain pings still reach c: it is the context path that failed, and c knows it and does not refute.
    expect(mesh.node('c').prober.selfHealthy).toBe(false);
    await mesh.scheduler.advance(2_000);
    expect(mesh.stateIn('a', 'c')).toBe('dead');
    mesh.node('c').contextStuck = false;
    await mesh.scheduler.until(() => mesh.stateIn('a', 'c') === 'alive' && mesh.stateIn('b', 'c') === 'alive', 10_000, 'c back');
    expect(mesh.node('c').prober.selfHealthy).toBe(true);
    mesh.close();
  });

  it('keeps its own evidence when another source marks the member alive, and never lightens theirs', async () => {
    const mesh = new TestMesh(['a', 'b', 'c']);
    mesh.start();
    await mesh.scheduler.advance(300);
    mesh.isolate('c');
    await mesh.scheduler.until(() => mesh.stateIn('a', 'c') === 'dead', 5_000, 'c dead');
    const membership = mesh.node('a').membership;
    // An xDS update that still lists c alive (the control plane has not declared yet).
    membership.update(membership.members().filter((m) => m.id !== 'a').map((m) => ({ ...m, state: 'alive' as const, epoch: 1 })));
    expect(mesh.stateIn('a', 'c')).toBe('dead');
    expect(membership.get('c')!.epoch).toBe(1);
    // The control plane drains b: our (alive) verdict does not overwrite it.
    membership.upsert({ ...membership.get('b')!, state: 'draining' });
    await mesh.scheduler.advance(1_000);
    expect(mesh.stateIn('a', 'b')).toBe('draining');
    mesh.close();
  });

  it('refuses to ack for another member that now listens at the address', async () => {
    const mesh = new TestMesh(['a', 'b']);
    const answer = await mesh.node('b').prober.handlePing(
      PingSchema.parse({ from: 'a', incarnation: 0, target: 'someone-else', timeoutMs: 50 }),
    );
    expect(answer.ack).toBe(false);
    expect(answer.reason).toBe('wrong_member');
    mesh.close();
  });
});
