// The injector over real HTTPS: a serving certificate from the dev CA for 127.0.0.1, and a
// client that trusts only that CA (as the API server trusts the webhook's caBundle).
import https from 'node:https';
import { Writable } from 'node:stream';
import { Pod } from 'kubernetes-models/v1';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyJsonPatch, type JsonPatchOp } from '../../src/injection/json-patch.js';
import { defaultTemplate } from '../../src/injection/template.js';
import { startWebhook, type Webhook } from '../../src/injection/webhook.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createCaPem, issueCertPem } from '../../src/tls/ca.js';
import { podOf, reviewOf } from './fixtures.js';

class Lines extends Writable {
  readonly lines: Array<Record<string, unknown>> = [];
  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString().split('\n')) if (line) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    cb();
  }
}

let webhook: Webhook;
let ca: string;
const log = new Lines();

beforeAll(async () => {
  const authority = await createCaPem();
  ca = authority.caCert;
  const serving = await issueCertPem({
    caCertPem: authority.caCert,
    caKeyPem: authority.caKey,
    name: 'ctxmesh-injector',
    dnsNames: ['ctxmesh-injector.ctxmesh.svc', 'localhost'],
    ipAddresses: ['127.0.0.1'],
  });
  webhook = await startWebhook({
    port: 0,
    host: '127.0.0.1',
    cert: serving.certPem,
    key: serving.keyPem,
    template: defaultTemplate(),
    logger: createLogger({ level: 'info', destination: log }),
  });
});

afterAll(async () => {
  await webhook?.close();
});

function post(body: string | Buffer, path = '/inject', method = 'POST'): Promise<{ status: number; json: any }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: webhook.port, path, method, ca, headers: { 'content-type': 'application/json' } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, json: text ? JSON.parse(text) : undefined }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('injector webhook over HTTPS', () => {
  it('returns an AdmissionReview v1 whose JSONPatch yields a valid injected Pod', async () => {
    const pod = podOf({ labels: { 'ctxmesh.io/inject': 'enabled' } });
    const { status, json } = await post(JSON.stringify(reviewOf(pod)));
    expect(status).toBe(200);
    expect(json.apiVersion).toBe('admission.k8s.io/v1');
    expect(json.kind).toBe('AdmissionReview');
    expect(json.response).toMatchObject({ uid: '705ab4f5-6393-11e8-b7cc-42010a800002', allowed: true, patchType: 'JSONPatch' });
    const patch = JSON.parse(Buffer.from(json.response.patch, 'base64').toString()) as JsonPatchOp[];
    const out = applyJsonPatch(pod, patch) as any;
    new Pod(out).validate();
    expect(out.spec.initContainers.map((c: any) => c.name)).toEqual(['ctxmesh-init', 'ctxmesh-proxy']);
    expect(log.lines.some((l) => l.msg === 'injected' && l.uid === '705ab4f5-6393-11e8-b7cc-42010a800002')).toBe(true);
  });

  it('answers a structurally malformed review with allowed and no patch, and logs it', async () => {
    const { status, json } = await post(JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'u-1', kind: { kind: 'Pod' }, object: { spec: {} } } }));
    expect(status).toBe(200);
    expect(json.response).toEqual({ uid: 'u-1', allowed: true });
    expect(log.lines.some((l) => l.reason === 'malformed' && l.uid === 'u-1')).toBe(true);
  });

  it('answers invalid JSON with 400 and an error body', async () => {
    const { status, json } = await post('{"apiVersion": "admission.k8s.io/v1", ');
    expect(status).toBe(400);
    expect(json.error).toMatch(/not valid JSON/);
  });

  it('refuses a client that does not trust the CA (the certificate is really checked)', async () => {
    await expect(
      new Promise((resolve, reject) => {
        const req = https.request({ host: '127.0.0.1', port: webhook.port, path: '/inject', method: 'POST' }, resolve);
        req.on('error', reject);
        req.end('{}');
      }),
    ).rejects.toThrow(/self.signed|unable to verify|certificate/i);
  });

  it('serves GET /healthz for its own probes and 405 for other methods', async () => {
    expect((await post('', '/healthz', 'GET')).status).toBe(200);
    expect((await post('', '/inject', 'PUT')).status).toBe(405);
  });
});
