// The failure detector on the real peer transport: its messages ride the sidecars' mTLS peer calls
// (`POST /.ctxmesh/peer/ping`, `/.ctxmesh/peer/ping-req`), so a probe exercises the same TLS
// listener, certificates and SPIFFE checks that replication and proxied traffic depend on.
import type { z } from 'zod';
import { MeshError } from '../errors/table.js';
import { PeerClient } from '../peer/client.js';
import type { PeerRouter } from '../peer/router.js';
import {
  AckSchema,
  IndirectAckSchema,
  PING,
  PING_REQ,
  PingReqSchema,
  PingSchema,
  type AckMessage,
  type IndirectAckMessage,
  type PingMessage,
  type PingReqMessage,
  type ProbeTransport,
} from './probe-messages.js';
import type { HealthProber } from './prober.js';

export class PeerProbeTransport implements ProbeTransport {
  constructor(private readonly client: PeerClient) {}

  async ping(address: string, message: PingMessage, timeoutMs: number): Promise<AckMessage> {
    const response = PeerClient.ok(await this.client.call(address, PING, message, { timeoutMs }), address, PING);
    return parse(AckSchema, response.body, `ack from ${address}`);
  }

  async pingReq(address: string, message: PingReqMessage, timeoutMs: number): Promise<IndirectAckMessage> {
    const response = PeerClient.ok(await this.client.call(address, PING_REQ, message, { timeoutMs }), address, PING_REQ);
    return parse(IndirectAckSchema, response.body, `ping-req answer from ${address}`);
  }
}

/** Serves `ping` and `ping-req` for `prober` on the sidecar's peer router. */
export function registerProbeHandlers(router: PeerRouter, prober: HealthProber): void {
  router.add(PING, async (body) => ({ body: await prober.handlePing(parse(PingSchema, body, 'ping')) }));
  router.add(PING_REQ, async (body) => ({ body: await prober.handlePingReq(parse(PingReqSchema, body, 'ping-req')) }));
}

export function unregisterProbeHandlers(router: PeerRouter): void {
  router.remove(PING);
  router.remove(PING_REQ);
}

function parse<T extends z.ZodType>(schema: T, body: Buffer, what: string): z.infer<T> {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw new MeshError('bad_request', `${what}: body is not JSON`);
  }
  const result = schema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new MeshError('bad_request', `${what}: ${issue.path.join('.') || '(body)'}: ${issue.message}`);
  }
  return result.data;
}
