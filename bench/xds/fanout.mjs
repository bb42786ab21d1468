// Push fan-out: STREAMS ADS streams from this one process subscribe to the endpoints of one service
// on a running control plane and ACK every push. Each trial moves one endpoint (a registration
// heartbeat at a new address) and measures the time from that call to the last stream's ACK of the
// push carrying the new address. A push is recognised by its content (the decoded
// ClusterLoadAssignment lists the new address), not by its version, so both variants and any
// server's versioning scheme are measured alike; each stream decodes every push before ACKing it,
// as a real client validates before it ACKs. Prints one JSON line: p50/p99/max over TRIALS trials.
//
//   node bench/xds/fanout.mjs <xds host:port> <admin host:port> [streams=1000] [trials=20] [sotw|delta] [port base=20000]
// (uses ports base .. base+trials: one warm-up change before the measured trials)
import * as grpc from '@grpc/grpc-js';
import { loadXdsProtos, TYPE_URL } from '../../dist/xds/protos.js';

const [xds, admin, streamsArg = '1000', trialsArg = '20', variant = 'sotw', portBaseArg = '20000'] = process.argv.slice(2);
if (!xds || !admin) throw new Error('usage: fanout.mjs <xds host:port> <admin host:port> [streams] [trials] [sotw|delta] [port base]');
if (variant !== 'sotw' && variant !== 'delta') throw new Error(`variant must be sotw or delta, not ${variant}`);
const STREAMS = Number(streamsArg);
const TRIALS = Number(trialsArg);
/** Trial n moves the endpoint to 127.0.0.1:(PORT_BASE + n), the warm-up to PORT_BASE + TRIALS: a run uses addresses no earlier run left in place. */
const PORT_BASE = Number(portBaseArg);
const SERVICE = 'bench';
/** Longest a trial may take before the run is declared failed. */
const TRIAL_TIMEOUT_MS = 30_000;
/** Streams share a few channels, as many sidecars would share few control-plane connections per host. */
const STREAMS_PER_CHANNEL = 100;

const { AdsClient, decodeResource } = loadXdsProtos();
const clients = Array.from({ length: Math.ceil(STREAMS / STREAMS_PER_CHANNEL) }, () =>
  new AdsClient(xds, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }),
);

/** The ports of the endpoints a ClusterLoadAssignment lists. */
function portsOf(any) {
  const assignment = decodeResource(any);
  return (assignment.endpoints ?? []).flatMap((locality) => (locality.lb_endpoints ?? []).map((e) => Number(e.endpoint?.address?.socket_address?.port_value)));
}

let waiting = null; // { port, remaining, resolve }
const streams = [];
for (let i = 0; i < STREAMS; i++) {
  const stream = { received: 0, seenPort: undefined };
  const saw = (ports) => {
    stream.received += 1;
    if (waiting && stream.seenPort !== waiting.port && ports.includes(waiting.port)) {
      stream.seenPort = waiting.port;
      waiting.remaining -= 1;
      if (waiting.remaining === 0) waiting.resolve(performance.now());
    }
  };
  if (variant === 'sotw') {
    const call = clients[i % clients.length].StreamAggregatedResources();
    stream.call = call;
    call.on('data', (response) => {
      const ports = response.resources.flatMap(portsOf);
      call.write({ type_url: response.type_url, resource_names: [SERVICE], version_info: response.version_info, response_nonce: response.nonce });
      saw(ports);
    });
    call.write({ node: { id: `bench-${i}` }, type_url: TYPE_URL.clusterLoadAssignment, resource_names: [SERVICE] });
  } else {
    const call = clients[i % clients.length].DeltaAggregatedResources();
    stream.call = call;
    call.on('data', (response) => {
      const ports = response.resources.flatMap((r) => (r.resource ? portsOf(r.resource) : []));
      call.write({ type_url: response.type_url, response_nonce: response.nonce });
      saw(ports);
    });
    call.write({ node: { id: `bench-${i}` }, type_url: TYPE_URL.clusterLoadAssignment, resource_names_subscribe: [SERVICE] });
  }
  stream.call.on('error', (err) => {
    if (err.code !== grpc.status.CANCELLED) console.error(`stream ${i}: ${err.message}`);
  });
  streams.push(stream);
}

async function post(path, body) {
  const res = await fetch(`http://${admin}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${await res.text()}`);
}

// Wait until every stream has its first push.
const setupDeadline = Date.now() + TRIAL_TIMEOUT_MS;
while (streams.some((s) => s.received === 0)) {
  if (Date.now() > setupDeadline) throw new Error(`only ${streams.filter((s) => s.received > 0).length}/${STREAMS} streams got their first push`);
  await new Promise((resolve) => setTimeout(resolve, 20));
}

// Trial -1 warms up (JIT, buffers) on port PORT_BASE + TRIALS and is not counted.
const samples = [];
for (let trial = -1; trial < TRIALS; trial++) {
  const port = trial < 0 ? PORT_BASE + TRIALS : PORT_BASE + trial;
  const done = new Promise((resolve, reject) => {
    waiting = { port, remaining: STREAMS, resolve };
    setTimeout(() => reject(new Error(`trial ${trial}: ${waiting.remaining} streams had not ACKed after ${TRIAL_TIMEOUT_MS}ms`)), TRIAL_TIMEOUT_MS).unref();
  });
  const startedAt = performance.now();
  await post('/v1/register', { nodeId: 'moving', service: SERVICE, address: `127.0.0.1:${port}`, zone: 'z1' });
  const finishedAt = await done;
  if (trial >= 0) samples.push(finishedAt - startedAt);
  // Let the last ACKs drain before the next change, so that trials do not overlap.
  await new Promise((resolve) => setTimeout(resolve, 50));
}

const sorted = [...samples].sort((a, b) => a - b);
const pct = (p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
const round = (x) => +x.toFixed(1);
console.log(JSON.stringify({ variant, streams: STREAMS, trials: TRIALS, p50_ms: round(pct(50)), p99_ms: round(pct(99)), max_ms: round(sorted.at(-1)), samples_ms: samples.map(round) }));
for (const s of streams) s.call.cancel();
for (const c of clients) c.close();
process.exit(0);
