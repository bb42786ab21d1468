// Lifeguard's timing rules, as pure functions: how long a suspicion lasts given the independent
// confirmations it has gathered, and how long a member that keeps dying and coming back is held
// out before it is trusted again.

/**
 * Time from the start of a suspicion until the member is declared dead locally. It starts at
 * `maxMs` and shrinks logarithmically with each independent confirmation (another member
 * suspecting the same incarnation), reaching `minMs` once `expected` confirmations are in: a
 * failure many observers see is declared fast, one seen by a single (perhaps unhealthy) observer
 * gets the whole window to be refuted.
 */
export function suspicionTimeoutMs(confirmations: number, expected: number, minMs: number, maxMs: number): number {
  if (expected < 1) return maxMs;
  const fraction = Math.log(Math.min(confirmations, expected) + 1) / Math.log(expected + 1);
  return Math.max(minMs, Math.round(maxMs - (maxMs - minMs) * fraction));
}

/** Hold-down before the `revival`-th consecutive return (1 = first) is admitted: base·2^(revival−1), at most `maxMs`. */
export function flapHoldDownMs(revival: number, baseMs: number, maxMs: number): number {
  if (revival < 1) return 0;
  // 2^30 already exceeds any sane max; the cap keeps the power finite.
  return Math.min(maxMs, baseMs * 2 ** Math.min(revival - 1, 30));
}
