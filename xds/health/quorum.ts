// Failure declaration by quorum, kept pure: no clock, no I/O. A member is declared failed only
// when a majority of the *other* live members of its service, each by its newest report inside
// the suspicion window, says suspect or dead. Because the majority is counted over every live
// member rather than over the members that happen to report, the minority side of a partition
// can never reach it; and a quorum is never smaller than two, so no single observer evicts.

export type ReportStatus = 'alive' | 'suspect' | 'dead';

export interface HealthReport {
  observer: string;
  subject: string;
  status: ReportStatus;
  /** The subject's incarnation as the observer knows it (SWIM): a higher one refutes older suspicion. */
  incarnation: number;
  /** When the control plane received the report (ms, the caller's clock). */
  receivedAt: number;
}

export interface QuorumVerdict {
  /** Live members entitled to vote on this subject (the subject itself excluded). */
  voters: number;
  /** Votes needed: a strict majority of the voters, and at least two. */
  needed: number;
  /** Voters whose newest report in the window says suspect or dead. */
  suspecting: string[];
  /** Voters whose newest report in the window says alive. */
  vouching: string[];
  failed: boolean;
  alive: boolean;
}

export const MIN_QUORUM = 2;

export function quorumSize(voters: number): number {
  return Math.max(MIN_QUORUM, Math.floor(voters / 2) + 1);
}

/** Newest report per (observer, subject). */
export class HealthReportBook {
  private readonly bySubject = new Map<string, Map<string, HealthReport>>();

  /** Keeps the report unless the stored one carries a higher incarnation; returns whether kept. */
  record(report: HealthReport): boolean {
    let byObserver = this.bySubject.get(report.subject);
    if (!byObserver) this.bySubject.set(report.subject, (byObserver = new Map()));
    const previous = byObserver.get(report.observer);
    if (previous && previous.incarnation > report.incarnation) return false;
    byObserver.set(report.observer, report);
    return true;
  }

  about(subject: string): HealthReport[] {
    return [...(this.bySubject.get(subject)?.values() ?? [])];
  }

  /** A member that left takes its reports, as observer and as subject, with it. */
  forget(nodeId: string): void {
    this.bySubject.delete(nodeId);
    for (const byObserver of this.bySubject.values()) byObserver.delete(nodeId);
  }

  /** Drops every report older than the window, so the book stays bounded. */
  prune(now: number, windowMs: number): void {
    for (const [subject, byObserver] of this.bySubject) {
      for (const [observer, report] of byObserver) if (now - report.receivedAt > windowMs) byObserver.delete(observer);
      if (byObserver.size === 0) this.bySubject.delete(subject);
    }
  }
}

export function evaluateQuorum(input: {
  subject: string;
  /** Live members of the subject's service; the subject is removed if present. */
  members: Iterable<string>;
  reports: readonly HealthReport[];
  now: number;
  windowMs: number;
  /**
   * The subject's registered incarnation: suspicion about an older one is about a previous run of
   * the member (before a restart re-registered it) and does not count. Default 0.
   */
  minIncarnation?: number;
}): QuorumVerdict {
  const voters = new Set(input.members);
  voters.delete(input.subject);
  const suspecting: string[] = [];
  const vouching: string[] = [];
  for (const report of input.reports) {
    if (report.subject !== input.subject || !voters.has(report.observer)) continue;
    if (input.now - report.receivedAt > input.windowMs) continue;
    if (report.status !== 'alive' && report.incarnation < (input.minIncarnation ?? 0)) continue;
    (report.status === 'alive' ? vouching : suspecting).push(report.observer);
  }
  const needed = quorumSize(voters.size);
  return {
    voters: voters.size,
    needed,
    suspecting: suspecting.sort(),
    vouching: vouching.sort(),
    failed: suspecting.length >= needed,
    alive: vouching.length >= needed,
  };
}
