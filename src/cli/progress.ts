// A one-line progress bar for long CLI operations, on stderr so stdout stays clean for --json and
// pipes. Drawn only on a terminal: redirected to a file it would be a pile of carriage returns.
//
//   restore  snapshot  ███████░░░   70%  123,456 records
//   restore  wal       12,345 records                      (no total known: a counter)

/** Redraws are throttled to this (~10 per second): a terminal that redraws on every record is the bottleneck. */
export const REDRAW_INTERVAL_MS = 100;
const BAR_CELLS = 20;
const CLEAR_LINE = '\r\x1b[2K';

export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

export interface ProgressOptions {
  stream?: ProgressStream;
  now?: () => number;
  /** What a phase counts, e.g. `{ verify: 'snapshots' }`; default `records`. */
  units?: Record<string, string>;
}

export interface ProgressBar {
  update(phase: string, done: number, total?: number): void;
  /** Clears the line; a bar that never drew writes nothing. */
  end(): void;
}

const SILENT: ProgressBar = { update: () => undefined, end: () => undefined };

export function progressBar(label: string, options: ProgressOptions = {}): ProgressBar {
  const stream = options.stream ?? process.stderr;
  if (!stream.isTTY) return SILENT;
  const now = options.now ?? Date.now;
  let drawnAt = -Infinity;
  let drawnPhase: string | undefined;
  let drawn = false;
  return {
    update(phase, done, total) {
      const t = now();
      // A new phase is drawn at once so the line never names a phase that is over.
      if (phase === drawnPhase && t - drawnAt < REDRAW_INTERVAL_MS) return;
      drawnAt = t;
      drawnPhase = phase;
      drawn = true;
      const line = formatProgress(label, phase, done, total, options.units?.[phase] ?? 'records');
      stream.write(`${CLEAR_LINE}${stream.columns ? line.slice(0, stream.columns - 1) : line}`);
    },
    end() {
      if (drawn) stream.write(CLEAR_LINE);
      drawn = false;
    },
  };
}

export function formatProgress(label: string, phase: string, done: number, total: number | undefined, unit: string): string {
  const count = `${done.toLocaleString('en-US')} ${unit}`;
  if (total === undefined || total <= 0) return `${label}  ${phase}  ${count}`;
  const fraction = Math.min(1, Math.max(0, done / total));
  const filled = Math.round(fraction * BAR_CELLS);
  const bar = '█'.repeat(filled) + '░'.repeat(BAR_CELLS - filled);
  return `${label}  ${phase}  ${bar}  ${String(Math.floor(fraction * 100)).padStart(3)}%  ${count}`;
}
