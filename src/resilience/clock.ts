// Time and chance are injected where behaviour depends on them (ejections, back-off, load
// balancing), so tests drive them instead of sleeping or hoping.
export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
}

export const systemClock: Clock = { now: () => performance.now() };

/** Returns a float in [0, 1). */
export type Random = () => number;
