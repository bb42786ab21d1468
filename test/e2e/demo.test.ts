// `npm start` runs the demo: it must tell its story and stop cleanly, with nothing but Node.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
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

describe('ctxmesh demo', () => {
  beforeAll(() => {
    if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
  });

  it('shows sticky routing, a breaker opening with no client-visible errors, recovery, and exits 0', async () => {
    const { code, out } = await run(['demo', '--exit']);
    expect(code, out).toBe(0);
    expect(out).toMatch(/Routing follows context/);
    expect(out).toMatch(/\(3 turns, same instance each time\)/);
    expect(out).toMatch(/verified from the mTLS certificate/);
    expect(out).toMatch(/breaker for chat-2 opened/);
    expect(out).toMatch(/breakers: chat-1=closed {2}chat-2=open {2}chat-3=closed/);
    expect(out).toMatch(/its owner chat-2 is failing: the next instance on the ring serves it/);
    expect(out).toMatch(/client-visible errors: 0\b/);
    // After recovery the half-open probe succeeds and every breaker is closed again.
    // The restarted sidecar reads the context back from its WAL: same body, same ETag (the demo
    // itself fails if either differs).
    expect(out).toMatch(/GET after the restart → 200, ETag "[^"]+": the same context, the same version\./);
    expect(out).toMatch(/Summary[\s\S]*breakers: chat-1=closed {2}chat-2=closed {2}chat-3=closed/);
    expect(out).toMatch(/stopped\./);
  }, 60_000);

  it('keeps the mesh up when asked and stops cleanly on Ctrl-C (SIGINT)', async () => {
    let sent = false;
    const { code, out } = await run(['demo', '--keep-running'], (text, child) => {
      if (!sent && text.includes('Ctrl-C stops it.')) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    expect(sent, out).toBe(true);
    expect(code, out).toBe(0);
    expect(out).toMatch(/stopped\./);
  }, 60_000);
});
