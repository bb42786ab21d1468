import { describe, expect, it } from 'vitest';
import { MutableMembership, type Member } from '../../src/membership/membership.js';
import { syncMembership } from '../../src/xds-client/membership-sync.js';
import type { EndpointGroup, XdsEndpoint } from '../../src/xds-client/translate.js';

const self: Member = { id: 'a', address: '127.0.0.1:1', state: 'alive', epoch: 0 };
const group = (endpoints: XdsEndpoint[]): EndpointGroup => ({ clusterName: 'chat', endpoints });
const b = (health: XdsEndpoint['health'], epoch: number): XdsEndpoint => ({ address: '127.0.0.1:2', zone: '', priority: 0, health, nodeId: 'b', epoch });

describe('membership from EDS', () => {
  it('keeps a suspicion of the same incarnation that EDS still calls healthy; a new epoch or a verdict wins', () => {
    const membership = new MutableMembership(self);
    syncMembership(membership, group([b('HEALTHY', 1)]), []);
    expect(membership.get('b')).toMatchObject({ state: 'alive', epoch: 1 });
    membership.upsert({ ...membership.get('b')!, state: 'suspect' }); // the health monitor's own evidence
    syncMembership(membership, group([b('HEALTHY', 1), { address: '127.0.0.1:3', zone: '', priority: 0, health: 'HEALTHY', nodeId: 'c' }]), []);
    expect(membership.get('b')!.state).toBe('suspect');
    expect(membership.get('c')!.state).toBe('alive');
    syncMembership(membership, group([b('UNHEALTHY', 2)]), []);
    expect(membership.get('b')).toMatchObject({ state: 'dead', epoch: 2 });
    expect(membership.get('c')).toBeUndefined();
    syncMembership(membership, group([b('HEALTHY', 3)]), []);
    expect(membership.get('b')).toMatchObject({ state: 'alive', epoch: 3 });
  });

  it('takes its own state and epoch from EDS but keeps its advertised address; static peers stay', () => {
    const membership = new MutableMembership(self, [{ id: 's', address: '127.0.0.1:9', state: 'alive', epoch: 0 }]);
    syncMembership(membership, group([{ address: '10.0.0.1:1', zone: '', priority: 0, health: 'DRAINING', nodeId: 'a', epoch: 7 }]), ['s']);
    expect(membership.self).toEqual({ ...self, state: 'draining', epoch: 7 });
    expect(membership.get('s')).toBeDefined();
  });
});
