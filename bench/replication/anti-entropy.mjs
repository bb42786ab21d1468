#!/usr/bin/env node
// Anti-entropy benchmark: the time one Merkle-tree round takes to repair 1% divergence, against a
// naive full transfer of every record between the same two sidecars, in the same run.
//
//   npx tsc -p tsconfig.json && node bench/replication/anti-entropy.mjs [--keys 100000] [--value-bytes 512]
//        [--diverged-pct 1] [--rounds 3] [--json OUT.json]
//
// Two sidecars in this process (dist/), replicating to each other over real mTLS on 127.0.0.1
// (RF=2: both hold every key; memory L2, WAL fsync none, the interval off so only measured rounds
// run). Both are filled with the same --keys records straight through their replica stores. Then,
// per round, each on a fresh --diverged-pct of the keys given a newer version on sidecar B only
// (straight into its store, as writes that replication missed):
//   ae     sidecar A runs one anti-entropy round with B (summary, walk down the differing subtrees,
//          entries of the differing leaves, records of the differing keys both ways): wall time,
//          messages, bytes both ways, keys repaired;
//   naive  B sends A every record it holds through the `replicate` peer call in batches up to
//          maxMessageBytes, and A applies each if newer — what repairing without trees costs
//          (one direction only, so it is a lower bound of a two-way full exchange).
// After each, every diverged key must hold B's version on A and the two trees must be equal.
// Prints one line per measurement and a summary with the medians and the naive/ae ratios.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { freePort } from './ports.mjs';

const ROOT = resolve(new URL('../..', import.meta.url).pathname);
// The build under test: BENCH_CTXMESH_CLI (…/dist/src/cli/main.js) names it, as in the other benchmarks.
const DIST_SRC = process.env.BENCH_CTXMESH_CLI ? resolve(dirname(resolve(process.env.BENCH_CTXMESH_CLI)), '..') : join(ROOT, 'dist/src');
const dist = (p) => import(join(DIST_SRC, p));
const { SidecarConfigSchema } = await dist('config/schema.js');
const { Sidecar } = await dist('sidecar.js');
const { createLogger } = await dist('telemetry/logger.js');
const { initCa, issueCert } = await dist('tls/ca.js');
const { makeVersion, versionNodeTag } = await dist('state/version.js');
const { encodeRecordList, encodedSize } = await dist('state/replication/codec.js');

const { values } = parseArgs({
  options: {
    keys: { type: 'string', default: '100000' },
    'value-bytes': { type: 'string', default: '512' },
    'diverged-pct': { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
    json: { type: 'string' },
  },
});
const KEYS = Number(values.keys);
const VALUE_BYTES = Number(values['value-bytes']);
const DIVERGED = Math.max(1, Math.round((KEYS * Number(values['diverged-pct'])) / 100));
const ROUNDS = Number(values.rounds);
const FILL_CONCURRENCY = 256;

const work = mkdtempSync(join(tmpdir(), 'ctxmesh-bench-ae-'));
await initCa({ out: join(work, 'ca') });
await issueCert({ ca: join(work, 'ca'), name: 'bench', out: join(work, 'id') });
const identity = { cert: join(work, 'id', 'cert.pem'), key: join(work, 'id', 'key.pem'), ca: join(work, 'id', 'ca.pem') };

const ids = ['bench-a', 'bench-b'];
const ports = { 'bench-a': await freePort(), 'bench-b': await freePort() };
const silent = new Writable({ write: (_c, _e, done) => done() });
const sidecars = {};
for (const id of ids) {
  const config = SidecarConfigSchema.parse({
    node: { id },
    identity,
    inbound: { port: ports[id], address: '127.0.0.1', app: 'http://127.0.0.1:9' },
    outbound: { port: 0 },
    admin: { port: 0 },
    health: { enabled: false },
    context: {
      port: 0,
      l2: { backend: 'memory' },
      wal: { fsync: 'none' },
      checkpoint: { dir: join(work, id), changedWrites: 0, changedBytes: 0, interval: '5m' },
      replication: {
        factor: 2,
        peers: ids.filter((p) => p !== id).map((p) => ({ id: p, address: `127.0.0.1:${ports[p]}` })),
        peerTimeout: '30s',
        antiEntropy: { interval: '24h' },
      },
    },
    log: { level: 'warn', accessLog: false },
  });
  sidecars[id] = await Sidecar.start(config, { logger: createLogger({ level: 'warn', destination: silent }) });
}
const [A, B] = ids.map((id) => sidecars[id]);
const aeA = A.state.antiEntropy;
const aeB = B.state.antiEntropy;

const value = Buffer.alloc(VALUE_BYTES, 'x');
const stamp = (sidecar, id, key, body) => {
  const t = sidecar.state.store.clock.tick();
  return { key, value: body, contentType: 'text/plain', version: makeVersion(t, versionNodeTag(id)), expiresAt: 0, retention: 'normal', updatedAt: t.wall };
};
const keyOf = (i) => `bench/tenant-${i % 97}/conversation-${i}`;

async function inBatches(count, work) {
  for (let i = 0; i < count; i += FILL_CONCURRENCY) {
    await Promise.all(Array.from({ length: Math.min(FILL_CONCURRENCY, count - i) }, (_, j) => work(i + j)));
  }
}

const log = (line) => process.stdout.write(`${line}\n`);
let started = performance.now();
await inBatches(KEYS, async (i) => {
  const record = stamp(A, 'bench-a', keyOf(i), value);
  await aeA.replica.apply(record);
  await aeB.replica.apply(record);
});
log(`filled ${KEYS} keys × ${VALUE_BYTES} B on both sidecars in ${((performance.now() - started) / 1000).toFixed(1)} s`);
if (aeA.index.treeFor('bench-b').root() !== aeB.index.treeFor('bench-a').root()) throw new Error('trees differ after the fill');

const results = [];
let generation = 0;
const treesEqual = () => aeA.index.treeFor('bench-b').root() === aeB.index.treeFor('bench-a').root();
/** A fresh DIVERGED keys, spread over the key space, get a newer version on B only. */
async function diverge() {
  generation++;
  const offset = Math.floor(Math.random() * KEYS);
  const stride = Math.max(1, Math.floor(KEYS / DIVERGED));
  const keys = Array.from({ length: DIVERGED }, (_, k) => keyOf((offset + k * stride) % KEYS));
  const newer = Buffer.alloc(VALUE_BYTES, String(generation % 10));
  await inBatches(keys.length, (k) => aeB.replica.apply(stamp(B, 'bench-b', keys[k], newer)));
  if (treesEqual()) throw new Error('the divergence did not change the trees');
  return keys;
}
/** Every key of the list holds B's value on A too. */
async function checkRepaired(keys, what) {
  const [onA, onB] = await Promise.all([aeA.replica.readMany(keys), aeB.replica.readMany(keys)]);
  const wrong = keys.filter((_, i) => !onA[i] || !onB[i] || onA[i].version !== onB[i].version).length;
  if (wrong > 0 || !treesEqual()) throw new Error(`${what}: ${wrong} of ${keys.length} diverged keys still differ`);
}

for (let round = 1; round <= ROUNDS; round++) {
  // Anti-entropy: A starts one round with B, which holds the newer 1%.
  let keys = await diverge();
  started = performance.now();
  const stats = await aeA.requestRound('bench-b');
  const aeMs = performance.now() - started;
  if (stats.result !== 'repaired') throw new Error(`round ${round}: ${stats.result} ${stats.error ?? ''}`);
  await checkRepaired(keys, `round ${round} anti-entropy`);
  const aeBytes = stats.bytesSent + stats.bytesReceived;
  log(
    `round ${round} ae:    ${aeMs.toFixed(0).padStart(6)} ms  keys differing ${stats.keysDiffering} (diverged ${DIVERGED}), repaired ${stats.repairedHere + stats.repairedThere}, ` +
      `entries compared ${stats.entriesCompared}, leaves ${stats.leavesDiffering}, nodes ${stats.nodesCompared}, messages ${stats.messages}, bytes ${aeBytes} (sent ${stats.bytesSent}, received ${stats.bytesReceived})`,
  );

  // Naive, on a fresh 1%: the replica that holds the newer versions (B) sends A every record it
  // holds through the `replicate` peer call, batched up to the message bound; A applies each if
  // newer. What repairing costs without trees (one direction only: a lower bound of a two-way
  // full exchange, which a divergence on both sides would need).
  keys = await diverge();
  started = performance.now();
  const maxBatch = B.config?.context?.replication?.maxMessageBytes ?? 16 * 1024 ** 2;
  let naiveBytes = 0;
  let naiveMessages = 0;
  let naiveRecords = 0;
  let naiveRepaired = 0;
  const address = `127.0.0.1:${ports['bench-a']}`;
  for (let i = 0; i < KEYS; i += 4096) {
    const records = (await aeB.replica.readMany(Array.from({ length: Math.min(4096, KEYS - i) }, (_, j) => keyOf(i + j)))).filter(Boolean);
    let batch = [];
    let bytes = 0;
    const flush = async () => {
      if (batch.length === 0) return;
      const body = encodeRecordList(batch);
      const response = await B.peerClient.call(address, 'replicate', body, { timeoutMs: 60_000 });
      if (response.status !== 200) throw new Error(`replicate answered ${response.status}`);
      naiveRepaired += response.json().outcomes.filter((o) => o === 'applied').length;
      naiveBytes += body.length + response.body.length;
      naiveMessages++;
      naiveRecords += batch.length;
      batch = [];
      bytes = 0;
    };
    for (const record of records) {
      const size = encodedSize(record);
      if (bytes + size > maxBatch - 1024) await flush();
      batch.push(record);
      bytes += size;
    }
    await flush();
  }
  const naiveMs = performance.now() - started;
  await checkRepaired(keys, `round ${round} naive`);
  log(`round ${round} naive: ${naiveMs.toFixed(0).padStart(6)} ms  records ${naiveRecords}, repaired ${naiveRepaired}, messages ${naiveMessages}, bytes ${naiveBytes}`);
  results.push({
    round,
    ae: { ms: aeMs, bytes: aeBytes, ...stats },
    naive: { ms: naiveMs, bytes: naiveBytes, messages: naiveMessages, records: naiveRecords, repaired: naiveRepaired },
  });
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const aeMs = median(results.map((r) => r.ae.ms));
const naiveMs = median(results.map((r) => r.naive.ms));
const aeBytes = median(results.map((r) => r.ae.bytes));
const naiveBytes = median(results.map((r) => r.naive.bytes));
const summary = {
  keys: KEYS,
  valueBytes: VALUE_BYTES,
  diverged: DIVERGED,
  divergedPct: Number(values['diverged-pct']),
  rounds: ROUNDS,
  // Every round's diverged keys were checked equal on both replicas after each repair.
  allRepaired: results.length === ROUNDS,
  median: { aeMs, naiveMs, aeBytes, naiveBytes, keysDiffering: median(results.map((r) => r.ae.keysDiffering)) },
  ratio: { time: naiveMs / aeMs, bytes: naiveBytes / aeBytes },
};
log(
  `\n${KEYS} keys, ${DIVERGED} diverged (${values['diverged-pct']}%), median of ${ROUNDS}: anti-entropy ${aeMs.toFixed(0)} ms / ${(aeBytes / 1024).toFixed(0)} KiB; ` +
    `naive full transfer ${naiveMs.toFixed(0)} ms / ${(naiveBytes / 1024).toFixed(0)} KiB; naive/ae: time ×${summary.ratio.time.toFixed(1)}, bytes ×${summary.ratio.bytes.toFixed(1)}`,
);
if (values.json) writeFileSync(values.json, JSON.stringify({ summary, results }, null, 2));

for (const sidecar of Object.values(sidecars)) await sidecar.close();
rmSync(work, { recursive: true, force: true });
