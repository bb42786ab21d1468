import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import forge from 'node-forge';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initCa, issueCert } from '../../src/tls/ca.js';
import { IdentityError, MeshIdentity, type IdentityPaths } from '../../src/tls/identity.js';
import { checkMeshServerIdentity } from '../../src/tls/spiffe.js';

const DAY_MS = 24 * 3_600_000;
/** Generous: the directory watch normally reports within ~100ms, the stat poll within ~1s. */
const EVENT_TIMEOUT_MS = 5_000;

let workDir: string;
let caDir: string;
let otherCaDir: string;
let directoryCount = 0;

beforeAll(async () => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctxmesh-identity-'));
  caDir = path.join(workDir, 'ca');
  otherCaDir = path.join(workDir, 'other-ca');
  await initCa({ out: caDir });
  await initCa({ out: otherCaDir });
});

afterAll(() => {
  fs.rmSync(workDir, { recursive: true, force: true });
});

function pathsIn(dir: string): IdentityPaths {
  return { cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem'), ca: path.join(dir, 'ca.pem') };
}

/** Issues a fresh identity into its own directory. */
async function issuedIdentity(
  name = 'chat',
  overrides: { ca?: string; notBefore?: Date; notAfter?: Date; spiffe?: string } = {},
): Promise<{ dir: string; paths: IdentityPaths }> {
  const dir = path.join(workDir, `identity-${++directoryCount}`);
  await issueCert({ ca: overrides.ca ?? caDir, name, out: dir, ...overrides });
  return { dir, paths: pathsIn(dir) };
}

/** A CA-signed leaf without any SAN, which our CA tooling refuses to produce. */
function writeLeafWithoutSan(dir: string): void {
  const caCert = forge.pki.certificateFromPem(fs.readFileSync(path.join(caDir, 'ca.pem'), 'utf8'));
  const caKey = forge.pki.privateKeyFromPem(fs.readFileSync(path.join(caDir, 'ca-key.pem'), 'utf8'));
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = '5a';
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + DAY_MS);
  cert.setSubject([{ name: 'commonName', value: 'no-san' }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.sign(caKey, forge.md.sha256.create());
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'cert.pem'), forge.pki.certificateToPem(cert));
  fs.writeFileSync(path.join(dir, 'key.pem'), privateKey);
  fs.copyFileSync(path.join(caDir, 'ca.pem'), path.join(dir, 'ca.pem'));
}

function loadError(paths: IdentityPaths, options?: Parameters<typeof MeshIdentity.load>[1]): IdentityError {
  try {
    MeshIdentity.load(paths, options);
  } catch (err) {
    expect(err).toBeInstanceOf(IdentityError);
    expect((err as IdentityError).code).toBe('invalid_identity');
    return err as IdentityError;
  }
  throw new Error('expected MeshIdentity.load to throw');
}

function serialOf(certPem: Buffer): string {
  return new X509Certificate(certPem).serialNumber;
}

describe('MeshIdentity.load', () => {
  it('loads a valid identity and exposes its SPIFFE ID, expiry and material', async () => {
    const { paths } = await issuedIdentity('chat');
    const identity = MeshIdentity.load(paths);
    expect(identity.spiffeId).toBe('spiffe://ctxmesh.local/ns/default/sa/chat');
    expect(identity.trustDomain).toBe('ctxmesh.local');
    expect(identity.notAfter.getTime()).toBe(Date.parse(new X509Certificate(identity.cert).validTo));
    expect(identity.cert.equals(fs.readFileSync(paths.cert))).toBe(true);
    expect(identity.key.equals(fs.readFileSync(paths.key))).toBe(true);
    expect(identity.ca.equals(fs.readFileSync(paths.ca))).toBe(true);
    expect(identity.serverOptions()).toEqual({ cert: identity.cert, key: identity.key, ca: identity.ca });
    expect(identity.secureContext.context).toBeDefined();
  });

  it('names the file when one is missing', () => {
    const dir = path.join(workDir, 'missing');
    const error = loadError(pathsIn(dir));
    expect(error.message).toContain(path.join(dir, 'cert.pem'));
    expect(error.message).toContain('ENOENT');
    expect(error.file).toBe(path.join(dir, 'cert.pem'));
  });

  it('rejects a key that does not belong to the certificate', async () => {
    const a = await issuedIdentity('a');
    const b = await issuedIdentity('b');
    const error = loadError({ ...a.paths, key: b.paths.key });
    expect(error.message).toContain(b.paths.key);
    expect(error.message).toMatch(/does not match/);
  });

  it('rejects a certificate without a SPIFFE ID', () => {
    const dir = path.join(workDir, 'no-san');
    writeLeafWithoutSan(dir);
    const error = loadError(pathsIn(dir));
    expect(error.message).toContain(path.join(dir, 'cert.pem'));
    expect(error.message).toMatch(/no spiffe:\/\/ URI/);
  });

  it('rejects an expired certificate', async () => {
    const { paths } = await issuedIdentity('expired', {
      notBefore: new Date(Date.now() - 2 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    expect(loadError(paths).message).toMatch(new RegExp(`${paths.cert} expired at \\d{4}-`));
  });

  it('rejects a certificate that is not yet valid', async () => {
    const { paths } = await issuedIdentity('future', {
      notBefore: new Date(Date.now() + DAY_MS),
      notAfter: new Date(Date.now() + 2 * DAY_MS),
    });
    expect(loadError(paths).message).toMatch(/is not valid until/);
  });

  it('judges validity by the injected clock', async () => {
    const { paths } = await issuedIdentity('clocked');
    expect(loadError(paths, { now: () => new Date(Date.now() + 2 * DAY_MS) }).message).toMatch(/expired at/);
  });

  it('rejects a CA file that did not issue the certificate', async () => {
    const ours = await issuedIdentity('ours');
    const theirs = await issuedIdentity('theirs', { ca: otherCaDir });
    const error = loadError({ ...ours.paths, ca: theirs.paths.ca });
    expect(error.message).toContain(theirs.paths.ca);
    expect(error.message).toMatch(/not issued by any CA/);
  });

  it('rejects files that are not PEM', async () => {
    const { dir, paths } = await issuedIdentity('garbage');
    fs.writeFileSync(path.join(dir, 'cert.pem'), 'not a certificate\n');
    expect(loadError(paths).message).toMatch(/contains no PEM certificate/);
    const { dir: keyDir, paths: keyPaths } = await issuedIdentity('garbage-key');
    fs.writeFileSync(path.join(keyDir, 'key.pem'), '-----BEGIN PRIVATE KEY-----\ntruncated');
    expect(loadError(keyPaths).message).toContain(`key file ${keyPaths.key} is not a readable private key`);
  });
});

describe('MeshIdentity.watch', () => {
  it('picks up a re-issued certificate and emits rotated', async () => {
    const { dir, paths } = await issuedIdentity('rotating');
    const identity = MeshIdentity.load(paths);
    identity.watch();
    try {
      const before = serialOf(identity.cert);
      const rotated = once(identity, 'rotated', { signal: AbortSignal.timeout(EVENT_TIMEOUT_MS) });
      const reissued = await issueCert({
        ca: caDir,
        name: 'rotating',
        out: dir,
        spiffe: 'spiffe://ctxmesh.local/ns/default/sa/rotated',
      });
      const [spiffeId] = await rotated;
      expect(spiffeId).toBe('spiffe://ctxmesh.local/ns/default/sa/rotated');
      expect(identity.spiffeId).toBe(spiffeId);
      expect(identity.cert.toString()).toBe(reissued.certPem);
      expect(identity.key.toString()).toBe(reissued.keyPem);
      expect(serialOf(identity.cert)).not.toBe(before);
    } finally {
      identity.close();
    }
  });

  it('keeps the last good identity when a file is rewritten with garbage', async () => {
    const { paths } = await issuedIdentity('stubborn');
    const identity = MeshIdentity.load(paths);
    const { cert, key, secureContext, spiffeId } = identity;
    identity.watch();
    try {
      const failed = once(identity, 'reload_error', { signal: AbortSignal.timeout(EVENT_TIMEOUT_MS) });
      fs.writeFileSync(paths.cert, '-----BEGIN CERTIFICATE-----\nhalf-writ');
      const [error] = await failed;
      expect(error).toBeInstanceOf(IdentityError);
      expect((error as IdentityError).message).toContain(paths.cert);
      expect(identity.spiffeId).toBe(spiffeId);
      expect(identity.cert).toBe(cert);
      expect(identity.key).toBe(key);
      expect(identity.secureContext).toBe(secureContext);
    } finally {
      identity.close();
    }
  });

  it('lets a server rotate without dropping established connections', async () => {
    const { dir, paths } = await issuedIdentity('server');
    const clientIdentity = MeshIdentity.load((await issuedIdentity('client')).paths);
    const identity = MeshIdentity.load(paths);
    const server = tls.createServer({ ...identity.serverOptions(), requestCert: true, minVersion: 'TLSv1.3' }, (socket) =>
      socket.pipe(socket),
    );
    identity.on('rotated', () => server.setSecureContext(identity.serverOptions()));
    identity.watch();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const dial = async () => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port,
        secureContext: clientIdentity.secureContext,
        checkServerIdentity: checkMeshServerIdentity(clientIdentity.trustDomain),
      });
      await once(socket, 'secureConnect');
      return socket;
    };
    const echo = async (socket: tls.TLSSocket, text: string) => {
      socket.write(text);
      const [chunk] = (await once(socket, 'data')) as [Buffer];
      return chunk.toString();
    };

    const established = await dial();
    try {
      const firstSerial = established.getPeerCertificate().serialNumber;
      const rotated = once(identity, 'rotated', { signal: AbortSignal.timeout(EVENT_TIMEOUT_MS) });
      const reissued = await issueCert({ ca: caDir, name: 'server', out: dir });
      await rotated;

      expect(await echo(established, 'still here')).toBe('still here');
      const fresh = await dial();
      try {
        const freshSerial = fresh.getPeerCertificate().serialNumber;
        expect(freshSerial).not.toBe(firstSerial);
        expect(freshSerial).toBe(new X509Certificate(reissued.certPem).serialNumber);
      } finally {
        fresh.destroy();
      }
    } finally {
      established.destroy();
      identity.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
