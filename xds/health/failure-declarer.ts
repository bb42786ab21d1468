// Turns health reports from sidecars into registry transitions: keeps the newest report per
// (observer, subject) in the registry store — shared between control-plane replicas when it is
// Redis, so a quorum counts reports whichever replica received them — and asks the quorum rule
// whether the subject is failed or alive again. The store makes the transition itself at most
// once per state, so two replicas reaching quorum together declare one failure with one epoch.
// Only registered, live members may vote, and only on members of their own service.
import type { ServiceRegistry } from '../registry.js';
import type { RegistryStore } from '../store/store.js';
import { evaluateQuorum, type QuorumVerdict, type ReportStatus } from './quorum.js';

export interface HealthReportBatch {
  observer: string;
  reports: Array<{ subject: string; status: ReportStatus; incarnation: number }>;
}

export interface SubjectOutcome {
  subject: string;
  /** What happened to the subject because of this batch. */
  outcome: 'declared' | 'recovered' | 'unchanged' | 'ignored';
  reason?: string;
  verdict?: QuorumVerdict;
}

export class FailureDeclarer {
  constructor(
    private readonly registry: ServiceRegistry,
    private readonly store: RegistryStore,
    private readonly options: { windowMs: number; now?: () => number },
  ) {}

  async submit(batch: HealthReportBatch): Promise<SubjectOutcome[]> {
    const now = (this.options.now ?? Date.now)();
    const observer = this.registry.registration(batch.observer);
    const outcomes: SubjectOutcome[] = [];
    for (const { subject, status, incarnation } of batch.reports) {
      const target = this.registry.registration(subject);
      if (!observer) outcomes.push({ subject, outcome: 'ignored', reason: `observer ${batch.observer} is not a registered member` });
      else if (!target) outcomes.push({ subject, outcome: 'ignored', reason: `subject ${subject} is not a registered member` });
      else if (target.service !== observer.service) outcomes.push({ subject, outcome: 'ignored', reason: `observer and subject are in different services` });
      else if (subject === batch.observer) outcomes.push({ subject, outcome: 'ignored', reason: 'a member cannot report on itself' });
      else if (status !== 'alive' && incarnation < target.incarnation) {
        // The observer still holds what it saw of a previous run: the subject re-registered since
        // (a restart) with a higher incarnation, which this suspicion does not concern.
        outcomes.push({ subject, outcome: 'ignored', reason: `stale: about incarnation ${incarnation}, registered ${target.incarnation}` });
      } else {
        const reports = await this.store.recordReport({ observer: batch.observer, subject, status, incarnation, receivedAt: now }, this.options.windowMs);
        const verdict = evaluateQuorum({ subject, members: this.registry.liveMembers(target.service), reports, now, windowMs: this.options.windowMs, minIncarnation: target.incarnation });
        if (verdict.failed) {
          const reason = `${verdict.suspecting.length}/${verdict.voters} members report it suspect or dead (${verdict.suspecting.join(', ')})`;
          outcomes.push({ subject, outcome: (await this.store.declareFailed(subject, reason)) ? 'declared' : 'unchanged', verdict });
        } else if (verdict.alive) {
          const reason = `${verdict.vouching.length}/${verdict.voters} members report it alive`;
          outcomes.push({ subject, outcome: (await this.store.declareRecovered(subject, reason)) ? 'recovered' : 'unchanged', verdict });
        } else {
          outcomes.push({ subject, outcome: 'unchanged', verdict });
        }
      }
    }
    return outcomes;
  }
}
