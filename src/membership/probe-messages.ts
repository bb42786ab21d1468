// The wire format of the failure detector's peer calls, parsed at the boundary. `ping` asks the
// receiver to answer (and, when `deep`, to prove its context path works); `ping-req` asks it to
// ping a third member on the sender's behalf. Every message carries the sender's incarnation and a
// few membership updates (see gossip.ts).
import { z } from 'zod';
import { MAX_PIGGYBACK_UPDATES, type MemberUpdate } from './gossip.js';

/** Peer handler names on the PeerRouter. */
export const PING = 'ping';
export const PING_REQ = 'ping-req';

const incarnation = z.number().int().nonnegative();
const memberId = z.string().min(1).max(256);

const UpdateSchema = z.strictObject({
  id: memberId,
  state: z.enum(['alive', 'suspect', 'dead']),
  incarnation,
  from: memberId,
});

// A couple of extra slots beyond what we send: the update about the recipient travels on top.
const updates = z.array(UpdateSchema).max(MAX_PIGGYBACK_UPDATES + 2).default([]);

export const PingSchema = z.strictObject({
  from: memberId,
  incarnation,
  /** The member the sender means to reach: a different sidecar at that address must not answer for it. */
  target: memberId,
  /** Exercise the context path (a write and read of the health key), not only the transport. */
  deep: z.boolean().default(false),
  /** What the sender allows for the whole answer, ms; the deep check must fit inside. */
  timeoutMs: z.number().int().positive().max(600_000),
  updates,
});

export const PingReqSchema = z.strictObject({
  from: memberId,
  incarnation,
  target: memberId,
  address: z.string().min(1).max(300),
  deep: z.boolean().default(false),
  /** Time the intermediary gives its own ping, ms; it answers (ack or nack) within it. */
  timeoutMs: z.number().int().positive().max(600_000),
  updates,
});

/** The answer to a ping: `ack: false` says the member is up but failed the check (`reason`). */
export const AckSchema = z.strictObject({
  ack: z.boolean(),
  from: memberId,
  incarnation,
  reason: z.string().optional(),
  updates,
});

/** The answer to a ping-req: ack (the target answered the intermediary) or nack (it did not). */
export const IndirectAckSchema = z.strictObject({
  ack: z.boolean(),
  from: memberId,
  incarnation,
  updates,
});

export type PingMessage = z.infer<typeof PingSchema>;
export type PingReqMessage = z.infer<typeof PingReqSchema>;
export type AckMessage = z.infer<typeof AckSchema>;
export type IndirectAckMessage = z.infer<typeof IndirectAckSchema>;
export type { MemberUpdate };

/**
 * How the prober reaches other members: a request/answer call that rejects when no answer arrives
 * in `timeoutMs`. Production uses the mTLS PeerClient (peer-transport.ts); tests use an
 * in-memory one whose links can be cut.
 */
export interface ProbeTransport {
  ping(address: string, message: PingMessage, timeoutMs: number): Promise<AckMessage>;
  pingReq(address: string, message: PingReqMessage, timeoutMs: number): Promise<IndirectAckMessage>;
}
