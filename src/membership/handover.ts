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
//   4. passes re-run (a write or hint a stale-ring peer lands here makes a new stray) until no
//      stray is left on two polls in a row, or the drain timeout, or nobody takes the keys (passes
//      *finished* with nothing pushed, not wall time: a slow push on a loaded machine is not a
//      stall); then the sidecar goes on to close its listeners, letting in-flight requests finish.
// An operator's drain through the control plane takes steps 2–3 on its own: the EDS push makes
// the ring leave this sidecar out, and the rebalancer hands its keys off.
import http from 'node:http';
import { parseHostPort } from '../config/host-port.js';
import type { AntiEntropy } from '../state/replication/anti-entropy.js';
import type { Logger } from '../telemetry/logger.js';
import type { MutableMembership } from './membership.js';

/** How often the handover checks whether the rebalancer is done. */
const POLL_MS = 50;
/**
 * The least time to wait for the control plane's DRAINING push once it accepted the drain (a
 * loaded control plane pushes late; up to half the drain timeout is waited when that is longer).
 */
const EDS_WAIT_MS = 3_000;
const REQUEST_TIMEOUT_MS = 2_000;
/**
 * A handover stops before the drain timeout only when nobody takes the keys (every peer gone or
 * refusing): this many rebalancer passes in a row *finished* with nothing pushed or dropped, and at
 * least STALL_MS since the last progress. Passes, not wall time alone: on a loaded machine one
 * slow push round can outlast any fixed window, and a pass still in flight is not "no progress".
 */
const STALL_PASSES = 10;
const STALL_MS = 5_000;

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
      const edsBy = Math.min(deadline, performance.now() + Math.max(EDS_WAIT_MS, (deadline - performance.now()) / 2));
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
    const rebalancer = antiEntropy.rebalancer;
    rebalancer.schedule();
    // Progress: keys dropped here, or records a target took. Judged per finished pass, so a push
    // still waiting on a slow peer never counts against the handover.
    let strays = antiEntropy.index.strayCount;
    let passesSeen = rebalancer.passes;
    let idlePasses = 0;
    let progressAt = performance.now();
    let quiet = 0;
    while (performance.now() < deadline) {
      const now = antiEntropy.index.strayCount;
      if (now === 0 && !rebalancer.busy) {
        // Two polls in a row: a write or a hint that a peer with a stale ring sent here just now
        // makes a new stray, which the next pass hands on; done means none arrived meanwhile.
        if (++quiet >= 2) break;
      } else {
        quiet = 0;
      }
      if (now < strays) {
        progressAt = performance.now();
        idlePasses = 0;
      }
      strays = now;
      if (rebalancer.passes !== passesSeen) {
        const last = rebalancer.lastPass;
        passesSeen = rebalancer.passes;
        if (last.pushed > 0 || last.dropped > 0 || last.considered === 0) {
          progressAt = performance.now();
          idlePasses = 0;
        } else {
          idlePasses++;
        }
      }
      if (now > 0 && idlePasses >= STALL_PASSES && performance.now() - progressAt > STALL_MS) {
        // Nobody takes the keys (the peers are gone or refuse): the other replicas still hold them.
        break;
      }
      // A stray and no pass due (e.g. one a late write made after the last pass): run one now.
      // Out of the ring, the rebalancer itself retries without backoff (rebalance.ts).
      if (now > 0 && !rebalancer.busy) rebalancer.schedule();
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
