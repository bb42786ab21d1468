// A fault switch in the peer transport, for tests and chaos drills: a per-sidecar set of blocked
// peers. Calls to a blocked peer fail at once as if it were unreachable, and calls from a blocked
// peer are cut off before a handler sees them, so blocking each side's view of the other makes a
// network partition out of real processes. It exists only when the sidecar runs with
// CTXMESH_FAULTS=1 in its environment; otherwise the transport never consults one and the admin
// API has no /faults.
import { MeshError } from '../../errors/table.js';

/** The environment variable that arms the switch; any other value than "1" leaves it out. */
export const FAULTS_ENV = 'CTXMESH_FAULTS';
/** Names the calling sidecar on peer calls while faults are armed (informational: not an identity). */
export const PEER_NODE_HEADER = 'x-ctxmesh-peer-node';
/** Entries one /faults request may carry. */
const MAX_BLOCKED = 1_024;

export function faultsArmed(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[FAULTS_ENV] === '1';
}

export interface FaultsDescription {
  node: string;
  blocked: string[];
  /** Calls dropped or refused because of the switch since it was armed. */
  dropped: number;
  refused: number;
}

export class PeerFaults {
  private blocked = new Set<string>();
  dropped = 0;
  refused = 0;

  /**
   * `selfId` names this sidecar on its calls; `addressOf` maps a member id to the address calls to
   * it use (blocked entries may be ids or host:port addresses).
   */
  constructor(
    readonly selfId: string,
    private readonly addressOf: (id: string) => string | undefined,
  ) {}

  /** Replaces the blocked set. Throws MeshError bad_request on anything but a list of non-empty strings. */
  block(entries: unknown): void {
    if (!Array.isArray(entries) || !entries.every((e) => typeof e === 'string' && e.length > 0 && e.length <= 256)) {
      throw new MeshError('bad_request', 'faults: "block" must be a list of peer ids or host:port addresses');
    }
    if (entries.length > MAX_BLOCKED) throw new MeshError('bad_request', `faults: at most ${MAX_BLOCKED} blocked peers`);
    this.blocked = new Set(entries as string[]);
  }

  clear(): void {
    this.blocked.clear();
  }

  /** Whether an outgoing call to `address` must fail (counted when it does). */
  dropsCallTo(address: string): boolean {
    if (this.blocked.size === 0) return false;
    const hit = this.blocked.has(address) || [...this.blocked].some((entry) => this.addressOf(entry) === address);
    if (hit) this.dropped++;
    return hit;
  }

  /** Whether an incoming call from the sidecar named `callerId` must be cut off (counted when it is). */
  refusesCallFrom(callerId: string | undefined): boolean {
    if (this.blocked.size === 0 || callerId === undefined) return false;
    const hit = this.blocked.has(callerId) || (this.addressOf(callerId) !== undefined && this.blocked.has(this.addressOf(callerId)!));
    if (hit) this.refused++;
    return hit;
  }

  describe(): FaultsDescription {
    return { node: this.selfId, blocked: [...this.blocked].sort(), dropped: this.dropped, refused: this.refused };
  }
}
