// The injector's serving certificate, read from two PEM files and kept current while it runs.
// cert-manager (or the chart's generated Secret, on a re-render) rotates it by rewriting the
// Secret, which the kubelet swaps into the pod's volume atomically (a `..data` symlink rename).
// A new pair that does not validate (half-written, key of another certificate, expired) is
// refused and the current one keeps serving: the API server must never see a broken handshake
// because of a rotation.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import tls from 'node:tls';
import { FileWatch } from '../tls/file-watch.js';


export interface ServingCertPaths {
  cert: string;
  key: string;
}

export class ServingCertError extends Error {
  override name = 'ServingCertError';
}

/** A validated certificate/key pair. */
export interface ServingPair {
  cert: Buffer;
  key: Buffer;
  /** Serial number of the leaf, upper-case hex as node:crypto prints it. */
  serial: string;
  notAfter: Date;
}

interface ServingCertEvents {
  rotated: [pair: ServingPair];
  reload_error: [error: ServingCertError];
}

/** Reads and validates a pair; throws ServingCertError naming the file and the reason. */
export function loadServingPair(paths: ServingCertPaths, now = new Date()): ServingPair {
  const cert = readPem(paths.cert, 'certificate');
  const key = readPem(paths.key, 'key');
  const block = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(cert.toString('utf8'))?.[0];
  if (!block) throw new ServingCertError(`certificate file ${paths.cert} contains no PEM certificate`);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(block);
  } catch (err) {
    throw new ServingCertError(`certificate file ${paths.cert} does not parse: ${(err as Error).message}`);
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new ServingCertError(`key file ${paths.key} is not a readable private key: ${(err as Error).message}`);
  }
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new ServingCertError(`key file ${paths.key} does not match the certificate in ${paths.cert} (serial ${leaf.serialNumber})`);
  }
  const notAfter = new Date(leaf.validTo);
  if (notAfter.getTime() < now.getTime()) {
    throw new ServingCertError(`certificate ${paths.cert} (serial ${leaf.serialNumber}) expired at ${notAfter.toISOString()}`);
  }
  try {
    tls.createSecureContext({ cert, key });
  } catch (err) {
    throw new ServingCertError(`OpenSSL rejected the pair in ${paths.cert}: ${(err as Error).message}`);
  }
  return { cert, key, serial: leaf.serialNumber, notAfter };
}

function readPem(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ServingCertError(`cannot read ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** The pair in force, reloaded when its files change. */
export class ServingCertificate extends EventEmitter<ServingCertEvents> {
  private fileWatch: FileWatch | undefined;

  private constructor(
    readonly paths: Readonly<ServingCertPaths>,
    private pair: ServingPair,
  ) {
    super();
  }

  static load(paths: ServingCertPaths): ServingCertificate {
    const frozen = Object.freeze({ ...paths });
    return new ServingCertificate(frozen, loadServingPair(frozen));
  }

  get current(): ServingPair {
    return this.pair;
  }

  /** Re-reads the files: true when a different, valid pair took over. */
  reload(): boolean {
    let next: ServingPair;
    try {
      next = loadServingPair(this.paths);
    } catch (err) {
      this.emit('reload_error', err instanceof ServingCertError ? err : new ServingCertError((err as Error).message));
      return false;
    }
    // Directory events also fire for unrelated files and rewrites with the same bytes.
    if (next.cert.equals(this.pair.cert) && next.key.equals(this.pair.key)) return false;
    this.pair = next;
    this.emit('rotated', next);
    return true;
  }

  /** Starts reloading whenever one of the files changes. Idempotent. Keeps nothing alive by itself. */
  watch(): void {
    this.fileWatch ??= new FileWatch([this.paths.cert, this.paths.key], () => this.reload());
  }

  /** Stops watching; the current material stays usable. */
  close(): void {
    this.fileWatch?.close();
    this.fileWatch = undefined;
  }

}
