// `npm start` runs the demo: it must tell its story and stop cleanly, with nothing but Node. The
// demo runs the control plane, a gateway sidecar and three sidecars as child processes, SIGKILLs
// one of them and starts it again.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';

const CLI = 'dist/src/cli/main.js';

function run(args: string[], onOutput?: (text: string, child: ReturnType<typeof spawn>) => void): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const collect = (chunk: Buffer): void => {
      out += chunk.toString();
      onOutput?.(out, child);
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
}

/** The lines of the numbered step `n` (up to the next step or the summary). */
function step(out: string, n: number): string {
  const start = out.indexOf(`\n${n}. `);
  expect(start, out).toBeGreaterThanOrEqual(0);
  const rest = out.slice(start + 1);
  const end = rest.search(/\n(\d+\. |Summary)/);
  return end < 0 ? rest : rest.slice(0, end);
}

const REGISTRY_ROW = /^\s+chat\s+ring_hash\s+127\.0\.0\.1:\d+\s+(chat-\d)\s+z1\s+(HEALTHY|UNHEALTHY|DRAINING)\s+\d+$/gm;

async function getJson<T>(url: string, headers: Record<string, string> = {}): Promise<{ status: number; etag: string | undefined; body: T }> {
  const res = await request(url, { headers });
  const etag = res.headers.etag;
  return { status: res.statusCode, etag: typeof etag === 'string' ? etag : undefined, body: (await res.body.json()) as T };
}

describe('ctxmesh demo', () => {
  beforeAll(() => {
    if (!existsSync(CLI)) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'ignore', timeout: 180_000 });
  });

  it('runs the mesh from the control plane, fails one sidecar over without losing the conversation, and exits 0', async () => {
    const { code, out } = await run(['demo', '--exit']);
    expect(code, out).toBe(0);
    expect(out).toMatch(/control plane: xDS 127\.0\.0\.1:\d+, admin http:\/\/127\.0\.0\.1:\d+/);

    // 1. The control plane's registry: the three sidecars registered themselves as chat's endpoints.
    const registered = [...step(out, 1).matchAll(REGISTRY_ROW)];
    expect(registered.map((m) => [m[1], m[2]]), out).toEqual([
      ['chat-1', 'HEALTHY'],
      ['chat-2', 'HEALTHY'],
      ['chat-3', 'HEALTHY'],
    ]);

    // 2. Sticky routing over mTLS.
    expect(step(out, 2)).toMatch(/Routing follows context/);
    expect(step(out, 2)).toMatch(/\(3 turns, same instance each time\)/);
    expect(step(out, 2)).toMatch(/verified from the mTLS certificate/);

    // 3. The breaker opens on the failing instance with nothing visible to the client, then closes.
    const breaker = step(out, 3);
    expect(breaker).toMatch(/breaker for chat-2 opened; breakers: chat-1=closed {2}chat-2=open {2}chat-3=closed/);
    expect(breaker).toMatch(/its owner chat-2 is failing: the next instance on the ring serves it/);
    expect(breaker).toMatch(/client-visible errors: 0\b/);
    expect(breaker).toMatch(/breakers: chat-1=closed {2}chat-2=closed {2}chat-3=closed/);

    // 4. Failover: the killed sidecar is declared by the control plane, the session moves to a
    // replica, which reads the context written on the killed one before the kill.
    const failover = step(out, 4);
    const [, home, written] = /PUT then PATCH on (chat-\d) → 200, ETag ("[^"]+")/.exec(failover) ?? [];
    expect(home, out).toBeDefined();
    expect(failover).toMatch(new RegExp(`SIGKILL ${home}'s sidecar \\(pid \\d+\\)`));
    expect(failover).toMatch(/turns? while the mesh found out: answered by chat-\d(, chat-\d)*, client-visible errors: 0 /);
    expect(failover).toMatch(new RegExp(`GET /v1/failovers → declared chat 127\\.0\\.0\\.1:\\d+ \\(${home}\\), epoch \\d+: 2/2 members report it suspect or dead`));
    const afterKill = [...failover.matchAll(REGISTRY_ROW)].map((m) => [m[1], m[2]]);
    expect(afterKill.find(([node]) => node === home)).toEqual([home, 'UNHEALTHY']);
    expect(afterKill.filter(([, health]) => health === 'HEALTHY')).toHaveLength(2);
    const [, replica, readEtag] = /GET \S+\/conversation on (chat-\d)'s sidecar → 200, ETag ("[^"]+"): the context written on (chat-\d) before the kill\./.exec(failover) ?? [];
    expect(replica, out).toBeDefined();
    expect(replica).not.toBe(home);
    expect(readEtag).toBe(written);
    const [, continued] = /continues the conversation: PATCH → 200, ETag ("[^"]+")/.exec(failover) ?? [];
    expect(continued, out).toBeDefined();

    // 5. It comes back: registered again, HEALTHY, and serving the newest version of the conversation.
    const back = step(out, 5);
    expect(back).toMatch(new RegExp(`recovered chat 127\\.0\\.0\\.1:\\d+ \\(${home}\\)`));
    const [, restartedEtag] = new RegExp(`on ${home}'s restarted sidecar → 200, ETag ("[^"]+"): the same context`).exec(back) ?? [];
    expect(restartedEtag, out).toBe(continued);
    expect(back).toMatch(new RegExp(`→ ${home} {3}\\(home again\\)`));

    expect(out).toMatch(/Summary\n {3}requests: \d+, client-visible errors: 0 \(0 during the failover\)/);
    expect(out).toMatch(/Summary[\s\S]*breakers: chat-1=closed {2}chat-2=closed {2}chat-3=closed/);
    expect(out).toMatch(/stopped\./);
  }, 90_000);

  it('keeps the mesh up when asked, its control plane and context API answering, and stops cleanly on Ctrl-C (SIGINT)', async () => {
    let checked: Promise<void> | undefined;
    const { code, out } = await run(['demo', '--keep-running'], (text, child) => {
      if (checked || !text.includes('Ctrl-C stops it.')) return;
      checked = (async () => {
        try {
          const admin = /curl (http:\/\/127\.0\.0\.1:\d+)\/v1\/registry/.exec(text)![1]!;
          const registry = await getJson<{ services: Array<{ name: string; endpoints: Array<{ nodeId?: string; health: string }> }> }>(`${admin}/v1/registry`);
          const chat = registry.body.services.find((s) => s.name === 'chat')!;
          expect(chat.endpoints.map((e) => [e.nodeId, e.health]).sort()).toEqual([
            ['chat-1', 'HEALTHY'],
            ['chat-2', 'HEALTHY'],
            ['chat-3', 'HEALTHY'],
          ]);
          const history = await getJson<{ failovers: Array<{ kind: string; nodeId?: string }> }>(`${admin}/v1/failovers`);
          const killed = /SIGKILL (chat-\d)'s sidecar/.exec(text)![1];
          expect(history.body.failovers.filter((f) => f.kind === 'declared').map((f) => f.nodeId)).toContain(killed);
          // Every sidecar serves the conversation at the version the demo ended on.
          const [, lastEtag] = /restarted sidecar → 200, ETag ("[^"]+")/.exec(text)!;
          const contexts = [...text.matchAll(/curl -H 'ctxmesh-consistency: strong' (http:\/\/\S+)/g)].map((m) => m[1]!);
          expect(contexts).toHaveLength(3);
          for (const url of contexts) {
            const read = await getJson<{ summary: string }>(url, { 'ctxmesh-consistency': 'strong' });
            expect(read.status).toBe(200);
            expect(read.etag).toBe(lastEtag);
            expect(read.body.summary).toBe('answered after the failover');
          }
        } finally {
          child.kill('SIGINT');
        }
      })();
    });
    expect(checked, out).toBeDefined();
    await checked;
    expect(code, out).toBe(0);
    expect(out).toMatch(/stopped\./);
  }, 90_000);
});
