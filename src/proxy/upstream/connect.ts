// How the sidecar opens upstream connections. A mesh connection is TLS 1.3 with this sidecar's
// own certificate, verified against the mesh CA; the peer is dialled by IP, so its identity is
// checked by SPIFFE trust domain rather than by host name.
import tls from 'node:tls';
import { buildConnector, type Connector } from './undici.js';
import { MeshError } from '../../errors/table.js';
import { formatHostPort } from '../../config/host-port.js';
import type { MeshIdentity } from '../../tls/identity.js';
import { checkMeshServerIdentity } from '../../tls/spiffe.js';

const TCP_KEEPALIVE_INITIAL_DELAY_MS = 60_000;
/** TLS sessions kept per peer address, for resumption when a pool opens a new connection. */
const MAX_CACHED_SESSIONS = 100;

export function plainConnector(connectTimeoutMs: number): Connector {
  return buildConnector({ timeout: connectTimeoutMs, keepAlive: true, keepAliveInitialDelay: TCP_KEEPALIVE_INITIAL_DELAY_MS });
}

export function meshConnector(identity: MeshIdentity, connectTimeoutMs: number): Connector {
  const sessions = new Map<string, Buffer>();
  return (options, callback) => {
    dialMesh(identity, { host: options.hostname, port: Number(options.port), alpn: ['http/1.1'], timeoutMs: connectTimeoutMs, sessions }, (err, socket) => (err ? callback(err, null) : callback(null, socket!)));
  };
}

export interface MeshDial {
  host: string;
  port: number;
  /** Application protocols offered, preferred first; the caller checks what the server chose. */
  alpn: string[];
  timeoutMs: number;
  /** TLS sessions by peer, for resumption; shared by the connections of one client. */
  sessions: Map<string, Buffer>;
}

/** Opens a mesh connection; calls back once the handshake (and the server's identity check) is done. */
export function dialMesh(identity: MeshIdentity, dial: MeshDial, callback: (err: Error | null, socket: tls.TLSSocket | null) => void): void {
  const { sessions } = dial;
  // An IPv6 host comes without its brackets; the label puts them back.
  const peer = formatHostPort(dial.host, dial.port);
  // The secure context is read per connection, so a rotated identity applies to the next
  // connection while open ones finish on the old one.
  const socket = tls.connect({
    host: dial.host,
    port: dial.port,
    secureContext: identity.secureContext,
    minVersion: 'TLSv1.3',
    ALPNProtocols: dial.alpn,
    checkServerIdentity: checkMeshServerIdentity(identity.trustDomain),
    session: sessions.get(peer),
  });
  socket.setNoDelay(true);
  socket.setKeepAlive(true, TCP_KEEPALIVE_INITIAL_DELAY_MS);
  socket.on('session', (session: Buffer) => {
    if (sessions.size >= MAX_CACHED_SESSIONS && !sessions.has(peer)) sessions.delete(sessions.keys().next().value!);
    sessions.set(peer, session);
  });
  const timer = setTimeout(() => {
    socket.destroy(new MeshError('connect_failure', `TLS connect to ${peer} timed out`));
  }, dial.timeoutMs);
  const onError = (err: Error): void => {
    clearTimeout(timer);
    sessions.delete(peer);
    callback(err, null);
  };
  socket.once('error', onError);
  socket.once('secureConnect', () => {
    clearTimeout(timer);
    socket.off('error', onError);
    callback(null, socket);
  });
}
