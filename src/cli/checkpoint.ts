// `ctxmesh checkpoint create|list|verify|restore|erase`: a sidecar's checkpoints from the command
// line. With `-c sidecar.yaml` the work goes through the running sidecar's admin port (it owns the
// files and serialises against its own snapshots); with `--offline` or `--dir` it runs here on the
// data directory of a stopped sidecar. `restore` is always offline: it writes the state the next
// start loads, which a running sidecar would overwrite with its own.
// Exit status: 0 ok, 1 the operation failed or found problems, 2 invalid config or arguments.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline/promises';
import type { Command } from 'commander';
import { request } from 'undici';
import { ConfigError, loadSidecarConfig } from '../config/load.js';
import { AUDIT_FILE, type EraseReport } from '../state/checkpoint/erase.js';
import { createOffline, eraseOffline, listOffline, restoreOffline, verifyOffline, type RestoreReport } from '../state/checkpoint/offline.js';
import { loadEncryptionKey } from '../state/checkpoint/snapshot-file.js';
import { progressBar } from './progress.js';

const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
const ADMIN_HOST = '127.0.0.1';
/** The liveness probe before an offline write: a local sidecar answers at once or not at all. */
const PROBE_TIMEOUT_MS = 2_000;

/** The command line or the config is wrong: exit 2. */
class UsageError extends Error {}
/** The operation could not be done: exit 1. */
class CommandError extends Error {}

interface TargetOptions {
  config?: string;
  offline?: boolean;
  dir?: string;
  keyFile?: string;
  json?: boolean;
}

/** Where a command works: the running sidecar's admin API, or a data directory on disk. */
type Target =
  | { kind: 'online'; configFile: string; adminUrl: string; dir: string }
  | { kind: 'offline'; dir: string; encryptionKey?: Buffer; configFile?: string; adminUrl?: string };

export function registerCheckpoint(program: Command): void {
  const checkpoint = program
    .command('checkpoint')
    .description('checkpoints of a sidecar\'s context state: create, list, verify, restore (offline), erase a key (GDPR)')
    .configureOutput({
      outputError: (message, write) => write(`ctxmesh checkpoint: ${message.replace(/^error: /, '')}`),
    })
    .addHelpText(
      'after',
      `
Target: -c sidecar.yaml works through the running sidecar's admin port (127.0.0.1:admin.port);
add --offline to work on its data directory (context.checkpoint.dir) while it is stopped, or
name a data directory with --dir [--key-file]. restore is always offline.

Examples:
  ctxmesh checkpoint create -c sidecar.yaml --reason before-upgrade
  ctxmesh checkpoint list -c sidecar.yaml
  ctxmesh checkpoint verify --dir ./data/node-a
  ctxmesh checkpoint restore -c sidecar.yaml --to 2025-01-31T12:00:00Z
  ctxmesh checkpoint erase -c sidecar.yaml --key acme/s1`,
    );

  withTarget(checkpoint.command('create'))
    .description('take a checkpoint now (a full or incremental snapshot; offline: a full one of the latest state)')
    .option('--reason <reason>', 'recorded in the checkpoint header (online; offline checkpoints are recorded as manual)')
    .addHelpText('after', examples('ctxmesh checkpoint create -c sidecar.yaml --reason before-upgrade', 'ctxmesh checkpoint create --dir ./data/node-a'))
    .action((options: TargetOptions & { reason?: string }) => runReporting(() => create(options)));

  withTarget(checkpoint.command('list'))
    .description('list checkpoints, oldest first: id, kind, parent, created, WAL position, reason, flags, frontier (newest write per origin node)')
    .addHelpText('after', examples('ctxmesh checkpoint list -c sidecar.yaml', 'ctxmesh checkpoint list --dir ./data/node-a --json'))
    .action((options: TargetOptions) => runReporting(() => list(options)));

  withTarget(checkpoint.command('verify'))
    .description('read every snapshot and the WAL through; exit 0 when sound, 1 naming each problem')
    .option('--key <key>', 'also prove a key (or everything under key/) is gone: counts what still holds it')
    .addHelpText(
      'after',
      examples('ctxmesh checkpoint verify -c sidecar.yaml', 'ctxmesh checkpoint verify --dir ./data/node-a --key acme/s1', 'ctxmesh checkpoint verify -c sidecar.yaml --json'),
    )
    .action((options: TargetOptions & { key?: string }) => runReporting(() => verify(options)));

  withTarget(checkpoint.command('restore'))
    .description(
      'rebuild the state as of a checkpoint or a time and write it as a new checkpoint, which the next start loads; ' +
        'offline only: the sidecar must be stopped (with -c it is checked; with --dir it is up to you)',
    )
    .requiredOption('--to <point>', 'a checkpoint id (see `list`), an ISO 8601 time or epoch milliseconds')
    .option('--key-prefix <prefix>', 'restore only this tenant or session (acme/, acme/s1); every other context keeps its latest state')
    .option('--roll-forward-until <time>', 'with a checkpoint id: also replay WAL records written up to this time (ISO 8601 or epoch ms)')
    .addHelpText(
      'after',
      examples(
        'ctxmesh checkpoint restore -c sidecar.yaml --to 20250131T120000000Z-000000001234-full',
        'ctxmesh checkpoint restore -c sidecar.yaml --to 2025-01-31T12:00:00Z --key-prefix acme/',
        'ctxmesh checkpoint restore --dir ./data/node-a --to <id> --roll-forward-until 2025-01-31T12:05:00Z',
      ),
    )
    .action((options: TargetOptions & { to: string; keyPrefix?: string; rollForwardUntil?: string }) => runReporting(() => restore(options)));

  withTarget(checkpoint.command('erase'))
    .description('remove a key (or everything under key/) from every snapshot and WAL segment, and write an audit record')
    .requiredOption('--key <key>', 'the context key, or a prefix ending in / (acme/)')
    .option('--yes', 'do not ask for confirmation (required when not on a terminal)')
    .addHelpText(
      'after',
      examples('ctxmesh checkpoint erase -c sidecar.yaml --key acme/s1', 'ctxmesh checkpoint erase --dir ./data/node-a --key acme/ --yes', 'ctxmesh checkpoint verify -c sidecar.yaml --key acme/s1'),
    )
    .action((options: TargetOptions & { key: string; yes?: boolean }) => runReporting(() => erase(options)));
}

function withTarget(command: Command): Command {
  return command
    .option('-c, --config <file>', 'sidecar config: work through its admin port (or, with --offline, on its data directory)')
    .option('--offline', 'with -c: work on context.checkpoint.dir directly; the sidecar should be stopped')
    .option('--dir <dir>', 'a data directory to work on offline, without a config')
    .option('--key-file <file>', 'encryption key of the snapshots (offline; default context.checkpoint.encryptionKeyFile)')
    .option('--json', 'print the raw result as JSON (for scripts)');
}

function examples(...lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  ${l}`).join('\n')}`;
}

// --- Subcommands ---

async function create(options: TargetOptions & { reason?: string }): Promise<void> {
  const target = await resolveTarget(options, { writes: true });
  let summary: SnapshotSummaryView;
  if (target.kind === 'online') {
    const query = new URLSearchParams({ reason: options.reason ?? 'manual' });
    summary = (await adminCall(target, 'POST', `/checkpoints?${query}`)).body as SnapshotSummaryView;
  } else {
    if (options.reason !== undefined) process.stderr.write('ctxmesh checkpoint: --reason is recorded online only; this offline checkpoint is recorded as manual\n');
    summary = await withProgress('create', {}, (onProgress) => createOffline({ dir: target.dir, encryptionKey: target.encryptionKey, onProgress }));
  }
  if (options.json) return printJson(summary);
  const { header } = summary;
  print([
    `created checkpoint ${header.id}`,
    `  ${header.kind}${header.parent ? ` on ${header.parent}` : ''}, ${count(summary.records, 'record')}, ${formatBytes(summary.bytes)}, covers the WAL through LSN ${header.lsn}`,
    `  ${summary.path}`,
  ]);
}

async function list(options: TargetOptions): Promise<void> {
  const target = await resolveTarget(options, { writes: false });
  const result: { checkpoints: HeaderView[]; unreadable?: Array<{ path: string; error: string }> } =
    target.kind === 'online' ? ((await adminCall(target, 'GET', '/checkpoints')).body as { checkpoints: HeaderView[] }) : await listOffline(target.dir);
  if (options.json) return printJson(result);
  for (const u of result.unreadable ?? []) process.stderr.write(`ctxmesh checkpoint: unreadable snapshot ${u.path}: ${u.error}\n`);
  if (result.checkpoints.length === 0) return print([`no checkpoints in ${target.dir}`]);
  const rows = result.checkpoints.map((h) => [
    h.id,
    h.kind,
    h.parent ?? '-',
    new Date(h.createdAt).toISOString(),
    String(h.lsn),
    h.reason ?? '-',
    flagsOf(h).join(',') || '-',
    formatFrontier(h.frontier),
  ]);
  print(table(['ID', 'KIND', 'PARENT', 'CREATED', 'LSN', 'REASON', 'FLAGS', 'FRONTIER'], rows));
}

async function verify(options: TargetOptions & { key?: string }): Promise<void> {
  const target = await resolveTarget(options, { writes: false });
  let report: VerifyView;
  if (target.kind === 'online') {
    const query = options.key === undefined ? '' : `?${new URLSearchParams({ key: options.key })}`;
    report = (await adminCall(target, 'POST', `/checkpoints/verify${query}`, [409])).body as VerifyView;
  } else {
    report = await withProgress('verify', { verify: 'snapshots' }, (onProgress) =>
      verifyOffline({ dir: target.dir, encryptionKey: target.encryptionKey, key: options.key, onProgress }),
    );
  }
  process.exitCode = report.ok ? 0 : EXIT_FAILURE;
  if (options.json) return printJson(report);
  const problems = problemsOf(report);
  const snapshotRecords = report.snapshots.reduce((sum, s) => sum + (s.records ?? 0), 0);
  const wal = 'error' in report.wal ? undefined : report.wal;
  const read = `${count(report.snapshots.length, 'snapshot')} (${count(snapshotRecords, 'record')}) and the WAL (${
    !wal || wal.records === 0 ? 'empty' : `LSN ${wal.firstLsn}–${wal.lastLsn}, ${count(wal.records, 'record')}`
  })`;
  const lines = report.ok ? [`ok: ${read} read through without a problem`] : [`${count(problems.length, 'problem')} found in ${target.dir}:`, ...problems.map((p) => `  - ${p}`)];
  if (report.key && report.ok) lines.push(`key ${report.key.key}: no records left (0 in snapshots, 0 in the WAL)`);
  const newest = report.snapshots.at(-1);
  if (newest?.lsn !== undefined) lines.push(`newest checkpoint ${newest.id}: WAL LSN ${newest.lsn}, frontier ${formatFrontier(newest.frontier)}`);
  print(lines);
}

async function restore(options: TargetOptions & { to: string; keyPrefix?: string; rollForwardUntil?: string }): Promise<void> {
  const rollForwardUntil = options.rollForwardUntil === undefined ? undefined : timeArgument('--roll-forward-until', options.rollForwardUntil);
  if (rollForwardUntil !== undefined && isTime(options.to)) {
    throw new UsageError('--roll-forward-until goes with a checkpoint id; --to <time> already replays the WAL up to that time');
  }
  if (options.keyPrefix === '') throw new UsageError('--key-prefix: empty (leave it out to restore everything)');
  const target = await resolveTarget({ ...options, offline: true }, { writes: true });
  if (target.kind !== 'offline') throw new Error('restore resolved an online target');
  const report = await withProgress('restore', {}, (onProgress) =>
    restoreOffline({ dir: target.dir, encryptionKey: target.encryptionKey, to: options.to, keyPrefix: options.keyPrefix, rollForwardUntil, onProgress }),
  );
  if (options.json) return printJson(report);
  print(restoreSummary(report, options.keyPrefix));
}

async function erase(options: TargetOptions & { key: string; yes?: boolean }): Promise<void> {
  if (options.key.trim() === '') throw new UsageError('--key: empty');
  const target = await resolveTarget(options, { writes: true });
  if (!options.yes) await confirm(`erase every record of "${options.key}" from the checkpoints and the WAL of ${target.dir}? This cannot be undone. [y/N] `);
  let report: EraseReport;
  if (target.kind === 'online') {
    report = (await adminCall(target, 'POST', `/checkpoints/erase?${new URLSearchParams({ key: options.key })}`)).body as EraseReport;
  } else {
    report = await withProgress('erase', { wal: 'segments', snapshots: 'snapshots' }, (onProgress) =>
      eraseOffline({ dir: target.dir, encryptionKey: target.encryptionKey, key: options.key, onProgress }),
    );
  }
  if (options.json) return printJson(report);
  const lines = [
    `erased ${report.key}:`,
    `  ${count(report.snapshotRecordsRemoved, 'snapshot record')} removed (${count(report.snapshotsRewritten, 'snapshot')} rewritten, marked redacted)`,
    `  ${count(report.walRecordsRedacted, 'WAL record')} redacted`,
  ];
  if (target.kind === 'online') lines.push(`  ${count(report.liveRemoved, 'live context')} removed from the running sidecar`);
  lines.push(
    `an audit record was written to ${join(target.dir, AUDIT_FILE)} (it names the key by its SHA-256 only)`,
    `check that nothing is left: ctxmesh checkpoint verify ${targetArguments(options)} --key ${shellQuote(report.key)}`,
  );
  print(lines);
}

// --- Targets ---

async function resolveTarget(options: TargetOptions, { writes }: { writes: boolean }): Promise<Target> {
  if (options.config !== undefined && options.dir !== undefined) throw new UsageError('name either a sidecar config (-c) or a data directory (--dir), not both');
  if (options.config === undefined && options.dir === undefined) throw new UsageError('name a sidecar config (-c sidecar.yaml) or a data directory (--dir)');
  if (options.dir !== undefined) {
    const dir = resolve(options.dir);
    if (!existsSync(dir)) throw new UsageError(`--dir ${options.dir}: no such directory`);
    return { kind: 'offline', dir, encryptionKey: readKey(options.keyFile, '--key-file') };
  }
  const configFile = options.config!;
  const config = loadSidecarConfig(configFile);
  // As the state agent resolves them: against the working directory.
  const dir = resolve(config.context.checkpoint.dir ?? join('data', config.node.id));
  const adminUrl = `http://${ADMIN_HOST}:${config.admin.port}`;
  if (!options.offline) {
    if (options.keyFile !== undefined) throw new UsageError('--key-file is for offline work; online, the sidecar uses its own key');
    return { kind: 'online', configFile, adminUrl, dir };
  }
  if (!existsSync(dir)) throw new CommandError(`the data directory ${dir} of ${configFile} does not exist: has this sidecar run yet?`);
  // Two writers on one directory corrupt it: the running sidecar owns its files.
  if (writes && (await answers(adminUrl))) {
    throw new CommandError(
      `the sidecar of ${configFile} is running (its admin port ${adminUrl} answers): stop it first; ` +
        'offline work on its data directory would race its own writes',
    );
  }
  const keyFile = options.keyFile ?? config.context.checkpoint.encryptionKeyFile;
  return { kind: 'offline', dir, encryptionKey: readKey(keyFile, options.keyFile !== undefined ? '--key-file' : 'context.checkpoint.encryptionKeyFile'), configFile, adminUrl };
}

function readKey(file: string | undefined, source: string): Buffer | undefined {
  if (file === undefined) return undefined;
  try {
    return loadEncryptionKey(file);
  } catch (err) {
    throw new UsageError(`${source} ${file}: ${(err as Error).message}`);
  }
}

/** Errors that mean nothing listens on the admin port. */
const NOT_LISTENING = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EADDRNOTAVAIL']);

/** True when something holds the admin port: the sidecar is running (a hung one still owns its files). */
async function answers(adminUrl: string): Promise<boolean> {
  try {
    const res = await request(`${adminUrl}/healthz`, { headersTimeout: PROBE_TIMEOUT_MS, bodyTimeout: PROBE_TIMEOUT_MS, reset: true });
    await res.body.dump();
    return true;
  } catch (err) {
    return !NOT_LISTENING.has((err as { code?: string }).code ?? '');
  }
}

async function adminCall(
  target: Extract<Target, { kind: 'online' }>,
  method: 'GET' | 'POST',
  path: string,
  /** Error statuses whose body is a result (verify's 409: problems found). */
  results: number[] = [],
): Promise<{ status: number; body: unknown }> {
  let res;
  try {
    // No headers timeout: a checkpoint or an erase of a large state takes as long as it takes.
    res = await request(`${target.adminUrl}${path}`, { method, headersTimeout: 0, bodyTimeout: 0, reset: true });
  } catch (err) {
    const code = (err as { code?: string }).code;
    throw new CommandError(
      `the admin port of ${target.configFile} (${target.adminUrl}) does not answer (${code ?? (err as Error).message}): is the sidecar running? ` +
        `If it is stopped, work on its data directory with --offline`,
    );
  }
  const text = await res.body.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new CommandError(`${method} ${target.adminUrl}${path}: ${res.statusCode}, not JSON: ${text.slice(0, 200)}`);
  }
  if (res.statusCode >= 400 && !results.includes(res.statusCode)) {
    const error = body as { error?: string; message?: string };
    throw new CommandError(`the sidecar answered ${res.statusCode} ${error.error ?? ''}: ${error.message ?? text}`);
  }
  return { status: res.statusCode, body };
}

/** The target flags again, for a command line the user can paste. */
function targetArguments(options: TargetOptions): string {
  if (options.dir !== undefined) return `--dir ${shellQuote(options.dir)}${options.keyFile ? ` --key-file ${shellQuote(options.keyFile)}` : ''}`;
  return `-c ${shellQuote(options.config!)}${options.offline ? ' --offline' : ''}${options.keyFile ? ` --key-file ${shellQuote(options.keyFile)}` : ''}`;
}

// --- Results, as the admin API and the offline functions return them ---

interface HeaderView {
  id: string;
  kind: string;
  parent?: string;
  createdAt: number;
  lsn: number;
  reason?: string;
  compression?: string;
  encrypted?: boolean;
  redacted?: boolean;
  /** Per origin node, the newest HLC timestamp (`<wall>.<logical>`) of a write the checkpoint reflects. */
  frontier?: Record<string, string>;
}

interface SnapshotSummaryView {
  header: HeaderView;
  records: number;
  bytes: number;
  path: string;
}

interface VerifyView {
  ok: boolean;
  snapshots: Array<{ id: string; ok: boolean; lsn?: number; frontier?: Record<string, string>; records?: number; error?: string; chainComplete?: boolean }>;
  unreadable?: Array<{ path: string; error: string }>;
  wal: { records: number; firstLsn: number; lastLsn: number; torn?: { segment: string; offset: number; reason: string } } | { error: string };
  key?: { key: string; snapshotRecords: number; walRecords: number; snapshots: string[] };
}

/** `node-a=<wall>.<logical>,node-b=…`: what the checkpoint has seen from each node ('-': no writes). */
function formatFrontier(frontier: Record<string, string> | undefined): string {
  const entries = Object.entries(frontier ?? {});
  return entries.length === 0 ? '-' : entries.map(([node, t]) => `${node}=${t}`).join(',');
}

function flagsOf(header: HeaderView): string[] {
  const flags: string[] = [];
  if (header.encrypted) flags.push('encrypted');
  if (header.compression !== undefined && header.compression !== 'none') flags.push('compressed');
  if (header.redacted) flags.push('redacted');
  return flags;
}

function problemsOf(report: VerifyView): string[] {
  const problems: string[] = [];
  for (const s of report.snapshots) {
    if (!s.ok) problems.push(`snapshot ${s.id}: ${s.error ?? 'unreadable'}`);
    else if (s.chainComplete === false) problems.push(`snapshot ${s.id}: its chain is incomplete (a snapshot it builds on is missing)`);
  }
  for (const u of report.unreadable ?? []) problems.push(`${u.path}: header unreadable: ${u.error}`);
  if ('error' in report.wal) problems.push(`WAL: ${report.wal.error}`);
  else if (report.wal.torn) {
    const { segment, offset, reason } = report.wal.torn;
    problems.push(`WAL: torn or corrupt record in ${segment} at offset ${offset} (${reason}); recovery stops at LSN ${report.wal.lastLsn}`);
  }
  const key = report.key;
  if (key && key.snapshotRecords + key.walRecords > 0) {
    problems.push(
      `key ${key.key}: still held by ${count(key.snapshotRecords, 'snapshot record')}` +
        `${key.snapshots.length ? ` (in ${key.snapshots.join(', ')})` : ''} and ${count(key.walRecords, 'WAL record')}`,
    );
  }
  return problems;
}

function restoreSummary(report: RestoreReport, keyPrefix: string | undefined): string[] {
  const point = report.point;
  const asOf =
    point.kind === 'checkpoint'
      ? `checkpoint ${point.id}${point.rollForwardUntil === undefined ? '' : `, rolled forward to ${new Date(point.rollForwardUntil).toISOString()}`}`
      : point.kind === 'time'
        ? new Date(point.at).toISOString()
        : 'the latest state';
  const from = report.chain.length ? `chain ${report.chain.join(' → ')}` : 'the WAL alone (no checkpoint at or before that point)';
  const wal = report.walRecords ? ` + ${count(report.walRecords, 'WAL record')}` : '';
  const what = keyPrefix === undefined ? count(report.restored, 'context') : `${count(report.restored, 'context')} under ${keyPrefix}`;
  return [
    `restored ${what} as of ${asOf}, from ${from}${wal}`,
    ...(keyPrefix === undefined ? [] : ['every other context keeps its latest state']),
    `new checkpoint ${report.id} (${count(report.records, 'context')})`,
    `the next start loads ${report.id} and replays no WAL record older than it: start the sidecar to serve the restored state`,
  ];
}

// --- Output and plumbing ---

async function runReporting(work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (err) {
    const usage = err instanceof UsageError || err instanceof ConfigError;
    process.stderr.write(`ctxmesh checkpoint: ${(err as Error).message}\n`);
    process.exitCode = usage ? EXIT_USAGE : EXIT_FAILURE;
  }
}

async function withProgress<T>(label: string, units: Record<string, string>, work: (onProgress: (phase: string, done: number, total?: number) => void) => Promise<T>): Promise<T> {
  const bar = progressBar(label, { units });
  try {
    return await work((phase, done, total) => bar.update(phase, done, total));
  } finally {
    bar.end();
  }
}

async function confirm(question: string): Promise<void> {
  if (!process.stdin.isTTY) throw new UsageError('erase is not undoable: add --yes to confirm when not on a terminal');
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = (await rl.question(question)).trim().toLowerCase();
    if (answer !== 'y' && answer !== 'yes') throw new CommandError('aborted: nothing was erased');
  } finally {
    rl.close();
  }
}

function isTime(value: string): boolean {
  return /^\d+$/.test(value) || !Number.isNaN(Date.parse(value));
}

function timeArgument(flag: string, value: string): number {
  const at = /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  if (Number.isNaN(at)) throw new UsageError(`${flag} ${value}: not a time (ISO 8601 or epoch milliseconds)`);
  return at;
}

function count(n: number, noun: string): string {
  return `${n.toLocaleString('en-US')} ${noun}${n === 1 ? '' : 's'}`;
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

function table(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [line(head), ...rows.map(line)];
}

function shellQuote(value: string): string {
  return /^[\w./:@%+=,-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

function print(lines: string[]): void {
  process.stdout.write(`${lines.join('\n')}\n`);
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
