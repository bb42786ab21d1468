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
    // undici hands over an IPv6 host without its brackets; the label puts them back.
    const peer = formatHostPort(options.hostname, Number(options.port));
    // The secure context is read per connection, so a rotated identity applies to the next
    // connection while open ones finish on the old one.
    const socket = tls.connect({
      host: options.hostname,
      port: Number(options.port),
      secureContext: identity.secureContext,
      minVersion: 'TLSv1.3',
      ALPNProtocols: ['http/1.1'],
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
    }, connectTimeoutMs);
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
  };
}
