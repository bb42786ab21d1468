// The injector reloads its serving certificate when the files change, as a Kubernetes Secret
// volume changes them: the kubelet writes a new timestamped directory and swaps the `..data`
// symlink that tls.crt and tls.key point through. Checked with real TLS handshakes: the serial a
// new connection sees, an open connection that keeps working, and a broken pair that is refused.
import { X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultTemplate } from '../../src/injection/template.js';
import { startWebhook, type Webhook } from '../../src/injection/webhook.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createCaPem, issueCertPem, type CaPem } from '../../src/tls/ca.js';
import { until } from '../helpers/mesh.js';

const ROTATION_TIMEOUT_MS = 10_000;

class Lines extends Writable {
  readonly lines: Array<Record<string, unknown>> = [];
  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString().split('\n')) if (line) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    cb();
  }
}

let authority: CaPem;
let webhook: Webhook;
const dir = mkdtempSync(join(tmpdir(), 'ctxmesh-webhook-cert-'));
const log = new Lines();
let generation = 0;

async function issue(): Promise<{ cert: string; key: string; serial: string }> {
  const pair = await issueCertPem({
    caCertPem: authority.caCert,
    caKeyPem: authority.caKey,
    name: 'ctxmesh-injector',
    dnsNames: ['localhost'],
    ipAddresses: ['127.0.0.1'],
  });
  return { cert: pair.certPem, key: pair.keyPem, serial: new X509Certificate(pair.certPem).serialNumber.toUpperCase() };
}

/** Publishes a pair as the kubelet's AtomicWriter does: new directory, then one symlink rename. */
function publish(cert: string, key: string): void {
  const version = `..gen_${generation++}`;
  mkdirSync(join(dir, version));
  writeFileSync(join(dir, version, 'tls.crt'), cert);
  writeFileSync(join(dir, version, 'tls.key'), key);
  symlinkSync(version, join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
}

/** A TLS handshake that trusts only the test CA; resolves the connected socket. */
function connect(): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: webhook.port, ca: authority.caCert, servername: 'localhost' }, () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Serial number of the certificate a fresh connection is served. */
async function servedSerial(): Promise<string> {
  const socket = await connect();
  const serial = socket.getPeerCertificate().serialNumber.toUpperCase();
  socket.destroy();
  return serial;
}

/** GET /healthz over an already open TLS connection (HTTP/1.1 keep-alive). */
function healthOver(socket: tls.TLSSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString();
      if (/\r\n\r\n[\s\S]*"status":"ok"/.test(text)) {
        socket.off('data', onData);
        resolve(text.split('\r\n')[0]!);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write('GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: keep-alive\r\n\r\n');
  });
}

let first: Awaited<ReturnType<typeof issue>>;

beforeAll(async () => {
  authority = await createCaPem();
  first = await issue();
  publish(first.cert, first.key);
  symlinkSync('..data/tls.crt', join(dir, 'tls.crt'));
  symlinkSync('..data/tls.key', join(dir, 'tls.key'));
  webhook = await startWebhook({
    port: 0,
    host: '127.0.0.1',
    certFile: join(dir, 'tls.crt'),
    keyFile: join(dir, 'tls.key'),
    template: defaultTemplate(),
    logger: createLogger({ level: 'info', destination: log }),
  });
}, 30_000);

afterAll(async () => {
  await webhook?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('injector serving certificate rotation', () => {
  it('serves the certificate it was started with', async () => {
    expect(await servedSerial()).toBe(first.serial);
    expect(log.lines).toContainEqual(expect.objectContaining({ msg: 'serving certificate loaded; watching for rotation', serial: first.serial }));
  });

  it('serves the new certificate to new connections after rotation, and keeps open connections', async () => {
    const open = await connect();
    expect(open.getPeerCertificate().serialNumber.toUpperCase()).toBe(first.serial);
    expect(await healthOver(open)).toBe('HTTP/1.1 200 OK');

    const second = await issue();
    expect(second.serial).not.toBe(first.serial);
    publish(second.cert, second.key);
    let seen = '';
    await until(async () => (seen = await servedSerial()) === second.serial, ROTATION_TIMEOUT_MS, `serial ${second.serial} (still ${seen})`);
    expect(log.lines).toContainEqual(expect.objectContaining({ msg: 'serving certificate reloaded', serial: second.serial }));

    // The connection opened before the rotation still works, on the pair it began with.
    expect(await healthOver(open)).toBe('HTTP/1.1 200 OK');
    expect(open.getPeerCertificate().serialNumber.toUpperCase()).toBe(first.serial);
    open.destroy();
  });

  it('keeps serving the current certificate when the new pair does not match, or does not parse', async () => {
    const current = await servedSerial();
    const a = await issue();
    const b = await issue();
    for (const [what, cert, key, reason] of [
      ['mismatched', a.cert, b.key, /does not match the certificate/],
      ['truncated', a.cert.slice(0, 200), a.key, /no PEM certificate|does not parse/],
      ['not a key', a.cert, 'not a key\n', /not a readable private key/],
    ] as const) {
      const errorsBefore = log.lines.filter((l) => l.msg === 'serving certificate reload failed: keeping the current certificate').length;
      publish(cert, key);
      await until(
        () => log.lines.filter((l) => l.msg === 'serving certificate reload failed: keeping the current certificate').length > errorsBefore,
        ROTATION_TIMEOUT_MS,
        `the reload error for the ${what} pair`,
      );
      const error = log.lines.filter((l) => l.msg === 'serving certificate reload failed: keeping the current certificate').at(-1)!;
      expect(error.err, what).toMatch(reason);
      expect(error.serial).toBe(current);
      expect(await servedSerial(), what).toBe(current);
    }

    // A valid pair after the broken ones is taken again.
    const fixed = await issue();
    publish(fixed.cert, fixed.key);
    let seen = '';
    await until(async () => (seen = await servedSerial()) === fixed.serial, ROTATION_TIMEOUT_MS, `serial ${fixed.serial} (still ${seen})`);
  });
});
