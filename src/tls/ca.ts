// The development CA: one self-signed root per mesh, and SPIFFE leaf certificates issued from it
// for each sidecar. Keys come from node:crypto (fast, native); X.509 assembly and signing from
// node-forge, whose signer supports RSA only, hence RSA-2048 throughout.
//
// On disk, a CA directory holds `ca.pem` and `ca-key.pem`; an identity directory holds `cert.pem`,
// `key.pem` and `ca.pem` — the three files MeshIdentity loads and watches. The trust domain is not
// stored separately: it is the CA certificate's own URI SAN (`spiffe://<trust-domain>`), so a CA
// directory is self-describing and cannot drift out of step with a side file.
import { X509Certificate, createPrivateKey, generateKeyPair, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile, access } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import type Forge from 'node-forge';

// node-forge weighs ~11 MB of resident memory; only issuing needs it, so a sidecar (which loads
// this module's constants and types) never pays for it.
let forgeModule: typeof Forge | undefined;
async function loadForge(): Promise<typeof Forge> {
  forgeModule ??= (await import('node-forge')).default;
  return forgeModule;
}
import { spiffeIdOf, trustDomainOf } from './spiffe.js';

export const DEFAULT_TRUST_DOMAIN = 'ctxmesh.local';
export const DEFAULT_CA_COMMON_NAME = 'ctxmesh dev CA';
export const DEFAULT_CA_TTL_MS = 10 * 365 * 24 * 3_600_000;
export const DEFAULT_LEAF_TTL_MS = 24 * 3_600_000;
/** Leaves start this far in the past so that a peer whose clock runs a little behind accepts them. */
export const CLOCK_SKEW_ALLOWANCE_MS = 5 * 60_000;
const RSA_MODULUS_BITS = 2048;
const SERIAL_NUMBER_BYTES = 16;

export const CA_CERT_FILE = 'ca.pem';
export const CA_KEY_FILE = 'ca-key.pem';
export const LEAF_CERT_FILE = 'cert.pem';
export const LEAF_KEY_FILE = 'key.pem';
export const LEAF_CA_FILE = 'ca.pem';

// Trust domains are DNS-like names; paths are segments of unreserved characters (SPIFFE-ID spec §2).
const TRUST_DOMAIN_PATTERN = /^[a-z0-9._-]+$/;
const PATH_SEGMENT_PATTERN = /^[A-Za-z0-9._-]+$/;

export type CaErrorCode =
  /** The caller asked for something malformed: a bad name, SPIFFE ID, IP or validity window. */
  | 'invalid_request'
  /** The CA directory is missing, unreadable, inconsistent or expired. */
  | 'ca_unavailable'
  /** `initCa` would overwrite an existing CA key (and orphan every certificate it issued). */
  | 'ca_exists';

export class CaError extends Error {
  constructor(
    readonly code: CaErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CaError';
  }
}

export interface CaPem {
  caCert: string;
  caKey: string;
  trustDomain: string;
}

export interface CreateCaOptions {
  trustDomain?: string;
  ttlMs?: number;
  commonName?: string;
  /** The issue time; tests pass one to build CAs that are already expired. */
  now?: Date;
}

export interface LeafOptions {
  /** Service-account name, used for the default SPIFFE ID and the subject CN. */
  name: string;
  /** Full SPIFFE ID; defaults to `spiffe://<ca trust domain>/ns/default/sa/<name>`. */
  spiffe?: string;
  ttlMs?: number;
  /** Overrides for the validity window (tests use them for expired / not-yet-valid certs). */
  notBefore?: Date;
  notAfter?: Date;
  dnsNames?: string[];
  ipAddresses?: string[];
  now?: Date;
}

export interface IssuedCert {
  spiffeId: string;
  certPem: string;
  keyPem: string;
  caPem: string;
}

const generateKeyPairAsync = promisify(generateKeyPair);

async function generateRsaKeyPair(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPairAsync('rsa', {
    modulusLength: RSA_MODULUS_BITS,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/**
 * A random positive serial (RFC 5280 §4.1.2.2: positive, at most 20 octets). The top bits of the
 * first byte are forced to 01 so the value is positive without a leading zero octet, which DER
 * would otherwise require to be stripped.
 */
function randomSerialHex(): string {
  const bytes = randomBytes(SERIAL_NUMBER_BYTES);
  bytes[0] = (bytes[0]! & 0x3f) | 0x40;
  return bytes.toString('hex');
}

function validateTrustDomain(trustDomain: string): string {
  if (!TRUST_DOMAIN_PATTERN.test(trustDomain)) {
    throw new CaError(
      'invalid_request',
      `invalid trust domain "${trustDomain}" (lower-case letters, digits, '.', '-' and '_' only)`,
    );
  }
  return trustDomain;
}

function validateSpiffeId(spiffeId: string): string {
  const match = /^spiffe:\/\/([^/]+)(\/.+)$/.exec(spiffeId);
  const segments = match?.[2]!.slice(1).split('/') ?? [];
  const validSegment = (segment: string) => PATH_SEGMENT_PATTERN.test(segment) && segment !== '.' && segment !== '..';
  if (!match || !TRUST_DOMAIN_PATTERN.test(match[1]!) || !segments.every(validSegment)) {
    throw new CaError(
      'invalid_request',
      `invalid SPIFFE ID "${spiffeId}" (expected spiffe://<trust-domain>/<path>, e.g. spiffe://ctxmesh.local/ns/default/sa/chat)`,
    );
  }
  return spiffeId;
}

function validateTtl(ttlMs: number, what: string): number {
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) {
    throw new CaError('invalid_request', `${what} must be a positive duration, got ${ttlMs}ms`);
  }
  return ttlMs;
}

function pemToForgePrivateKey(forge: typeof Forge, pem: string): Forge.pki.rsa.PrivateKey {
  return forge.pki.privateKeyFromPem(pem) as Forge.pki.rsa.PrivateKey;
}

/** Builds a self-signed CA in memory; `initCa` is this plus the files. */
export async function createCaPem(options: CreateCaOptions = {}): Promise<CaPem> {
  const forge = await loadForge();
  const trustDomain = validateTrustDomain(options.trustDomain ?? DEFAULT_TRUST_DOMAIN);
  const ttlMs = validateTtl(options.ttlMs ?? DEFAULT_CA_TTL_MS, 'CA TTL');
  const now = options.now ?? new Date();
  const { privateKeyPem, publicKeyPem } = await generateRsaKeyPair();

  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKeyPem);
  cert.serialNumber = randomSerialHex();
  cert.validity.notBefore = new Date(now.getTime() - CLOCK_SKEW_ALLOWANCE_MS);
  cert.validity.notAfter = new Date(now.getTime() + ttlMs);
  const subject = [
    { name: 'commonName', value: options.commonName ?? DEFAULT_CA_COMMON_NAME },
    { name: 'organizationName', value: 'ctxmesh' },
  ];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'subjectAltName', altNames: [{ type: 6, value: `spiffe://${trustDomain}` }] },
  ]);
  cert.sign(pemToForgePrivateKey(forge, privateKeyPem), forge.md.sha256.create());
  return { caCert: forge.pki.certificateToPem(cert), caKey: privateKeyPem, trustDomain };
}

/** Writes a new CA into `out` (`ca.pem`, `ca-key.pem` mode 0600). Refuses to replace one unless `force`. */
export async function initCa(opts: {
  out: string;
  trustDomain?: string;
  ttlMs?: number;
  commonName?: string;
  force?: boolean;
}): Promise<CaPem> {
  const keyPath = path.join(opts.out, CA_KEY_FILE);
  if (!opts.force && (await exists(keyPath))) {
    throw new CaError(
      'ca_exists',
      `${keyPath} already exists; replacing it would invalidate every certificate it issued (use --force to do it anyway)`,
    );
  }
  const ca = await createCaPem(opts);
  await mkdir(opts.out, { recursive: true, mode: 0o700 });
  await writeFileAtomic(path.join(opts.out, CA_CERT_FILE), ca.caCert, 0o644);
  await writeFileAtomic(keyPath, ca.caKey, 0o600);
  return ca;
}

/** Issues a leaf certificate in memory from a CA given as PEM. */
export async function issueCertPem(
  options: LeafOptions & { caCertPem: string; caKeyPem: string },
): Promise<IssuedCert> {
  const forge = await loadForge();
  const { caCertPem, caKeyPem } = options;
  if (!PATH_SEGMENT_PATTERN.test(options.name)) {
    throw new CaError('invalid_request', `invalid name "${options.name}" (letters, digits, '.', '-' and '_' only)`);
  }
  let caX509: X509Certificate;
  let caForgeCert: Forge.pki.Certificate;
  let caForgeKey: Forge.pki.rsa.PrivateKey;
  try {
    caX509 = new X509Certificate(caCertPem);
    caForgeCert = forge.pki.certificateFromPem(caCertPem);
    caForgeKey = pemToForgePrivateKey(forge, caKeyPem);
  } catch (err) {
    throw new CaError('ca_unavailable', `cannot parse the CA: ${(err as Error).message}`, { cause: err });
  }
  if (!caX509.ca) throw new CaError('ca_unavailable', 'the CA certificate is not a CA (basicConstraints cA is false)');
  let caKeyMatches: boolean;
  try {
    caKeyMatches = caX509.checkPrivateKey(createPrivateKey(caKeyPem));
  } catch {
    caKeyMatches = false;
  }
  if (!caKeyMatches) throw new CaError('ca_unavailable', 'the CA key does not belong to the CA certificate');

  const now = options.now ?? new Date();
  const notBefore = options.notBefore ?? new Date(now.getTime() - CLOCK_SKEW_ALLOWANCE_MS);
  const notAfter = options.notAfter ?? new Date(now.getTime() + validateTtl(options.ttlMs ?? DEFAULT_LEAF_TTL_MS, 'TTL'));
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new CaError('invalid_request', `notAfter (${notAfter.toISOString()}) must be after notBefore (${notBefore.toISOString()})`);
  }
  const caNotAfter = caForgeCert.validity.notAfter;
  if (caNotAfter.getTime() <= now.getTime()) {
    throw new CaError('ca_unavailable', `the CA expired at ${caNotAfter.toISOString()}; run \`ctxmesh certs init\` again`);
  }
  // A leaf that outlives its CA would fail verification at the CA's expiry anyway; say so now
  // instead of handing out a certificate whose printed expiry is a lie.
  if (notAfter.getTime() > caNotAfter.getTime()) {
    throw new CaError(
      'invalid_request',
      `requested expiry ${notAfter.toISOString()} is after the CA's own expiry ${caNotAfter.toISOString()}; use a shorter --ttl`,
    );
  }

  const spiffeId = validateSpiffeId(options.spiffe ?? defaultSpiffeId(caX509, options.name));
  const dnsNames = options.dnsNames ?? [];
  const ipAddresses = options.ipAddresses ?? [];
  for (const ip of ipAddresses) {
    if (isIP(ip) === 0) throw new CaError('invalid_request', `invalid IP address "${ip}"`);
  }

  const { privateKeyPem, publicKeyPem } = await generateRsaKeyPair();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKeyPem);
  cert.serialNumber = randomSerialHex();
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  cert.setSubject([
    { name: 'commonName', value: options.name },
    { name: 'organizationName', value: 'ctxmesh' },
  ]);
  cert.setIssuer(caForgeCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
    { name: 'subjectKeyIdentifier' },
    // forge's `keyIdentifier: true` would hash the *leaf's* key; the AKI must name the issuer's.
    { name: 'authorityKeyIdentifier', keyIdentifier: forge.util.hexToBytes(authorityKeyIdHex(forge, caForgeCert)) },
    {
      name: 'subjectAltName',
      altNames: [
        { type: 6, value: spiffeId },
        ...dnsNames.map((value) => ({ type: 2, value })),
        ...ipAddresses.map((ip) => ({ type: 7, ip })),
      ],
    },
  ]);
  cert.sign(caForgeKey, forge.md.sha256.create());
  return { spiffeId, certPem: forge.pki.certificateToPem(cert), keyPem: privateKeyPem, caPem: caCertPem };
}

/**
 * Issues a leaf from the CA in `ca` and writes `out/cert.pem`, `out/key.pem` (0600), `out/ca.pem`.
 * Each file is replaced by rename, so a sidecar watching `out` never reads a half-written file; it
 * may briefly see a new cert beside the old key, which MeshIdentity rejects and retries.
 */
export async function issueCert(opts: LeafOptions & { ca: string; out: string }): Promise<IssuedCert> {
  const caCertPem = await readCaFile(path.join(opts.ca, CA_CERT_FILE));
  const caKeyPem = await readCaFile(path.join(opts.ca, CA_KEY_FILE));
  const issued = await issueCertPem({ ...opts, caCertPem, caKeyPem });
  await mkdir(opts.out, { recursive: true, mode: 0o700 });
  await writeFileAtomic(path.join(opts.out, LEAF_CA_FILE), issued.caPem, 0o644);
  await writeFileAtomic(path.join(opts.out, LEAF_KEY_FILE), issued.keyPem, 0o600);
  await writeFileAtomic(path.join(opts.out, LEAF_CERT_FILE), issued.certPem, 0o644);
  return issued;
}

/** The trust domain a CA issues into: the host of its own `spiffe://` URI SAN. */
export function trustDomainOfCa(caCert: X509Certificate): string | undefined {
  const spiffeId = spiffeIdOf(caCert);
  return spiffeId === undefined ? undefined : trustDomainOf(spiffeId);
}

function defaultSpiffeId(caCert: X509Certificate, name: string): string {
  const trustDomain = trustDomainOfCa(caCert);
  if (trustDomain === undefined) {
    throw new CaError(
      'invalid_request',
      'the CA certificate carries no spiffe:// URI SAN, so its trust domain is unknown; pass --spiffe explicitly',
    );
  }
  return `spiffe://${trustDomain}/ns/default/sa/${name}`;
}

function authorityKeyIdHex(forge: typeof Forge, caCert: Forge.pki.Certificate): string {
  // Prefer the CA's declared SKI: a CA made elsewhere may have derived it differently.
  const declared = caCert.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | null;
  return declared?.subjectKeyIdentifier ?? caCert.generateSubjectKeyIdentifier().toHex();
}

async function readCaFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new CaError(
      'ca_unavailable',
      `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message} (run \`ctxmesh certs init\` first?)`,
      { cause: err },
    );
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

async function writeFileAtomic(file: string, contents: string, mode: number): Promise<void> {
  const temporary = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(temporary, contents, { mode, flag: 'wx' });
  await rename(temporary, file);
}
