// SPIFFE identities as the mesh uses them: every sidecar certificate carries exactly one
// `spiffe://<trust-domain>/<path>` URI SAN, and authorization decisions are made on that string,
// never on DNS names or IP addresses (peers are dialled by IP and their addresses change).
import type { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';

const SPIFFE_SCHEME = 'spiffe://';

type CertificateLike = { subjectaltname?: string } | X509Certificate | undefined | null;

/** The first `URI:spiffe://…` subject alternative name of a certificate, if it has one. */
export function spiffeIdOf(cert: CertificateLike): string | undefined {
  if (!cert) return undefined;
  // tls.PeerCertificate spells it `subjectaltname`, crypto.X509Certificate `subjectAltName`.
  const altNames = 'subjectAltName' in cert ? cert.subjectAltName : cert.subjectaltname;
  if (!altNames) return undefined;
  for (const { type, value } of parseSubjectAltNames(altNames)) {
    if (type === 'URI' && value.toLowerCase().startsWith(SPIFFE_SCHEME)) return value;
  }
  return undefined;
}

/**
 * Splits node's rendering of the SAN extension (`URI:spiffe://x/a, DNS:foo`) into entries.
 * Since the CVE-2021-44532 fix node renders a value that contains a comma, quote or other
 * delimiter as a JSON string literal (`URI:"spiffe://x/a\u002cb"`), so that a crafted name
 * cannot smuggle a second entry into the list; those values are decoded rather than split.
 */
export function parseSubjectAltNames(altNames: string): Array<{ type: string; value: string }> {
  const entries: Array<{ type: string; value: string }> = [];
  let position = 0;
  while (position < altNames.length) {
    const colon = altNames.indexOf(':', position);
    if (colon < 0) break;
    const type = altNames.slice(position, colon).trim();
    let value: string;
    let next: number;
    if (altNames[colon + 1] === '"') {
      const closing = closingQuoteOf(altNames, colon + 1);
      if (closing < 0) break; // malformed: an unterminated literal cannot be trusted
      try {
        value = JSON.parse(altNames.slice(colon + 1, closing + 1)) as string;
      } catch {
        break;
      }
      const separator = altNames.indexOf(', ', closing);
      next = separator < 0 ? altNames.length : separator + 2;
    } else {
      const separator = altNames.indexOf(', ', colon);
      value = altNames.slice(colon + 1, separator < 0 ? altNames.length : separator);
      next = separator < 0 ? altNames.length : separator + 2;
    }
    entries.push({ type, value });
    position = next;
  }
  return entries;
}

function closingQuoteOf(text: string, openingQuote: number): number {
  for (let index = openingQuote + 1; index < text.length; index++) {
    if (text[index] === '\\') index++;
    else if (text[index] === '"') return index;
  }
  return -1;
}

/** The trust domain (host part) of a SPIFFE ID; throws if the string is not a SPIFFE ID. */
export function trustDomainOf(spiffeId: string): string {
  if (!spiffeId.toLowerCase().startsWith(SPIFFE_SCHEME)) {
    throw new TypeError(`not a SPIFFE ID: "${spiffeId}" (expected spiffe://<trust-domain>/<path>)`);
  }
  const rest = spiffeId.slice(SPIFFE_SCHEME.length);
  const slash = rest.indexOf('/');
  const trustDomain = slash < 0 ? rest : rest.slice(0, slash);
  if (trustDomain === '') throw new TypeError(`SPIFFE ID "${spiffeId}" has an empty trust domain`);
  // Trust domains are case-insensitive hosts; the SPIFFE spec requires them lower-case.
  return trustDomain.toLowerCase();
}

/**
 * Whether an identity passes an allow list. An entry matches exactly, or, when it ends in `*`,
 * by prefix: `spiffe://ctxmesh.local/ns/default/sa/*` admits every service account in that
 * namespace. The wildcard needs at least one character to stand for, so `…/sa/*` does not admit
 * the (invalid) `…/sa/`. A prefix is plain text: `spiffe://ctxmesh.local*` would also admit
 * `spiffe://ctxmesh.local.evil/…`, so patterns should end in `/*`.
 */
export function isAllowed(spiffeId: string | undefined, allow: readonly string[]): boolean {
  if (spiffeId === undefined || spiffeId === '') return false;
  return allow.some((pattern) => {
    if (!pattern.endsWith('*')) return pattern === spiffeId;
    const prefix = pattern.slice(0, -1);
    return spiffeId.length > prefix.length && spiffeId.startsWith(prefix);
  });
}

/** Thrown (returned, for checkServerIdentity) when a peer's certificate names the wrong identity. */
export class PeerIdentityError extends Error {
  readonly code = 'ERR_TLS_PEER_IDENTITY';
  constructor(
    message: string,
    readonly host: string,
    readonly spiffeId: string | undefined,
  ) {
    super(message);
    this.name = 'PeerIdentityError';
  }
}

/**
 * A `checkServerIdentity` for dialling a peer sidecar. Sidecars are reached by IP and their
 * certificates carry no DNS or IP SAN, only a SPIFFE URI, so node's default hostname check would
 * reject every peer. The chain has already been verified against the mesh CA when this runs
 * (with `rejectUnauthorized`); what is left to check is that the peer speaks for our trust domain.
 * Finer-grained authorization (which service may call which) is the inbound side's allow list.
 */
export function checkMeshServerIdentity(
  trustDomain: string,
): (host: string, cert: PeerCertificate) => Error | undefined {
  const expected = trustDomain.toLowerCase();
  return (host, cert) => {
    const spiffeId = spiffeIdOf(cert);
    if (spiffeId === undefined) {
      return new PeerIdentityError(
        `peer ${host} presented a certificate without a SPIFFE ID (expected one in trust domain "${expected}")`,
        host,
        undefined,
      );
    }
    let actual: string;
    try {
      actual = trustDomainOf(spiffeId);
    } catch {
      actual = '';
    }
    if (actual !== expected) {
      return new PeerIdentityError(
        `peer ${host} presented SPIFFE ID "${spiffeId}", which is not in trust domain "${expected}"`,
        host,
        spiffeId,
      );
    }
    return undefined;
  };
}
