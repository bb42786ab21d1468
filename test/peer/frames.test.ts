// The peer frame format: calls and replies survive any split of the byte stream into chunks, an
// oversized frame is reported by id and skipped without being kept, and bytes that are not frames
// are refused instead of guessed at.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameError, FrameReader, encodeCall, encodeReply, type Frame } from '../../src/peer/frames.js';

function read(chunks: Buffer[], maxFrameBytes = 1 << 20): { frames: Frame[]; oversized: Array<[number, number]> } {
  const frames: Frame[] = [];
  const oversized: Array<[number, number]> = [];
  const reader = new FrameReader({ maxFrameBytes, onFrame: (f) => frames.push({ ...f, body: Buffer.from(f.body) }), onOversized: (id, length) => oversized.push([id, length]) });
  for (const chunk of chunks) reader.push(chunk);
  return { frames, oversized };
}

/** `bytes` cut at the given points. */
function cut(bytes: Buffer, points: number[]): Buffer[] {
  const at = [...new Set(points.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const p of [...at, bytes.length]) {
    if (p > from) chunks.push(bytes.subarray(from, p));
    from = Math.max(from, p);
  }
  return chunks;
}

const callArb = fc.record({
  id: fc.nat({ max: 0xffff_ffff }),
  name: fc.string({ minLength: 1, maxLength: 40 }),
  meta: fc.dictionary(fc.string({ minLength: 1, maxLength: 20 }), fc.string({ maxLength: 60 }), { maxKeys: 4 }),
  body: fc.uint8Array({ maxLength: 300 }),
});
const replyArb = fc.record({
  id: fc.nat({ max: 0xffff_ffff }),
  status: fc.integer({ min: 100, max: 599 }),
  error: fc.string({ maxLength: 30 }),
  body: fc.uint8Array({ maxLength: 300 }),
});

describe('peer frames', () => {
  it('calls and replies come out whole and in order, however the stream is cut', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(callArb.map((c) => ({ kind: 'call' as const, ...c })), replyArb.map((r) => ({ kind: 'reply' as const, ...r }))), { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 20 }), (sent, points) => {
        const bytes = Buffer.concat(
          sent.flatMap((f) => (f.kind === 'call' ? encodeCall(f.id, f.name, f.meta, Buffer.from(f.body)) : encodeReply(f.id, f.status, f.error, Buffer.from(f.body)))),
        );
        const { frames, oversized } = read(cut(bytes, points));
        expect(oversized).toEqual([]);
        expect(frames).toEqual(sent.map((f) => ({ ...f, body: Buffer.from(f.body) })));
      }),
      { numRuns: 300 },
    );
  });

  it('reports an oversized frame by id and drops its bytes as they come; the frames after it are read', () => {
    const big = Buffer.concat(encodeCall(7, 'replicate', { node: 'b' }, Buffer.alloc(10_000, 1)));
    const after = Buffer.concat(encodeCall(8, 'ping', {}, Buffer.from('hi')));
    const before = Buffer.concat(encodeReply(6, 200, '', Buffer.from('ok')));
    const stream = Buffer.concat([before, big, after]);
    for (const points of [[], [3], [before.length + 5], [before.length + 100, before.length + 9_000, stream.length - 2], Array.from({ length: 40 }, (_, i) => i * 300)]) {
      const { frames, oversized } = read(cut(stream, points), 1_000);
      expect(oversized).toEqual([[7, big.length - 4]]);
      expect(frames.map((f) => f.id)).toEqual([6, 8]);
      expect(frames[1]).toMatchObject({ kind: 'call', name: 'ping', body: Buffer.from('hi') });
    }
  });

  it('refuses bytes that are not frames, and names that do not fit', () => {
    const bad = (bytes: number[]) => () => read([Buffer.from(bytes)]);
    expect(bad([0, 0, 0, 6, 0, 0, 0, 1, 9, 0])).toThrow(FrameError); // unknown kind
    expect(bad([0, 0, 0, 2, 0, 0, 0, 1])).toThrow(/too short/);
    expect(bad([0, 0, 0, 7, 0, 0, 0, 1, 1, 5, 0x61])).toThrow(/truncated call name/);
    expect(bad([0, 0, 0, 6, 0, 0, 0, 1, 2, 0])).toThrow(/truncated reply status/);
    expect(() => encodeCall(1, 'x'.repeat(256), {}, Buffer.alloc(0))).toThrow(/longer than 255 bytes/);
    expect(() => encodeCall(1, 'ok', { k: 'v'.repeat(70_000) }, Buffer.alloc(0))).toThrow(/at most 65535/);
  });
});
