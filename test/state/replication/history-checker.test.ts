// The history checker itself, on hand-made histories whose verdict is known, and on a random
// history from a real (sequential) register: it must accept what is linearizable and reject what
// is not, or the replication tests that rely on it prove nothing.
import { describe, expect, it } from 'vitest';
import { History, checkLinearizable, lostWrites, unexplainedFinals, type Op, type Value } from '../../helpers/history.js';

/** A history with explicit times: [process, kind, args, invokedAt, completedAt | 'info', outcome, result]. */
function build(rows: Array<[string, 'read' | 'write' | 'cas', { value?: Value; expected?: Value; result?: Value }, number, number | 'info', ('ok' | 'fail')?]>, key = 'k'): Op[] {
  let now = 0;
  const history = new History(() => now);
  const ops: Array<{ op: Op; row: (typeof rows)[number] }> = rows.map((row) => {
    now = row[3];
    return { op: history.invoke(row[0], key, row[1], { value: row[2].value, expected: row[2].expected }), row };
  });
  for (const { op, row } of ops) {
    if (row[4] === 'info') history.info(op);
    else {
      now = row[4];
      if ((row[5] ?? 'ok') === 'ok') history.ok(op, row[1] === 'read' ? { result: row[2].result ?? null } : {});
      else history.fail(op);
    }
  }
  return history.ops;
}

describe('linearizability checker', () => {
  it('accepts sequential and concurrent histories a register can explain', () => {
    const sequential = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p2', 'read', { result: 'a' }, 2, 3],
      ['p1', 'cas', { expected: 'a', value: 'b' }, 4, 5],
      ['p2', 'cas', { expected: 'a', value: 'c' }, 6, 7, 'fail'],
      ['p3', 'read', { result: 'b' }, 8, 9],
    ]);
    expect(checkLinearizable(sequential).linearizable).toBe(true);

    // Overlapping: the read may see either write, in either order of the two writes.
    const overlapping = build([
      ['p1', 'write', { value: 'a' }, 0, 10],
      ['p2', 'write', { value: 'b' }, 1, 9],
      ['p3', 'read', { result: 'a' }, 2, 8],
      ['p3', 'read', { result: 'b' }, 11, 12],
    ]);
    expect(checkLinearizable(overlapping).linearizable).toBe(true);
    // A write of unknown outcome may take effect long after it was invoked — or never.
    const late = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p2', 'write', { value: 'x' }, 2, 'info'],
      ['p3', 'read', { result: 'a' }, 5, 6],
      ['p3', 'read', { result: 'x' }, 7, 8],
    ]);
    expect(checkLinearizable(late).linearizable).toBe(true);
    const never = build([['p2', 'write', { value: 'x' }, 0, 'info'], ['p1', 'read', { result: null }, 5, 6]]);
    expect(checkLinearizable(never).linearizable).toBe(true);
  });

  it('rejects a stale read after a completed write', () => {
    const stale = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p1', 'write', { value: 'b' }, 2, 3],
      ['p2', 'read', { result: 'a' }, 4, 5],
    ]);
    const verdict = checkLinearizable(stale);
    expect(verdict.linearizable).toBe(false);
    expect(verdict.keys[0]!.explanation).toMatch(/read→"a"/);
  });

  it('rejects two compare-and-sets from the same value that both succeed, and a value that comes back', () => {
    const doubleCas = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p1', 'cas', { expected: 'a', value: 'b' }, 2, 6],
      ['p2', 'cas', { expected: 'a', value: 'c' }, 3, 7],
    ]);
    expect(checkLinearizable(doubleCas).linearizable).toBe(false);
    // b overwrote a, and a was read back afterwards with nobody writing it again.
    const resurrected = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p2', 'write', { value: 'b' }, 2, 3],
      ['p3', 'read', { result: 'b' }, 4, 5],
      ['p3', 'read', { result: 'a' }, 6, 7],
    ]);
    expect(checkLinearizable(resurrected).linearizable).toBe(false);
    // A failed compare-and-set claims the value differed: not so, when nothing else ran.
    const wrongFailure = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p2', 'cas', { expected: 'a', value: 'b' }, 2, 3, 'fail'],
    ]);
    expect(checkLinearizable(wrongFailure).linearizable).toBe(false);
    // A read of a value nobody wrote.
    expect(checkLinearizable(build([['p1', 'read', { result: 'zzz' }, 0, 1]])).linearizable).toBe(false);
  });

  it('checks a random concurrent history of a real register quickly, and catches one corrupted result', () => {
    // Three clients, 30 operations each on one key, against an atomic register: each operation
    // takes effect at a random instant inside its interval.
    let seed = 42;
    const random = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
    const events: Array<{ at: number; run: () => void }> = [];
    let register: Value = null;
    let now = 0;
    const history = new History(() => now);
    let written = 0;
    for (const process of ['p1', 'p2', 'p3']) {
      let t = random() * 3;
      for (let i = 0; i < 30; i++) {
        const start = t;
        const end = start + 1 + random() * 4;
        const effect = start + random() * (end - start);
        const roll = random();
        const kind = roll < 0.4 ? 'read' : roll < 0.7 ? 'write' : 'cas';
        const value = `v${written++}`;
        const expected: Value = random() < 0.5 ? null : `v${Math.floor(random() * written)}`;
        let op!: Op;
        let outcome: { ok: boolean; result?: Value } = { ok: true };
        events.push({ at: start, run: () => (op = history.invoke(process, 'k', kind, kind === 'read' ? {} : kind === 'write' ? { value } : { value, expected })) });
        events.push({
          at: effect,
          run: () => {
            if (kind === 'read') outcome = { ok: true, result: register };
            else if (kind === 'write') register = value;
            else if (register === expected) register = value;
            else outcome = { ok: false };
          },
        });
        events.push({ at: end, run: () => (outcome.ok ? history.ok(op, kind === 'read' ? { result: outcome.result ?? null } : {}) : history.fail(op)) });
        t = end + random();
      }
    }
    events.sort((a, b) => a.at - b.at);
    for (const e of events) {
      now = e.at;
      e.run();
    }
    const started = performance.now();
    const verdict = checkLinearizable(history.ops);
    expect(verdict.linearizable).toBe(true);
    expect(performance.now() - started).toBeLessThan(2_000);

    // Corrupt one read that saw a written value: make it answer a value from long before.
    const reads = history.ops.filter((o) => o.kind === 'read' && o.outcome === 'ok' && o.result !== null && o.index > 60);
    const victim = reads[0]!;
    const old = history.ops.find((o) => o.kind === 'write' && o.outcome === 'ok' && o.completedAt < victim.invokedAt - 20)!;
    const corrupted = history.ops.map((o) => (o === victim ? { ...o, result: old.value } : o));
    expect(checkLinearizable(corrupted).linearizable).toBe(false);
  });
});

describe('lost-write check', () => {
  it('flags an acknowledged write that neither survives nor was superseded', () => {
    const ops = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p2', 'write', { value: 'b' }, 2, 3],
    ]);
    expect(lostWrites(ops, new Map([['k', { value: 'b' }]]))).toEqual([]);
    // b was written after a finished: nothing could have superseded it.
    expect(lostWrites(ops, new Map([['k', { value: 'a' }]])).map((o) => o.value)).toEqual(['b']);
    expect(lostWrites(ops, new Map([['k', { value: null }]])).map((o) => o.value)).toEqual(['b']);
    expect(unexplainedFinals(ops, new Map([['k', { value: 'zzz' }]]))).toEqual(['k=zzz']);
  });

  it('by version: only a newer final version supersedes', () => {
    const ops = build([
      ['p1', 'write', { value: 'a' }, 0, 1],
      ['p2', 'write', { value: 'b' }, 0, 1],
    ]);
    ops[0]!.version = '10.0@n1';
    ops[1]!.version = '11.0@n2';
    const cmp = (x: string, y: string) => Number(x.split('.')[0]) - Number(y.split('.')[0]);
    expect(lostWrites(ops, new Map([['k', { value: 'b', version: '11.0@n2' }]]), cmp)).toEqual([]);
    expect(lostWrites(ops, new Map([['k', { value: 'a', version: '10.0@n1' }]]), cmp).map((o) => o.value)).toEqual(['b']);
  });
});
