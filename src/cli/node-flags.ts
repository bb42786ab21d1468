// The node flags every ctxmesh process runs with: the CLI's shebang, the image's ENTRYPOINT and the
// demo's child sidecars all pass these (test/docker/dockerfile.test.ts holds the first two equal to
// this list). They must be on node's command line: V8 reads its initial heap limits when the
// isolate starts (v8.setFlagsFromString is too late) and NODE_OPTIONS refuses the first.
//
// --initial-old-space-size=128 — V8 starts a full (incremental) mark as soon as the old
// generation's headroom, its limit minus what is live, is below the young generation's capacity
// (two 16 MiB semi-spaces). From its growing factor alone a small live heap gets a small limit:
// ~24 MiB live (a few thousand hot contexts) got ~47 MiB, and marked almost without pause — 44
// mark-compacts a minute at 1,000 PUT/s, each cycle's 15–20 ms steps landing on writes, PUT p99
// 38 ms. A floor of 64 MiB fixed that case (3 a minute, p99 3.8 ms). The embedded L2 keeps its
// records off the heap (state/cache/record-arena.ts), so even 262 K contexts (1 GiB) leave only
// ~45–55 MiB live, which a 64 MiB floor again left with less headroom than the young generation:
// a mark every second and a quiet-period PUT p99 of 30–50 ms; with 128 MiB, 4.4 ms. The price is
// up to ~100 MiB more RSS in garbage before the first mark (measured: bench/RESULTS.md, "Write
// path" and "Records off the heap"). A live heap above the floor gets V8's own limits, as before.
//
// --v8-pool-size=1 — V8's helper threads (four by default) do the concurrent marking and sweeping.
// A sidecar gets a core or less (the chart's limit is 500m); on one core, after each mark-compact
// the helpers sweeping took turns with the main thread and a PUT waited ~45 ms about 50 ms after
// it, every time (--trace-gc against the slow PUTs' times, checkpoint pause test). With one
// helper the after-snapshot window's p99 went from 9-46 ms (seven runs) to 2-6 ms (three); with --single-threaded-gc
// too, but that also gives up the concurrent marking on machines with cores to spare.
export const NODE_FLAGS: readonly string[] = ['--initial-old-space-size=128', '--v8-pool-size=1'];
