// The inbound listener: mTLS from peer sidecars, delivered to the local app. The stages:
//   TLS 1.3 handshake (client certificate required, chained to the mesh CA; else refused)
//   → authorise the caller's SPIFFE ID against `inbound.allow` (else 403 forbidden)
//   → replace any x-ctxmesh-peer-identity with the verified one → upstream pipeline → relay
// A connection that chose ALPN ctxmesh-peer/1 is a peer sidecar's framed connection: it goes to
// the peer router whole, and never to HTTP or the app.
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { LimitsConfig } from '../../config/schema.js';
import { MeshError } from '../../errors/table.js';
import type { Exchange, ExchangeRecorder } from '../../telemetry/exchange.js';
import type { Logger } from '../../telemetry/logger.js';
import type { MeshMetrics } from '../../telemetry/metrics.js';
import type { MeshIdentity } from '../../tls/identity.js';
import { PEER_PATH_PREFIX, type PeerRouter } from '../../peer/router.js';
import { PEER_ALPN } from '../../peer/frames.js';
import { isAllowed, spiffeIdOf } from '../../tls/spiffe.js';
import { PEER_IDENTITY_HEADER, readRequestHead } from '../headers.js';
import { answerClientErrors, continueWithinLimits, fail, proxy, serverOptions } from '../listener.js';
import { clientErrorExchange } from '../outbound/listener.js';
import type { Cluster } from '../upstream/cluster.js';

export interface InboundOptions {
  identity: MeshIdentity;
  allow: readonly string[];
  limits: LimitsConfig;
  recorder: ExchangeRecorder;
  /** The local app, as a single-endpoint cluster. */
  app: Cluster;
  draining: () => boolean;
  metrics: MeshMetrics;
  logger: Logger;
  /**
   * Sidecar-to-sidecar calls (`/.ctxmesh/peer/*`): served by the router, never by the app, and
   * only for callers `isSidecar` accepts; everyone else gets 403 on those paths.
   */
  peers?: { router: PeerRouter; isSidecar: (spiffeId: string | undefined) => boolean };
}

/** The caller's verified identity, read once per TLS connection rather than once per request. */
const peerIdentities = new WeakMap<TLSSocket, string | undefined>();

function peerIdentityOf(socket: TLSSocket): string | undefined {
  if (peerIdentities.has(socket)) return peerIdentities.get(socket);
  const id = spiffeIdOf(socket.getPeerCertificate());
  peerIdentities.set(socket, id);
  return id;
}

export function createInboundServer(options: InboundOptions): https.Server {
  const { limits, recorder, app, identity } = options;
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const peer = peerIdentityOf(req.socket as TLSSocket);
    const head = readRequestHead(req.rawHeaders);
    const exchange: Exchange = {
      direction: 'inbound',
      method: req.method ?? 'GET',
      authority: head.host,
      path: req.url ?? '/',
      startedAt: performance.now(),
      peer,
    };
    if (exchange.path.startsWith(PEER_PATH_PREFIX)) {
      if (options.peers && options.peers.isSidecar(peer)) {
        options.peers.router.serve(req, res, { spiffeId: peer! });
        return;
      }
      const refused = new MeshError('forbidden', `caller ${peer ?? '(no SPIFFE ID)'} is not a sidecar identity allowed to make peer calls`);
      fail(res, exchange, recorder, 'peer', refused, head.contentLength > 0 || head.chunked);
      return;
    }
    if (!isAllowed(peer, options.allow)) {
      const refused = new MeshError('forbidden', `caller ${peer ?? '(no SPIFFE ID)'} is not allowed`);
      fail(res, exchange, recorder, app.name, refused, head.contentLength > 0 || head.chunked);
      return;
    }
    head.headers.push(PEER_IDENTITY_HEADER, peer!);
    proxy({ req, res, cluster: app, head, path: req.url ?? '/', hashKey: undefined, exchange }, limits, recorder, options.draining);
  };
  const server = https.createServer(
    {
      ...serverOptions(limits),
      ...identity.serverOptions(),
      minVersion: 'TLSv1.3',
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: options.peers ? [PEER_ALPN, 'http/1.1'] : ['http/1.1'],
      // The head timeout starts only once the handshake is done; without this a peer that opens
      // TCP and never says hello holds a socket (and any drain) for node's default 120s.
      handshakeTimeout: limits.headersTimeout,
    },
    onRequest,
  );
  continueWithinLimits(server, limits, onRequest);
  if (options.peers) divertPeerConnections(server, options.peers, options.logger);
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
    // With TLS 1.3 the client's certificate is judged after the handshake's last flight, so the
    // error is a bare reset; the verdict itself is on the socket.
    const reason = String(socket.authorizationError ?? err.code ?? 'handshake_failed');
    options.metrics.handshakeFailures.labels(reason).inc();
    options.logger.info({ reason, remote: socket.remoteAddress }, 'inbound mTLS handshake refused');
  });
  // Rotation: new handshakes use the new certificate; open connections keep theirs.
  identity.on('rotated', () => server.setSecureContext({ ...identity.serverOptions(), minVersion: 'TLSv1.3' }));
  answerClientErrors(server, (err) => recorder.record(clientErrorExchange('inbound'), app.name, err.status, err.code, undefined, 0));
  return server;
}

/** Hands framed peer connections to the router before node's HTTP handling sees them. */
function divertPeerConnections(server: https.Server, peers: NonNullable<InboundOptions['peers']>, logger: Logger): void {
  const http = server.listeners('secureConnection') as Array<(socket: TLSSocket) => void>;
  server.removeAllListeners('secureConnection');
  server.on('secureConnection', (socket: TLSSocket) => {
    if (socket.alpnProtocol !== PEER_ALPN) {
      for (const listener of http) listener.call(server, socket);
      return;
    }
    const peer = peerIdentityOf(socket);
    if (peers.isSidecar(peer)) {
      peers.router.serveConnection(socket, { spiffeId: peer! });
      return;
    }
    logger.info({ caller: peer ?? null, remote: socket.remoteAddress }, 'framed peer connection from a caller that is not a sidecar identity: its calls are refused');
    peers.router.serveConnection(socket, { spiffeId: peer ?? '' }, new MeshError('forbidden', `caller ${peer ?? '(no SPIFFE ID)'} is not a sidecar identity allowed to make peer calls`));
  });
}
