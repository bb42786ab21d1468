// Planned drain, the context side: before a draining sidecar stops serving, the keys it holds go to
// their next owners. Unlike an unplanned failure — where the survivors already hold replicas and
// the ring simply moves on — a drain hands ownership over first:
//   1. the control plane is told (`POST /v1/endpoints/drain`, the same call an operator makes), so
//      every sidecar's EDS shows this one DRAINING with a new epoch and routes new work elsewhere;
//   2. this sidecar waits to see itself DRAINING in its own EDS (so its peer calls carry the new
//      epoch, and every peer's ring leaves it out too); without that — no control plane, or it
//      did not answer — there is no handover (the peers' rings would hand the keys straight
//      back), and the drain goes on as a failure would: the other replicas hold every key;
//   3. the ring then leaves it out, every key it holds is a stray, and the rebalancer pushes each
//      one to its new replica set and drops it here once they confirm (rebalance.ts);
//   4. when no stray is left (or the drain timeout is reached) the sidecar goes on to close its
//      listeners, letting in-flight requests finish.
// An operator's drain through the control plane takes steps 2–3 on its own: the EDS push makes
// the ring leave this sidecar out, and the rebalancer hands its keys off.
import http from 'node:http';
import { parseHostPort } from '../config/host-port.js';
import type { AntiEntropy } from '../state/replication/anti-entropy.js';
import type { Logger } from '../telemetry/logger.js';
import type { MutableMembership } from './membership.js';

/** How often the handover checks whether the rebalancer is done. */
const POLL_MS = 50;
/** How long to wait for the control plane's DRAINING push before marking ourselves draining locally. */
const EDS_WAIT_MS = 3_000;
const REQUEST_TIMEOUT_MS = 2_000;
/** A handover that moves nothing for this long stops waiting (every peer gone or refusing). */
const STALL_MS = 2_000;

export type HandoverState = 'idle' | 'announcing' | 'handing_over' | 'done' | 'timed_out' | 'skipped';

export interface HandoverStatus {
  state: HandoverState;
  /** Keys still held here that the ring places elsewhere. */
  strays: number;
  /** Records pushed and keys dropped since the handover started. */
  pushed: number;
  dropped: number;
  /** 'control_plane' once its EDS shows this sidecar DRAINING; null before, or when it never did. */
  announced: 'control_plane' | null;
}

export interface HandoverOptions {
  membership: MutableMembership;
  antiEntropy: AntiEntropy | undefined;
  /** host:port of the control plane's admin/API, when there is one. */
  controlPlane: string | undefined;
  /** The service this sidecar fronts (node.cluster), as the control plane names it. */
  service: string;
  logger: Logger;
}

export class Handover {
  private readonly status_: HandoverStatus = { state: 'idle', strays: 0, pushed: 0, dropped: 0, announced: null };

  constructor(private readonly options: HandoverOptions) {}

  status(): HandoverStatus {
    const ae = this.options.antiEntropy;
    return { ...this.status_, strays: ae?.index.strayCount ?? 0 };
  }

  /** Runs the handover until done or `deadline` (performance.now() ms). Never throws. */
  async run(deadline: number): Promise<HandoverStatus> {
    const { membership, antiEntropy, logger } = this.options;
    if (!antiEntropy || (this.options.controlPlane === undefined && membership.self.state !== 'draining')) {
      // No replicated context, or no control plane to make the drain mesh-wide: nothing to hand over.
      this.status_.state = 'skipped';
      return this.status();
    }
    this.status_.state = 'announcing';
    // A function, not a narrowed property: EDS pushes change it while we wait.
    const selfDraining = (): boolean => membership.self.state === 'draining';
    const startTotals = { ...antiEntropy.rebalancer.totals };
    if (!selfDraining()) {
      const told = this.options.controlPlane ? await this.announce(this.options.controlPlane).catch((err: Error) => err) : undefined;
      if (told instanceof Error) logger.warn({ err: told.message }, 'drain: could not tell the control plane');
      const edsBy = Math.min(deadline, performance.now() + EDS_WAIT_MS);
      if (told === true) {
        while (!selfDraining() && performance.now() < edsBy) await sleep(POLL_MS);
      }
      if (!selfDraining()) {
        // The control plane did not take the drain (unreachable, refused, or its push did not come):
        // leaving the ring on our own would have the peers, whose rings still place keys here, hand
        // them straight back. The other replicas hold every key; this drain goes on as a failure would.
        this.status_.state = 'skipped';
        logger.warn({ controlPlane: this.options.controlPlane ?? null }, 'drain: the control plane did not mark this sidecar DRAINING; leaving without a handover');
        return this.status();
      }
      this.status_.announced = 'control_plane';
    } else {
      this.status_.announced = 'control_plane';
    }
    this.status_.state = 'handing_over';
    logger.info({ strays: antiEntropy.index.strayCount, announced: this.status_.announced }, 'drain: handing keys over to their next owners');
    antiEntropy.rebalancer.schedule();
    let progress = '';
    let progressAt = performance.now();
    let polls = 0;
    while (performance.now() < deadline) {
      if (antiEntropy.index.strayCount === 0 && !antiEntropy.rebalancer.busy) break;
      const totals = antiEntropy.rebalancer.totals;
      const now = `${antiEntropy.index.strayCount}/${totals.pushed}/${totals.dropped}`;
      if (now !== progress) {
        progress = now;
        progressAt = performance.now();
      } else if (performance.now() - progressAt > STALL_MS) {
        // Nobody takes the keys (the peers are gone or refuse): the other replicas still hold them.
        break;
      }
      // Not the rebalancer's backoff (up to 5s between retries): a drain wants it done now.
      if (++polls % 5 === 0) antiEntropy.rebalancer.schedule();
      await sleep(POLL_MS);
    }
    const totals = antiEntropy.rebalancer.totals;
    this.status_.pushed = totals.pushed - startTotals.pushed;
    this.status_.dropped = totals.dropped - startTotals.dropped;
    this.status_.state = antiEntropy.index.strayCount === 0 ? 'done' : 'timed_out';
    const report = this.status();
    if (report.state === 'done') logger.info(report, 'drain: every key handed over');
    else logger.warn(report, 'drain: timed out with keys not handed over (their other replicas still hold them)');
    return report;
  }

  /** Tells the control plane this endpoint drains; resolves true when it accepted. */
  private announce(target: string): Promise<true> {
    const address = parseHostPort(target);
    if (typeof address === 'string') return Promise.reject(new Error(address));
    const payload = Buffer.from(JSON.stringify({ service: this.options.service, address: this.options.membership.self.address, reason: 'sidecar drain' }));
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: address.host,
          port: address.port,
          path: '/v1/endpoints/drain',
          method: 'POST',
          headers: { 'content-type': 'application/json', 'content-length': String(payload.length) },
          timeout: REQUEST_TIMEOUT_MS,
          agent: false,
        },
        (res) => {
          res.resume();
          res.on('end', () => ((res.statusCode ?? 0) === 200 ? resolve(true) : reject(new Error(`control plane answered ${res.statusCode}`))));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
      req.on('error', reject);
      req.end(payload);
    });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
