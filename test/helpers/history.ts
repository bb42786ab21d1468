// Operation histories of a key-value register and the checks made on them:
//
// - `checkLinearizable`: per key, whether some order of the operations, consistent with real time
//   (an operation that returned before another was invoked comes first), explains every result
//   with a register supporting read, write and compare-and-set. Wing & Gong's search with Lowe's
//   memoisation of (linearized set, state): exponential in the worst case, fast for histories of a
//   few concurrent clients and tens of operations per key.
// - `lostWrites`: acknowledged writes that neither survive nor were superseded.
//
// Outcomes follow Jepsen/Knossos: `ok` happened with the recorded result; `fail` certainly did
// not happen (a failed compare-and-set did happen, as a read that saw another value); `info` is
// unknown — it may take effect at any time after its invocation, or never.

export type OpKind = 'read' | 'write' | 'cas';
export type Outcome = 'ok' | 'fail' | 'info' | 'pending';
/** A register value; null = absent. */
export type Value = string | null;

export interface Op {
  index: number;
  process: string;
  key: string;
  kind: OpKind;
  /** write/cas: the value written. */
  value?: Value;
  /** cas: the value it requires. */
  expected?: Value;
  /** read (ok): what it returned. */
  result?: Value;
  /** ok writes: the version the store gave the value (for supersession checks). */
  version?: string;
  outcome: Outcome;
  invokedAt: number;
  completedAt: number;
  note?: string;
}

export class History {
  readonly ops: Op[] = [];
  private readonly clock: () => number;

  constructor(clock: () => number = () => performance.now()) {
    this.clock = clock;
  }

  invoke(process: string, key: string, kind: OpKind, args: { value?: Value; expected?: Value } = {}): Op {
    const op: Op = { index: this.ops.length, process, key, kind, ...args, outcome: 'pending', invokedAt: this.clock(), completedAt: Infinity };
    this.ops.push(op);
    return op;
  }

  ok(op: Op, details: { result?: Value; version?: string } = {}): Op {
    return this.complete(op, 'ok', details);
  }

  fail(op: Op, note?: string): Op {
    return this.complete(op, 'fail', { note });
  }

  /** Unknown outcome: its completion time stays open. */
  info(op: Op, note?: string): Op {
    if (op.outcome !== 'pending') throw new Error(`operation ${op.index} already completed (${op.outcome})`);
    op.outcome = 'info';
    if (note !== undefined) op.note = note;
    return op;
  }

  keys(): string[] {
    return [...new Set(this.ops.map((o) => o.key))].sort();
  }

  private complete(op: Op, outcome: 'ok' | 'fail', details: { result?: Value; version?: string; note?: string }): Op {
    if (op.outcome !== 'pending') throw new Error(`operation ${op.index} already completed (${op.outcome})`);
    op.outcome = outcome;
    op.completedAt = this.clock();
    if (details.result !== undefined) op.result = details.result;
    if (details.version !== undefined) op.version = details.version;
    if (details.note !== undefined) op.note = details.note;
    return op;
  }
}

export interface KeyVerdict {
  key: string;
  linearizable: boolean;
  /** Operations the search considered. */
  operations: number;
  /** Search states visited (a cost measure). */
  explored: number;
  /** When not linearizable: the operations of the longest prefix that could be explained, and the first that could not be placed. */
  explanation?: string;
}

export interface Verdict {
  linearizable: boolean;
  keys: KeyVerdict[];
}

/** Checks every key's sub-history independently (linearizability is local). */
export function checkLinearizable(ops: readonly Op[], options: { initial?: Value; maxExplored?: number } = {}): Verdict {
  const byKey = new Map<string, Op[]>();
  for (const op of ops) {
    const list = byKey.get(op.key) ?? [];
    list.push(op);
    byKey.set(op.key, list);
  }
  const keys = [...byKey.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, list]) => checkKey(key, list, options.initial ?? null, options.maxExplored ?? 5_000_000));
  return { linearizable: keys.every((k) => k.linearizable), keys };
}

interface Entry {
  op: number;
  call: boolean;
  time: number;
  prev: Entry | undefined;
  next: Entry | undefined;
  match?: Entry;
}

/** The register's step: the state after `op` from `state`, or undefined when `op` cannot happen there. */
function step(op: Op, state: Value): Value | undefined {
  switch (op.kind) {
    case 'read':
      return op.result === state ? state : undefined;
    case 'write':
      return op.value ?? null;
    case 'cas':
      if (op.outcome === 'fail') return state !== op.expected ? state : undefined;
      return state === op.expected ? (op.value ?? null) : undefined;
  }
}

function checkKey(key: string, all: readonly Op[], initial: Value, maxExplored: number): KeyVerdict {
  // What cannot constrain the search is left out: failed reads and writes never happened; a read
  // of unknown outcome returned nothing to explain. Pending operations count as unknown.
  const ops = all.filter((o) => {
    if (o.outcome === 'fail') return o.kind === 'cas';
    if (o.outcome === 'info' || o.outcome === 'pending') return o.kind !== 'read';
    return true;
  });
  const n = ops.length;
  const mustLinearize = ops.reduce((c, o) => c + (o.outcome === 'ok' || o.outcome === 'fail' ? 1 : 0), 0);

  // Events in time order; an operation of unknown outcome has a call and no return.
  const events: Entry[] = [];
  ops.forEach((o, i) => {
    const call: Entry = { op: i, call: true, time: o.invokedAt, prev: undefined, next: undefined };
    events.push(call);
    if (o.outcome === 'ok' || o.outcome === 'fail') {
      const ret: Entry = { op: i, call: false, time: o.completedAt, prev: undefined, next: undefined, match: call };
      call.match = ret;
      events.push(ret);
    }
  });
  // At equal times, calls first: touching intervals count as concurrent.
  events.sort((a, b) => a.time - b.time || (a.call === b.call ? 0 : a.call ? -1 : 1));
  const head: Entry = { op: -1, call: false, time: -Infinity, prev: undefined, next: undefined };
  let prev = head;
  for (const e of events) {
    prev.next = e;
    e.prev = prev;
    prev = e;
  }

  const lift = (e: Entry): void => {
    e.prev!.next = e.next;
    if (e.next) e.next.prev = e.prev;
    if (e.match) {
      e.match.prev!.next = e.match.next;
      if (e.match.next) e.match.next.prev = e.match.prev;
    }
  };
  const unlift = (e: Entry): void => {
    if (e.match) {
      e.match.prev!.next = e.match;
      if (e.match.next) e.match.next.prev = e.match;
    }
    e.prev!.next = e;
    if (e.next) e.next.prev = e;
  };

  const linearized = new Uint32Array(Math.ceil(n / 32) || 1);
  const seen = new Set<string>();
  const stack: Array<{ entry: Entry; state: Value }> = [];
  let state: Value = initial;
  let done = 0;
  let explored = 0;
  let deepest: number[] = [];
  let entry = head.next;
  const isDone = (): boolean => done === mustLinearize;

  while (!isDone()) {
    if (++explored > maxExplored) {
      return { key, linearizable: false, operations: n, explored, explanation: `search gave up after ${maxExplored} states` };
    }
    if (entry && entry.call) {
      const op = ops[entry.op]!;
      const next = step(op, state);
      let advanced = false;
      if (next !== undefined) {
        linearized[entry.op >> 5]! |= 1 << (entry.op & 31);
        const memo = `${linearized.join(',')}|${next === null ? '\u0000' : next}`;
        if (!seen.has(memo)) {
          seen.add(memo);
          stack.push({ entry, state });
          state = next;
          if (op.outcome === 'ok' || op.outcome === 'fail') done++;
          lift(entry);
          if (stack.length > deepest.length) deepest = stack.map((s) => s.entry.op);
          entry = head.next;
          advanced = true;
        } else {
          linearized[entry.op >> 5]! &= ~(1 << (entry.op & 31));
        }
      }
      if (!advanced) entry = entry.next;
    } else {
      // A return (or the end with operations left): the operation returning here was not placed.
      if (stack.length === 0) {
        // The first operation to return that the longest explained order could not take in.
        const placed = new Set(deepest);
        const blocking = ops
          .map((o, i) => ({ o, i }))
          .filter(({ o, i }) => !placed.has(i) && (o.outcome === 'ok' || o.outcome === 'fail'))
          .sort((a, b) => a.o.completedAt - b.o.completedAt)[0]?.o;
        const shown = deepest.slice(-12).map((i) => describe(ops[i]!)).join(' → ');
        const path = deepest.length > 12 ? `(${deepest.length - 12} earlier) … ${shown}` : shown;
        return {
          key,
          linearizable: false,
          operations: n,
          explored,
          explanation: `longest explained order: ${path || '(none)'}; cannot place ${blocking ? describe(blocking) : 'the remaining operations'}`,
        };
      }
      const top = stack.pop()!;
      state = top.state;
      const op = ops[top.entry.op]!;
      if (op.outcome === 'ok' || op.outcome === 'fail') done--;
      linearized[top.entry.op >> 5]! &= ~(1 << (top.entry.op & 31));
      unlift(top.entry);
      entry = top.entry.next;
    }
  }
  return { key, linearizable: true, operations: n, explored };
}

export function describe(op: Op): string {
  const v = (x: Value | undefined) => (x === null ? 'nil' : x === undefined ? '?' : JSON.stringify(x));
  const what = op.kind === 'read' ? `read→${v(op.result)}` : op.kind === 'write' ? `write ${v(op.value)}` : `cas ${v(op.expected)}→${v(op.value)}`;
  const when = `[${op.invokedAt.toFixed(1)}, ${Number.isFinite(op.completedAt) ? op.completedAt.toFixed(1) : '∞'}]`;
  return `#${op.index} ${op.process} ${what} ${op.outcome} ${when}`;
}

/**
 * Acknowledged writes (and compare-and-sets) to a key whose value is not the key's final value
 * and that nothing superseded. With `compareVersions`, a write is superseded only by the final
 * value's version being newer than its own (last-writer-wins); without it, by any other write to
 * the key that was not over before it began (the real-time order a linearizable store keeps).
 * `finals` maps each key to its value after the run (null = absent) and, optionally, its version.
 */
export function lostWrites(
  ops: readonly Op[],
  finals: ReadonlyMap<string, { value: Value; version?: string }>,
  compareVersions?: (a: string, b: string) => number,
): Op[] {
  const writes = ops.filter((o) => (o.kind === 'write' || o.kind === 'cas') && o.outcome !== 'fail');
  return writes.filter((w) => {
    if (w.outcome !== 'ok') return false;
    const final = finals.get(w.key);
    if (!final) return true;
    if (final.value === w.value && (final.version === undefined || w.version === undefined || final.version === w.version)) return false;
    if (compareVersions) return !(final.version !== undefined && w.version !== undefined && compareVersions(final.version, w.version) > 0);
    return !writes.some((other) => other !== w && other.key === w.key && !(other.completedAt < w.invokedAt));
  });
}

/** Final values that no write of the history wrote (an invented or resurrected value). */
export function unexplainedFinals(ops: readonly Op[], finals: ReadonlyMap<string, { value: Value }>, initial: Value = null): string[] {
  const out: string[] = [];
  for (const [key, final] of finals) {
    if (final.value === initial) continue;
    if (!ops.some((o) => o.key === key && (o.kind === 'write' || o.kind === 'cas') && o.outcome !== 'fail' && o.value === final.value)) out.push(`${key}=${final.value}`);
  }
  return out;
}
