#!/usr/bin/env bash
# ctxmesh checkpoint benchmark: snapshots of the embedded L2 beside dd on the same disk.
#
#   bash bench/checkpoint/run.sh
#
# In one run (see bench/README.md, "Checkpoint benchmark"):
#   full snapshot of 1 GiB of context state        vs  dd write of 1 GiB, conv=fdatasync, same dir
#   incremental after 1 % of the keys changed      vs  the full snapshot's size
#   restore (rebuild(), in a fresh process)       vs  dd read of the snapshot file, cold and warm
#   PUT latency at 1000/s while a sidecar holding 1 GiB takes a full snapshot  vs  the quiet period
# prints a Markdown report with PASS/MISS per target and saves it to bench/.out/checkpoint-<UTC>.md
# (+ .json). Everything started is stopped on exit (trap). Knobs (environment):
#   BENCH_CKPT_RECORDS=262144 BENCH_CKPT_VALUE_BYTES=4096   the state (default 1 GiB of values)
#   BENCH_ROUNDS=3             interleaved rounds of the snapshot/dd and restore/dd measurements
#   BENCH_CKPT_DIR=dir         where snapshots and dd's file go (default: a temp dir under /tmp)
#   BENCH_CKPT_WAL_FSYNC=batch the sidecar's wal.fsync during the pause test (always|batch|none)
#   BENCH_CKPT_L1_BYTES=256MiB the sidecar's context.l1.maxBytes (default: the sidecar's own, none with the embedded L2)
#   BENCH_CKPT_RATE=1000 BENCH_CKPT_QUIET=10   PUT rate; seconds of quiet period before the snapshot
#   BENCH_CKPT_ONLY="offline pause"            run only these parts
#   BENCH_LOADGEN_CPU=0 BENCH_SERVER_CPU=1     taskset pinning of the PUT generator and the sidecar
#   BENCH_OTHER_WAIT=900       seconds to wait for other benchmarks (wrk, redis-benchmark, bench/*) to end
#   BENCH_QUIET_PCT=10 BENCH_QUIET_WAIT=30     then wait (up to 30 s) for the machine to be <= 10 % busy
#   BENCH_SKIP_BUILD=1  BENCH_KEEP_TMP=1  BENCH_CTXMESH_CLI=path
#   BENCH_CKPT_SIDECAR_NODE_FLAGS="--trace-gc --cpu-prof"   node flags of the pause test's sidecar
#                              (profiles go to TMP/prof, GC traces to TMP/logs/sidecar.log; use with BENCH_KEEP_TMP=1)
# The restore alone, quick and small enough to profile (node --cpu-prof): bench/checkpoint/restore.mjs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/bench/checkpoint"
cd "$ROOT"

RECORDS="${BENCH_CKPT_RECORDS:-262144}"
VALUE_BYTES="${BENCH_CKPT_VALUE_BYTES:-4096}"
ROUNDS="${BENCH_ROUNDS:-3}"
WAL_FSYNC="${BENCH_CKPT_WAL_FSYNC:-batch}"
RATE="${BENCH_CKPT_RATE:-1000}"
QUIET="${BENCH_CKPT_QUIET:-10}"
ONLY="${BENCH_CKPT_ONLY:-offline pause}"
OTHER_WAIT="${BENCH_OTHER_WAIT:-900}"
QUIET_PCT="${BENCH_QUIET_PCT:-10}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-30}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
CLI="${BENCH_CTXMESH_CLI:-dist/src/cli/main.js}"
PORT_BASE="${BENCH_CKPT_PORT_BASE:-19480}"
P_IN=$PORT_BASE P_OUT=$((PORT_BASE + 1)) P_ADMIN=$((PORT_BASE + 2)) P_CTX=$((PORT_BASE + 3))
if [[ "$(nproc)" -ge 2 ]]; then LOADGEN_CPU="${BENCH_LOADGEN_CPU-0}"; SERVER_CPU="${BENCH_SERVER_CPU-1}"
else LOADGEN_CPU="${BENCH_LOADGEN_CPU-}"; SERVER_CPU="${BENCH_SERVER_CPU-}"; fi

info() { printf '%s\n' "$*" >&2; }
say() { printf '\n== %s\n' "$*" >&2; }
die() { info "error: $*"; exit 1; }
has() { [[ " $ONLY " == *" $1 "* ]]; }

PIDS=()
TMP=""
stop_pid() { # only processes this script started, by pid
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then info "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'info "interrupted: stopping everything this run started"; exit 130' INT TERM

pin() { if [[ -n "$1" ]]; then echo taskset -c "$1"; fi; }

# ---------------------------------------------------------------------------------------------
# A quiet machine: other benchmarks finished, then little else running (as bench/proxy/run.sh)

other_benchmarks() { # command lines of other benchmark processes (not this script's)
  ps -eo pid=,args= | grep -E 'wrk |redis-benchmark|bench/(proxy|state)/|bench/checkpoint/run\.mjs' | grep -v -E 'grep' || true
}
machine_busy_pct() { # busy % of the whole machine over 0.5 s
  local a b
  a=($(awk '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat))
  sleep 0.5
  b=($(awk '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat))
  echo $(( (b[0] - a[0]) * 100 / (b[1] - a[1] > 0 ? b[1] - a[1] : 1) ))
}
WAITED_OTHER=0
wait_quiet() {
  local t0=$SECONDS others busy i
  while others="$(other_benchmarks)"; [[ -n "$others" ]]; do
    ((SECONDS - t0 < OTHER_WAIT)) || { info "WARNING: other benchmarks still running after ${OTHER_WAIT}s; measuring anyway"; break; }
    ((WAITED_OTHER == 0)) && info "another benchmark is running; waiting for it to end (up to ${OTHER_WAIT}s):" && info "$others"
    WAITED_OTHER=$((WAITED_OTHER + 1))
    sleep 5
  done
  for ((i = 0; i < 2 * QUIET_WAIT; i++)); do
    busy="$(machine_busy_pct)"
    ((busy <= QUIET_PCT)) && return 0
    ((i % 20 == 0)) && info "machine busy (${busy}% of all cores, not ours); waiting for it to settle"
  done
  info "WARNING: the machine is still ${busy}% busy; measuring anyway"
}

# ---------------------------------------------------------------------------------------------

# The build rewrites dist/, which another benchmark may be starting sidecars from: wait first.
wait_quiet
if [[ -z "${BENCH_CTXMESH_CLI:-}" && "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  if [[ ! -f dist/src/cli/main.js || -n "$(find src -name '*.ts' -newer dist/src/cli/main.js | head -1)" ]]; then
    say "npm run build"; npm run build >&2 || die "build failed"
  fi
fi
[[ -f "$CLI" ]] || die "$CLI not found (npm run build)"
# The sidecar runs with the node flags of the CLI's shebang, as deployed (bench/cli-node-flags.mjs).
CLI_NODE_FLAGS="$(node "$ROOT/bench/cli-node-flags.mjs" "$CLI")"
command -v dd >/dev/null || die "dd not found"
if [[ -n "${BENCH_CKPT_DIR:-}" ]]; then mkdir -p "$BENCH_CKPT_DIR"; TMP="$(mktemp -d "$BENCH_CKPT_DIR/ckpt-bench.XXXXXX")"
else TMP="$(mktemp -d /tmp/ctxmesh-ckpt-bench.XXXXXX)"; fi
mkdir -p "$TMP/logs" bench/.out
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
GiB_FREE=$(( $(df -Pk "$TMP" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
NEED_GiB=$(( RECORDS * VALUE_BYTES / 1024 / 1024 / 1024 * 3 + 1 ))
((GiB_FREE >= NEED_GiB)) || die "$TMP has ${GiB_FREE} GiB free; the run needs about ${NEED_GiB} GiB"

cat >"$TMP/meta.json" <<EOF
{"date":"$(date -u +%Y-%m-%dT%H:%MZ)","cpus":$(nproc),"cpu":"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "mem_gib":$(awk '/MemTotal/ {printf "%d", $2/1024/1024}' /proc/meminfo),"os":"$(. /etc/os-release; echo "$PRETTY_NAME")","kernel":"$(uname -r)",
 "node":"$(node --version)","dd":"$(dd --version | head -1)","git":"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+uncommitted src changes')",
 "dir":"$TMP","device":"$(df -P "$TMP" | awk 'NR==2 {print $1}')","fs":"$(df -PT "$TMP" | awk 'NR==2 {print $2}')",
 "root":$([[ $EUID -eq 0 ]] && echo true || echo false),"wal_fsync":"$WAL_FSYNC","loadgen_cpu":"$LOADGEN_CPU","server_cpu":"$SERVER_CPU",
 "sidecar_node_flags":"$(echo $CLI_NODE_FLAGS ${BENCH_CKPT_SIDECAR_NODE_FLAGS:-})","command":"bash bench/checkpoint/run.sh"}
EOF

if has offline; then
  say "offline: full snapshot vs dd write, incremental, restore vs dd read ($RECORDS × $VALUE_BYTES B, $ROUNDS rounds)"
  wait_quiet
  $(pin "$SERVER_CPU") node --expose-gc "$HERE/run.mjs" offline --dir "$TMP/offline" --json "$TMP/offline.json" \
    --records "$RECORDS" --value-bytes "$VALUE_BYTES" --rounds "$ROUNDS"
fi

if has pause; then
  say "pause: PUTs at $RATE/s while a sidecar holding the same state takes a full snapshot (wal.fsync: $WAL_FSYNC)"
  node "$CLI" certs init --out "$TMP/certs" >"$TMP/logs/certs.log" 2>&1 || die "ctxmesh certs init failed"
  node "$CLI" certs issue --ca "$TMP/certs" --name bench --out "$TMP/certs/bench" >>"$TMP/logs/certs.log" 2>&1 || die "ctxmesh certs issue failed"
  cat >"$TMP/sidecar.yaml" <<EOF
node: { id: bench }
identity: { cert: $TMP/certs/bench/cert.pem, key: $TMP/certs/bench/key.pem, ca: $TMP/certs/bench/ca.pem }
inbound: { port: $P_IN, address: 127.0.0.1, app: "http://127.0.0.1:9" }
outbound: { port: $P_OUT }
admin: { port: $P_ADMIN }
log: { level: info, accessLog: false }
drainTimeout: 1s
context:
  port: $P_CTX
  l2: { backend: memory }
$([[ -n "${BENCH_CKPT_L1_BYTES:-}" ]] && echo "  l1: { maxBytes: $BENCH_CKPT_L1_BYTES }")
  writeMode: write-through
  wal: { fsync: $WAL_FSYNC }
  warm: { maxBytes: 0 }
  # every snapshot full; none on a timer or a write count, only the one this benchmark asks for
  checkpoint: { dir: "$TMP/data", fullEvery: 1, interval: 5m, changedWrites: 0, changedBytes: 0 }
EOF
  node "$HERE/run.mjs" preload --dir "$TMP/data" --json "$TMP/preload.json" --records "$RECORDS" --value-bytes "$VALUE_BYTES"
  sync
  [[ $EUID -eq 0 ]] && echo 3 >/proc/sys/vm/drop_caches
  wait_quiet
  SIDECAR_FLAGS="${BENCH_CKPT_SIDECAR_NODE_FLAGS:-}"
  [[ " $SIDECAR_FLAGS " == *" --cpu-prof "* ]] && SIDECAR_FLAGS="$SIDECAR_FLAGS --cpu-prof-dir $TMP/prof"
  # shellcheck disable=SC2086 # the flags are words
  $(pin "$SERVER_CPU") node $CLI_NODE_FLAGS $SIDECAR_FLAGS "$CLI" sidecar -c "$TMP/sidecar.yaml" >"$TMP/logs/sidecar.log" 2>&1 &
  SRV_PID=$!; PIDS+=("$SRV_PID")
  T0=$SECONDS
  until curl -fsS "http://127.0.0.1:$P_ADMIN/ready" >/dev/null 2>&1; do
    kill -0 "$SRV_PID" 2>/dev/null || { tail -20 "$TMP/logs/sidecar.log" >&2; die "sidecar exited"; }
    ((SECONDS - T0 < 300)) || die "sidecar not ready after 300 s"
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$P_ADMIN/metrics" >"$TMP/metrics-before.txt"
  RSS_BEFORE=$(awk '/VmRSS/ {print $2}' /proc/$SRV_PID/status)
  $(pin "$LOADGEN_CPU") node "$HERE/put-rate.mjs" --api "http://127.0.0.1:$P_CTX" --admin "http://127.0.0.1:$P_ADMIN" \
    --keys "$RECORDS" --value-bytes "$VALUE_BYTES" --rate "$RATE" --quiet "$QUIET" | sed -n 's/^PUTRATEJSON //p' >"$TMP/pause.json"
  curl -fsS "http://127.0.0.1:$P_ADMIN/metrics" >"$TMP/metrics-after.txt"
  RSS_AFTER=$(awk '/VmRSS/ {print $2}' /proc/$SRV_PID/status)
  RSS_PEAK=$(awk '/VmHWM/ {print $2}' /proc/$SRV_PID/status)
  metric() { awk -v m="$1" '$1 == m {print $2}' "$2" | head -1; }
  cat >"$TMP/sidecar.json" <<EOF
{"restore_seconds":$(metric ctxmesh_restore_seconds "$TMP/metrics-before.txt"),
 "pause_sum":$(metric ctxmesh_checkpoint_pause_seconds_sum "$TMP/metrics-after.txt"),"pause_count":$(metric ctxmesh_checkpoint_pause_seconds_count "$TMP/metrics-after.txt"),
 "duration_sum":$(metric 'ctxmesh_checkpoint_duration_seconds_sum{kind="full"}' "$TMP/metrics-after.txt"),
 "checkpoint_bytes":$(metric 'ctxmesh_checkpoint_bytes{kind="full"}' "$TMP/metrics-after.txt"),
 "rss_kib":{"before":$RSS_BEFORE,"after":$RSS_AFTER,"peak":$RSS_PEAK},
 "log":$(grep -E 'state recovered|checkpoint taken' "$TMP/logs/sidecar.log" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.stringify(s.trim().split("\n"))))')}
EOF
  stop_pid "$SRV_PID"
fi

node "$HERE/report.mjs" "$TMP" >"bench/.out/checkpoint-$STAMP.md"
node -e 'const fs=require("fs");const d=process.argv[1];const r=(f)=>{try{return JSON.parse(fs.readFileSync(d+"/"+f))}catch{return null}};console.log(JSON.stringify({meta:r("meta.json"),offline:r("offline.json"),preload:r("preload.json"),pause:r("pause.json"),sidecar:r("sidecar.json")},null,1))' "$TMP" >"bench/.out/checkpoint-$STAMP.json"
cp "bench/.out/checkpoint-$STAMP.md" bench/.out/checkpoint-latest.md
cat "bench/.out/checkpoint-$STAMP.md"
info "report: bench/.out/checkpoint-$STAMP.md (+ .json)"
