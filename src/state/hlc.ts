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
  return scanTimestamp(text, text.length) ? { wall: scanned.wall, logical: scanned.logical } : undefined;
}

/** What the last successful scanTimestamp read. */
export const scanned: HlcTimestamp = { wall: 0, logical: 0 };

/**
 * Reads `<wall>.<logical>` (1-15 and 1-9 ASCII digits) from text[0, end) into `scanned`; false
 * when it is not that form. No allocation: versions are compared on every replicated write,
 * many times, and a regular expression's match array and substrings per comparison showed up as
 * a tenth of the write path's garbage.
 */
export function scanTimestamp(text: string, end: number): boolean {
  let i = 0;
  let wall = 0;
  for (; i < end; i++) {
    const digit = text.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) break;
    wall = wall * 10 + digit;
  }
  if (i === 0 || i > 15 || i >= end || text.charCodeAt(i) !== 46) return false;
  const dot = i++;
  let logical = 0;
  for (; i < end; i++) {
    const digit = text.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) return false;
    logical = logical * 10 + digit;
  }
  if (i === dot + 1 || i - dot - 1 > 9) return false;
  scanned.wall = wall;
  scanned.logical = logical;
  return true;
}
