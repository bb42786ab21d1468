// Durations and sizes as humans write them in YAML: `250ms`, `5s`, `2m`, `1h`; `512B`, `64KiB`,
// `256MiB`, `1GiB` (also decimal `KB`/`MB`/`GB`). A bare number means milliseconds or bytes.
import { z } from 'zod';

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };
const SIZE_UNITS_BYTES: Record<string, number> = {
  b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3,
};

export function parseDuration(input: string | number): number {
  if (typeof input === 'number') return input;
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$/.exec(input);
  if (!match) throw new Error(`invalid duration "${input}" (expected e.g. 250ms, 5s, 2m, 1h)`);
  return Math.round(Number(match[1]) * DURATION_UNITS_MS[match[2]!]!);
}

export function parseSize(input: string | number): number {
  if (typeof input === 'number') return input;
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)\s*$/i.exec(input);
  if (!match) throw new Error(`invalid size "${input}" (expected e.g. 512B, 64KiB, 256MiB, 1GiB)`);
  return Math.round(Number(match[1]) * SIZE_UNITS_BYTES[match[2]!.toLowerCase()]!);
}

function unitSchema(parse: (v: string | number) => number) {
  return z.union([z.number().nonnegative(), z.string()]).transform((value, ctx) => {
    try {
      return parse(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });
}

/** A duration field; the parsed value is in milliseconds. */
export const duration = () => unitSchema(parseDuration);
/** A size field; the parsed value is in bytes. */
export const size = () => unitSchema(parseSize);
