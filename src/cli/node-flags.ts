// The V8 flags every ctxmesh process runs with: the CLI's shebang, the image's ENTRYPOINT and the
// demo's child sidecars all pass these (test/docker/dockerfile.test.ts holds the first two equal to
// this list). They must be on node's command line: V8 reads its initial heap limits when the
// isolate starts (v8.setFlagsFromString is too late) and NODE_OPTIONS refuses these.
//
// --initial-old-space-size=64 — V8 starts a full (incremental) mark as soon as the old
// generation's headroom, its limit minus what is live, is below the young generation's capacity
// (two 16 MiB semi-spaces). A sidecar whose live heap is small (~24 MiB: a few thousand hot
// contexts) gets a limit of ~47 MiB from V8's growing factor, so it marks almost without pause,
// promotes the requests in flight as it goes (black allocation), and each cycle's 15–20 ms steps
// land on writes: at 1,000 PUT/s over 1,024 contexts, 44 mark-compacts a minute and a PUT p99 of
// 38 ms. A 64 MiB floor on the limit: 3 a minute and p99 3.8 ms, for ~60 MiB more RSS (measured:
// bench/RESULTS.md, "Write path"). A live heap above 64 MiB gets V8's own limits, as before.
export const NODE_FLAGS: readonly string[] = ['--initial-old-space-size=64'];
