// A raw ADS client for tests: one @grpc/grpc-js stream (SotW or delta) whose responses queue up
// until a test takes them, so tests can assert exactly what was pushed and when nothing was.
import * as grpc from '@grpc/grpc-js';
import { loadXdsProtos, TYPE_URL } from '../../xds/protos.js';
import { toStruct } from '../../xds/resources.js';

export { TYPE_URL };

export interface TestNode {
  id: string;
  cluster?: string;
  zone?: string;
  metadata?: Record<string, string | number>;
}

export interface SotwResponse {
  version_info: string;
  resources: Array<{ type_url: string; value: Buffer }>;
  type_url: string;
  nonce: string;
}

export interface DeltaResponse {
  system_version_info: string;
  resources: Array<{ name: string; version: string; resource: { type_url: string; value: Buffer } }>;
  type_url: string;
  removed_resources: string[];
  nonce: string;
}

export function nodeMessage(node: TestNode): object {
  return {
    id: node.id,
    cluster: node.cluster ?? '',
    locality: { zone: node.zone ?? '' },
    ...(node.metadata ? { metadata: toStruct(node.metadata) } : {}),
    user_agent_name: 'ctxmesh-test',
  };
}

class ResponseQueue<T> {
  private readonly queued: T[] = [];
  private waiters: Array<() => void> = [];
  error: Error | undefined;
  ended = false;

  push(item: T): void {
    this.queued.push(item);
    this.wake();
  }

  fail(err: Error): void {
    this.error = err;
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** The next response matching `predicate` (others of the same stream are skipped and kept). */
  async next(predicate: (item: T) => boolean = () => true, timeoutMs = 5_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.queued.findIndex(predicate);
      if (index >= 0) return this.queued.splice(index, 1)[0]!;
      if (this.error) throw this.error;
      if (this.ended) throw new Error('stream ended');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for an ADS response');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Responses matching `predicate` that arrived so far, removed from the queue. */
  drain(predicate: (item: T) => boolean = () => true): T[] {
    const taken = this.queued.filter(predicate);
    for (const item of taken) this.queued.splice(this.queued.indexOf(item), 1);
    return taken;
  }
}

abstract class BaseAdsClient<Res> {
  protected readonly client: grpc.Client;
  protected readonly call: grpc.ClientDuplexStream<object, Res>;
  readonly responses = new ResponseQueue<Res>();

  constructor(address: string, method: 'StreamAggregatedResources' | 'DeltaAggregatedResources') {
    const { AdsClient } = loadXdsProtos();
    this.client = new AdsClient(address, grpc.credentials.createInsecure());
    this.call = (this.client as unknown as Record<string, () => grpc.ClientDuplexStream<object, Res>>)[method]!.call(this.client);
    this.call.on('data', (response: Res) => this.responses.push(response));
    this.call.on('error', (err: Error) => this.responses.fail(err));
    this.call.on('end', () => this.responses.end());
  }

  close(): void {
    this.call.cancel();
    this.client.close();
  }
}

export class SotwClient extends BaseAdsClient<SotwResponse> {
  constructor(
    address: string,
    readonly node: TestNode,
  ) {
    super(address, 'StreamAggregatedResources');
  }

  private first = true;

  request(typeUrl: string, resourceNames: string[], ack?: { version: string; nonce: string; error?: string }): void {
    this.call.write({
      ...(this.first ? { node: nodeMessage(this.node) } : {}),
      type_url: typeUrl,
      resource_names: resourceNames,
      version_info: ack?.version ?? '',
      response_nonce: ack?.nonce ?? '',
      ...(ack?.error ? { error_detail: { code: grpc.status.INVALID_ARGUMENT, message: ack.error } } : {}),
    });
    this.first = false;
  }

  next(typeUrl: string, timeoutMs?: number): Promise<SotwResponse> {
    return this.responses.next((r) => r.type_url === typeUrl, timeoutMs);
  }

  /** ACKs a response, keeping the subscription as it was. */
  ack(response: SotwResponse, resourceNames: string[]): void {
    this.request(response.type_url, resourceNames, { version: response.version_info, nonce: response.nonce });
  }

  decode<T = any>(response: SotwResponse): T[] {
    return response.resources.map((any) => loadXdsProtos().decodeResource<T>(any));
  }
}

export class DeltaClient extends BaseAdsClient<DeltaResponse> {
  constructor(
    address: string,
    readonly node: TestNode,
  ) {
    super(address, 'DeltaAggregatedResources');
  }

  private first = true;

  request(
    typeUrl: string,
    options: { subscribe?: string[]; unsubscribe?: string[]; initialVersions?: Record<string, string>; nonce?: string; error?: string } = {},
  ): void {
    this.call.write({
      ...(this.first ? { node: nodeMessage(this.node) } : {}),
      type_url: typeUrl,
      resource_names_subscribe: options.subscribe ?? [],
      resource_names_unsubscribe: options.unsubscribe ?? [],
      initial_resource_versions: options.initialVersions ?? {},
      response_nonce: options.nonce ?? '',
      ...(options.error ? { error_detail: { code: grpc.status.INVALID_ARGUMENT, message: options.error } } : {}),
    });
    this.first = false;
  }

  next(typeUrl: string, timeoutMs?: number): Promise<DeltaResponse> {
    return this.responses.next((r) => r.type_url === typeUrl, timeoutMs);
  }

  ack(response: DeltaResponse): void {
    this.request(response.type_url, { nonce: response.nonce });
  }
}
