#!/usr/bin/env bash
# ctxmesh failover benchmark: SIGKILL a sidecar under steady load through the mesh, TRIALS times.
#
#   bash bench/failover/run.sh [trials=20]
#
# One run starts a control plane, three chat sidecars, a client sidecar (the built CLI, all on
# 127.0.0.1, configs and certificates in a temp dir), sends a fixed request rate through the client
# sidecar, and per trial kills one chat sidecar and measures from the kill to the last failed
# request, to the last try at the dead endpoint, to the control plane's declaration and to the EDS
# update at the client; then restarts it. Prints a Markdown report (p50/p99/max beside Redis
# Sentinel's and Envoy's defaults, the issue's target) and saves it as
# bench/.out/failover-<UTC>.md (+ .json, and failover-latest.md). Everything started is stopped on
# exit. See bench/README.md ("Failover benchmark"). Knobs (environment):
#   BENCH_FAILOVER_RATE=200   requests per second through the client sidecar (open loop)
#   BENCH_FAILOVER_WARM=1000 BENCH_FAILOVER_TAIL=1000   ms of load before the kill / after the EDS update
#   BENCH_SKIP_BUILD=1   do not build (by default it runs tsc when dist/ is missing or older than src/)
#   BENCH_CTXMESH_CLI=path   another ctxmesh CLI (no build then)
#   BENCH_KEEP_TMP=1     keep the temp dir (configs, certificates, raw results)
#   BENCH_FAILOVER_FANOUT=1   then run the xDS push fan-out (bench/xds/run.sh 1000 TRIALS); 0 = skip
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/bench/failover"
cd "$ROOT"
TRIALS="${1:-20}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
CLI="${BENCH_CTXMESH_CLI:-dist/src/cli/main.js}"

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
info() { printf '   %s\n' "$*" >&2; }

TMP="$(mktemp -d /tmp/ctxmesh-bench-failover.XXXXXX)"
DRIVER_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The driver SIGKILLs every process it started when it exits; stop it if it is still running.
  if [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then kill -TERM "$DRIVER_PID" 2>/dev/null || true; wait "$DRIVER_PID" 2>/dev/null || true; fi
  if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then info "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'info "interrupted: stopping everything this run started"; exit 130' INT TERM

if [[ -z "${BENCH_CTXMESH_CLI:-}" && "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  newest_src="$(find src xds -name '*.ts' -newer "$CLI" -print -quit 2>/dev/null || true)"
  if [[ ! -f "$CLI" || -n "$newest_src" ]]; then
    say "building (tsc)"
    npx tsc -p tsconfig.json >&2 || info "tsc reported errors (it still emits); going on with what was built"
  fi
fi
[[ -f "$CLI" ]] || { echo "bench/failover: $CLI is missing: build with npx tsc -p tsconfig.json" >&2; exit 1; }

busy_pct() { # busy % of the whole machine over 0.5 s
  local a b
  a=($(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)); sleep 0.5
  b=($(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat))
  echo $(( (b[0] - a[0]) * 100 / (b[1] - a[1] > 0 ? b[1] - a[1] : 1) ))
}
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
DIRTY=false; [[ -n "$(git status --porcelain -- src xds 2>/dev/null)" ]] && DIRTY=true
cat >"$TMP/meta.json" <<EOF
{"command":"bash bench/failover/run.sh $TRIALS","date":"$(date -u +%Y-%m-%dT%H:%MZ)","cpus":$(nproc),"cpu":"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "mem_gib":$(awk '/MemTotal/ {printf "%d", $2/1024/1024}' /proc/meminfo),"os":"$(. /etc/os-release; echo "$PRETTY_NAME")","kernel":"$(uname -r)",
 "node":"$(node --version)","git":"$GIT_REV","dirty":$DIRTY,"busy_pct":$(busy_pct)}
EOF

say "failover: $TRIALS trials (each: load, SIGKILL, declaration, EDS update, restart)"
BENCH_CTXMESH_CLI="$CLI" node "$HERE/failover.mjs" "$TMP/work" "$TMP/results.json" "$TRIALS" &
DRIVER_PID=$!
wait "$DRIVER_PID"
DRIVER_PID=""

mkdir -p bench/.out
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
node "$HERE/report.mjs" "$TMP/meta.json" "$TMP/results.json" "bench/.out/failover-$STAMP"
cp "bench/.out/failover-$STAMP.md" bench/.out/failover-latest.md
info "saved bench/.out/failover-$STAMP.md (+ .json)"

# The other half of the issue's benchmark, in the same run: the control plane's push fan-out.
if [[ "${BENCH_FAILOVER_FANOUT:-1}" == 1 ]]; then
  say "push fan-out: bench/xds/run.sh 1000 $TRIALS"
  BENCH_SKIP_BUILD=1 bash "$ROOT/bench/xds/run.sh" 1000 "$TRIALS"
fi
