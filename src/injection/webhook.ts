// The injector's HTTPS server: the API server POSTs AdmissionReview v1 to /inject (any path is
// accepted, since the webhook configuration names it) and gets the review back. Given the files
// of its serving certificate, it reloads them on rotation: new connections get the new pair,
// open ones keep theirs, and a pair that does not validate is logged and left out.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../telemetry/logger.js';
import { reviewAdmission, type AdmissionOptions } from './admission.js';
import { ServingCertificate, type ServingCertPaths } from './serving-cert.js';

/** An AdmissionReview is bounded by etcd's object limit (~1.5 MiB) plus the old object; 8 MiB is ample. */
export const MAX_REVIEW_BYTES = 8 * 1024 * 1024;
/** The API server's webhook timeout defaults to 10 s; a client that sends slower than this is gone. */
export const REQUEST_TIMEOUT_MS = 10_000;

/** The serving pair: fixed PEM contents, or files that are watched and reloaded on rotation. */
export type WebhookCertificate = { cert: string | Buffer; key: string | Buffer } | { certFile: string; keyFile: string };

export type WebhookOptions = AdmissionOptions &
  WebhookCertificate & {
    port: number;
    host?: string;
    logger: Logger;
  };

export interface Webhook {
  server: https.Server;
  port: number;
  /** The watched serving certificate, when started from files. */
  certificate?: ServingCertificate;
  close(): Promise<void>;
}

const TLS_MIN_VERSION = 'TLSv1.2';

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_REVIEW_BYTES) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export async function startWebhook(options: WebhookOptions): Promise<Webhook> {
  const { logger } = options;
  let certificate: ServingCertificate | undefined;
  let pair: { cert: string | Buffer; key: string | Buffer };
  const certFile = 'certFile' in options ? options.certFile : undefined;
  if ('certFile' in options) {
    const paths: ServingCertPaths = { cert: options.certFile, key: options.keyFile };
    certificate = ServingCertificate.load(paths);
    pair = certificate.current;
  } else {
    pair = { cert: options.cert, key: options.key };
  }
  const server = https.createServer({ ...pair, minVersion: TLS_MIN_VERSION }, (req, res) => {
    void handle(req, res).catch((err: Error) => {
      logger.error({ err: err.message }, 'webhook request failed');
      if (!res.headersSent) send(res, 500, { error: 'internal error' });
    });
  });
  server.requestTimeout = REQUEST_TIMEOUT_MS;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method === 'GET' && (req.url === '/healthz' || req.url === '/ready')) {
      send(res, 200, { status: 'ok' });
      return;
    }
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      send(res, 405, { error: 'method not allowed: POST an AdmissionReview' });
      return;
    }
    const raw = await readBody(req);
    if (raw === undefined) {
      send(res, 413, { error: `AdmissionReview larger than ${MAX_REVIEW_BYTES} bytes` });
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      logger.warn({ err: (err as Error).message, bytes: raw.length }, 'admission request is not JSON');
      send(res, 400, { error: `request body is not valid JSON: ${(err as Error).message}` });
      return;
    }
    const outcome = await reviewAdmission(body, options);
    const fields = { uid: outcome.review.response.uid, namespace: outcome.namespace, pod: outcome.name, operations: outcome.operations, ...outcome.decision };
    if (outcome.decision.reason === 'malformed') logger.warn(fields, 'malformed admission request: allowed without injection');
    else logger.info(fields, outcome.decision.inject ? 'injected' : 'not injected');
    send(res, 200, outcome.review);
  }

  if (certificate) {
    certificate.on('rotated', (next) => {
      // Only handshakes from now on use it; established connections keep the pair they began with.
      server.setSecureContext({ cert: next.cert, key: next.key, minVersion: TLS_MIN_VERSION });
      logger.info({ serial: next.serial, notAfter: next.notAfter.toISOString() }, 'serving certificate reloaded');
    });
    certificate.on('reload_error', (err) => {
      logger.error({ err: err.message, serial: certificate!.current.serial }, 'serving certificate reload failed: keeping the current certificate');
    });
    certificate.watch();
    logger.info({ serial: certificate.current.serial, notAfter: certificate.current.notAfter.toISOString(), cert: certFile }, 'serving certificate loaded; watching for rotation');
  }

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host ?? '0.0.0.0', () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    certificate?.close();
    throw err;
  }
  return {
    server,
    port: (server.address() as AddressInfo).port,
    certificate,
    close: () =>
      new Promise<void>((resolve) => {
        certificate?.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
/** Namespace labels change rarely; a short cache spares the API server one GET per pod. */
const NAMESPACE_CACHE_TTL_MS = 30_000;
/** Well inside the API server's webhook timeout, so a slow lookup never costs the injection. */
const NAMESPACE_LOOKUP_TIMEOUT_MS = 2_000;

/**
 * Namespace labels from the API server, when the injector runs in a pod with a service account
 * (the chart's ClusterRole grants `get namespaces`). Outside a cluster: undefined (no lookup).
 */
export function inClusterNamespaceLabels(): AdmissionOptions['namespaceLabels'] {
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT ?? '443';
  let token: string;
  let ca: Buffer;
  try {
    token = readFileSync(`${SERVICE_ACCOUNT_DIR}/token`, 'utf8').trim();
    ca = readFileSync(`${SERVICE_ACCOUNT_DIR}/ca.crt`);
  } catch {
    return undefined;
  }
  if (!host) return undefined;
  const cache = new Map<string, { at: number; labels: Record<string, string> | undefined }>();
  return (namespace) => {
    const hit = cache.get(namespace);
    if (hit && Date.now() - hit.at < NAMESPACE_CACHE_TTL_MS) return Promise.resolve(hit.labels);
    return new Promise((resolve) => {
      const req = https.get(
        { host, port, path: `/api/v1/namespaces/${encodeURIComponent(namespace)}`, ca, headers: { authorization: `Bearer ${token}` }, timeout: NAMESPACE_LOOKUP_TIMEOUT_MS },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => {
            let labels: Record<string, string> | undefined;
            try {
              if (res.statusCode === 200) labels = (JSON.parse(text) as { metadata?: { labels?: Record<string, string> } }).metadata?.labels ?? {};
            } catch {
              labels = undefined;
            }
            if (labels) cache.set(namespace, { at: Date.now(), labels });
            resolve(labels);
          });
        },
      );
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(undefined));
    });
  };
}
