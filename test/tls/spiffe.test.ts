import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import forge from 'node-forge';
import { describe, expect, it } from 'vitest';
import {
  checkMeshServerIdentity,
  isAllowed,
  parseSubjectAltNames,
  spiffeIdOf,
  trustDomainOf,
} from '../../src/tls/spiffe.js';

/** A self-signed certificate with arbitrary URI SANs, including ones our CA refuses to issue. */
function certificateWithUris(uris: string[]): X509Certificate {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = '4f';
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 3_600_000);
  cert.setSubject([{ name: 'commonName', value: 'probe' }]);
  cert.setIssuer([{ name: 'commonName', value: 'probe' }]);
  cert.setExtensions([
    { name: 'subjectAltName', altNames: [{ type: 2, value: 'probe.local' }, ...uris.map((value) => ({ type: 6, value }))] },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  return new X509Certificate(forge.pki.certificateToPem(cert));
}

/** The parts of a tls.PeerCertificate that identity checks read. */
const peer = (subjectaltname?: string) => ({ subjectaltname }) as PeerCertificate;

describe('isAllowed', () => {
  const allow = ['spiffe://ctxmesh.local/ns/default/sa/*', 'spiffe://ctxmesh.local/ns/ops/sa/admin'];

  it('admits exact matches', () => {
    expect(isAllowed('spiffe://ctxmesh.local/ns/ops/sa/admin', allow)).toBe(true);
  });

  it('admits by prefix for patterns ending in *', () => {
    expect(isAllowed('spiffe://ctxmesh.local/ns/default/sa/chat', allow)).toBe(true);
    expect(isAllowed('spiffe://ctxmesh.local/ns/default/sa/a.b-c_d', allow)).toBe(true);
  });

  it('refuses everything else', () => {
    expect(isAllowed('spiffe://ctxmesh.local/ns/ops/sa/admin2', allow)).toBe(false);
    expect(isAllowed('spiffe://ctxmesh.local/ns/ops/sa/other', allow)).toBe(false);
    expect(isAllowed('spiffe://ctxmesh.local/ns/defaults/sa/chat', allow)).toBe(false);
    expect(isAllowed('spiffe://evil.local/ns/default/sa/chat', allow)).toBe(false);
    expect(isAllowed('spiffe://ctxmesh.local/ns/default/sa/', allow)).toBe(false);
    expect(isAllowed('spiffe://ctxmesh.local/ns/default/sa/*', ['spiffe://ctxmesh.local/ns/default/sa/chat'])).toBe(false);
  });

  it('refuses a caller without an identity, and everyone when the list is empty', () => {
    expect(isAllowed(undefined, allow)).toBe(false);
    expect(isAllowed('', ['*'])).toBe(false);
    expect(isAllowed('spiffe://ctxmesh.local/ns/default/sa/chat', [])).toBe(false);
  });

  it('treats a lone * as "any identity"', () => {
    expect(isAllowed('spiffe://anything/at/all', ['*'])).toBe(true);
  });
});

describe('spiffeIdOf', () => {
  it('reads the URI SAN from a peer certificate', () => {
    expect(spiffeIdOf(peer('URI:spiffe://x/ns/default/sa/a, DNS:foo'))).toBe('spiffe://x/ns/default/sa/a');
    expect(spiffeIdOf(peer('DNS:foo, IP Address:10.0.0.1, URI:spiffe://x/ns/default/sa/b'))).toBe(
      'spiffe://x/ns/default/sa/b',
    );
  });

  it('skips URIs that are not SPIFFE IDs and returns the first SPIFFE one', () => {
    expect(spiffeIdOf(peer('URI:https://x/y, URI:spiffe://x/one, URI:spiffe://x/two'))).toBe('spiffe://x/one');
  });

  it('decodes values node quotes because they contain delimiters', () => {
    expect(spiffeIdOf(peer('URI:"spiffe://x/a\\u002cb", DNS:foo'))).toBe('spiffe://x/a,b');
    // A quoted value cannot smuggle in a second entry.
    expect(parseSubjectAltNames('DNS:"a, URI:spiffe://evil/x", DNS:b')).toEqual([
      { type: 'DNS', value: 'a, URI:spiffe://evil/x' },
      { type: 'DNS', value: 'b' },
    ]);
    expect(spiffeIdOf(peer('DNS:"a, URI:spiffe://evil/x", DNS:b'))).toBeUndefined();
  });

  it('reads crypto.X509Certificate, including node’s quoting of a real certificate', () => {
    const cert = certificateWithUris(['https://not-spiffe', 'spiffe://td/ns/a,b/sa/c', 'spiffe://td/second']);
    expect(cert.subjectAltName).toContain('"spiffe://td/ns/a\\u002cb/sa/c"');
    expect(spiffeIdOf(cert)).toBe('spiffe://td/ns/a,b/sa/c');
  });

  it('returns undefined when there is nothing to read', () => {
    expect(spiffeIdOf(undefined)).toBeUndefined();
    expect(spiffeIdOf(null)).toBeUndefined();
    expect(spiffeIdOf({})).toBeUndefined();
    expect(spiffeIdOf(peer('DNS:foo'))).toBeUndefined();
    expect(spiffeIdOf(peer(''))).toBeUndefined();
  });
});

describe('trustDomainOf', () => {
  it('returns the host part, lower-cased', () => {
    expect(trustDomainOf('spiffe://ctxmesh.local/ns/default/sa/chat')).toBe('ctxmesh.local');
    expect(trustDomainOf('spiffe://Example.ORG/x')).toBe('example.org');
    expect(trustDomainOf('spiffe://ctxmesh.local')).toBe('ctxmesh.local');
  });

  it('throws on strings that are not SPIFFE IDs', () => {
    expect(() => trustDomainOf('https://ctxmesh.local/x')).toThrow(/not a SPIFFE ID/);
    expect(() => trustDomainOf('spiffe:///x')).toThrow(/empty trust domain/);
  });
});

describe('checkMeshServerIdentity', () => {
  const check = checkMeshServerIdentity('ctxmesh.local');

  it('accepts a peer in the trust domain even though it has no SAN for the dialled IP', () => {
    expect(check('10.0.0.7', peer('URI:spiffe://ctxmesh.local/ns/default/sa/chat'))).toBeUndefined();
    expect(check('10.0.0.7', peer('URI:spiffe://CTXMESH.local/ns/default/sa/chat'))).toBeUndefined();
  });

  it('rejects a peer from another trust domain with ERR_TLS_PEER_IDENTITY', () => {
    const error = check('10.0.0.7', peer('URI:spiffe://evil.local/ns/default/sa/chat'));
    expect(error).toBeInstanceOf(Error);
    expect(error).toMatchObject({ code: 'ERR_TLS_PEER_IDENTITY' });
    expect(error?.message).toContain('spiffe://evil.local/ns/default/sa/chat');
    expect(error?.message).toContain('ctxmesh.local');
    expect(error?.message).toContain('10.0.0.7');
  });

  it('rejects a trust domain that merely starts with ours', () => {
    expect(check('10.0.0.7', peer('URI:spiffe://ctxmesh.local.evil/ns/default/sa/chat'))).toMatchObject({
      code: 'ERR_TLS_PEER_IDENTITY',
    });
  });

  it('rejects a peer without a SPIFFE ID', () => {
    const error = check('10.0.0.7', peer('DNS:10.0.0.7, IP Address:10.0.0.7'));
    expect(error).toMatchObject({ code: 'ERR_TLS_PEER_IDENTITY' });
    expect(error?.message).toMatch(/without a SPIFFE ID/);
  });
});
