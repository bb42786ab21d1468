// State-of-the-world version_info is a content hash: two control-plane replicas serving the same
// resources answer with the same version_info, whatever path their caches took to that content.
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/mesh.js';
import { SnapshotCache } from '../../xds/snapshot-cache.js';
import { TYPE_URL as PROTO_TYPE_URL } from '../../xds/protos.js';
import { SotwClient, TYPE_URL } from './ads-client.js';
import { startControlPlane, xdsAddress } from './harness.js';

const closers = closeAfterEach();

const cluster = (name: string, connectTimeoutSeconds = 1) => ({
  name,
  type: 'EDS',
  eds_cluster_config: { eds_config: { ads: {} } },
  connect_timeout: { seconds: connectTimeoutSeconds },
});

describe('state-of-the-world version_info', () => {
  it('is the same for the same resources, whatever order and history led there', () => {
    const direct = new SnapshotCache();
    direct.update(PROTO_TYPE_URL.cluster, [{ name: 'a', message: cluster('a') }, { name: 'b', message: cluster('b') }]);

    const winding = new SnapshotCache();
    winding.update(PROTO_TYPE_URL.cluster, [{ name: 'b', message: cluster('b', 5) }]);
    winding.update(PROTO_TYPE_URL.cluster, [{ name: 'c', message: cluster('c') }]);
    const changed = winding.version(PROTO_TYPE_URL.cluster);
    winding.update(PROTO_TYPE_URL.cluster, [{ name: 'a', message: cluster('a') }, { name: 'b', message: cluster('b') }], ['c']);

    expect(winding.version(PROTO_TYPE_URL.cluster)).toBe(direct.version(PROTO_TYPE_URL.cluster));
    expect(changed).not.toBe(direct.version(PROTO_TYPE_URL.cluster));
    // Another type's version is its own.
    expect(direct.version(PROTO_TYPE_URL.listener)).not.toBe(direct.version(PROTO_TYPE_URL.cluster));
    expect(new SnapshotCache().version(PROTO_TYPE_URL.listener)).toBe(direct.version(PROTO_TYPE_URL.listener));
  });

  it('two control planes serving the same services answer with the same version_info per type', async () => {
    const services = {
      services: [
        { name: 'alpha', tls: 'none', endpoints: [{ address: '127.0.0.1:7001', zone: 'z1' }] },
        { name: 'beta', endpoints: [{ address: '127.0.0.1:7101', zone: 'z1' }, { address: '127.0.0.1:7102', zone: 'z2', priority: 1 }] },
      ],
    };
    const first = await startControlPlane(closers, services);
    // The second one is configured in another order: same resources.
    const second = await startControlPlane(closers, { services: [...services.services].reverse() });
    const versions = async (address: string): Promise<Record<string, string>> => {
      const client = new SotwClient(address, { id: `observer-${address}` });
      closers.push(async () => client.close());
      const out: Record<string, string> = {};
      for (const type of [TYPE_URL.listener, TYPE_URL.cluster, TYPE_URL.clusterLoadAssignment]) {
        client.request(type, type === TYPE_URL.clusterLoadAssignment ? ['alpha', 'beta'] : []);
        out[type] = (await client.next(type)).version_info;
      }
      return out;
    };
    const a = await versions(xdsAddress(first));
    const b = await versions(xdsAddress(second));
    expect(Object.values(a).every((v) => v.length > 0)).toBe(true);
    expect(b).toEqual(a);
  });
});
