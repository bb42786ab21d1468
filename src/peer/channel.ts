// One framed connection to a peer sidecar (frames.ts), the calling side: calls go out as they are
// made, tagged with an id, and each waits for the reply with its id, however many are in flight.
// The connection opens on the first call and again on the first call after it is lost; a loss
// fails every call waiting on it (upstream_reset: the peer may or may not have acted on them).
import type { TLSSocket } from 'node:tls';
import { MeshError } from '../errors/table.js';
import { FrameReader, FrameWriter, PEER_ALPN, encodeCall, type Frame } from './frames.js';

/** Room for a reply frame's head beside the largest body accepted. */
const REPLY_HEAD_BYTES = 512;

export interface ChannelReply {
  status: number;
  /** The refusal's error code; '' on success. */
  error: string;
  body: Buffer;
}

/** The peer chose another protocol than PEER_ALPN (a sidecar without framed calls): use HTTP. */
export class NotFramedError extends Error {
  override name = 'NotFramedError';
}

export interface PeerChannelOptions {
  /** host:port, for messages. */
  address: string;
  /** Dials the peer offering PEER_ALPN (and HTTP/1.1, for a peer without it); resolves once the handshake is done. */
  dial(): Promise<TLSSocket>;
  /** Largest reply body taken; a larger one fails its call with payload_too_large. */
  maxReplyBytes: number;
}

interface Waiting {
  name: string;
  resolve(reply: ChannelReply): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

export class PeerChannel {
  private socket: TLSSocket | undefined;
  private writer: FrameWriter | undefined;
  private opening: Promise<void> | undefined;
  private readonly waiting = new Map<number, Waiting>();
  private lastId = 0;
  private closed = false;

  constructor(private readonly options: PeerChannelOptions) {}

  call(name: string, meta: Record<string, string>, body: Buffer, timeoutMs: number, signal?: AbortSignal): Promise<ChannelReply> {
    const { address } = this.options;
    if (this.closed) return Promise.reject(new MeshError('internal', 'the peer client is closed'));
    if (signal?.aborted) return Promise.reject(cancelled(address, name));
    let frame: Buffer[];
    const id = (this.lastId = (this.lastId + 1) >>> 0);
    try {
      frame = encodeCall(id, name, meta, body);
    } catch (err) {
      return Promise.reject(new MeshError('bad_request', `call ${name} to peer ${address} cannot be sent: ${(err as Error).message}`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.take(id)?.reject(timedOut(address, name, timeoutMs)), timeoutMs);
      const onAbort = signal ? () => this.take(id)?.reject(cancelled(address, name)) : undefined;
      if (onAbort) signal!.addEventListener('abort', onAbort, { once: true });
      this.waiting.set(id, { name, resolve, reject, timer, signal, onAbort });
      if (this.writer) {
        this.writer.send(frame);
        return;
      }
      this.open().then(
        () => {
          if (this.waiting.has(id)) this.writer!.send(frame);
        },
        (err: Error) => this.take(id)?.reject(err instanceof NotFramedError ? err : unreachable(address, name, err instanceof MeshError ? err.message : (err?.message ?? String(err)), err)),
      );
    });
  }

  /** Fails what is in flight and closes the connection; later calls are refused. */
  close(): void {
    this.closed = true;
    this.socket?.destroy();
    for (const id of [...this.waiting.keys()]) this.take(id)?.reject(new MeshError('client_closed', `the peer client closed before ${this.options.address} answered`));
  }

  private open(): Promise<void> {
    this.opening ??= this.options.dial().then(
      (socket) => {
        this.opening = undefined;
        if (this.closed) {
          socket.destroy();
          throw new MeshError('internal', 'the peer client is closed');
        }
        if (socket.alpnProtocol !== PEER_ALPN) {
          socket.destroy();
          throw new NotFramedError(`peer ${this.options.address} does not speak ${PEER_ALPN}`);
        }
        this.attach(socket);
      },
      (err: unknown) => {
        this.opening = undefined;
        throw err;
      },
    );
    return this.opening;
  }

  private attach(socket: TLSSocket): void {
    const { address, maxReplyBytes } = this.options;
    const reader = new FrameReader({
      maxFrameBytes: maxReplyBytes + REPLY_HEAD_BYTES,
      onFrame: (frame: Frame) => {
        if (frame.kind !== 'reply') throw new Error(`peer ${address} sent a call on a connection it did not open`);
        this.take(frame.id)?.resolve(frame);
      },
      onOversized: (id) => {
        const waiting = this.take(id);
        waiting?.reject(new MeshError('payload_too_large', `peer ${address} answered ${waiting.name} with more than ${maxReplyBytes} bytes`));
      },
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    // 'close' follows every error; the calls fail there.
    socket.on('error', () => undefined);
    socket.once('close', () => {
      if (this.socket === socket) [this.socket, this.writer] = [undefined, undefined];
      for (const id of [...this.waiting.keys()]) {
        const waiting = this.take(id);
        waiting?.reject(new MeshError('upstream_reset', `peer ${address} (${waiting.name}): the connection was lost before the answer`));
      }
    });
    this.socket = socket;
    this.writer = new FrameWriter(socket);
  }

  /** The call waiting under `id`, no longer waiting. */
  private take(id: number): Waiting | undefined {
    const waiting = this.waiting.get(id);
    if (!waiting) return undefined;
    this.waiting.delete(id);
    clearTimeout(waiting.timer);
    if (waiting.onAbort) waiting.signal!.removeEventListener('abort', waiting.onAbort);
    return waiting;
  }
}

// How a peer call fails, over frames or HTTP alike (client.ts uses these too).

export function timedOut(address: string, name: string, timeoutMs: number, cause?: unknown): MeshError {
  return new MeshError('upstream_timeout', `peer ${address} did not answer ${name} within ${timeoutMs} ms`, { cause });
}

export function cancelled(address: string, name: string, cause?: unknown): MeshError {
  return new MeshError('client_closed', `call ${name} to peer ${address} was cancelled`, { cause });
}

export function unreachable(address: string, name: string, reason: string, cause?: unknown): MeshError {
  return new MeshError('connect_failure', `peer ${address} is unreachable (${name}): ${reason}`, { cause });
}
