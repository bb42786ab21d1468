// A hybrid logical clock: wall-clock milliseconds that never go backwards, plus a counter for
// events within one millisecond (or while the wall clock lags a timestamp already seen). Every
// version the state agent stamps comes from here, never from the raw wall clock, so versions are
// unique, ordered and close to real time; replication orders conflicting writes by them.

export interface HlcTimestamp {
  wall: number;
  logical: number;
}

export class HybridClock {
  private last: HlcTimestamp = { wall: 0, logical: 0 };

  constructor(private readonly now: () => number = Date.now) {}

  /** A timestamp for a local event, later than every timestamp issued or observed so far. */
  tick(): HlcTimestamp {
    const wall = this.now();
    this.last = wall > this.last.wall ? { wall, logical: 0 } : { wall: this.last.wall, logical: this.last.logical + 1 };
    return this.last;
  }

  /** Moves the clock past a timestamp received from elsewhere (a peer, a session token, a log). */
  observe(remote: HlcTimestamp): void {
    if (compareTimestamps(remote, this.last) > 0) this.last = { wall: remote.wall, logical: remote.logical };
  }

  /** The latest timestamp issued or observed. */
  get current(): HlcTimestamp {
    return this.last;
  }
}

export function compareTimestamps(a: HlcTimestamp, b: HlcTimestamp): number {
  return a.wall - b.wall || a.logical - b.logical;
}

export function maxTimestamp(a: HlcTimestamp | undefined, b: HlcTimestamp): HlcTimestamp {
  return a === undefined || compareTimestamps(b, a) > 0 ? b : a;
}

/** `<wall>.<logical>`: the form used in versions and session tokens. */
export function formatTimestamp(t: HlcTimestamp): string {
  return `${t.wall}.${t.logical}`;
}

export function parseTimestamp(text: string): HlcTimestamp | undefined {
  const match = /^(\d{1,15})\.(\d{1,9})$/.exec(text);
  return match ? { wall: Number(match[1]), logical: Number(match[2]) } : undefined;
}
