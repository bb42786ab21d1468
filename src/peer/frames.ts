// Peer frames: what one mTLS connection between two sidecars carries when both speak ALPN
// `ctxmesh-peer/1`, instead of one HTTP/1.1 exchange per call. Calls are multiplexed by id and
// answered in any order, so a slow call holds up nothing behind it, and every frame made in one
// tick goes out in one TLS write: a batch of replication calls to a peer costs one syscall and
// one TLS record rather than an HTTP request each (bench/replication, 2026-12-08).
//
//   u32 length of the rest · u32 id · u8 kind, then
//   call  (1): u8 name length · name · u8 meta count · (u8 key length · key · u16 value length · value)* · body
//   reply (2): u16 status · u8 error length · error code · body
//
// A call's meta carries what an HTTP call carried in headers (the sender's node and ownership
// epoch, for fencing); a reply's error is the x-ctxmesh-error code of a refusal. Integers are big
// endian; the body runs to the end of the frame.

export const PEER_ALPN = 'ctxmesh-peer/1';

const CALL = 1;
const REPLY = 2;
/** length and id: enough to skip an oversized frame and still answer for it. */
const PREFIX_BYTES = 8;
/** Above this, queued frames are written piece by piece under cork instead of copied into one buffer. */
const COALESCE_MAX_BYTES = 64 * 1024;

export interface CallFrame {
  kind: 'call';
  id: number;
  name: string;
  meta: Record<string, string>;
  body: Buffer;
}

export interface ReplyFrame {
  kind: 'reply';
  id: number;
  status: number;
  /** The refusal's error code; '' on success. */
  error: string;
  body: Buffer;
}

export type Frame = CallFrame | ReplyFrame;

export class FrameError extends Error {
  override name = 'FrameError';
}

/** A call frame as a head and the caller's body (not copied). */
export function encodeCall(id: number, name: string, meta: Record<string, string>, body: Buffer): Buffer[] {
  const keys = Object.keys(meta);
  let headBytes = PREFIX_BYTES + 1 + 1 + Buffer.byteLength(name) + 1;
  for (const key of keys) headBytes += 1 + Buffer.byteLength(key) + 2 + Buffer.byteLength(meta[key]!);
  const head = Buffer.allocUnsafe(headBytes);
  head.writeUInt32BE(headBytes - 4 + body.length, 0);
  head.writeUInt32BE(id, 4);
  head[8] = CALL;
  let at = putShortString(head, 9, name, 0xff, 'call name');
  head[at++] = keys.length;
  for (const key of keys) {
    at = putShortString(head, at, key, 0xff, 'meta key');
    const value = meta[key]!;
    const length = Buffer.byteLength(value);
    if (length > 0xffff) throw new FrameError(`meta value of ${key} is ${length} bytes (at most 65535)`);
    head.writeUInt16BE(length, at);
    at += 2 + head.write(value, at + 2, 'utf8');
  }
  return [head, body];
}

/** A reply frame as a head and the body (not copied). */
export function encodeReply(id: number, status: number, error: string, body: Buffer): Buffer[] {
  const headBytes = PREFIX_BYTES + 1 + 2 + 1 + Buffer.byteLength(error);
  const head = Buffer.allocUnsafe(headBytes);
  head.writeUInt32BE(headBytes - 4 + body.length, 0);
  head.writeUInt32BE(id, 4);
  head[8] = REPLY;
  head.writeUInt16BE(status, 9);
  putShortString(head, 11, error, 0xff, 'error code');
  return [head, body];
}

function putShortString(into: Buffer, at: number, text: string, max: number, what: string): number {
  const length = into.write(text, at + 1, 'utf8');
  if (length > max || length !== Buffer.byteLength(text)) throw new FrameError(`${what} "${text.slice(0, 40)}" is longer than ${max} bytes`);
  into[at] = length;
  return at + 1 + length;
}

export interface FrameReaderOptions {
  /** Largest frame (after its length field) taken whole; a larger one is skipped, not kept. */
  maxFrameBytes: number;
  onFrame(frame: Frame): void;
  /** A frame over maxFrameBytes: its id and length; its bytes are dropped as they arrive. */
  onOversized(id: number, length: number): void;
}

/**
 * Cuts the byte stream of one connection into frames. Frames that arrive whole are decoded where
 * they lie (bodies are views of the chunk, not copies); a frame split across chunks is gathered
 * and joined once, when its last byte is in. Throws FrameError on bytes that are not frames: the
 * connection is then beyond repair.
 */
export class FrameReader {
  private parts: Buffer[] = [];
  private held = 0;
  /** Bytes `parts` must reach before anything can be decoded from them. */
  private wanted = 0;
  /** Bytes of an oversized frame still to drop. */
  private skipping = 0;

  constructor(private readonly options: FrameReaderOptions) {}

  push(chunk: Buffer): void {
    let data = chunk;
    if (this.skipping > 0) {
      const dropped = Math.min(this.skipping, data.length);
      this.skipping -= dropped;
      data = data.subarray(dropped);
      if (data.length === 0) return;
    }
    if (this.held > 0) {
      this.parts.push(data);
      this.held += data.length;
      if (this.held < this.wanted) return;
      data = Buffer.concat(this.parts, this.held);
      this.parts = [];
      this.held = 0;
    }
    let offset = 0;
    while (data.length - offset >= PREFIX_BYTES) {
      const length = data.readUInt32BE(offset);
      if (length < PREFIX_BYTES - 4 + 1) throw new FrameError(`frame of ${length} bytes is too short`);
      if (length > this.options.maxFrameBytes) {
        this.options.onOversized(data.readUInt32BE(offset + 4), length);
        const here = Math.min(length, data.length - offset - 4);
        this.skipping = length - here;
        offset += 4 + here;
        if (this.skipping > 0) return;
        continue;
      }
      if (data.length - offset - 4 < length) break;
      this.options.onFrame(decodeFrame(data, offset + 4, offset + 4 + length));
      offset += 4 + length;
    }
    if (offset < data.length) {
      const rest = data.subarray(offset);
      this.parts = [rest];
      this.held = rest.length;
      const length = rest.length >= 4 ? rest.readUInt32BE(0) : 0;
      this.wanted = rest.length >= 4 && length <= this.options.maxFrameBytes ? 4 + length : PREFIX_BYTES;
    }
  }
}

function decodeFrame(data: Buffer, start: number, end: number): Frame {
  const id = data.readUInt32BE(start);
  const kind = data[start + 4];
  let at = start + 5;
  const text = (what: string): string => {
    if (at >= end) throw new FrameError(`frame ${id}: truncated ${what}`);
    const length = data[at]!;
    if (at + 1 + length > end) throw new FrameError(`frame ${id}: truncated ${what}`);
    const value = data.toString('utf8', at + 1, at + 1 + length);
    at += 1 + length;
    return value;
  };
  if (kind === CALL) {
    const name = text('call name');
    if (at >= end) throw new FrameError(`frame ${id}: truncated meta`);
    const count = data[at++]!;
    const meta: Record<string, string> = {};
    for (let i = 0; i < count; i++) {
      const key = text('meta key');
      if (at + 2 > end) throw new FrameError(`frame ${id}: truncated meta value`);
      const length = data.readUInt16BE(at);
      if (at + 2 + length > end) throw new FrameError(`frame ${id}: truncated meta value`);
      meta[key] = data.toString('utf8', at + 2, at + 2 + length);
      at += 2 + length;
    }
    return { kind: 'call', id, name, meta, body: data.subarray(at, end) };
  }
  if (kind === REPLY) {
    if (at + 2 > end) throw new FrameError(`frame ${id}: truncated reply status`);
    const status = data.readUInt16BE(at);
    at += 2;
    const error = text('error code');
    return { kind: 'reply', id, status, error, body: data.subarray(at, end) };
  }
  throw new FrameError(`frame ${id}: unknown kind ${kind}`);
}

/** Anything with socket-like writes (a TLSSocket). */
interface FrameSink {
  write(chunk: Buffer): boolean;
  cork(): void;
  uncork(): void;
  readonly destroyed: boolean;
}

/**
 * Frames queued during one tick leave in one write: small ones copied into one buffer (one TLS
 * record), large ones passed as they are under cork (no copy of a multi-megabyte body).
 */
export class FrameWriter {
  private parts: Buffer[] = [];
  private bytes = 0;
  private scheduled = false;

  constructor(private readonly sink: FrameSink) {}

  /** Bytes queued for the next write. */
  get queuedBytes(): number {
    return this.bytes;
  }

  send(frame: Buffer[]): void {
    for (const part of frame) {
      this.parts.push(part);
      this.bytes += part.length;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    // After the microtasks of this tick: replies settled by one batch's promises go together.
    process.nextTick(this.flush);
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const parts = this.parts;
    const bytes = this.bytes;
    this.parts = [];
    this.bytes = 0;
    if (this.sink.destroyed || parts.length === 0) return;
    if (bytes <= COALESCE_MAX_BYTES) {
      this.sink.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes));
      return;
    }
    this.sink.cork();
    for (const part of parts) if (part.length > 0) this.sink.write(part);
    this.sink.uncork();
  };
}
