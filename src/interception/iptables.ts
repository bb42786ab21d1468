// Transparent interception, applied: runs iptables-save / iptables-restore in the current network
// namespace. Install is cleanup-then-restore, so installing twice leaves one copy of the rules;
// cleanup removes only CTXMESH_* chains and the jumps to them, and is a no-op when none exist.
import { spawn } from 'node:child_process';
import { buildCleanupScript, buildReplaceScript, type InterceptionOptions } from './iptables-rules.js';

export type IptablesErrorCode =
  /** iptables-save / iptables-restore is not on PATH. */
  | 'not_installed'
  /** The caller lacks root / CAP_NET_ADMIN. */
  | 'not_permitted'
  /** iptables ran and refused the rules (e.g. a missing kernel module). */
  | 'failed';

export class IptablesError extends Error {
  override name = 'IptablesError';
  constructor(
    readonly code: IptablesErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface ApplyResult {
  /** Whether an earlier installation was removed first. */
  replaced: boolean;
  /** The script given to iptables-restore. */
  script: string;
}

/** Installs the rules, replacing an earlier installation in the same transaction. */
export async function applyInterception(options: InterceptionOptions): Promise<ApplyResult> {
  const table = await saveNatTable();
  const replaced = buildCleanupScript(table) !== undefined;
  const script = buildReplaceScript(table, options);
  await run('iptables-restore', ['--noflush'], script);
  return { replaced, script };
}

/** Removes the chains and jumps; resolves false when nothing was installed. */
export async function cleanupInterception(): Promise<boolean> {
  const table = await run('iptables-save', ['-t', 'nat']);
  const script = buildCleanupScript(table);
  if (script === undefined) return false;
  await run('iptables-restore', ['--noflush'], script);
  return true;
}

/** The nat table as iptables-save prints it. */
export function saveNatTable(): Promise<string> {
  return run('iptables-save', ['-t', 'nat']);
}

function run(command: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        reject(new IptablesError('not_installed', `${command} not found on PATH: install iptables (Debian/Ubuntu: apt-get install iptables)`));
      } else if (err.code === 'EACCES') {
        reject(new IptablesError('not_permitted', `${command}: permission denied running it`));
      } else reject(new IptablesError('failed', `${command}: ${err.message}`));
    });
    // A child that exits before reading its input makes the write fail with EPIPE; its exit
    // status and stderr carry the real story.
    child.stdin.on('error', () => {});
    child.on('close', (code) => {
      if (code === 0) return resolve(stdout);
      const detail = stderr.trim() || `exit status ${code}`;
      if (/permission denied|must be root|operation not permitted/i.test(detail)) {
        reject(new IptablesError('not_permitted', `${command}: not permitted (run as root or with CAP_NET_ADMIN in the pod's network namespace): ${detail}`));
      } else reject(new IptablesError('failed', `${command} failed: ${detail}`));
    });
    child.stdin.end(input ?? '');
  });
}
