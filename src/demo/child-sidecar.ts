// A sidecar of the demo as its own process (`ctxmesh sidecar -c file`), so that the demo can
// SIGKILL it as a crash would and start it again on the same config and data directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, writeFileSync, type WriteStream } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS } from '../cli/node-flags.js';
import type { SidecarPorts } from '../sidecar.js';

/** The built CLI beside this module (dist/src/demo → dist/src/cli). */
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));
/** A sidecar that is not ready by then will not be. */
const READY_TIMEOUT_MS = 20_000;
/** SIGTERM drains; past this the demo stops waiting and kills. */
const STOP_TIMEOUT_MS = 5_000;

const running = new Set<ChildProcess>();
// Whatever ends the demo, no sidecar outlives it.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export class ChildSidecar {
  private constructor(
    readonly name: string,
    readonly process: ChildProcess,
    readonly ports: SidecarPorts,
    private readonly exited: Promise<void>,
  ) {}

  get pid(): number {
    return this.process.pid!;
  }

  /**
   * Writes the config (JSON is YAML) and runs a sidecar on it; resolves once it logs that it is
   * ready, with the ports it bound. Its log lines go to `logFile`.
   */
  static async start(name: string, config: object, configFile: string, logFile: string): Promise<ChildSidecar> {
    writeFileSync(configFile, JSON.stringify(config, null, 2));
    const log = createWriteStream(logFile, { flags: 'a' });
    const child = spawn(process.execPath, [...NODE_FLAGS, CLI, 'sidecar', '-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    const exited = new Promise<void>((resolve) =>
      child.once('exit', () => {
        running.delete(child);
        resolve();
      }),
    );
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      log.write(chunk);
    });
    const ports = await new Promise<SidecarPorts>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => fail(new Error(`${name}'s sidecar was not ready within ${READY_TIMEOUT_MS} ms (log: ${logFile})`)), READY_TIMEOUT_MS);
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        child.kill('SIGKILL');
        reject(err);
      };
      child.once('exit', (code, signal) => fail(new Error(`${name}'s sidecar exited (${signal ?? code}) before it was ready: ${stderr.trim() || `see ${logFile}`}`)));
      readLines(child, log, (line) => {
        if (settled || !line.includes('"sidecar ready"')) return;
        const parsed = JSON.parse(line) as { msg?: string; ports?: SidecarPorts };
        if (parsed.msg !== 'sidecar ready' || !parsed.ports) return;
        settled = true;
        clearTimeout(timer);
        resolve(parsed.ports);
      });
    });
    return new ChildSidecar(name, child, ports, exited);
  }

  get alive(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  /** A crash: no drain, no goodbye to the control plane or the peers. */
  async kill(): Promise<void> {
    if (this.alive) this.process.kill('SIGKILL');
    await this.exited;
  }

  /** A graceful stop (SIGTERM drains), with a deadline. */
  async stop(): Promise<void> {
    if (!this.alive) return this.exited;
    this.process.kill('SIGTERM');
    const timer = setTimeout(() => this.process.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
  }
}

function readLines(child: ChildProcess, log: WriteStream, onLine: (line: string) => void): void {
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    log.write(chunk);
    const parts = (partial + chunk.toString()).split('\n');
    partial = parts.pop()!;
    for (const line of parts) if (line.startsWith('{')) onLine(line);
  });
  child.once('exit', () => log.end());
}
