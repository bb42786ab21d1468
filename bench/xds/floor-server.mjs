// The fan-out floor: a bare grpc-js ADS server with none of the control plane's work (no
// registry, no snapshot cache, no per-stream subscription, version or nonce tracking, no metrics):
// every stream gets the one ClusterLoadAssignment `bench`, and `POST /v1/register {address}` (the
// same call fanout.mjs makes on the control plane) re-encodes it once and writes it to every open
// stream. What this server takes is what pushing one message to N streams costs with grpc-js on
// this machine; the control plane's figure above it is its own overhead.
//
//   node bench/xds/floor-server.mjs <xds port> <admin port>
import http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import { loadXdsProtos, TYPE_URL } from '../../dist/xds/protos.js';

const [xdsPort, adminPort] = process.argv.slice(2).map(Number);
if (!xdsPort || !adminPort) throw new Error('usage: floor-server.mjs <xds port> <admin port>');
const SERVICE = 'bench';
const STATIC_ENDPOINT = { host: '127.0.0.1', port: 19_000 };

const { adsService, encodeResource } = loadXdsProtos();
let version = 1;
let moving;
let resource = encode();
const sotw = new Set();
const delta = new Set();
let nonce = 0;

function encode() {
  const endpoint = ({ host, port }) => ({ endpoint: { address: { socket_address: { address: host, port_value: port } } }, health_status: 'HEALTHY' });
  return encodeResource(TYPE_URL.clusterLoadAssignment, {
    cluster_name: SERVICE,
    endpoints: [{ locality: { zone: 'z1' }, lb_endpoints: [STATIC_ENDPOINT, ...(moving ? [moving] : [])].map(endpoint) }],
  });
}
const sotwResponse = () => ({ version_info: String(version), resources: [resource], type_url: TYPE_URL.clusterLoadAssignment, nonce: String(++nonce) });
const deltaResponse = () => ({ system_version_info: String(version), resources: [{ name: SERVICE, version: String(version), resource }], type_url: TYPE_URL.clusterLoadAssignment, nonce: String(++nonce) });

const server = new grpc.Server();
server.addService(adsService, {
  StreamAggregatedResources(call) {
    let first = true;
    call.on('data', () => {
      if (!first) return; // ACKs need no answer
      first = false;
      sotw.add(call);
      call.write(sotwResponse());
    });
    call.on('error', () => sotw.delete(call));
    call.on('end', () => {
      sotw.delete(call);
      call.end();
    });
  },
  DeltaAggregatedResources(call) {
    let first = true;
    call.on('data', () => {
      if (!first) return;
      first = false;
      delta.add(call);
      call.write(deltaResponse());
    });
    call.on('error', () => delta.delete(call));
    call.on('end', () => {
      delta.delete(call);
      call.end();
    });
  },
});
await new Promise((resolve, reject) => server.bindAsync(`127.0.0.1:${xdsPort}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));

http
  .createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/ready') return res.end('ok');
    if (req.method !== 'POST' || req.url !== '/v1/register') return res.writeHead(404).end();
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const [host, port] = JSON.parse(body).address.split(':');
      moving = { host, port: Number(port) };
      version += 1;
      resource = encode();
      for (const call of sotw) call.write(sotwResponse());
      for (const call of delta) call.write(deltaResponse());
      res.setHeader('content-type', 'application/json');
      res.end('{"registered":true}');
    });
  })
  .listen(adminPort, '127.0.0.1');
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
