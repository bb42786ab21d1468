// Hinted handoff: writes a replica could not take (unreachable, timed out) are kept here, per
// replica, and delivered when it answers again. Only the newest version of each key is kept (an
// older one would be overwritten on delivery anyway), the bytes kept per replica are bounded, and
// every hint is appended to a file per replica so that a coordinator restart does not lose them.
//
// File: a sequence of `u32 length, keyed record envelope`; a torn tail (crash mid-append) is cut
// at load. Delivered hints are dropped from memory; the file is rewritten from memory once it is
// mostly delivered hints, and removed when nothing is left.
import { mkdirSync, readdirSync, readFileSync, truncateSync } from 'node:fs';
import { open, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../telemetry/logger.js';
import { decodeKeyedRecord, encodeKeyedRecord, type ContextRecord } from '../record.js';
import { encodedSize } from './codec.js';
import { compareRecords } from './order.js';

const SUFFIX = '.hints';
/** The file is rewritten when it holds this many times the bytes still undelivered (and > 1MiB). */
const COMPACT_RATIO = 4;
const COMPACT_MIN_BYTES = 1024 ** 2;

export interface Hint {
  record: ContextRecord;
  bytes: number;
  /** Epoch ms when the oldest undelivered write of this key was hinted: what lag is measured from. */
  since: number;
}

interface PeerHints {
  byKey: Map<string, Hint>;
  bytes: number;
  fileBytes: number;
  file: FileHandle | undefined;
  /** Appends and rewrites of this peer's file, in order. */
  chain: Promise<void>;
}

export interface HintStoreOptions {
  dir: string;
  maxBytesPerPeer: number;
  /** fsync each append (context.wal.fsync: always). */
  sync: boolean;
  logger: Logger;
  now?: () => number;
}

export class HintStore {
  private readonly peers = new Map<string, PeerHints>();
  private readonly now: () => number;
  dropped = 0;
  deliveredCount = 0;

  constructor(private readonly options: HintStoreOptions) {
    this.now = options.now ?? Date.now;
    mkdirSync(options.dir, { recursive: true });
    this.load();
  }

  /** Keeps `record` for `peerId`; resolves once it is on disk. */
  add(peerId: string, record: ContextRecord): Promise<void> {
    const peer = this.peer(peerId);
    const existing = peer.byKey.get(record.key);
    if (existing && compareRecords(existing.record, record) >= 0) return peer.chain;
    const bytes = encodedSize(record);
    if (existing) {
      peer.byKey.delete(record.key);
      peer.bytes -= existing.bytes;
    }
    peer.byKey.set(record.key, { record, bytes, since: existing?.since ?? this.now() });
    peer.bytes += bytes;
    this.enforceBound(peerId, peer);
    const frame = frameOf(record);
    peer.chain = peer.chain.then(() => this.append(peerId, peer, frame)).catch((err: Error) =>
      this.options.logger.warn({ peer: peerId, err: err.message }, 'could not persist a hint; it is kept in memory only'),
    );
    return peer.chain;
  }

  /** Up to `maxBytes` of the peer's oldest hints (at least one). */
  take(peerId: string, maxBytes: number): Hint[] {
    const peer = this.peers.get(peerId);
    if (!peer) return [];
    const out: Hint[] = [];
    let bytes = 0;
    for (const hint of peer.byKey.values()) {
      if (out.length > 0 && bytes + hint.bytes > maxBytes) break;
      out.push(hint);
      bytes += hint.bytes;
    }
    return out;
  }

  /** Forgets hints that were delivered, unless a newer write of the key was hinted meanwhile. */
  markDelivered(peerId: string, hints: readonly Hint[]): void {
    const peer = this.peers.get(peerId);
    if (!peer) return;
    for (const hint of hints) {
      const current = peer.byKey.get(hint.record.key);
      if (current !== hint) continue;
      peer.byKey.delete(hint.record.key);
      peer.bytes -= hint.bytes;
      this.deliveredCount++;
    }
    if (peer.byKey.size === 0 || (peer.fileBytes > COMPACT_MIN_BYTES && peer.fileBytes > COMPACT_RATIO * peer.bytes)) {
      peer.chain = peer.chain.then(() => this.rewrite(peerId, peer)).catch((err: Error) =>
        this.options.logger.warn({ peer: peerId, err: err.message }, 'could not compact the hints file'),
      );
    }
  }

  count(peerId: string): number {
    return this.peers.get(peerId)?.byKey.size ?? 0;
  }

  bytes(peerId: string): number {
    return this.peers.get(peerId)?.bytes ?? 0;
  }

  /** Epoch ms of the oldest undelivered hint for the peer, if any. */
  oldest(peerId: string): number | undefined {
    let oldest: number | undefined;
    for (const hint of this.peers.get(peerId)?.byKey.values() ?? []) if (oldest === undefined || hint.since < oldest) oldest = hint.since;
    return oldest;
  }

  peerIds(): string[] {
    return [...this.peers.keys()].filter((id) => this.peers.get(id)!.byKey.size > 0);
  }

  async close(): Promise<void> {
    for (const peer of this.peers.values()) {
      await peer.chain;
      await peer.file?.close();
      peer.file = undefined;
    }
  }

  private peer(peerId: string): PeerHints {
    let peer = this.peers.get(peerId);
    if (!peer) {
      peer = { byKey: new Map(), bytes: 0, fileBytes: 0, file: undefined, chain: Promise.resolve() };
      this.peers.set(peerId, peer);
    }
    return peer;
  }

  private enforceBound(peerId: string, peer: PeerHints): void {
    let dropped = 0;
    for (const [key, hint] of peer.byKey) {
      if (peer.bytes <= this.options.maxBytesPerPeer || peer.byKey.size <= 1) break;
      peer.byKey.delete(key);
      peer.bytes -= hint.bytes;
      dropped++;
    }
    if (dropped > 0) {
      this.dropped += dropped;
      // Those writes reach the peer only through read repair (or anti-entropy, later).
      this.options.logger.warn({ peer: peerId, dropped, maxBytes: this.options.maxBytesPerPeer }, 'hints over their bound for this peer: dropped the oldest');
    }
  }

  private fileOf(peerId: string): string {
    return join(this.options.dir, `${encodeURIComponent(peerId)}${SUFFIX}`);
  }

  private async append(peerId: string, peer: PeerHints, frame: Buffer): Promise<void> {
    peer.file ??= await open(this.fileOf(peerId), 'a');
    await peer.file.write(frame);
    if (this.options.sync) await peer.file.datasync();
    peer.fileBytes += frame.length;
  }

  private async rewrite(peerId: string, peer: PeerHints): Promise<void> {
    await peer.file?.close();
    peer.file = undefined;
    const path = this.fileOf(peerId);
    if (peer.byKey.size === 0) {
      await rm(path, { force: true });
      peer.fileBytes = 0;
      return;
    }
    const content = Buffer.concat([...peer.byKey.values()].map((h) => frameOf(h.record)));
    await writeFile(`${path}.tmp`, content);
    await rename(`${path}.tmp`, path);
    peer.fileBytes = content.length;
  }

  private load(): void {
    for (const name of readdirSync(this.options.dir)) {
      if (!name.endsWith(SUFFIX)) continue;
      const peerId = decodeURIComponent(name.slice(0, -SUFFIX.length));
      const bytes = readFileSync(join(this.options.dir, name));
      const peer = this.peer(peerId);
      let offset = 0;
      while (offset + 4 <= bytes.length) {
        const length = bytes.readUInt32BE(offset);
        if (offset + 4 + length > bytes.length) break;
        let record: ContextRecord;
        try {
          record = decodeKeyedRecord(bytes.subarray(offset + 4, offset + 4 + length));
        } catch {
          break;
        }
        offset += 4 + length;
        const existing = peer.byKey.get(record.key);
        if (existing && compareRecords(existing.record, record) >= 0) continue;
        if (existing) peer.bytes -= existing.bytes;
        const size = encodedSize(record);
        peer.byKey.set(record.key, { record: { ...record, value: Buffer.from(record.value) }, bytes: size, since: this.now() });
        peer.bytes += size;
      }
      peer.fileBytes = offset;
      if (offset < bytes.length) {
        // Later appends must not land behind bytes that stop every future load.
        truncateSync(join(this.options.dir, name), offset);
        this.options.logger.warn({ peer: peerId, cut: bytes.length - offset }, 'hints file: cut a torn tail');
      }
      if (peer.byKey.size > 0) this.options.logger.info({ peer: peerId, hints: peer.byKey.size }, 'hints recovered for a peer');
    }
  }
}

function frameOf(record: ContextRecord): Buffer {
  const bytes = encodeKeyedRecord(record);
  const frame = Buffer.allocUnsafe(4 + bytes.length);
  frame.writeUInt32BE(bytes.length, 0);
  bytes.copy(frame, 4);
  return frame;
}
