import { describe, expect, it } from 'vitest';
import { EMBEDDED_TYPE_URL, loadXdsProtos, TYPE_URL } from '../../xds/protos.js';

describe('xDS protos', () => {
  it('loads the ADS service once and round-trips resources through Any', () => {
    const protos = loadXdsProtos();
    expect(loadXdsProtos()).toBe(protos);
    expect(Object.keys(protos.adsService).sort()).toEqual(['DeltaAggregatedResources', 'StreamAggregatedResources']);
    const any = protos.encodeResource(TYPE_URL.clusterLoadAssignment, {
      cluster_name: 'chat',
      endpoints: [
        {
          locality: { zone: 'z1' },
          priority: 1,
          lb_endpoints: [
            { health_status: 'DRAINING', endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: 8080 } } } },
          ],
        },
      ],
    });
    expect(any.type_url).toBe(TYPE_URL.clusterLoadAssignment);
    const back = protos.decodeResource<any>(any);
    expect(back.cluster_name).toBe('chat');
    expect(back.endpoints[0].priority).toBe(1);
    expect(back.endpoints[0].locality.zone).toBe('z1');
    expect(back.endpoints[0].lb_endpoints[0].health_status).toBe('DRAINING');
    expect(back.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value).toBe(8080);
  });

  it('encodes nested Any values (filters inside a listener)', () => {
    const protos = loadXdsProtos();
    const router = protos.encodeResource(EMBEDDED_TYPE_URL.router, {});
    const hcm = protos.encodeResource(EMBEDDED_TYPE_URL.httpConnectionManager, {
      stat_prefix: 'x',
      rds: { route_config_name: 'x', config_source: { ads: {}, resource_api_version: 'V3' } },
      http_filters: [{ name: 'envoy.filters.http.router', typed_config: router }],
    });
    const listener = protos.encodeResource(TYPE_URL.listener, { name: 'x', api_listener: { api_listener: hcm } });
    const decoded = protos.decodeResource<any>(listener);
    const inner = protos.decodeResource<any>(decoded.api_listener.api_listener);
    expect(inner.rds.route_config_name).toBe('x');
    expect(inner.http_filters[0].typed_config.type_url).toBe(EMBEDDED_TYPE_URL.router);
  });

  it('refuses an unknown type', () => {
    expect(() => loadXdsProtos().encodeResource('type.googleapis.com/no.Such', {})).toThrow(/unknown xDS message type/);
  });
});
