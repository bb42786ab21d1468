// The L1 default follows the L2: with the embedded L2 (in process already) there is none unless
// asked for; asked for, it is used as with Redis.
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { closeAfterEach, createPki, sidecarConfig, startSidecar, type ConfigInput, type IdentityFiles } from '../helpers/mesh.js';

describe('L1 in front of the embedded L2', () => {
  const closers = closeAfterEach();
  let identity: IdentityFiles;

  beforeAll(async () => {
    identity = await (await createPki()).issue('state');
  });

  async function sidecar(context: ConfigInput = {}) {
    const running = await startSidecar(sidecarConfig(identity, { context: { port: 0, wal: { fsync: 'none' }, ...context } }));
    closers.push(() => running.sidecar.close());
    const api = `http://127.0.0.1:${running.sidecar.ports.context}/v1/contexts/acme/s1`;
    const put = await request(api, { method: 'PUT', body: 'v1', headers: { 'content-type': 'text/plain' } });
    expect(put.statusCode).toBe(204);
    await put.body.dump();
    const tiers: string[] = [];
    for (let i = 0; i < 2; i++) {
      const get = await request(api);
      expect(await get.body.text()).toBe('v1');
      tiers.push(String(get.headers['ctxmesh-tier']));
    }
    const state = (await (await request(`http://127.0.0.1:${running.sidecar.ports.admin}/state`)).body.json()) as { l1: { maxBytes: number; entries: number } };
    return { tiers, l1: state.l1 };
  }

  it('is off by default: reads are served from the embedded L2', async () => {
    const { tiers, l1 } = await sidecar();
    expect(tiers).toEqual(['l2', 'l2']);
    expect(l1).toMatchObject({ maxBytes: 0, entries: 0 });
  });

  it('is used when context.l1.maxBytes is given', async () => {
    const { tiers, l1 } = await sidecar({ l1: { maxBytes: '1MiB' } });
    expect(tiers).toEqual(['l1', 'l1']); // the write put it there
    expect(l1).toMatchObject({ maxBytes: 1024 ** 2, entries: 1 });
  });
});
