// A stand-in for an AI service instance: answers chat turns, can be told to fail, and reports
// which sidecar identity called it (the header its own sidecar sets after mTLS).
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export class SampleService {
  /** While set, every request is answered with this status (a failing instance). */
  failWith: number | undefined;
  served = 0;
  private server: http.Server | undefined;

  constructor(readonly name: string) {}

  async start(): Promise<string> {
    this.server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        if (this.failWith) {
          res.writeHead(this.failWith, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ instance: this.name, error: 'model overloaded' }));
          return;
        }
        this.served += 1;
        const key = req.headers['x-ctx-key'] ?? '-';
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            instance: this.name,
            session: key,
            caller: req.headers['x-ctxmesh-peer-identity'],
            reply: `(${this.name}) echo: ${req.url}`,
          }),
        );
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server) return resolve();
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }
}
