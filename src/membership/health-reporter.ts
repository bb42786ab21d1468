// Local evidence, sent to the control plane: the control plane declares a member failed only when a
// quorum of observers reports it (contract: `POST /v1/health/reports` on its admin/API port), so
// this sidecar reports each change of its verdicts at once and repeats its doubts every
// `reportInterval` while they last — reports older than the control plane's suspicion window stop
// counting. Without a control plane, local evidence is all there is and nothing is sent.
import http from 'node:http';
import type { SidecarConfig } from '../config/schema.js';
import { formatHostPort, parseHostPort } from '../config/host-port.js';
import type { Logger } from '../telemetry/logger.js';
import type { MeshMetrics } from '../telemetry/metrics.js';
import type { MemberState } from './membership.js';
import type { HealthProber } from './prober.js';

export const HEALTH_REPORTS_PATH = '/v1/health/reports';
/** The control plane's admin/API port, where reports go when health.reportTo is not set. */
const CONTROL_PLANE_API_PORT = 15_014;
/** A report that takes longer than this is abandoned; the next one carries the same news. */
const REPORT_TIMEOUT_MS = 2_000;

export interface HealthReport {
  subject: string;
  status: 'alive' | 'suspect' | 'dead';
  incarnation: number;
}

/** host:port reports go to: health.reportTo, else xds.server's host on 15014, else none. */
export function healthReportTarget(config: SidecarConfig): string | undefined {
  if (config.health.reportTo) return config.health.reportTo;
  if (!config.xds) return undefined;
  const server = parseHostPort(config.xds.server);
  return typeof server === 'string' ? undefined : formatHostPort(server.host, CONTROL_PLANE_API_PORT);
}

export interface HealthReporterOptions {
  target: string;
  observer: string;
  prober: HealthProber;
  intervalMs: number;
  logger: Logger;
  metrics?: MeshMetrics;
}

export class HealthReporter {
  private timer: NodeJS.Timeout | undefined;
  private inFlight = false;
  /** Members whose verdict changed since the last report went out (an `alive` must be sent once too). */
  private readonly changed = new Set<string>();
  private sendAgain = false;
  private closed = false;
  private lastFailure: string | undefined;
  private readonly onState = (member: { id: string }, _previous: MemberState, _next: MemberState): void => {
    this.changed.add(member.id);
    void this.send();
  };

  constructor(private readonly options: HealthReporterOptions) {}

  start(): void {
    this.options.prober.on('state', this.onState);
    this.timer = setInterval(() => {
      if (this.currentReports().length > 0) void this.send();
    }, this.options.intervalMs).unref();
  }

  close(): void {
    this.closed = true;
    this.options.prober.off('state', this.onState);
    clearInterval(this.timer);
  }

  /**
   * Every member our own probes found failing, plus those whose verdict just changed to alive (so
   * the control plane hears a recovery). A doubt we only heard from others is not reported: the
   * quorum must count independent observers, not one accusation repeated by each.
   */
  private currentReports(): HealthReport[] {
    const reports: HealthReport[] = [];
    for (const row of this.options.prober.describe()) {
      const status = reportedStatus(this.options.prober.stateOf(row.id));
      if (status === undefined) continue;
      // `row.state` is the member set's, where the control plane's declaration lands: a member it
      // holds failed that our own probes find alive (past any hold-down) is vouched for every
      // interval, not once — else a declaration made on doubts that cleared before it (a burst of
      // load) would stand for good, since nothing changes here to report again.
      const vouch = status === 'alive' && (this.changed.has(row.id) || row.state === 'dead');
      if (status === 'alive' ? vouch : row.witnessed) reports.push({ subject: row.id, status, incarnation: row.incarnation });
    }
    return reports;
  }

  private async send(): Promise<void> {
    if (this.closed) return;
    if (this.inFlight) {
      this.sendAgain = true;
      return;
    }
    const reports = this.currentReports();
    if (reports.length === 0) return;
    this.changed.clear();
    this.inFlight = true;
    try {
      await postJson(this.options.target, HEALTH_REPORTS_PATH, { observer: this.options.observer, reports });
      this.options.metrics?.healthReports.labels('sent').inc();
      if (this.lastFailure) this.options.logger.info({ target: this.options.target }, 'health reports reach the control plane again');
      this.lastFailure = undefined;
    } catch (err) {
      this.options.metrics?.healthReports.labels('failed').inc();
      const message = (err as Error).message;
      // Once per outage, not once per report.
      if (this.lastFailure === undefined) this.options.logger.warn({ target: this.options.target, err: message }, 'cannot send health reports to the control plane');
      this.lastFailure = message;
      for (const report of reports) if (report.status === 'alive') this.changed.add(report.subject);
    } finally {
      this.inFlight = false;
    }
    if (this.sendAgain) {
      this.sendAgain = false;
      void this.send();
    }
  }
}

function reportedStatus(state: MemberState | undefined): HealthReport['status'] | undefined {
  return state === 'alive' || state === 'suspect' || state === 'dead' ? state : undefined;
}

function postJson(target: string, path: string, body: object): Promise<void> {
  // host without brackets: http.request would look "[fd00::1]" up as a name.
  const address = parseHostPort(target);
  if (typeof address === 'string') return Promise.reject(new Error(address));
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: address.host,
        port: address.port,
        path,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': String(payload.length) },
        timeout: REPORT_TIMEOUT_MS,
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve();
          else reject(new Error(`control plane answered ${status}`));
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${REPORT_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}
