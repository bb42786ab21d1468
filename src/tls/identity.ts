// The sidecar's own mTLS identity: a SPIFFE certificate, its key and the mesh CA bundle, loaded
// from three PEM files and kept current while the process runs. Whoever writes the files (our dev
// CA, cert-manager, a SPIRE helper) rotates the identity by replacing them; connections already
// open keep the material they were established with, new ones pick up the replacement.
//
// Like an xDS client that NACKs a bad resource, a reload that fails validation leaves the last
// good identity in force: a half-written or mismatched set of files must never take the sidecar
// off the mesh.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import tls from 'node:tls';
import { FileWatch } from './file-watch.js';
import { spiffeIdOf, trustDomainOf } from './spiffe.js';


export interface IdentityPaths {
  cert: string;
  key: string;
  ca: string;
}

export interface MeshIdentityOptions {
  /** The clock used for validity checks; tests inject one instead of minting certificates in the past. */
  now?: () => Date;
}

export class IdentityError extends Error {
  readonly code = 'invalid_identity';
  constructor(
    message: string,
    /** The file the problem was found in, when it is one file's fault. */
    readonly file?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'IdentityError';
  }
}

interface IdentityEvents {
  /** New material is in force; carries the (possibly unchanged) SPIFFE ID. */
  rotated: [spiffeId: string];
  /** The files changed but did not validate; the previous material is still in force. */
  reload_error: [error: IdentityError];
}

interface IdentityMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  spiffeId: string;
  trustDomain: string;
  notBefore: Date;
  notAfter: Date;
  secureContext: tls.SecureContext;
}

export class MeshIdentity extends EventEmitter<IdentityEvents> {
  private material: IdentityMaterial;
  private fileWatch: FileWatch | undefined;

  private constructor(
    readonly paths: Readonly<IdentityPaths>,
    material: IdentityMaterial,
    private readonly now: () => Date,
  ) {
    super();
    this.material = material;
  }

  /** Reads and validates the three files; throws IdentityError naming the file and the reason. */
  static load(paths: IdentityPaths, options: MeshIdentityOptions = {}): MeshIdentity {
    const now = options.now ?? (() => new Date());
    const frozenPaths = Object.freeze({ ...paths });
    return new MeshIdentity(frozenPaths, loadMaterial(frozenPaths, now()), now);
  }

  get spiffeId(): string {
    return this.material.spiffeId;
  }
  get trustDomain(): string {
    return this.material.trustDomain;
  }
  get notBefore(): Date {
    return new Date(this.material.notBefore);
  }
  get notAfter(): Date {
    return new Date(this.material.notAfter);
  }
  get cert(): Buffer {
    return this.material.cert;
  }
  get key(): Buffer {
    return this.material.key;
  }
  get ca(): Buffer {
    return this.material.ca;
  }
  /** For outbound connections; read it per connection so that each dial uses the current identity. */
  get secureContext(): tls.SecureContext {
    return this.material.secureContext;
  }

  /** Options for `tls.Server#setSecureContext` (and `tls.createServer`). */
  serverOptions(): { cert: Buffer; key: Buffer; ca: Buffer } {
    const { cert, key, ca } = this.material;
    return { cert, key, ca };
  }

  /**
   * Re-reads the files now. Emits 'rotated' and returns true when different, valid material took
   * over; emits 'reload_error' and returns false when the files do not validate.
   */
  reload(): boolean {
    let next: IdentityMaterial;
    try {
      next = loadMaterial(this.paths, this.now());
    } catch (err) {
      const error =
        err instanceof IdentityError ? err : new IdentityError(`reload failed: ${(err as Error).message}`, undefined, { cause: err });
      this.emit('reload_error', error);
      return false;
    }
    // Directory events also fire for unrelated files and for rewrites with identical bytes.
    if (sameMaterial(next, this.material)) return false;
    this.material = next;
    this.emit('rotated', next.spiffeId);
    return true;
  }

  /** Starts reloading whenever one of the files changes. Idempotent. Keeps nothing alive by itself. */
  watch(): void {
    this.fileWatch ??= new FileWatch([this.paths.cert, this.paths.key, this.paths.ca], () => this.reload());
  }

  /** Stops watching; the current material stays usable. */
  close(): void {
    this.fileWatch?.close();
    this.fileWatch = undefined;
  }

}

function loadMaterial(paths: Readonly<IdentityPaths>, now: Date): IdentityMaterial {
  const cert = readIdentityFile(paths.cert, 'certificate');
  const key = readIdentityFile(paths.key, 'key');
  const ca = readIdentityFile(paths.ca, 'CA');

  const certChain = parseCertificates(cert, paths.cert, 'certificate');
  const leaf = certChain[0]!;
  const privateKey = parsePrivateKey(key, paths.key);
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new IdentityError(`key file ${paths.key} does not match the certificate in ${paths.cert}`, paths.key);
  }

  const spiffeId = spiffeIdOf(leaf);
  if (spiffeId === undefined) {
    throw new IdentityError(
      `certificate ${paths.cert} has no spiffe:// URI subject alternative name (subject: ${leaf.subject.replace(/\n/g, ', ')})`,
      paths.cert,
    );
  }
  let trustDomain: string;
  try {
    trustDomain = trustDomainOf(spiffeId);
  } catch (err) {
    throw new IdentityError(`certificate ${paths.cert}: ${(err as Error).message}`, paths.cert, { cause: err });
  }

  const notBefore = new Date(leaf.validFrom);
  const notAfter = new Date(leaf.validTo);
  if (now.getTime() < notBefore.getTime()) {
    throw new IdentityError(`certificate ${paths.cert} is not valid until ${notBefore.toISOString()}`, paths.cert);
  }
  if (now.getTime() > notAfter.getTime()) {
    throw new IdentityError(`certificate ${paths.cert} expired at ${notAfter.toISOString()}`, paths.cert);
  }

  // Caught here, a mismatched CA file names itself; caught at handshake time, it would look like
  // every peer rejecting us.
  const roots = parseCertificates(ca, paths.ca, 'CA');
  if (!chainsToBundle(leaf, certChain.slice(1), roots)) {
    throw new IdentityError(
      `certificate ${paths.cert} was not issued by any CA in ${paths.ca} (issuer: ${leaf.issuer.replace(/\n/g, ', ')})`,
      paths.ca,
    );
  }

  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({ cert, key, ca, minVersion: 'TLSv1.3' });
  } catch (err) {
    throw new IdentityError(`OpenSSL rejected the identity in ${paths.cert}: ${(err as Error).message}`, paths.cert, {
      cause: err,
    });
  }
  return { cert, key, ca, spiffeId, trustDomain, notBefore, notAfter, secureContext };
}

function readIdentityFile(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new IdentityError(`cannot read ${what} file ${file}: ${reason}`, file, { cause: err });
  }
}

const PEM_CERTIFICATE_PATTERN = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

function parseCertificates(pem: Buffer, file: string, what: string): X509Certificate[] {
  const blocks = pem.toString('utf8').match(PEM_CERTIFICATE_PATTERN) ?? [];
  if (blocks.length === 0) throw new IdentityError(`${what} file ${file} contains no PEM certificate`, file);
  return blocks.map((block, index) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new IdentityError(
        `${what} file ${file}: certificate #${index + 1} does not parse (${(err as Error).message})`,
        file,
        { cause: err },
      );
    }
  });
}

function parsePrivateKey(pem: Buffer, file: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    throw new IdentityError(`key file ${file} is not a readable private key (${(err as Error).message})`, file, {
      cause: err,
    });
  }
}

/** Whether the leaf, through the intermediates sent alongside it, was signed by one of the roots. */
function chainsToBundle(leaf: X509Certificate, intermediates: X509Certificate[], roots: X509Certificate[]): boolean {
  const signedBy = (child: X509Certificate, parent: X509Certificate) =>
    child.checkIssued(parent) && child.verify(parent.publicKey);
  let current = leaf;
  // Each step consumes one intermediate, so the walk ends even if the file contains a cycle.
  for (let depth = 0; depth <= intermediates.length; depth++) {
    if (roots.some((root) => signedBy(current, root))) return true;
    const parent = intermediates.find((candidate) => candidate !== current && signedBy(current, candidate));
    if (!parent) return false;
    current = parent;
  }
  return false;
}

function sameMaterial(a: IdentityMaterial, b: IdentityMaterial): boolean {
  return a.cert.equals(b.cert) && a.key.equals(b.key) && a.ca.equals(b.ca);
}
