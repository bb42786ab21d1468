import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import forge from 'node-forge';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaError, CLOCK_SKEW_ALLOWANCE_MS, DEFAULT_LEAF_TTL_MS, initCa, issueCert, type IssuedCert } from '../../src/tls/ca.js';
import { checkMeshServerIdentity, spiffeIdOf } from '../../src/tls/spiffe.js';

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const HANDSHAKE_TIMEOUT_MS = 5_000;
// Certificate validity has one-second resolution; allow for that plus test runtime.
const VALIDITY_TOLERANCE_MS = 10_000;

let workDir: string;
let caDir: string;
let caCert: X509Certificate;
let server: IssuedCert;
let client: IssuedCert;
let foreignClient: IssuedCert;
let foreignServer: IssuedCert;

beforeAll(async () => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctxmesh-ca-'));
  caDir = path.join(workDir, 'ca');
  await initCa({ out: caDir });
  caCert = new X509Certificate(fs.readFileSync(path.join(caDir, 'ca.pem')));
  server = await issueCert({ ca: caDir, name: 'server', out: path.join(workDir, 'server') });
  client = await issueCert({ ca: caDir, name: 'client', out: path.join(workDir, 'client') });

  const foreignCaDir = path.join(workDir, 'foreign-ca');
  await initCa({ out: foreignCaDir, trustDomain: 'ctxmesh.local' });
  foreignClient = await issueCert({ ca: foreignCaDir, name: 'client', out: path.join(workDir, 'foreign-client') });
  foreignServer = await issueCert({ ca: foreignCaDir, name: 'server', out: path.join(workDir, 'foreign-server') });
});

afterAll(() => {
  fs.rmSync(workDir, { recursive: true, force: true });
});

describe('initCa', () => {
  it('writes a self-signed CA certificate and a private key readable only by the owner', () => {
    const keyMode = fs.statSync(path.join(caDir, 'ca-key.pem')).mode & 0o777;
    expect(keyMode).toBe(0o600);
    expect(caCert.ca).toBe(true);
    expect(caCert.verify(caCert.publicKey)).toBe(true);
    expect(caCert.checkPrivateKey(createPrivateKey(fs.readFileSync(path.join(caDir, 'ca-key.pem'))))).toBe(true);
    expect(spiffeIdOf(caCert)).toBe('spiffe://ctxmesh.local');
    const forgeCa = forge.pki.certificateFromPem(fs.readFileSync(path.join(caDir, 'ca.pem'), 'utf8'));
    expect(forgeCa.getExtension('basicConstraints')).toMatchObject({ cA: true, critical: true });
    expect(forgeCa.getExtension('keyUsage')).toMatchObject({ keyCertSign: true, cRLSign: true });
  });

  it('defaults to a ten-year CA', () => {
    const lifetimeMs = Date.parse(caCert.validTo) - Date.now();
    expect(Math.abs(lifetimeMs - 10 * 365 * DAY_MS)).toBeLessThan(VALIDITY_TOLERANCE_MS);
  });

  it('refuses to overwrite an existing CA key', async () => {
    const error = await initCa({ out: caDir }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(CaError);
    expect((error as CaError).code).toBe('ca_exists');
    expect((error as CaError).message).toContain('ca-key.pem');
  });

  it('records a custom trust domain in the CA, and issue uses it for the default identity', async () => {
    const otherCaDir = path.join(workDir, 'example-ca');
    const ca = await initCa({ out: otherCaDir, trustDomain: 'example.org' });
    expect(ca.trustDomain).toBe('example.org');
    const issued = await issueCert({ ca: otherCaDir, name: 'billing', out: path.join(workDir, 'billing') });
    expect(issued.spiffeId).toBe('spiffe://example.org/ns/default/sa/billing');
  });
});

describe('issueCert', () => {
  it('issues a leaf that chains to the CA, with the default SPIFFE ID and a matching key', () => {
    const leaf = new X509Certificate(client.certPem);
    expect(leaf.verify(caCert.publicKey)).toBe(true);
    expect(leaf.checkIssued(caCert)).toBe(true);
    expect(leaf.ca).toBe(false);
    expect(spiffeIdOf(leaf)).toBe('spiffe://ctxmesh.local/ns/default/sa/client');
    expect(client.spiffeId).toBe('spiffe://ctxmesh.local/ns/default/sa/client');
    expect(leaf.checkPrivateKey(createPrivateKey(client.keyPem))).toBe(true);
    // X509Certificate#keyUsage lists the *extended* key usages: serverAuth and clientAuth.
    expect(leaf.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']));
  });

  it('writes cert.pem, key.pem (0600) and a copy of the CA', () => {
    const dir = path.join(workDir, 'client');
    expect(fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8')).toBe(client.certPem);
    expect(fs.readFileSync(path.join(dir, 'key.pem'), 'utf8')).toBe(client.keyPem);
    expect(fs.readFileSync(path.join(dir, 'ca.pem'), 'utf8')).toBe(fs.readFileSync(path.join(caDir, 'ca.pem'), 'utf8'));
    expect(fs.statSync(path.join(dir, 'key.pem')).mode & 0o777).toBe(0o600);
    // Atomic writes leave no temporary files behind.
    expect(fs.readdirSync(dir).sort()).toEqual(['ca.pem', 'cert.pem', 'key.pem']);
  });

  it('defaults to 24 hours, backdated for clock skew', () => {
    const leaf = new X509Certificate(client.certPem);
    const issuedAtMs = Date.parse(leaf.validFrom) + CLOCK_SKEW_ALLOWANCE_MS;
    expect(Math.abs(issuedAtMs - Date.now())).toBeLessThan(VALIDITY_TOLERANCE_MS);
    expect(Date.parse(leaf.validTo) - issuedAtMs).toBeCloseTo(DEFAULT_LEAF_TTL_MS, -4);
  });

  it('respects a custom TTL', async () => {
    const issued = await issueCert({ ca: caDir, name: 'short', out: path.join(workDir, 'short'), ttlMs: 2 * HOUR_MS });
    const leaf = new X509Certificate(issued.certPem);
    expect(Math.abs(Date.parse(leaf.validTo) - (Date.now() + 2 * HOUR_MS))).toBeLessThan(VALIDITY_TOLERANCE_MS);
  });

  it('uses a custom SPIFFE ID and extra DNS / IP SANs', async () => {
    const spiffe = 'spiffe://ctxmesh.local/ns/payments/sa/ledger';
    const issued = await issueCert({
      ca: caDir,
      name: 'ledger',
      out: path.join(workDir, 'ledger'),
      spiffe,
      dnsNames: ['ledger.payments.svc'],
      ipAddresses: ['10.0.0.7', '::1'],
    });
    const leaf = new X509Certificate(issued.certPem);
    expect(issued.spiffeId).toBe(spiffe);
    expect(spiffeIdOf(leaf)).toBe(spiffe);
    expect(leaf.subjectAltName).toContain('DNS:ledger.payments.svc');
    expect(leaf.subjectAltName).toContain('IP Address:10.0.0.7');
    expect(leaf.checkIP('10.0.0.7')).toBe('10.0.0.7');
  });

  it('rejects malformed requests with invalid_request', async () => {
    const out = path.join(workDir, 'rejected');
    const attempts = [
      issueCert({ ca: caDir, name: 'bad/name', out }),
      issueCert({ ca: caDir, name: 'x', out, spiffe: 'https://ctxmesh.local/sa/x' }),
      issueCert({ ca: caDir, name: 'x', out, spiffe: 'spiffe://ctxmesh.local' }),
      issueCert({ ca: caDir, name: 'x', out, ipAddresses: ['not-an-ip'] }),
      issueCert({ ca: caDir, name: 'x', out, ttlMs: 0 }),
      issueCert({ ca: caDir, name: 'x', out, ttlMs: 20 * 365 * DAY_MS }), // outlives the CA
      // Handled at once: awaited one by one, a later attempt could reject before its turn.
    ].map((attempt) => attempt.catch((err: unknown) => err));
    for (const attempt of attempts) {
      const error = await attempt;
      expect(error).toBeInstanceOf(CaError);
      expect((error as CaError).code).toBe('invalid_request');
    }
    expect(fs.existsSync(out)).toBe(false);
  });

  it('reports a missing CA directory as ca_unavailable', async () => {
    const error = await issueCert({ ca: path.join(workDir, 'nope'), name: 'x', out: path.join(workDir, 'x') }).catch(
      (err: unknown) => err,
    );
    expect((error as CaError).code).toBe('ca_unavailable');
    expect((error as CaError).message).toContain(path.join(workDir, 'nope', 'ca.pem'));
  });
});

interface Credentials {
  cert: string;
  key: string;
  ca: string;
}

interface HandshakeOutcome {
  /** Client-side failure (server certificate rejected, or connection reset). */
  clientError?: Error & { code?: string };
  /** Server-side failure (client certificate rejected). */
  serverError?: Error & { code?: string };
  /** Why the server refused the client's certificate (an OpenSSL verify code). */
  serverAuthorizationError?: string;
  /** The SPIFFE ID the server saw, when the handshake completed on both sides. */
  peerSpiffeId?: string;
  protocol?: string | null;
}

function authorizationErrorOf(socket: tls.TLSSocket): string | undefined {
  // Typed as Error, but on a server socket node stores the verify error's code string.
  const reason: unknown = socket.authorizationError;
  return reason === undefined || reason === null ? undefined : String(reason);
}

const credentialsOf = (issued: IssuedCert): Credentials => ({ cert: issued.certPem, key: issued.keyPem, ca: issued.caPem });

/** One mutual-TLS handshake between a real server and client on 127.0.0.1. */
async function handshake(
  serverCredentials: Credentials,
  clientCredentials: Credentials,
  trustDomain = 'ctxmesh.local',
): Promise<HandshakeOutcome> {
  const tlsServer = tls.createServer({
    ...serverCredentials,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
  });
  const serverOutcome = new Promise<HandshakeOutcome>((resolve) => {
    tlsServer.on('secureConnection', (socket) => {
      resolve({ peerSpiffeId: spiffeIdOf(socket.getPeerCertificate()), protocol: socket.getProtocol() });
      socket.destroy();
    });
    // Node verifies the client certificate after OpenSSL's handshake and destroys the socket when
    // it fails: the server sees a reset, and the reason is left on the socket.
    tlsServer.on('tlsClientError', (serverError, socket) =>
      resolve({ serverError, serverAuthorizationError: authorizationErrorOf(socket) }),
    );
  });
  await new Promise<void>((resolve) => tlsServer.listen(0, '127.0.0.1', resolve));
  const { port } = tlsServer.address() as AddressInfo;

  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    ...clientCredentials,
    minVersion: 'TLSv1.3',
    checkServerIdentity: checkMeshServerIdentity(trustDomain),
  });
  try {
    // In TLS 1.3 the client finishes its side before the server has judged the client
    // certificate, so a client-side success only means "wait for the server's verdict".
    const clientOutcome = await new Promise<HandshakeOutcome>((resolve) => {
      socket.once('secureConnect', () => resolve({}));
      socket.once('error', (clientError) => resolve({ clientError }));
    });
    if (clientOutcome.clientError) return clientOutcome;
    return await Promise.race([
      serverOutcome,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error('server never decided on the handshake')), HANDSHAKE_TIMEOUT_MS).unref(),
      ),
    ]);
  } finally {
    socket.destroy();
    await new Promise<void>((resolve) => tlsServer.close(() => resolve()));
  }
}

describe('mutual TLS with issued certificates', () => {
  it('completes a TLS 1.3 handshake and the server sees the client SPIFFE ID', async () => {
    const outcome = await handshake(credentialsOf(server), credentialsOf(client));
    expect(outcome.serverError).toBeUndefined();
    expect(outcome.clientError).toBeUndefined();
    expect(outcome.protocol).toBe('TLSv1.3');
    expect(outcome.peerSpiffeId).toBe('spiffe://ctxmesh.local/ns/default/sa/client');
  });

  it('rejects a client certificate from another CA', async () => {
    // The client trusts our CA, so only the server's judgement is under test.
    const outcome = await handshake(credentialsOf(server), { ...credentialsOf(foreignClient), ca: server.caPem });
    expect(outcome.peerSpiffeId).toBeUndefined();
    expect(outcome.serverAuthorizationError).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('rejects a server certificate from another CA', async () => {
    // The foreign server presents its own chain, but the client trusts only our CA.
    const outcome = await handshake({ ...credentialsOf(foreignServer), ca: client.caPem }, credentialsOf(client));
    expect(outcome.clientError?.code).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('rejects an expired client certificate', async () => {
    const expired = await issueCert({
      ca: caDir,
      name: 'expired',
      out: path.join(workDir, 'expired'),
      notBefore: new Date(Date.now() - 2 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    const outcome = await handshake(credentialsOf(server), credentialsOf(expired));
    expect(outcome.peerSpiffeId).toBeUndefined();
    expect(outcome.serverAuthorizationError).toBe('CERT_HAS_EXPIRED');
  });

  it('rejects an expired server certificate', async () => {
    const expired = await issueCert({
      ca: caDir,
      name: 'expired-server',
      out: path.join(workDir, 'expired-server'),
      notBefore: new Date(Date.now() - 2 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    const outcome = await handshake(credentialsOf(expired), credentialsOf(client));
    expect(outcome.clientError?.code).toBe('CERT_HAS_EXPIRED');
  });

  it('rejects a peer sidecar outside the expected trust domain', async () => {
    const outcome = await handshake(credentialsOf(server), credentialsOf(client), 'other.example');
    expect(outcome.clientError?.code).toBe('ERR_TLS_PEER_IDENTITY');
    expect(outcome.clientError?.message).toContain('other.example');
  });
});
