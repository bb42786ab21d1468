// Relays the upstream response to the downstream client: the last handler of the pipeline.
// It streams (the client's pace pauses the upstream), maps failures to mesh errors through the
// error table, cancels the upstream try when the client goes away, and records the exchange.
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { sendError } from '../errors/respond.js';
import { MeshError, toMeshError } from '../errors/table.js';
import type { Exchange, ExchangeRecorder } from '../telemetry/exchange.js';
import type { DispatchController, ResponseHandler, UpstreamCall } from './upstream/dispatch.js';
import { responseHeaders } from './headers.js';

export class ResponseRelay implements ResponseHandler {
  private controller: DispatchController | undefined;
  private status = 0;
  private done = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly call: UpstreamCall,
    private readonly exchange: Exchange,
    private readonly recorder: ExchangeRecorder,
    private readonly closeAfter: () => boolean,
  ) {
    res.on('close', () => this.onClientClose());
  }

  onRequestStart(controller: DispatchController): void {
    this.controller = controller;
  }

  onResponseStart(controller: DispatchController, status: number, headers: IncomingHttpHeaders, message?: string): void {
    this.controller = controller;
    this.status = status;
    if (message) this.res.writeHead(status, message, responseHeaders(headers, this.closeAfter()));
    else this.res.writeHead(status, responseHeaders(headers, this.closeAfter()));
  }

  onResponseData(controller: DispatchController, chunk: Buffer): void {
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    this.res.end();
    this.finish(undefined);
  }

  onResponseError(_controller: DispatchController, err: Error): void {
    if (this.done) return;
    const failure = this.call.cancelled ? new MeshError('client_closed') : toMeshError(err);
    if (!this.res.headersSent) {
      this.status = failure.status;
      sendError(this.res, failure, { close: this.closeAfter() || (this.call.body !== null && !this.call.body.readableEnded) });
    } else {
      // The status line is gone; the only honest signal left is to cut the response short.
      this.res.destroy(failure);
    }
    this.finish(failure);
  }

  private onClientClose(): void {
    if (this.done || this.res.writableFinished) return;
    this.call.cancelled = true;
    this.controller?.abort(new MeshError('client_closed'));
  }

  private finish(failure: MeshError | undefined): void {
    if (this.done) return;
    this.done = true;
    this.recorder.record(
      this.exchange,
      this.call.cluster.name,
      failure?.code === 'client_closed' ? failure.status : this.status,
      failure?.code,
      this.call.endpoint?.address,
      this.call.attempts,
    );
  }
}
