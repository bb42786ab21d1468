// The member set follows the EDS of the sidecar's own service: each endpoint that names its
// sidecar (filter_metadata ctxmesh.node_id, or endpoint.hostname) is a member, its health its
// state (HEALTHY alive, UNHEALTHY dead, DRAINING draining) and its epoch the control plane's.
// Peers from the config file that EDS does not list stay, as static clusters stay beside xDS.
import type { Member, MutableMembership } from '../membership/membership.js';
import type { Fencing } from '../peer/fencing.js';
import { endpointMembers, type EndpointGroup } from './translate.js';

export function syncMembership(membership: MutableMembership, group: EndpointGroup, staticPeerIds: readonly string[], fencing?: Fencing): void {
  const fromXds = endpointMembers(group);
  // The control plane's epochs as stated, before local doubt is mixed in: fencing judges by them.
  fencing?.observe(fromXds);
  const listed = new Set(fromXds.map((m) => m.id));
  const peers: Member[] = fromXds.filter((m) => m.id !== membership.self.id).map((m) => keepLocalDoubt(m, membership.get(m.id)));
  for (const id of staticPeerIds) {
    const current = membership.get(id);
    if (!listed.has(id) && current && id !== membership.self.id) peers.push(current);
  }
  membership.update(peers);
  // Self keeps the address it advertises; the control plane's verdict on its state and epoch
  // is what fences it after a pause.
  const self = fromXds.find((m) => m.id === membership.self.id);
  if (self) membership.upsert({ ...membership.self, state: self.state, epoch: self.epoch });
}

/**
 * The control plane saying "healthy" does not clear a suspicion this sidecar's own probes raised
 * about the same incarnation (same address and epoch): the health monitor clears it when the
 * member answers again. A new epoch, or a control-plane verdict of dead or draining, wins.
 */
function keepLocalDoubt(fromXds: Member, current: Member | undefined): Member {
  if (!current || fromXds.state !== 'alive') return fromXds;
  const sameIncarnation = current.address === fromXds.address && current.epoch === fromXds.epoch;
  return sameIncarnation && (current.state === 'suspect' || current.state === 'dead') ? { ...fromXds, state: current.state } : fromXds;
}
