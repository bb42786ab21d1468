// The registry shared between control-plane replicas through Redis (a single server, Sentinel or
// Cluster: the same urls as the state agent's L2).
//
// Each replica keeps the whole shared state mirrored in its ServiceRegistry and builds its xDS
// resources from that mirror, exactly as with the in-memory store; the mirror is reloaded after
// each of its own writes, on every change notice another replica publishes (pub/sub), and every
// `resyncInterval` as the safety net for a lost notice. Resource versions are hashes of content,
// so two replicas holding the same state serve the same versions, and a reload that changes
// nothing pushes nothing.
//
// Every write is one Lua script (scripts.ts), which makes expiry and declarations happen once for
// all replicas and keeps epochs rising across restarts and replicas.
//
// Redis unreachable: the mirror stays as it was and keeps being served (static stability);
// drains, declarations and health reports are refused with store_unavailable, since neither a
// single declaration nor a monotonic epoch can be promised without the store; registrations are
// applied to the mirror provisionally and written back, with what the mirror knew, once Redis
// answers again — which also restores the shared state if Redis came back empty.
import type { Cluster, Redis } from 'ioredis';
import { MeshError } from '../../src/errors/table.js';
import { connectCommands, connectSubscriber, knownMasters } from '../../src/state/cache/redis-connect.js';
import { parseRedisUrl, redact, type ParsedRedisUrl } from '../../src/state/cache/redis-url.js';
import type { Logger } from '../../src/telemetry/logger.js';
import type { HealthReport } from '../health/quorum.js';
import type { EndpointHealth } from '../resources.js';
import type { FailoverRecord, NodeRegistration, RegistryEndpoint, ServiceRegistry, SharedRegistryState } from '../registry.js';
import { SCRIPTS, type ScriptName } from './scripts.js';
import type { RegistryStore, StoreStatus } from './store.js';

export interface RedisRegistryStoreOptions {
  url: string;
  keyPrefix: string;
  /** ms a command may take before the store counts as unavailable. */
  commandTimeout: number;
  /** ms allowed to connect; also how long `start()` waits before starting degraded. */
  connectTimeout: number;
  /** ms between full reloads. */
  resyncInterval: number;
  historyLimit: number;
  /** ms a registration outlives its last stream or heartbeat. */
  ttlMs: number;
  logger: Logger;
  now?: () => number;
}

const RECONNECT_BASE_MS = 50;
const RECONNECT_MAX_MS = 2_000;
const QUIT_TIMEOUT_MS = 250;

interface LocalNode {
  node: NodeRegistration;
  streams: number;
}

export class RedisRegistryStore implements RegistryStore {
  readonly backend = 'redis' as const;
  private readonly parsed: ParsedRedisUrl;
  private readonly where: string;
  private readonly client: Redis | Cluster;
  private readonly subscriber: Redis;
  private readonly keys: string[];
  private readonly reportPrefix: string;
  private readonly channel: string;
  private readonly now: () => number;
  /** Nodes with an ADS stream open on this replica: this replica renews their leases. */
  private readonly local = new Map<string, LocalNode>();
  /** Registrations taken while degraded, to write back. */
  private readonly pending = new Map<string, NodeRegistration>();
  private readonly timers: NodeJS.Timeout[] = [];
  private ready = false;
  private lastError: string | undefined = 'not connected yet';
  private lastSyncAt: number | null = null;
  private lastRev: string | null = null;
  private reloadRunning: Promise<void> | undefined;
  private reloadNext: Promise<void> | undefined;
  private recovering: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly registry: ServiceRegistry,
    private readonly options: RedisRegistryStoreOptions,
  ) {
    this.parsed = parseRedisUrl(options.url);
    this.where = redact(options.url);
    this.now = options.now ?? Date.now;
    // One hash tag for every key: a Cluster keeps them in one slot, so each script may touch them all.
    const base = `${options.keyPrefix}{registry}:`;
    this.keys = ['regs', 'leases', 'states', 'epochs', 'history', 'rev'].map((name) => base + name);
    this.reportPrefix = `${base}reports:`;
    this.channel = `${base}changes`;
    this.client = this.createClient();
    this.subscriber = this.createSubscriber();
  }

  async start(): Promise<void> {
    const connected = await this.waitReady(this.options.connectTimeout);
    if (connected) {
      try {
        await (this.recovering ?? this.recover());
      } catch (err) {
        this.options.logger.warn({ store: this.where, err: (err as Error).message }, 'registry store: first load failed; serving the config only until it answers');
      }
    } else {
      this.options.logger.warn({ store: this.where, err: this.lastError }, 'registry store unreachable at start; serving the config only until it answers');
    }
    const ttl = this.options.ttlMs;
    // Leases are renewed well inside the TTL so a replica's open streams never lapse between renewals.
    this.every(Math.max(50, Math.floor(ttl / 3)), () => this.renewLocal());
    this.every(Math.max(25, Math.min(1000, Math.floor(ttl / 4))), () => this.expire());
    this.every(this.options.resyncInterval, () => this.resync());
  }

  status(): StoreStatus {
    const degraded = !this.ready || this.recovering !== undefined;
    return {
      backend: 'redis',
      connected: this.ready,
      degraded,
      reason: degraded ? (this.lastError ?? 'resynchronising') : undefined,
      lastSyncAt: this.lastSyncAt === null ? null : new Date(this.lastSyncAt).toISOString(),
      pendingWrites: this.pending.size,
    };
  }

  attachStream(node: NodeRegistration): () => void {
    const held = this.local.get(node.nodeId);
    const entry: LocalNode = held && held.node.service === node.service && held.node.address === node.address ? held : { node, streams: 0 };
    entry.node = node;
    entry.streams += 1;
    this.local.set(node.nodeId, entry);
    this.registry.setOpenStreams(node.nodeId, entry.streams);
    void this.register(node).catch(() => undefined);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (this.local.get(node.nodeId) !== entry) return;
      entry.streams -= 1;
      this.registry.setOpenStreams(node.nodeId, entry.streams);
      if (entry.streams > 0) return;
      this.local.delete(node.nodeId);
      // The lease now runs one TTL from the stream's end.
      void this.register(node).catch(() => undefined);
    };
  }

  async heartbeat(node: NodeRegistration): Promise<void> {
    await this.register(node);
  }

  async drain(service: string, address: string, reason = 'drain requested'): Promise<RegistryEndpoint> {
    const endpoint = this.registry.describe(service)?.endpoints.find((e) => e.address === address);
    if (!endpoint) throw new MeshError('not_found', `no endpoint ${address} in service ${service}`);
    await this.transition({ service, address, nodeId: endpoint.nodeId ?? '', health: 'DRAINING', kind: 'drain', reason, precondition: 'not_draining', registered: false });
    return this.registry.describe(service)?.endpoints.find((e) => e.address === address) ?? endpoint;
  }

  async declareFailed(nodeId: string, reason: string): Promise<boolean> {
    return this.transition({ service: '', address: '', nodeId, health: 'UNHEALTHY', kind: 'declared', reason, precondition: 'not_unhealthy', registered: true });
  }

  async declareRecovered(nodeId: string, reason: string): Promise<boolean> {
    return this.transition({ service: '', address: '', nodeId, health: 'HEALTHY', kind: 'recovered', reason, precondition: 'unhealthy', registered: true });
  }

  async recordReport(report: HealthReport, windowMs: number): Promise<HealthReport[]> {
    this.requireReady('health reports');
    const kept = (await this.run(() =>
      this.script('cpReport', [this.reportPrefix + report.subject], [report.observer, JSON.stringify(report), report.incarnation, windowMs, report.receivedAt]),
    )) as string[];
    return kept.map((text) => JSON.parse(text) as HealthReport);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    await Promise.all([quitQuickly(this.client), quitQuickly(this.subscriber)]);
  }

  // --- writes ---

  /** Registers or renews with a lease of one TTL from now; while degraded, provisionally in the mirror. */
  private async register(node: NodeRegistration): Promise<void> {
    if (this.ready) {
      try {
        const records = await this.run(() =>
          this.script('cpRegister', this.keys, [
            ...this.common(),
            node.nodeId,
            node.service,
            node.address,
            node.zone,
            node.priority ?? 0,
            node.incarnation ?? 0,
            this.now() + this.options.ttlMs,
          ]),
        );
        this.pending.delete(node.nodeId);
        // A renewal that changed nothing needs no reload (the mirror's lease times may lag a little).
        if (this.announce(records)) await this.requestReload();
        return;
      } catch (err) {
        this.options.logger.warn({ node: node.nodeId, err: (err as Error).message }, 'registry store: registration kept locally, to write back');
      }
    }
    // Static stability: the sidecar is served from the mirror now, and written back on recovery.
    this.pending.set(node.nodeId, node);
    this.registry.heartbeat(node);
  }

  private async transition(args: {
    service: string;
    address: string;
    nodeId: string;
    health: EndpointHealth;
    kind: FailoverRecord['kind'];
    reason: string;
    precondition: 'not_unhealthy' | 'unhealthy' | 'not_draining';
    registered: boolean;
  }): Promise<boolean> {
    this.requireReady(args.kind === 'drain' ? 'drains' : 'declarations');
    const records = await this.run(() =>
      this.script('cpTransition', this.keys, [
        ...this.common(),
        args.service,
        args.address,
        args.nodeId,
        args.health,
        args.kind,
        args.reason,
        args.precondition,
        args.registered ? '1' : '0',
      ]),
    );
    const changed = this.announce(records);
    if (changed) await this.requestReload();
    return changed;
  }

  private async expire(): Promise<void> {
    if (!this.ready || this.recovering) return;
    try {
      const records = await this.script('cpExpire', this.keys, [...this.common(), this.options.ttlMs]);
      if (this.announce(records)) await this.requestReload();
    } catch (err) {
      this.options.logger.debug({ err: (err as Error).message }, 'registry store: expiry sweep failed');
    }
  }

  private async renewLocal(): Promise<void> {
    if (!this.ready || this.recovering) return;
    await Promise.all([...this.local.values()].map(({ node }) => this.register(node).catch(() => undefined)));
  }

  /** After (re)connecting: write back what the mirror knew and what arrived meanwhile, then reload. */
  private recover(): Promise<void> {
    this.recovering ??= (async () => {
      try {
        const shared = this.registry.sharedState();
        const records = await this.script('cpMerge', this.keys, [
          ...this.common(),
          JSON.stringify(shared.states),
          JSON.stringify(shared.registrations),
          JSON.stringify(shared.history),
        ]);
        this.announce(records);
        const writeBack = new Map<string, NodeRegistration>([...this.pending, ...[...this.local].map(([id, held]) => [id, held.node] as const)]);
        for (const node of writeBack.values()) {
          const written = await this.script('cpRegister', this.keys, [
            ...this.common(),
            node.nodeId,
            node.service,
            node.address,
            node.zone,
            node.priority ?? 0,
            node.incarnation ?? 0,
            this.now() + this.options.ttlMs,
          ]);
          this.announce(written);
          this.pending.delete(node.nodeId);
        }
        await this.requestReload();
        this.options.logger.info({ store: this.where, wroteBack: writeBack.size }, 'registry store in sync');
      } finally {
        this.recovering = undefined;
      }
    })();
    return this.recovering;
  }

  private async resync(): Promise<void> {
    if (!this.ready || this.recovering) return;
    try {
      const rev = await this.client.get(this.keys[5]!);
      if (rev !== this.lastRev) await this.requestReload();
      else this.lastSyncAt = this.now();
    } catch (err) {
      this.options.logger.debug({ err: (err as Error).message }, 'registry store: resync failed');
    }
  }

  // --- reads ---

  /** A reload that starts after this call; concurrent requests share one. */
  private requestReload(): Promise<void> {
    if (!this.reloadRunning) {
      this.reloadRunning = this.reload().finally(() => {
        this.reloadRunning = undefined;
      });
      return this.reloadRunning;
    }
    this.reloadNext ??= this.reloadRunning
      .catch(() => undefined)
      .then(() => {
        this.reloadNext = undefined;
        return this.requestReload();
      });
    return this.reloadNext;
  }

  private async reload(): Promise<void> {
    const [regsKey, leasesKey, statesKey, , historyKey, revKey] = this.keys as [string, string, string, string, string, string];
    const results = await this.client.multi().hgetall(regsKey).zrange(leasesKey, '0', '-1', 'WITHSCORES').hgetall(statesKey).lrange(historyKey, 0, -1).get(revKey).exec();
    if (!results) throw new Error('registry reload transaction aborted');
    for (const [err] of results) if (err) throw err;
    const [regs, leases, states, history, rev] = results.map(([, value]) => value) as [Record<string, string>, string[], Record<string, string>, string[], string | null];
    const leaseOf = new Map<string, number>();
    for (let i = 0; i + 1 < leases.length; i += 2) leaseOf.set(leases[i]!, Number(leases[i + 1]));
    const shared: SharedRegistryState = {
      registrations: Object.entries(regs).map(([nodeId, text]) => {
        const reg = JSON.parse(text) as { service: string; address: string; zone: string; priority: number; incarnation: number };
        return { nodeId, ...reg, leaseUntil: leaseOf.get(nodeId) ?? 0 };
      }),
      states: Object.entries(states).map(([key, text]) => {
        const bar = key.indexOf('|');
        const state = JSON.parse(text) as { health: EndpointHealth; epoch: number; reason?: string };
        return { service: key.slice(0, bar), address: key.slice(bar + 1), ...state };
      }),
      history: history.map((text) => JSON.parse(text) as FailoverRecord),
    };
    // Registrations taken while degraded stay in the mirror until written back.
    for (const node of this.pending.values()) {
      if (shared.registrations.some((r) => r.nodeId === node.nodeId)) continue;
      shared.registrations.push({ ...node, priority: node.priority ?? 0, incarnation: node.incarnation ?? 0, leaseUntil: this.now() + this.options.ttlMs });
    }
    this.registry.applyShared(shared, new Map([...this.local].map(([id, held]) => [id, held.streams])));
    this.lastRev = rev;
    this.lastSyncAt = this.now();
  }

  // --- plumbing ---

  private common(): Array<string | number> {
    const now = this.now();
    return [this.channel, now, this.options.historyLimit, new Date(now).toISOString()];
  }

  private script(name: ScriptName, keys: string[], args: Array<string | number>): Promise<string[]> {
    const command = (this.client as unknown as Record<ScriptName, (...params: Array<string | number>) => Promise<string[]>>)[name];
    return command.call(this.client, ...keys, ...args);
  }

  /** Runs a store command, turning a Redis failure into store_unavailable. */
  private async run<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (err) {
      if (err instanceof MeshError) throw err;
      throw new MeshError('store_unavailable', `registry store ${this.where}: ${(err as Error).message}`, { cause: err, retryAfter: 1 });
    }
  }

  private requireReady(what: string): void {
    if (!this.ready || this.recovering) {
      throw new MeshError('store_unavailable', `registry store ${this.where} is unavailable (${this.lastError ?? 'resynchronising'}): ${what} are refused until it answers`, { retryAfter: 1 });
    }
  }

  /**
   * Takes a script's reply {changed, records…}: logs and counts (through the registry's `failover`
   * event) the records it wrote, and says whether it changed anything.
   */
  private announce(reply: string[]): boolean {
    const [changed, ...records] = reply;
    for (const text of records) this.registry.emit('failover', JSON.parse(text) as FailoverRecord);
    return changed === '1';
  }

  private every(ms: number, task: () => Promise<void>): void {
    let busy = false;
    const timer = setInterval(() => {
      if (busy || this.closed) return;
      busy = true;
      task()
        .catch(() => undefined)
        .finally(() => (busy = false));
    }, ms);
    timer.unref();
    this.timers.push(timer);
  }

  private waitReady(timeoutMs: number): Promise<boolean> {
    if (this.ready) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        resolve(false);
      }, timeoutMs);
      const onReady = (): void => {
        clearTimeout(timer);
        // The recovery started by the same event is awaited by start().
        resolve(true);
      };
      this.client.once('ready', onReady);
    });
  }

  private backoff(times: number): number {
    return Math.random() * Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** Math.max(0, times - 1));
  }

  private createClient(): Redis | Cluster {
    const client = connectCommands(this.parsed, {
      connectTimeout: this.options.connectTimeout,
      commandTimeout: this.options.commandTimeout,
      backoff: (times) => this.backoff(times),
      connectionName: `ctxmesh-control-plane:${process.pid}`,
      scripts: SCRIPTS,
    });
    client.on('error', (err: Error) => {
      this.lastError = err.message;
    });
    client.on('ready', () => {
      if (this.closed) return;
      this.ready = true;
      this.lastError = undefined;
      this.options.logger.info({ store: this.where }, 'registry store connected');
      this.recover().catch((err: Error) => {
        this.lastError = `resync failed: ${err.message}`;
        this.options.logger.warn({ store: this.where, err: err.message }, 'registry store: resync after connecting failed; retrying');
        // Drop the link so the next `ready` tries again.
        if (!this.closed) this.client.disconnect(true);
      });
    });
    client.on('close', () => {
      if (this.closed || !this.ready) return;
      this.ready = false;
      this.lastError ??= 'connection closed';
      this.options.logger.warn({ store: this.where, err: this.lastError }, 'registry store unreachable: serving the last known state');
    });
    return client;
  }

  /** Change notices from other replicas; its own connection, since a subscribed one runs nothing else. */
  private createSubscriber(): Redis {
    const sub = connectSubscriber(this.parsed, {
      connectTimeout: this.options.connectTimeout,
      commandTimeout: this.options.commandTimeout,
      backoff: (times) => this.backoff(times),
      connectionName: `ctxmesh-control-plane:${process.pid}:sub`,
      nodes: () => knownMasters(this.client),
    });
    sub.on('error', () => undefined);
    sub.on('ready', () => {
      sub.subscribe(this.channel).then(
        // Notices published while unsubscribed are lost: reload once to catch up.
        () => void (this.ready && !this.recovering ? this.requestReload().catch(() => undefined) : undefined),
        () => {
          if (!this.closed) sub.disconnect(true);
        },
      );
    });
    sub.on('message', (channel: string, rev: string) => {
      if (channel !== this.channel || rev === this.lastRev || !this.ready || this.recovering) return;
      this.requestReload().catch((err: Error) => this.options.logger.debug({ err: err.message }, 'registry store: reload after a change notice failed'));
    });
    return sub;
  }
}

async function quitQuickly(client: Redis | Cluster): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([client.quit().catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, QUIT_TIMEOUT_MS)))]);
  } finally {
    clearTimeout(timer);
    client.disconnect();
  }
}
